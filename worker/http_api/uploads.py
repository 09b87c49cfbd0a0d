"""Receiving a multipart run request: the ``request`` JSON part and its files, streamed to disk.

python-multipart parses the body as it arrives; this module only routes each
part's bytes: the ``request`` part into memory (it is small JSON, capped), each
file part straight into its own file in a private temporary directory, named
after the uploaded file so Hatz sees the original name. Bytes are counted as
they arrive, so a file over ``HATZ_UPLOAD_MAX_BYTES`` is refused (``413``)
when it crosses the cap, not after it was all read. Starlette's own form parser
is not used because it keeps up to 1 MB of every file in memory, writes unnamed
temporary files and has no cap on a file's size. The files go on to Hatz
through the Hatz client, which streams each from disk (and can retry, which a
stream read once from the request could not).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from worker.http_api.problems import ProblemError

#: The multipart part holding the run request's JSON.
REQUEST_PART = "request"
MAX_REQUEST_PART_BYTES = 128 * 1024
MAX_FILES = 16
_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


@dataclass
class ReceivedFile:
    """A file part written to disk."""

    name: str
    filename: str
    path: Path
    size: int = 0
    sha256: str = ""


@dataclass
class _Part:
    name: str = ""
    file: ReceivedFile | None = None
    handle: IO[bytes] | None = None
    digest: hashlib._Hash | None = None
    data: bytearray = field(default_factory=bytearray)


class _Receiver:
    """The parser's callbacks: where each part's bytes go."""

    def __init__(self, directory: Path, max_file_bytes: int) -> None:
        self.directory = directory
        self.max_file_bytes = max_file_bytes
        self.request: bytes | None = None
        self.files: dict[str, ReceivedFile] = {}
        self.part = _Part()
        self.headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self.ended = False

    def on_end(self) -> None:
        self.ended = True

    def on_part_begin(self) -> None:
        self.part = _Part()
        self.headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise ProblemError(422, "every multipart part needs a name (Content-Disposition)")
        if name in self.files or (name == REQUEST_PART and self.request is not None):
            raise ProblemError(422, f"multipart part {name!r} appears twice")
        self.part.name = name
        if b"filename" not in options:
            if name != REQUEST_PART:
                raise ProblemError(
                    422,
                    f"unexpected multipart field {name!r}: send the run as the "
                    f"{REQUEST_PART!r} part and each file as a file part named after its input",
                )
            return
        if len(self.files) >= MAX_FILES:
            raise ProblemError(422, f"at most {MAX_FILES} files per run")
        self._open_file(name, options[b"filename"].decode("utf-8", "replace"))

    def _open_file(self, name: str, filename: str) -> None:
        safe = _UNSAFE.sub("_", Path(filename.replace("\\", "/")).name).strip(" .") or "upload"
        folder = self.directory / str(len(self.files))
        folder.mkdir()
        received = ReceivedFile(name=name, filename=safe, path=folder / safe[:200])
        self.part.file = received
        self.part.handle = received.path.open("wb")
        self.part.digest = hashlib.sha256()
        self.files[name] = received

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        part = self.part
        if part.file is None:
            if len(part.data) + len(chunk) > MAX_REQUEST_PART_BYTES:
                raise ProblemError(413, f"the {REQUEST_PART!r} part is over 128 KiB")
            part.data.extend(chunk)
            return
        assert part.handle is not None
        assert part.digest is not None
        part.file.size += len(chunk)
        if part.file.size > self.max_file_bytes:
            raise ProblemError(
                413,
                f"file {part.name!r} is over the {self.max_file_bytes}-byte limit "
                "(HATZ_UPLOAD_MAX_BYTES)",
            )
        part.handle.write(chunk)
        part.digest.update(chunk)

    def on_part_end(self) -> None:
        part = self.part
        if part.file is None:
            self.request = bytes(part.data)
            return
        assert part.handle is not None
        assert part.digest is not None
        part.handle.close()
        part.handle = None
        part.file.sha256 = part.digest.hexdigest()

    def close(self) -> None:
        """Close a file left open by a body that ended early."""
        if self.part.handle is not None:
            self.part.handle.close()


async def receive_multipart(
    content_type: str, body: AsyncIterator[bytes], directory: Path, max_file_bytes: int
) -> tuple[bytes, dict[str, ReceivedFile]]:
    """Read a multipart body: the ``request`` part's bytes and each file, written under
    ``directory``. Raises :class:`ProblemError` (413 over a cap, 422 a malformed body)."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ProblemError(422, "multipart/form-data without a boundary")
    receiver = _Receiver(directory, max_file_bytes)
    callbacks = {
        name: getattr(receiver, name)
        for name in (
            "on_part_begin",
            "on_part_data",
            "on_part_end",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_end",
        )
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise ProblemError(422, f"malformed multipart body: {exc}") from None
    finally:
        receiver.close()
    if not receiver.ended or any(not f.sha256 for f in receiver.files.values()):
        raise ProblemError(422, "the multipart body ended early (no closing boundary)")
    if receiver.request is None:
        raise ProblemError(422, f"the multipart body has no {REQUEST_PART!r} part (the run JSON)")
    return receiver.request, receiver.files

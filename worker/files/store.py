"""Object stores through fsspec: file inputs read from them, the archive written to them.

fsspec picks the implementation by the URL's protocol (s3fs for ``s3://``,
gcsfs for ``gs://``, adlfs for ``az://``/``abfs://``, the local file system
for ``file://``) and each reads its store's own standard credentials: for S3
the usual AWS environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, ``AWS_REGION``, instance roles) and ``AWS_ENDPOINT_URL`` for an
S3-compatible store. s3fs comes with hatz-worker; ``pip install gcsfs`` or
``adlfs`` adds the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.spec import AbstractFileSystem

from config import Settings
from worker.errors import FileSourceError
from worker.files.refs import display, protocol

_CHUNK = 1024 * 1024


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """The file system ``url`` lives on and its path there.

    ``file://`` directories are made as needed; a store's implementation that is
    not installed raises :class:`FileSourceError` naming the package.
    """
    options: dict[str, Any] = {"auto_mkdir": True} if protocol(url) in ("file", "local") else {}
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        raise FileSourceError(f"{display(url)}: {exc}") from None
    except ValueError as exc:
        raise FileSourceError(f"{display(url)}: {exc}") from None
    return fs, path


def _failure(url: str, exc: Exception) -> FileSourceError:
    """A store error as :class:`FileSourceError`: a missing or forbidden object is final."""
    where = display(url)
    if isinstance(exc, FileNotFoundError):
        return FileSourceError(f"{where}: no such object")
    if isinstance(exc, PermissionError):
        return FileSourceError(f"{where}: access denied ({exc})")
    if isinstance(exc, IsADirectoryError):
        return FileSourceError(f"{where}: is a folder, not an object")
    return FileSourceError(f"{where}: {type(exc).__name__}: {exc}", transient=True)


class StoreSource:
    """An object-store file input as an upload source (:class:`worker.hatz.client.UploadSource`)."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self._fs, self._path = filesystem(url)
        self.name = self._path.rstrip("/").rsplit("/", 1)[-1] or "file"
        try:
            info = self._fs.info(self._path)
        except Exception as exc:
            raise _failure(url, exc) from None
        if info.get("type") == "directory":
            raise _failure(url, IsADirectoryError(url))
        self.size = int(info.get("size") or 0)
        if self.size > settings.file_max_bytes:
            raise FileSourceError(
                f"{display(url)} is {self.size} bytes; HATZ_FILE_MAX_BYTES is "
                f"{settings.file_max_bytes}"
            )

    def __enter__(self) -> StoreSource:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def chunks(self) -> Iterator[bytes]:
        """The object's bytes, read afresh, a chunk at a time."""
        try:
            with self._fs.open(self._path, "rb", block_size=_CHUNK) as fh:
                while chunk := fh.read(_CHUNK):
                    yield chunk
        except FileSourceError:
            raise
        except Exception as exc:
            raise _failure(self.url, exc) from None

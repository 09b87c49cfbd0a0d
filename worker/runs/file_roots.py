"""Local files only from where they belong: the one check every local input path goes through.

Any producer can name a path (``send_task(..., kwargs={"files": ...})``, a CSV
or JSONL file column, a folder of symlinks), and the worker uploads what it
names to Hatz. :func:`allowed_path` resolves the path (symlinks and ``..``)
and accepts it only inside one of ``HATZ_FILE_ROOTS`` (default ``.``: the
working directory), and never under ``/proc``, ``/sys`` or ``/dev``
(``/proc/self/environ`` holds the API key), whatever the roots say.

It runs at enqueue (:func:`worker.runs.request.check_request`, so the Python
API, ``send_task`` and every batch row) and again in the worker right before
the upload (:mod:`worker.runs.submit`), which uploads the resolved path. Other
sources of local paths go through it as well.

Written by hand: a dozen lines of :mod:`pathlib` (``resolve`` and
``is_relative_to``) need no library.
"""

from __future__ import annotations

import os
from pathlib import Path

from config import Settings
from worker.errors import FileRefusedError

#: Refused whatever ``HATZ_FILE_ROOTS`` says: kernel and device files, e.g. /proc/self/environ.
ALWAYS_REFUSED = (Path("/proc"), Path("/sys"), Path("/dev"))


def roots(settings: Settings) -> list[Path]:
    """``HATZ_FILE_ROOTS`` resolved (relative entries against the working directory)."""
    return [Path(root).expanduser().resolve() for root in settings.file_roots]


def allowed_path(path: str | os.PathLike[str], settings: Settings) -> Path:
    """Where ``path`` really leads, if it is inside ``HATZ_FILE_ROOTS``; else raise.

    Raises :class:`~worker.errors.FileRefusedError` (a clear message naming the
    path, where it leads and the roots) for a path outside every root, under
    /proc, /sys or /dev, or that cannot be resolved (a symlink loop). Whether
    the file exists and is readable is the caller's check.
    """
    given = Path(path).expanduser()
    try:
        real = given.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise FileRefusedError(
            f"file {str(path)!r} refused: cannot resolve it ({exc})", path=str(path)
        ) from None
    leads = "" if str(real) == str(given) else f" (it leads to {real})"
    for forbidden in ALWAYS_REFUSED:
        if real.is_relative_to(forbidden):
            raise FileRefusedError(
                f"file {str(path)!r} refused: files under {forbidden} are never uploaded{leads}",
                path=str(path),
                resolved=str(real),
            )
    allowed = roots(settings)
    if not any(real.is_relative_to(root) for root in allowed):
        raise FileRefusedError(
            f"file {str(path)!r} refused: outside the allowed folders{leads}; "
            f"HATZ_FILE_ROOTS is {', '.join(str(r) for r in allowed)}",
            path=str(path),
            resolved=str(real),
        )
    return real

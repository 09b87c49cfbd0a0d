"""The integration tests on the oldest and the newest supported Celery, kombu and redis-py.

CI runs the lock (``requirements/dev.txt``) only; these sessions are a deliberate
step before widening a range in ``pyproject.toml`` or the kombu patches' tested
range (``worker/taskqueue/kombu_fixes.py``)::

    .venv/bin/nox                          # both sessions
    .venv/bin/nox -s "integration(oldest)" -- -x -k pipeline   # pytest arguments after --

Each session installs the lock, then replaces Celery, kombu and redis-py (and
hiredis) with the set under test, then runs ``pytest -m "integration and not
chaos"``: real ``redis-server`` and Celery worker processes, as in the suite.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True

#: ``pyproject.toml``'s floors, installed together: the oldest set that must work.
OLDEST = ["celery[redis]==5.5.0", "kombu==5.5.2", "redis==5.0.1", "hiredis==3.5.0"]
#: The newest releases inside ``pyproject.toml``'s ranges, resolved when the session runs.
NEWEST = ["celery[redis]>=5.5,<6", "kombu>=5.5.2,<6", "redis[hiredis]>=5.0.1,<9"]
VERSIONS = {"oldest": OLDEST, "newest": NEWEST}


@nox.session(python="3.11")
@nox.parametrize("versions", list(VERSIONS), ids=list(VERSIONS))
def integration(session: nox.Session, versions: str) -> None:
    """The integration subset on one set of versions."""
    session.install("-r", "requirements/dev.txt")
    if versions == "newest":
        session.install("--upgrade", *VERSIONS[versions])
    else:
        session.install(*VERSIONS[versions])
    session.install("--no-deps", "-e", ".")
    show = (
        "import celery, kombu, redis\n"
        "for m in celery, kombu, redis: print(m.__name__, m.__version__)"
    )
    session.run("python", "-c", show)
    session.run(
        "python",
        "-m",
        "pytest",
        "-m",
        "integration and not chaos",
        "-p",
        "no:cacheprovider",
        *session.posargs,
    )

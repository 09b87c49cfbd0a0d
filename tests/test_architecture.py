"""The layers the folders promise, held by the code: contracts, no import cycles, a lean client.

The contracts themselves live in pyproject.toml (``[tool.importlinter]``) so that
``lint-imports`` run by hand reports the same thing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("worker", "tasks", "config")


def _cycles(graph: grimp.ImportGraph) -> list[str]:
    """Each import that is part of a circle, written as the whole circle."""
    found = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                found.append(" -> ".join((importer, *back)))
    return found


def test_import_contracts_hold() -> None:
    # Given the contracts in pyproject.toml
    lint_imports = Path(sys.executable).parent / "lint-imports"

    # When import-linter checks the code
    done = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    # Then every contract is kept
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_module_imports_itself_through_others() -> None:
    graph = grimp.build_graph(*PACKAGES)

    assert _cycles(graph) == []


def test_the_cycle_finder_sees_a_cycle(tmp_path: Path) -> None:
    # Given a package whose two modules import each other
    pkg = tmp_path / "circle_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from circle_pkg import b\n")
    (pkg / "b.py").write_text("from circle_pkg import a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        graph = grimp.build_graph("circle_pkg", cache_dir=None)
    finally:
        sys.path.remove(str(tmp_path))

    assert _cycles(graph) == [
        "circle_pkg.a -> circle_pkg.b -> circle_pkg.a",
        "circle_pkg.b -> circle_pkg.a -> circle_pkg.b",
    ]


def test_hatz_client_imports_without_celery_kombu_or_redis() -> None:
    # Given a Python in which celery, kombu, billiard and redis cannot be imported
    script = textwrap.dedent(
        """
        import sys

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"celery", "kombu", "billiard", "redis"}:
                    raise ImportError(f"{name} is not installed here")
                return None

        sys.meta_path.insert(0, Refuse())
        from worker.hatz.client import HatzClient

        client = HatzClient(api_key="k", base_url="http://127.0.0.1:9/v1")
        client.close()
        print(sorted(m for m in sys.modules if m.split(".")[0] in {"celery", "kombu", "redis"}))
        """
    )

    # When the client is imported and built there
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    # Then it works, and none of them was loaded
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

"""The shape of the code: which module imports which (issue 13).

Two rules, read from the source with ``ast`` (nothing is imported or run), over
the three layers ``iim/xmpp`` (the sans-I/O core), ``iim/server`` and ``iim/mux``:

1. **No import cycle.** Every import counts, also one under ``if TYPE_CHECKING:``
   or inside a function: a cycle hidden that way still makes two modules that
   cannot be read, tested or changed apart.
2. **No module imports another module's ``_private`` name.** What two modules
   share is public in one of them, or in a small module of its own.

``KNOWN`` lists what broke a rule before the rules were written and is still
to be mended (issue 13, item 4); a test checks each entry is still there, so
the list can only shrink. To see the graph's cycles and private imports::

    python tests/test_architecture.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("iim/xmpp", "iim/server", "iim/mux")

KNOWN_CYCLES: set[frozenset[str]] = set()              # issue 13 item 4 mended them all
KNOWN_PRIVATE: set[tuple[str, str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the layers, by dotted name."""
    return {module_name(path): path for layer in LAYERS for path in (ROOT / layer).rglob("*.py")}


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports(name: str, path: Path) -> list[tuple[str, str | None]]:
    """(module, name or None) for every import in the file, wherever it stands."""
    package = name if is_package(path) else name.rpartition(".")[0]
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(package, node.module, node.level)
            found.extend((source, alias.name) for alias in node.names)
    return found


def _absolute(package: str, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    base = package.split(".")[: len(package.split(".")) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def graph() -> dict[str, set[str]]:
    """module -> the modules of the layers it imports."""
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for source, imported in imports(name, path):
            submodule = f"{source}.{imported}"
            target = submodule if submodule in known else source
            if target in known and target != name:
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def private_imports() -> set[tuple[str, str, str]]:
    """(importer, module, name) for each ``_name`` taken from another iim module."""
    known = modules()
    found = set()
    for name, path in known.items():
        for source, imported in imports(name, path):
            if imported is None or not source.startswith("iim"):
                continue
            if imported.startswith("_") and not imported.startswith("__") \
                    and not _is_module(source, imported) and source != name:
                found.add((name, source, imported))
    return found


def _is_module(package: str, name: str) -> bool:
    """``from iim import _fastmux``: a module (source or compiled), not a name."""
    folder = ROOT.joinpath(*package.split("."))
    return (folder / name).is_dir() or any(folder.glob(name + ".*"))


# -- the rules ------------------------------------------------------------------------


def test_no_import_cycle_in_the_layers():
    new = [sorted(cycle) for cycle in cycles(graph()) if cycle not in KNOWN_CYCLES]
    assert new == [], f"import cycles: {new}"


def test_no_module_imports_another_modules_private_name():
    new = sorted(private_imports() - KNOWN_PRIVATE)
    assert new == [], "private names imported from another module: " + ", ".join(
        f"{importer} takes {name} from {source}" for importer, source, name in new)


def test_the_known_exceptions_are_still_there():
    """When one is mended, take it off the list: it must not come back."""
    assert KNOWN_CYCLES <= set(cycles(graph()))
    assert KNOWN_PRIVATE <= private_imports()


def test_the_router_cluster_imports_one_way():
    """Issue 13 item 1: presence, roster and inbound know the session registry
    and the offline store, not the router; the router is the one that knows them all."""
    edges = graph()
    for module in ("presence", "roster", "inbound", "offline", "sessions", "messages",
                   "remote", "stanzas", "services"):
        assert "iim.server.router" not in edges[f"iim.server.{module}"], module


# -- the walk, by hand ----------------------------------------------------------------


def test_the_reader_sees_every_kind_of_import(tmp_path, monkeypatch):
    """A cycle made through TYPE_CHECKING, a function-level import and a
    relative import is still a cycle; a private name is seen through ``from . import``."""
    package = tmp_path / "iim" / "server"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\n"
                                  "if TYPE_CHECKING:\n    from .b import B\n")
    (package / "b.py").write_text("def f():\n    from iim.server.a import _helper\n")
    (package / "c.py").write_text("from . import a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "LAYERS", ("iim/server",))
    assert cycles(graph()) == [frozenset({"iim.server.a", "iim.server.b"})]
    assert private_imports() == {("iim.server.b", "iim.server.a", "_helper")}
    assert graph()["iim.server.c"] == {"iim.server.a"}


def test_the_slow_first_schedule_names_test_files_that_exist():
    """tests/conftest.py's SLOW_FIRST orders the run; a renamed file must not
    silently fall out of it."""
    from conftest import SLOW_FIRST
    missing = [name for name in SLOW_FIRST if not (ROOT / "tests" / name).is_file()]
    assert missing == []
    assert len(set(SLOW_FIRST)) == len(SLOW_FIRST)


def test_an_admin_command_loads_only_its_own_module():
    """python -m iim.admin keys does not import verify's XMPP client, user's
    SQLite store or the daemons' control client (iim/admin/__main__.py)."""
    import subprocess
    probe = ("import sys; from iim.admin.__main__ import parser; parser('keys'); "
             "print(sorted(m for m in sys.modules if m.startswith('iim.admin.')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert ast.literal_eval(out) == ["iim.admin.__main__", "iim.admin.guard", "iim.admin.keytools"]


if __name__ == "__main__":
    for cycle in cycles(graph()):
        print("cycle:", " <-> ".join(sorted(cycle)), "(known)" if cycle in KNOWN_CYCLES else "")
    for importer, source, name in sorted(private_imports()):
        known = "(known)" if (importer, source, name) in KNOWN_PRIVATE else ""
        print(f"private: {importer} imports {name} from {source}", known)

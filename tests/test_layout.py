"""The package's rooms and the direction of their imports (docs/design-notes.md, "Rooms").

Every `tidal_dist` import, at module level or inside a function, must point to the same room or a
lower one, and no two modules may import each other, directly or around a loop. Read from the
source with `ast`, so a lazy import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tidal_dist"

# Lowest first. A module may import its own room and any room of a lower level.
LEVELS = [
    {"job"},
    {"config"},
    {"data", "dynamics", "selection", "telemetry"},
    {"models"},
    {"objectives", "strategies"},
    {"training"},
    {"cycle"},
    {"sweep", "report"},
    {"api"},
    {"cli", "__main__"},
]
LEVEL = {room: i for i, rooms in enumerate(LEVELS) for room in rooms}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(path: Path, known: dict[str, Path]) -> set[str]:
    """The tidal_dist modules `path` imports (`from tidal_dist.job import outcome` -> the module
    tidal_dist.job.outcome; a name that is not a module -> the package it comes from)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tidal_dist")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.startswith("tidal_dist"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_top_level_holds_only_the_entry_points_and_folders():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "cli.py", "config.py"], loose
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert rooms == set(LEVEL) - {"cli", "__main__", "config"}, "a room is missing from LEVELS"


def test_every_module_opens_with_a_docstring():
    missing = [name for name, path in all_modules().items()
               if not ast.get_docstring(ast.parse(path.read_text())) and path.stat().st_size > 0
               and name != "tidal_dist.__main__"]
    assert not missing, missing


def test_no_import_runs_upward():
    known = all_modules()
    upward = []
    for name, path in known.items():
        here = room(name)
        if here == "__init__":
            continue
        for target in imported(path, known):
            there = room(target)
            if there != "__init__" and LEVEL[there] > LEVEL[here]:
                upward.append(f"{name} -> {target}")
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_no_import_cycles():
    known = all_modules()
    graph = {name: imported(path, known) - {name} for name, path in known.items()}
    # A package's __init__ re-exporting its own modules is not a cycle through them.
    for name in graph:
        graph[name] = {t for t in graph[name] if not (t.startswith(name + ".")
                                                      and known[name].name == "__init__.py")}
    seen, on_stack, cycles = set(), [], []

    def visit(node: str) -> None:
        if node in on_stack:
            cycles.append(" -> ".join(on_stack[on_stack.index(node):] + [node]))
            return
        if node in seen:
            return
        seen.add(node)
        on_stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        on_stack.pop()

    for node in sorted(graph):
        visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule above can fail: a training module importing the cycle room is caught."""
    fake = tmp_path / "tidal_dist" / "training" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text('"""x"""\ndef f():\n    from tidal_dist.cycle.pool import pool_ids\n')
    targets = imported(fake, {"tidal_dist.cycle.pool": fake})
    assert targets == {"tidal_dist.cycle.pool"}
    assert LEVEL[room("tidal_dist.cycle.pool")] > LEVEL["training"]

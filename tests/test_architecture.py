"""Imports between the parts of src/flava run one way: entry points -> collection -> training ->
tasks -> data -> config -> objectives, checkpoints, planning -> model (function-level imports
counted, TYPE_CHECKING ones not)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "src" / "flava"
LAYERS = [
    {"entry"},  # train.py, finetune.py, evaluate.py, ..., plan.py, convert.py
    {"collection"},  # the model at work: embedding shards, index, search (embed.py, ...)
    {"training"},
    {"tasks"},
    {"data"},
    {"config"},
    {"objectives", "checkpoints", "planning"},  # planning: a cost model over model configs
    {"model"},
]
"""Each part may import only parts of lower layers (later in the list)."""


def part_of(module: str, root: Path = ROOT) -> str | None:
    """The part of a `flava.*` module: its subpackage, or `entry` for a top-level module."""
    bits = module.split(".")
    if bits[0] != "flava" or len(bits) < 2:
        return None
    if (root / bits[1]).is_dir():
        return bits[1]
    return "entry" if (root / f"{bits[1]}.py").is_file() else None  # else a name of flava/


def _module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[ast.AST]:
    inside: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                inside.update(ast.walk(child))
    return inside


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """(module, line) of every flava import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, *([node.module] if node.module else [])])
            out.append((name, node.lineno))
            out += [(f"{name}.{a.name}", node.lineno) for a in node.names]  # submodules
    return [(m, line) for m, line in out if m == "flava" or m.startswith("flava.")]


def arrows(root: Path = ROOT) -> dict[tuple[str, str], list[str]]:
    """(from part, to part) -> where, for every import between two parts."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        if module in ("flava", "flava.__main__"):  # the public API re-exports every part
            continue
        source = part_of(module, root)
        for target, line in imported_modules(path, root):
            dest = part_of(target, root)
            where = f"{path.relative_to(root.parent)}:{line}"
            if dest is not None and dest != source and where not in found[(source, dest)]:
                found[(source, dest)].append(where)
    return found


def layer(part: str) -> int:
    """Index of a part's layer."""
    for i, parts in enumerate(LAYERS):
        if part in parts:
            return i
    raise AssertionError(f"part {part!r} is in no layer of LAYERS: add it")


def test_every_part_imports_only_lower_layers() -> None:
    wrong = {f"{a} -> {b}": where[:3] for (a, b), where in arrows().items() if layer(a) >= layer(b)}
    assert not wrong, wrong


def test_no_cycle_between_parts() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in arrows():
        graph[a].add(b)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start]:
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(a for a in list(graph) if reaches(a, a, {a}))
    assert not cycles, cycles


def test_the_model_imports_nothing_above_it() -> None:
    above = {b for (a, b) in arrows() if a == "model"}
    assert not above, above


@pytest.mark.parametrize(
    ("source", "arrow"),
    [
        ("from flava.checkpoints import save_pretrained\n", True),
        ("def load():\n    from ..checkpoints import io\n", True),  # in a function, relative
        ("from .. import checkpoints\n", True),  # a submodule by from-import
        ("from flava import preset\n", False),  # a name of the public API (flava/__init__)
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import flava.checkpoints\n",
            False,
        ),
    ],
)
def test_the_walk_sees_function_level_and_relative_imports(
    tmp_path: Path, source: str, arrow: bool
) -> None:
    """The checks above can fail: a model module importing checkpoints is an arrow upward."""
    root = tmp_path / "flava"
    for package in ("model", "checkpoints"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "model" / "flava.py").write_text(source)
    found = arrows(root)
    assert (("model", "checkpoints") in found) is arrow
    if arrow:
        assert layer("model") >= layer("checkpoints")

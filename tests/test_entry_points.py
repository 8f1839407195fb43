"""Every console script named in pyproject.toml points at a callable `main(argv)` with --help."""

import importlib
import inspect
import tomllib
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
SCRIPTS = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]


def test_every_command_module_is_a_console_script():
    """A top-level module with `main(argv)` is a command: it has its flava-<name> script, and
    every script names such a module (a new command cannot be forgotten in pyproject.toml)."""
    package = Path(__file__).resolve().parents[1] / "src" / "flava"
    commands = {
        f"flava-{path.stem.replace('_', '-')}": f"flava.{path.stem}:main"
        for path in package.glob("*.py")
        if "\ndef main(argv" in path.read_text()
    }
    assert len(commands) >= 8 and "flava-evaluate" in commands
    assert commands == SCRIPTS


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_entry_point_prints_help(name, capsys):
    module_name, _, attr = SCRIPTS[name].partition(":")
    main = getattr(importlib.import_module(module_name), attr)
    assert callable(main)
    assert list(inspect.signature(main).parameters) == ["argv"]
    try:
        status = main(["--help"])
    except SystemExit as exc:  # argparse's --help exits
        status = exc.code
    assert status in (0, None)
    assert capsys.readouterr().out.strip()  # the help text

"""Every console script named in pyproject.toml points at a callable `main(argv)` with --help."""

import importlib
import inspect
import tomllib
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
SCRIPTS = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]


def test_the_commands_are_console_scripts():
    assert {
        "flava-train",
        "flava-finetune",
        "flava-zero-shot",
        "flava-retrieval",
        "flava-linear-probe",
        "flava-convert",
        "flava-plan",
    } <= set(SCRIPTS)


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

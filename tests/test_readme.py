"""Every command README.md and docs/*.md show still runs, checked cheaply and for real.

The commands come from the fenced code blocks (bash, sh or untagged). Each `python -m flava.X`
(also under `torchrun`, or as a `flava-*` console script) must name a module whose config
arguments load and validate through the command's own loader (its `main`, with `cli_main`
stopped before the run: nothing trains); the commands in PARSE_ONLY must parse with their own
argparse parser; `flava.plan`, which only computes, runs; `make X` must be a Makefile target;
`sbatch` scripts must exist and their `srun` commands pass the same checks. A program none of
these can check must be listed in UNCHECKED with its reason; any other command fails the test.
The Python examples run and the YAML examples validate as pretraining configs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest

import flava.config
from flava.config import RunConfig, load_config, loader, validate

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_TAGS = {"", "bash", "sh", "shell", "console"}

# Placeholders a reader replaces, with sample values (kept small and explicit).
SUBSTITUTIONS = {
    "$NODE_RANK": "0",
    "$SLURM_JOB_NUM_NODES": "4",
    "$SLURM_NTASKS_PER_NODE": "8",
    "$RUN_DIR": "runs/pmd",
    # a suite file of the reader's own; the shipped short suite stands in for it
    "config=my_suite.yaml": "config=evaluation/zero_shot.yaml",
    # a bucket needs s3fs and credentials; fsspec's in-memory filesystem runs the same checks
    "s3://my-bucket": "memory://my-bucket",
}
# Programs whose commands cannot be checked here, each with its reason (a command the documents
# show in a code block must be one this file can check, or named here).
UNCHECKED: dict[str, str] = {
    "curl": "asks a running flava.serve; tests/collection/test_serve.py sends the same requests",
}
# Commands that read or write real files: only their arguments are parsed, by their own parser.
PARSE_ONLY = {
    "flava.convert": "reads a checkpoint and writes another",
    "flava.clip_benchmark": "CLIP_benchmark's own command line: evaluates a model on a dataset",
}
# Commands that only compute (no data, no training): cheap enough to run for real.
RUN_FOR_REAL = {"flava.plan"}
# Files a command reads that the documents show as a YAML block: name -> (document, block).
YAML_FILES = {"my_run.yaml": ("README.md", 0)}


def code_blocks(markdown: str) -> list[tuple[str, int, str]]:
    """(tag, first line number, text) of each fenced code block of Markdown text."""
    blocks, tag, start, lines = [], None, 0, []
    for number, line in enumerate(markdown.splitlines(), 1):
        fence = re.match(r"\s*```\s*(\S*)", line)
        if fence and tag is None:
            tag, start, lines = fence.group(1).lower(), number + 1, []
        elif fence:
            blocks.append((tag, start, "\n".join(lines)))
            tag = None
        elif tag is not None:
            lines.append(line)
    assert tag is None, "a code block is not closed"
    return blocks


def shell_commands(text: str) -> list[tuple[dict[str, str], list[str]]]:
    """The commands of a shell block: (environment assignments, argument list), with
    continuations joined, comments dropped and placeholders substituted."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        for old, new in SUBSTITUTIONS.items():
            line = line.replace(old, new)
        words, env = shlex.split(line, comments=True), {}
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            name, value = words.pop(0).split("=", 1)
            env[name] = value
        words = [w for w in words if not re.fullmatch(r"\$\{\w+\[@\].*\}", w)]  # bash arrays
        if words:
            commands.append((env, words))
    return commands


def documented_commands() -> list[tuple[str, dict[str, str], list[str]]]:
    """(where, environment, argument list) of every shell command in the documents."""
    found = []
    for path in DOCS:
        for tag, start, text in code_blocks(path.read_text()):
            if tag in SHELL_TAGS:
                found += [
                    (f"{path.name}:{start}#{k}", env, words)
                    for k, (env, words) in enumerate(shell_commands(text))
                ]
    return found


def yaml_block(document: str, index: int) -> str:
    blocks = [
        text
        for tag, _, text in code_blocks((ROOT / document).read_text())
        if tag in ("yaml", "yml")
    ]
    return blocks[index]


def console_scripts() -> dict[str, str]:
    """Console script name -> module, from pyproject.toml."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: target.split(":")[0] for name, target in scripts.items()}


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([\w.-]+):", text, flags=re.MULTILINE))


class Parsed(Exception):
    """Raised by the patched argparse once a command's arguments have parsed."""


def check_flava(module_name: str, args: list[str], monkeypatch) -> None:
    """The module exists and `args` load and validate through its own config loader (or parse
    with its own argparse parser); nothing else runs."""
    module = importlib.import_module(module_name)
    if any(a in ("-h", "--help") for a in args):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert module.main(args) == 0
        assert len(out.getvalue().splitlines()) > 5, f"{module_name} --help printed little"
        return
    if module_name in RUN_FOR_REAL:
        with contextlib.redirect_stdout(io.StringIO()):
            assert module.main(args) == 0
        return
    loaded = []

    def load_only(*a, **kw):
        bound = inspect.signature(loader.cli_main).bind(*a, **kw)
        loaded.append(bound.arguments["load"](bound.arguments["argv"]))
        return 0

    parse = argparse.ArgumentParser.parse_args

    def parse_only(self, argv=None, namespace=None):
        loaded.append(parse(self, argv, namespace))
        raise Parsed

    monkeypatch.setattr(module, "cli_main", load_only, raising=False)
    monkeypatch.setattr(flava.config, "cli_main", load_only)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    try:
        assert module.main(args) == 0
    except Parsed:
        assert module_name in PARSE_ONLY, f"{module_name} parsed arguments but loaded no config"
    assert loaded, f"{module_name} neither loaded a config through cli_main nor parsed arguments"


def check_command(words: list[str], monkeypatch) -> None:
    """One documented command, by its program."""
    program, args = words[0], words[1:]
    scripts = console_scripts()
    if program in ("python", "python3") and args[:1] == ["-m"] and args[1].startswith("flava."):
        check_flava(args[1], args[2:], monkeypatch)
    elif program in scripts:
        check_flava(scripts[program], args, monkeypatch)
    elif program == "torchrun":
        from torch.distributed.run import get_args_parser

        launch = get_args_parser().parse_args(args)
        assert launch.module, "torchrun without -m"
        check_flava(launch.training_script, launch.training_script_args, monkeypatch)
    elif program == "srun":
        check_command(args, monkeypatch)
    elif program == "sbatch":
        script = ROOT / args[0]
        assert script.is_file(), f"{args[0]} does not exist"
        inner = [w for _, w in shell_commands(script.read_text()) if w[0] == "srun"]
        assert inner, f"{args[0]} runs no srun command"
        for words in inner:
            check_command(words, monkeypatch)
    elif program == "make":
        missing = set(a for a in args if "=" not in a) - make_targets()
        assert not missing, f"no Makefile target {sorted(missing)}"
    else:
        assert program in UNCHECKED, f"{program}: no check for this command; add one or a reason"


COMMANDS = documented_commands()


@pytest.mark.parametrize(("where", "env", "words"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_documented_command_runs(where, env, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run directories and relative paths land here
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name, (document, index) in YAML_FILES.items():
        (tmp_path / name).write_text(yaml_block(document, index))
    monkeypatch.setattr(sys, "argv", ["flava"])
    check_command(words, monkeypatch)


def test_commands_found():
    programs = {words[0] for _, _, words in COMMANDS}
    assert {"make", "python", "torchrun"} <= programs
    modules = {w[2] for _, _, w in COMMANDS if w[0] == "python" and w[1] == "-m"}
    assert {"flava.train", "flava.finetune", "flava.evaluate"} <= modules


def test_setup_commands_are_the_ci_ones():
    """The set-up section shows `make demo` and `make test`; CI runs the same `make test`."""
    setup = (ROOT / "README.md").read_text().split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = [w for _, _, text in code_blocks(setup) for _, w in shell_commands(text)]
    assert ["make", "demo"] in commands and ["make", "test"] in commands
    assert "make test" in (ROOT / ".ci" / "run").read_text().splitlines()
    makefile = (ROOT / "Makefile").read_text()
    demo = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "-m flava.train config=pretraining/demo.yaml" in demo  # as the demo section says


def blocks_tagged(*tags: str) -> list[tuple[str, str]]:
    """(where, text) of every code block with one of `tags` in the documents."""
    return [
        (f"{path.name}:{start}", text)
        for path in DOCS
        for tag, start, text in code_blocks(path.read_text())
        if tag in tags
    ]


@pytest.mark.parametrize(("where", "text"), blocks_tagged("python"))
def test_python_example_runs(where, text):
    """A Python example (the `tiny` preset) runs as shown."""
    exec(compile(text, where, "exec"), {})


@pytest.mark.parametrize(("where", "text"), blocks_tagged("yaml", "yml"))
def test_yaml_example_validates(where, text, tmp_path):
    """A YAML example is a pretraining config that loads and validates."""
    path = tmp_path / "example.yaml"
    path.write_text(text)
    load_config([f"config={path}"], RunConfig, validate)


def test_links_resolve():
    """Every relative link of the documents names a file of the repository."""
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.name}: no file {target}"

"""The original release's README commands, typed as it shows them, where `make demo` leaves
users: `pip install -e .` without extras, no network, HF_HUB_OFFLINE unset (and set).

Each command runs as CI would run it, `python -m flava.X ...` in a subprocess (all at once),
whose sitecustomize (on PYTHONPATH) hides the extras from every import finder and from
importlib.metadata, as if they were not installed, with an empty Hugging Face cache. Each must
stop before any work (no run directory) with one line naming what is missing and the command
that installs or fetches it, and exit status 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from flava.config import ConfigError, SourceConfig
from flava.config.loader import from_fields
from flava.data.sources import check

EXTRAS = ("datasets", "transformers", "timm", "sklearn", "skimage", "wandb", "mlflow")
"""What `pip install -e .` does not install (the dev / data / logger extras), as imported."""
DISTRIBUTIONS = ("datasets", "transformers", "timm", "scikit-learn", "scikit-image", "wandb")
"""The same as installed distributions (importlib.metadata), mlflow's included below."""

SITECUSTOMIZE = f"""
import sys

MODULES = {EXTRAS!r}
DISTRIBUTIONS = {DISTRIBUTIONS!r} + ("mlflow", "mlflow-skinny")


def _dist_name(dist):
    return (dist.metadata["Name"] or "").lower().replace("_", "-")


class Hidden:
    \"\"\"A meta-path finder as it would be without the extras: they are neither found
    (import, importlib.util.find_spec) nor listed (importlib.metadata).\"\"\"

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in MODULES:
            return None
        return self.finder.find_spec(name, path, target)

    def find_distributions(self, *args, **kwargs):
        found = getattr(self.finder, "find_distributions", lambda *a, **k: [])(*args, **kwargs)
        return [d for d in found if _dist_name(d) not in DISTRIBUTIONS]

    def __getattr__(self, name):
        return getattr(self.finder, name)


sys.meta_path[:] = [Hidden(finder) for finder in sys.meta_path]
"""

INSTALL = "pip install 'datasets>=3.1'"
COMMANDS = {
    "debug": ("flava.train", ["config=flava/configs/pretraining/debug.yaml"]),
    "max_steps": (
        "flava.train",
        ["config=flava/configs/pretraining/debug.yaml", "training.lightning.max_steps=1000"],
    ),
    "flava_full": (
        "flava.train",
        ["config=configs/pretraining/debug.yaml", "model.pretrained_model_key=flava_full"],
    ),
    "qnli": (
        "flava.finetune",
        ["config=configs/finetuning/qnli.yaml", "model.pretrained_model_key=flava_full"],
    ),
}
"""The original README's commands (its `python train.py` / `finetune.py` as the modules)."""
MISSING = {
    "flava.train": "datasets.image.train[0] (huggingface imagenet-1k): dataset imagenet-1k/"
    f"default needs the Hugging Face datasets package, which is not installed: {INSTALL}",
    "flava.finetune": "GLUE qnli needs the Hugging Face datasets package, which is not "
    f"installed: {INSTALL}",
}


RUNS = {
    **{(name, ""): {} for name in COMMANDS},
    ("debug", "IMAGENET_TAR"): {
        "IMAGENET_TAR": "/data/imagenet_object_localization_patched2019.tar.gz"
    },
    **{(name, "HF_HUB_OFFLINE=1"): {"HF_HUB_OFFLINE": "1"} for name in COMMANDS},
}
"""(command, what the environment adds) -> the variables it adds."""

RUN_MODULES = """
import json, os, runpy, sys, traceback

for cwd, env, module, args in json.loads(sys.argv[1]):
    os.chdir(cwd)
    os.environ.update(env)
    sys.argv = [module, *args]
    print("@@@ start", file=sys.stderr, flush=True)
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
        code = 1
    for name in env:
        del os.environ[name]
    print(f"@@@ exit {code}", file=sys.stderr, flush=True)
"""
"""`python -m module args` for each of a list, one after the other in one interpreter: the
first pays for importing torch and Lightning, the others reuse them (each from its own folder,
as `__main__`, with its environment)."""


@dataclass
class Stopped:
    """What one command left: its exit status, stderr, and whether it wrote a run directory."""

    returncode: int
    stderr: str
    wrote_runs: bool


def _split(stderr: str) -> list[tuple[int, str]]:
    """(exit status, stderr) of each command RUN_MODULES ran."""
    parts = stderr.split("@@@ start\n")[1:]
    done = []
    for part in parts:
        text, _, status = part.rpartition("@@@ exit ")
        done.append((int(status.strip()), text))
    return done


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Stopped]:
    """Every run of RUNS from an empty folder, the extras hidden, an empty Hugging Face cache:
    one interpreter with HF_HUB_OFFLINE unset and one with it set (read at import), together."""
    root = tmp_path_factory.mktemp("no_extras")
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    hidden = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "IMAGENET_TAR", "PYTHONPATH", "HF_TOKEN")
    base = {k: v for k, v in os.environ.items() if k not in hidden}
    groups: dict[str, list[tuple[tuple[str, str], list]]] = {"": [], "1": []}
    for i, (key, env) in enumerate(RUNS.items()):
        (root / f"work{i}").mkdir()
        module, args = COMMANDS[key[0]]
        extra = {k: v for k, v in env.items() if k != "HF_HUB_OFFLINE"}
        groups[env.get("HF_HUB_OFFLINE", "")].append(
            (key, [str(root / f"work{i}"), extra, module, args])
        )
    start, procs = time.monotonic(), {}
    for offline, runs in groups.items():
        env = {**base, "PYTHONPATH": str(root / "site"), "HF_HOME": str(root / f"hf{offline}")}
        env.update({"HF_HUB_OFFLINE": offline} if offline else {})
        command = [sys.executable, "-c", RUN_MODULES, json.dumps([run for _, run in runs])]
        procs[offline] = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
    done = {}
    for offline, runs in groups.items():
        _, err = procs[offline].communicate(timeout=180)
        assert procs[offline].returncode == 0 and len(_split(err)) == len(runs), err
        for (key, run), (status, text) in zip(runs, _split(err), strict=True):
            done[key] = Stopped(status, text, (Path(run[0]) / "runs").exists())
    seconds = time.monotonic() - start
    assert seconds < 90, f"{len(RUNS)} commands took {seconds:.0f} s: work was done"
    return done


def one_line_stop(run: Stopped) -> str:
    """The one `error:` line of a run that exited 2 without a traceback or a run directory."""
    assert "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.stderr
    assert run.returncode == 2, run.stderr
    assert not run.wrote_runs, "a run directory was written before the stop"
    return errors[0]


@pytest.mark.parametrize(("name", "env"), [k for k in RUNS if k[1] != "IMAGENET_TAR"])
def test_original_command_without_extras(stopped, name: str, env: str):
    """No network, HF_HUB_OFFLINE unset or set: one line naming the package and its install
    command."""
    module, _ = COMMANDS[name]
    assert one_line_stop(stopped[name, env]) == f"error: {MISSING[module]}"


def test_imagenet_tar_refused_without_extras(stopped):
    """IMAGENET_TAR exported as the original README asks: refused in one line naming the
    source that replaces it (before the missing package is mentioned)."""
    archive = RUNS["debug", "IMAGENET_TAR"]["IMAGENET_TAR"]
    error = one_line_stop(stopped["debug", "IMAGENET_TAR"])
    assert error.startswith(
        "error: datasets.image.train[0] (huggingface imagenet-1k): "
        f"IMAGENET_TAR={archive} is not read"
    )
    example = "'datasets.image.train=[{type: image_folder, path: DIR/ILSVRC/Data/CLS-LOC/train}]'"
    assert example in error


def _entry(**fields: object) -> object:
    return from_fields(SourceConfig, {"type": "huggingface", **fields})


def test_imagenet_tar_only_for_imagenet_hub_entries(monkeypatch, tmp_path: Path):
    """IMAGENET_TAR stops only a Hub ImageNet entry; other entries do not read it."""
    import datasets.config as dconfig
    from huggingface_hub import constants

    monkeypatch.setattr(dconfig, "HF_HUB_OFFLINE", True)  # no Hub call from this test
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("IMAGENET_TAR", str(tmp_path))
    for key in ("imagenet-1k", "ILSVRC/imagenet-1k"):
        with pytest.raises(ConfigError, match=f"IMAGENET_TAR=.* is not read .*retired {key}"):
            check(_entry(key=key, subset="default"))
    saved = tmp_path / "imagenet_saved"
    saved.mkdir()
    check(_entry(path=str(saved)))  # a save_to_disk copy: IMAGENET_TAR is not its business
    with pytest.raises(ConfigError, match="not in the local cache") as caught:
        check(_entry(key="wikitext", subset="wikitext-103-raw-v1", cache_dir=str(tmp_path)))
    assert "IMAGENET_TAR" not in str(caught.value)

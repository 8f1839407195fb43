"""A run directory on an fsspec URL (`memory://` here, in-process; s3:// and gs:// are the same
code with their packages): every file a run writes lands there, the result equals a local run's,
and a run resumes from a checkpoint at a URL into the same directory."""

from __future__ import annotations

import json

import fsspec
import pytest
import torch

from flava.checkpoints import from_pretrained
from flava.checkpoints.run_dir import RunDir, fetch
from flava.config import ConfigError, RunConfig, load_config, validate
from flava.model import FlavaForPreTraining
from flava.train import main

from .test_train import SMALL

pytestmark = pytest.mark.slow


@pytest.fixture
def memory():
    fs = fsspec.filesystem("memory")
    yield fs
    fs.rm("/", recursive=True) if fs.ls("/") else None


def _weights(location: str) -> dict[str, torch.Tensor]:
    return from_pretrained(FlavaForPreTraining, fetch(location)).state_dict()


def test_pretraining_into_a_url_equals_a_local_run_and_resumes_there(memory, tmp_path):
    url = "memory://runs/pretrain"
    steps = ["training.lightning.max_steps=3"]
    assert main([*SMALL, f"training.run_dir={url}", *steps]) == 0
    files = {p.removeprefix("/runs/pretrain/") for p in memory.find("/runs/pretrain")}
    for name in (
        "config.yaml",
        "metrics.json",
        "curves.png",
        "logs/metrics.csv",
        "checkpoints/last.ckpt",
        "model/config.json",
        "model/model.safetensors",
        "model/kmeans_codebook.safetensors",
    ):
        assert name in files, name
    assert any(f.startswith("logs/tensorboard/events.") for f in files)
    metrics = json.loads(memory.cat("/runs/pretrain/metrics.json"))
    assert metrics["steps"] == 3 and metrics["checkpoint"] == f"{url}/model"

    local = tmp_path / "local"
    assert main([*SMALL, f"training.run_dir={local}", *steps]) == 0
    remote, here = _weights(f"{url}/model"), _weights(str(local / "model"))
    assert all(torch.equal(remote[k], here[k]) for k in here)

    last = f"{url}/checkpoints/last.ckpt"
    more = ["training.lightning.max_steps=4", f"training.lightning_load_from_checkpoint={last}"]
    assert main([*SMALL, f"training.run_dir={url}", *more]) == 0
    assert json.loads(memory.cat("/runs/pretrain/metrics.json"))["steps"] == 4
    assert memory.exists("/runs/pretrain/logs/metrics.before-0.csv")  # the first part's rows


def test_finetuning_into_a_url(memory):
    from flava.finetune import main as finetune
    from flava.tasks.finetuning import load_finetuned

    from ..tasks.test_finetune_run import SMALL as FINETUNE

    url = "memory://runs/finetune"
    argv = ["config=finetuning/embedded_image.yaml", *FINETUNE, f"training.run_dir={url}"]
    assert finetune([*argv, "training.lightning.max_steps=2"]) == 0
    metrics = json.loads(memory.cat("/runs/finetune/metrics.json"))
    assert metrics["model"] == f"{url}/model" and metrics["best_checkpoint"].startswith(url)
    model, info = load_finetuned(fetch(f"{url}/model"))
    assert len(info["class_names"]) == 7


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["training.run_dir=nope://bucket/run"], "fsspec knows no protocol 'nope'"),
        (
            ["training.run_dir=memory://run", "training.lightning.strategy=fsdp"],
            "strategy fsdp writes its sharded checkpoints to a local folder",
        ),
        (
            ["training.run_dir=memory://run", "training.loggers=[csv,mlflow]"],
            "set training.mlflow_tracking_uri",
        ),
    ],
)
def test_what_a_url_cannot_hold_fails_in_one_line(argv, needle, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match=needle) as info:
        load_config(argv, RunConfig, validate)
    assert "\n" not in str(info.value)


def test_a_filesystem_without_its_package_names_it():
    pytest.importorskip("fsspec")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="s3fs") as info:
            load_config(["training.run_dir=s3://bucket/run"], RunConfig, validate)
        assert "\n" not in str(info.value)
    else:  # with the package installed, the same URL passes the checks
        load_config(["training.run_dir=s3://bucket/run"], RunConfig, validate)


def test_run_dir_files_local_and_remote(tmp_path, memory):
    for location in (str(tmp_path / "run"), "memory://runs/files", f"file://{tmp_path}/f"):
        run = RunDir(location)
        run.create()
        run.write_text("logs/metrics.csv", "step\n1\n")
        run.move("logs/metrics.csv", "logs/metrics.before-0.csv")
        assert run.glob("logs/metrics.before-*.csv") == ["logs/metrics.before-0.csv"]
        folder = run.local("model")
        (folder / "config.json").write_text("{}")
        assert run.publish(folder, "model") == run.url("model")
        run.publish(folder, "model")  # again: the same files, not model/model/
        assert run.exists("model/config.json") and not run.exists("model/model")
        assert run.read_text("model/config.json") == "{}"
    # file:// is a local folder for Lightning too (as a URL it wrote <cwd>/file:/...)
    assert RunDir(f"file://{tmp_path}/f").url("checkpoints") == str(tmp_path / "f" / "checkpoints")


def test_commands_that_write_locally_refuse_a_url():
    from flava.config import RetrievalRunConfig, validate_retrieval

    with pytest.raises(ConfigError, match="this command writes to a local folder") as info:
        load_config(["run.run_dir=s3://bucket/eval"], RetrievalRunConfig, validate_retrieval)
    assert "\n" not in str(info.value)

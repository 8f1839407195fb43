"""training.loggers: csv with tensorboard, wandb (offline) and mlflow (local store), checked
before any work; no network."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest

from flava.checkpoints.run_dir import RunDir
from flava.config import ConfigError, RunConfig, load_config, validate
from flava.train import main
from flava.training.run import _loggers

from .test_train import SMALL

TWO_STEPS = [
    *SMALL,
    "training.lightning.max_steps=2",
    "training.lightning_checkpoint.every_n_train_steps=null",
    "training.evaluation.enabled=false",
]


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """wandb in offline mode, its settings and caches under tmp_path; torn down after."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb_home"))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    yield wandb
    wandb.teardown()


def test_default_is_csv_and_tensorboard(tmp_path):
    cfg = load_config([f"training.run_dir={tmp_path}"], RunConfig, validate)
    assert [str(name) for name in cfg.training.loggers] == ["csv", "tensorboard"]
    kinds = [type(logger).__name__ for logger in _loggers(RunDir(tmp_path), cfg.training)]
    assert kinds == ["CSVLogger", "TensorBoardLogger"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["training.loggers=[wandb]"], "must include csv"),
        (["training.loggers=[csv,tensorboard,csv]"], "must name each logger once"),
        (["training.loggers=[csv,comet]"], "must be one of csv, tensorboard, wandb, mlflow"),
    ],
)
def test_bad_logger_settings_fail_in_one_line(argv, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        load_config(argv, RunConfig, validate)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("package", ["wandb", "mlflow"])
def test_a_missing_package_stops_before_any_work(package, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, package, None)  # `import wandb` fails as if not installed
    run_dir = tmp_path / "run"
    argv = [*TWO_STEPS, f"training.run_dir={run_dir}", f"training.loggers=[csv,{package}]"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: training.loggers=['csv', '{package}'] is invalid: {package} is not installed; "
        f"pip install 'flava[{package}]', or leave {package} out"
    )
    assert not run_dir.exists()  # stopped before the run directory, model or data


@pytest.mark.slow
def test_wandb_offline_run_holds_the_logged_metrics(tmp_path, offline_wandb):
    run_dir = tmp_path / "run"
    argv = [*TWO_STEPS, f"training.run_dir={run_dir}", "training.loggers=[csv,wandb]"]
    assert main(argv) == 0
    assert offline_wandb.run is not None and offline_wandb.run.name == "run"
    assert offline_wandb.run.project == "flava"
    offline_wandb.teardown()  # what the process's exit does: finish, wait for the files
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (records,) = offline.glob("run-*.wandb")
    data = records.read_bytes()
    assert b"train/loss" in data and b"trainer/global_step" in data
    assert (run_dir / "logs" / "metrics.csv").exists() and (run_dir / "metrics.json").exists()
    assert not (run_dir / "logs" / "tensorboard").exists()  # only the loggers asked for


def test_each_command_gets_its_own_wandb_run(tmp_path, offline_wandb):
    cfg = load_config(["training.loggers=[csv,wandb]"], RunConfig, validate)
    first = offline_wandb.init(mode="offline", dir=str(tmp_path), project="earlier")
    _loggers(RunDir(tmp_path / "next"), cfg.training)
    assert offline_wandb.run is None and first.id  # the earlier command's run was finished


def test_only_rank_zero_opens_the_mlflow_store(tmp_path, monkeypatch):
    from lightning.pytorch.utilities import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    cfg = load_config(["training.loggers=[csv,mlflow]"], RunConfig)
    kinds = [type(logger).__name__ for logger in _loggers(RunDir(tmp_path), cfg.training)]
    assert kinds == ["CSVLogger"] and not (tmp_path / "mlflow.db").exists()


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow not installed")
def test_mlflow_local_database_needs_sqlalchemy_and_a_server_does_not(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # mlflow-skinny alone
    with pytest.raises(ConfigError) as info:
        load_config(["training.loggers=[csv,mlflow]"], RunConfig, validate)
    assert str(info.value) == (
        "training.loggers=['csv', 'mlflow'] is invalid: mlflow needs sqlalchemy; "
        "pip install 'flava[mlflow]', or leave mlflow out"
    )
    server = "training.mlflow_tracking_uri=http://127.0.0.1:5000"
    load_config(["training.loggers=[csv,mlflow]", server], RunConfig, validate)


@pytest.mark.slow
def test_mlflow_writes_a_local_run_with_its_metrics(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")  # mlflow's local database store
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    argv = [*TWO_STEPS, f"training.run_dir={run_dir}", "training.loggers=[csv,mlflow]"]
    assert main(argv) == 0
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("flava")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run"
    assert math.isfinite(run.data.metrics["train/loss"])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == sorted(steps) and len(steps) >= 2

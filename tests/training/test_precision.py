"""Precision that fits the hardware: bf16 / fp16 on a CPU without native units stop before any
work in one line (exit 2) unless forced; `auto` resolves per device and is recorded."""

from __future__ import annotations

import time

import pytest
from omegaconf import OmegaConf

from flava import finetune, train
from flava.checkpoints.io import read_checkpoint
from flava.config import ConfigError, LightningConfig, RunConfig
from flava.config.loader import from_fields
from flava.training import precision as P

PRETRAIN = [
    "config=pretraining/demo.yaml",
    "training.lightning.accelerator=cpu",
    "training.batch_size=4",
    "training.num_workers=0",
    "training.warmup_steps=1",
    "training.lightning.max_steps=1",
    "training.lightning.limit_val_batches=1",
    "training.lightning.enable_progress_bar=false",
    "training.lightning_checkpoint.every_n_train_steps=null",
    "training.evaluation.enabled=false",
    "model.kmeans_codes=16",
    "model.kmeans_images=16",
    "datasets.vl.val=[{type: embedded, size: 16}]",
    "datasets.image.val=[{type: embedded, size: 16}]",
    "datasets.text.val=[{type: embedded, size: 16}]",
    "datasets.sampling=round_robin",
]
FINETUNE = [
    "config=finetuning/embedded_image.yaml",
    "training.lightning.accelerator=cpu",
    "training.batch_size=4",
    "training.num_workers=0",
    "training.warmup_steps=1",
    "training.lightning.max_steps=1",
    "training.lightning.enable_progress_bar=false",
    "training.lightning_checkpoint.save_top_k=0",
    "data.train.size=8",
    "data.val=[{name: val, size: 4}]",
]
HALF = ["bf16-mixed", "bf16-true", "bf16", "16-mixed", "16-true", "16"]


@pytest.fixture
def avx2(monkeypatch):
    """A CPU without native bf16 / fp16, whatever this machine has."""
    monkeypatch.setattr(P, "cpu_features", lambda: ("AVX2", frozenset()))


def _lc(precision: str, **extra: object):
    return from_fields(LightningConfig, {"precision": precision, "accelerator": "cpu", **extra})


def _fail_on_work(monkeypatch):
    """Building a model or reading data would fail the test."""

    def work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the precision check")

    monkeypatch.setattr("flava.training.data.check_sources", work)
    monkeypatch.setattr("flava.finetune.build_datasets", work)


@pytest.mark.parametrize("value", HALF)
def test_half_precision_on_a_cpu_without_it_is_refused(avx2, value):
    with pytest.raises(ConfigError) as info:
        P.check_precision(_lc(value))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"training.lightning.precision={value}:")
    kind = "bf16" if value.startswith("bf16") else "fp16"
    assert f"AVX2, no native {kind}" in message and "force_precision=true" in message
    assert P.check_precision(_lc(value, force_precision=True)) == value


@pytest.mark.parametrize(("native", "auto"), [(frozenset(), "32"), ({"bf16"}, "bf16-mixed")])
def test_auto_on_cpu(monkeypatch, native, auto):
    monkeypatch.setattr(P, "cpu_features", lambda: ("AVX512", frozenset(native)))
    assert P.check_precision(_lc("auto")) == auto
    assert P.check_precision(_lc("32")) == "32" and P.lightning_precision(_lc("32")) == "32-true"
    if native:
        assert P.check_precision(_lc("bf16")) == "bf16"
        assert P.lightning_precision(_lc("bf16")) == "bf16-mixed"


@pytest.mark.parametrize(
    ("device", "flags", "precision", "steps", "compiled"),
    [
        ("cpu", {"avx512_bf16", "amx_bf16"}, "bf16-mixed", 1000, True),  # AMX: measured faster
        ("cpu", {"avx512_bf16", "amx_bf16"}, "bf16-mixed", -1, True),  # no step limit
        ("cpu", {"avx512_bf16", "amx_bf16"}, "bf16-mixed", 100, False),  # too short to pay
        ("cpu", {"avx512_bf16"}, "bf16-mixed", 1000, True),  # Zen 4: measured faster
        ("cpu", {"avx512_bf16"}, "bf16-mixed", 499, False),
        ("cpu", {"bf16", "asimd"}, "bf16-mixed", 1000, False),  # Arm BF16: not measured
        ("cpu", {"avx512_bf16", "amx_bf16"}, "32", 1000, False),  # fp32 on CPU: eager
        ("cpu", set(), "bf16-mixed", 1000, False),  # forced bf16 without native units
        ("cuda", set(), "16-mixed", 1000, True),
        ("cuda", set(), "32", 1000, False),
        ("mps", set(), "bf16-mixed", 1000, False),
    ],
)
def test_compile_auto_by_device_precision_and_length(
    monkeypatch, caplog, device, flags, precision, steps, compiled
):
    monkeypatch.setattr(P, "_cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(P, "target_device", lambda lc: device)
    chosen, why = P.compile_choice(precision, device, steps)
    assert chosen is compiled and why
    lightning = {"precision": precision, "max_steps": steps}
    cfg = from_fields(RunConfig, {"training": {"compile": "auto", "lightning": lightning}})
    with caplog.at_level("INFO", logger="flava"):
        assert P.resolve_compile(cfg).training.compile is compiled
    assert f"training.compile=auto: {str(compiled).lower()} ({why})" in caplog.text
    for given in (True, False):  # as given: kept
        cfg.training.compile = given
        assert P.resolve_compile(cfg).training.compile is given


@pytest.mark.parametrize(("bf16", "auto"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_and_bf16_on_gpus(monkeypatch, bf16, auto):
    monkeypatch.setattr(P, "target_device", lambda lc: "cuda")
    monkeypatch.setattr(P, "cuda_features", lambda strategy: ("Some GPU", bf16))
    assert P.check_precision(_lc("auto")) == auto
    assert P.check_precision(_lc("16-mixed")) == "16-mixed"
    if bf16:
        assert P.check_precision(_lc("bf16-mixed")) == "bf16-mixed"
    else:
        with pytest.raises(ConfigError, match=r"this GPU \(Some GPU\) has no native bf16"):
            P.check_precision(_lc("bf16-mixed"))


def test_the_config_check_and_its_message_use_one_list(capsys):
    assert train.main(["config=pretraining/demo.yaml", "training.lightning.precision=fp8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ", ".join(P.PRECISIONS) in err


@pytest.mark.parametrize(
    ("main", "argv"), [(train.main, PRETRAIN), (finetune.main, FINETUNE)], ids=["train", "finetune"]
)
@pytest.mark.parametrize("value", ["bf16-mixed", "16-mixed"])
def test_commands_stop_before_any_work(avx2, monkeypatch, tmp_path, capsys, main, argv, value):
    _fail_on_work(monkeypatch)
    run_dir = tmp_path / "run"
    start = time.perf_counter()
    assert (
        main([*argv, f"training.run_dir={run_dir}", f"training.lightning.precision={value}"]) == 2
    )
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: training.lightning.precision=")
    assert "AVX2" in err and not run_dir.exists()


@pytest.mark.parametrize(
    ("main", "argv"), [(train.main, PRETRAIN), (finetune.main, FINETUNE)], ids=["train", "finetune"]
)
def test_forced_precision_passes_the_check(avx2, monkeypatch, tmp_path, capsys, main, argv):
    def reached(*args: object, **kwargs: object) -> None:
        raise ConfigError("past the precision check")

    monkeypatch.setattr("flava.training.data.check_sources", reached)
    monkeypatch.setattr("flava.finetune.build_datasets", reached)
    forced = ["training.lightning.precision=bf16-mixed", "training.lightning.force_precision=true"]
    assert main([*argv, f"training.run_dir={tmp_path / 'run'}", *forced]) == 2
    assert capsys.readouterr().err.strip() == "error: past the precision check"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("main", "argv"), [(train.main, PRETRAIN), (finetune.main, FINETUNE)], ids=["train", "finetune"]
)
def test_auto_resolves_to_32_and_is_recorded(avx2, tmp_path, main, argv):
    run_dir = tmp_path / "run"
    assert main([*argv, f"training.run_dir={run_dir}", "training.lightning.precision=auto"]) == 0
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.training.lightning.precision == "32"
    if main is train.main:  # training.compile=auto resolved and recorded: a 1-step fp32 run
        assert saved.training.compile is False
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):  # what we write loads weights_only
        assert read_checkpoint(ckpt)["global_step"] == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("main", "argv"), [(train.main, PRETRAIN), (finetune.main, FINETUNE)], ids=["train", "finetune"]
)
def test_bf16_mixed_clips_gradients_with_the_fused_adamw(tmp_path, main, argv):
    # Lightning's mixed-precision plugin refuses to clip for any fused optimizer ("does not allow
    # for gradient clipping"): every bf16-mixed run with the default gradient_clip_val=1 stopped
    forced = ["training.lightning.precision=bf16-mixed", "training.lightning.force_precision=true"]
    clip = "training.lightning.gradient_clip_val=1e-6"  # clips every step
    assert main([*argv, f"training.run_dir={tmp_path / 'run'}", *forced, clip]) == 0

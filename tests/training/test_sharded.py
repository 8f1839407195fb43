"""`strategy: fsdp` (FSDP2 through Lightning) on CPU with gloo: the same training as DDP and as one
process on the same global batches; sharded checkpoints that survive SIGKILL and resume with the
same or another process count and strategy; consolidation; the shipped scale configs start;
`training.compile` under DDP and FSDP2 follows eager."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from flava.checkpoints import from_pretrained
from flava.config import RunConfig, load_config, validate
from flava.model import FlavaForPreTraining
from flava.train import main

from .launch import run_plan, torchrun
from .run_plan import sgd
from .test_train import SMALL

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
STEPS = 6
BATCH = 4  # per process of two; one process takes 2 * BATCH: the same global batches
FAST = [
    *SMALL,
    "training.evaluation.enabled=false",
    "model.losses.itm_negative_probability=0",  # ITM negatives come from the local batch
    # two validation batches (16 pairs at a global 8): one would hide a split of them by rank
    "training.lightning.limit_val_batches=2",
    # the rate the weight tolerances below were measured at (the demo's own is 2e-3): AdamW's
    # reduction-order differences grow with it; the image encoder keeps its 0.25 multiplier
    "training.learning_rate=1e-3",
    f"training.lightning.max_steps={STEPS}",
    "training.lightning_checkpoint.every_n_train_steps=null",  # last.ckpt at the end
]
# SIGKILL right after the first last.ckpt (step 3) is complete, in every process.
_KILL_AFTER_FIRST = r"""
import os, signal, sys
from flava.training.sharding import ShardedStrategy
from flava.train import main

real = ShardedStrategy.save_checkpoint

def save(self, checkpoint, filepath, *args, **kwargs):
    real(self, checkpoint, filepath, *args, **kwargs)
    if os.path.basename(str(filepath)) == "last.ckpt":
        os.kill(os.getpid(), signal.SIGKILL)

ShardedStrategy.save_checkpoint = save
sys.exit(main(sys.argv[1:]))
"""


def _args(nproc: int, run: Path, *extra: str) -> list[str]:
    """flava.train's arguments of a FAST run in `run` on `nproc` processes."""
    batch = f"training.batch_size={BATCH}"
    return [*FAST, f"training.run_dir={run}", batch, f"training.lightning.devices={nproc}", *extra]


def _torchrun(
    nproc: int, run: Path, *extra: str, script: str | None = None, check: bool = True
) -> None:
    """FAST training in `run`, by flava.train or by `script`; `check`: it must exit 0."""
    target = ["-m", "flava.train"] if script is None else [script]
    torchrun(nproc, *target, *_args(nproc, run, *extra), check=check)


def _losses(run: Path) -> dict[int, dict[str, float]]:
    """Logged training losses per step (the mean over processes: the global batch's)."""
    out: dict[int, dict[str, float]] = {}
    with (run / "logs" / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                values = {k: float(v) for k, v in row.items() if k.startswith("train/") and v}
                out[int(row["step"])] = values
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return from_pretrained(FlavaForPreTraining, path).state_dict()


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _assert_same_losses(a: Path, b: Path, steps: range, tol: float = 1e-5) -> None:
    la, lb = _losses(a), _losses(b)
    for step in steps:
        shared = la[step].keys() & lb[step].keys()
        assert {"train/loss"} <= shared
        for key in shared:
            assert la[step][key] == pytest.approx(lb[step][key], abs=tol), (step, key)


FSDP = "training.lightning.strategy=fsdp"
COMPILED = "training.compile=true"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Every run of this file that needs several processes, in three launches (a launch costs
    10-15 s before its first step): an FSDP run SIGKILLed after its first checkpoint; a
    one-process FSDP run; then, in one launch, the eager FSDP run the others are compared with,
    a compiled DDP run, DDP's checkpoint resumed under FSDP, FSDP under plain SGD, the killed
    run resumed, the one-process checkpoint resumed by two compiled processes, and each
    shipped scale config shrunk to the tiny preset."""
    out = tmp_path_factory.mktemp("sharded")
    every_3 = "training.lightning_checkpoint.every_n_train_steps=3"  # killed after the first
    _torchrun(2, out / "killed", FSDP, every_3, script=_kill_script(out), check=False)
    one = ["training.lightning.max_steps=3", f"training.batch_size={2 * BATCH}"]
    _torchrun(1, out / "one_fsdp", FSDP, *one)
    plan = [
        {"args": _args(2, out / "fsdp", FSDP)},
        {"args": _args(2, out / "ddp", "training.lightning.strategy=ddp", COMPILED)},
        {"args": _args(2, out / "ddp_to_fsdp", FSDP, *_from(out / "ddp", STEPS + 1))},
        {"args": _args(2, out / "sgd", FSDP), "sgd": True},
        {"args": _args(2, out / "resumed", FSDP, *_from(out / "killed"))},
        {"args": _args(2, out / "two", FSDP, *_from(out / "one_fsdp"), COMPILED)},
        *({"args": _scale_args(name, out)} for name in SCALE_CONFIGS),
    ]
    run_plan(2, plan, out / "plan")
    return out


def _from(run: Path, steps: int = STEPS) -> list[str]:
    """Resume `run`'s last checkpoint and train to `steps`."""
    last = run / "checkpoints" / "last.ckpt"
    load = f"training.lightning_load_from_checkpoint={last}"
    return [f"training.lightning.max_steps={steps}", load]


def test_fsdp_trains_as_ddp_and_as_one_process(runs, tmp_path):
    fsdp_run, ddp = runs / "fsdp", runs / "ddp"  # ddp compiled, against eager FSDP
    assert json.loads((fsdp_run / "metrics.json").read_text())["steps"] == STEPS
    one = tmp_path / "one"
    args = [*FAST, f"training.run_dir={one}", f"training.batch_size={2 * BATCH}"]
    assert main(args) == 0
    for other in (ddp, one):
        _assert_same_losses(fsdp_run, other, range(STEPS))
    # validation before training (the same weights everywhere) covers the same samples: under
    # a DistributedSampler each process saw only every second of its validation batches
    before = [json.loads((r / "metrics.json").read_text()) for r in (fsdp_run, ddp, one)]
    for key in ("contrastive", "mim", "mlm", "mmm_image", "mmm_text"):
        values = [m[f"before/val/{key}"] for m in before]
        assert values == pytest.approx([values[2]] * 3, abs=1e-5), key
    fsdp, ddp_weights = _weights(fsdp_run / "model"), _weights(ddp / "model")
    # AdamW divides by sqrt(v): reduction-order differences of near-zero gradients grow to
    # ~5e-5 in six steps (measured); the losses above hold to 1e-5
    assert _max_difference(fsdp, ddp_weights) < 1e-4
    assert _max_difference(fsdp, _weights(one / "model")) < 1e-4
    # DDP's single-file checkpoint resumed under fsdp (optimizer state re-keyed by name)
    assert json.loads((runs / "ddp_to_fsdp" / "metrics.json").read_text())["steps"] == STEPS + 1


def test_fsdp_weights_equal_one_process_under_sgd(runs, tmp_path, monkeypatch):
    """The AdamW weights above agree to 1e-4; with plain SGD the same runs agree to 1e-5."""
    import flava.training.module as module

    fsdp = runs / "sgd"
    assert json.loads((fsdp / "metrics.json").read_text())["steps"] == STEPS
    monkeypatch.setattr(module, "adamw_with_schedule", sgd)
    one = tmp_path / "one"
    assert main([*FAST, f"training.run_dir={one}", f"training.batch_size={2 * BATCH}"]) == 0
    _assert_same_losses(fsdp, one, range(STEPS))
    assert _max_difference(_weights(fsdp / "model"), _weights(one / "model")) < 1e-5


def test_sigkilled_fsdp_run_resumes_with_two_or_one_process(runs, tmp_path):
    run = runs / "killed"
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_dir() and not (run / "model").exists()  # killed mid-run
    assert sorted(p.name for p in last.iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "meta.pt",
    ]
    assert torch.load(last / "meta.pt", weights_only=True)["global_step"] == 3
    assert not list(run.glob("checkpoints/*.partial"))
    resumed, fsdp_run = runs / "resumed", runs / "fsdp"  # resumed by two processes
    assert _max_difference(_weights(resumed / "model"), _weights(fsdp_run / "model")) < 1e-6
    one = tmp_path / "one"  # the same checkpoint, one process, the same global batch size
    args = [
        *FAST,
        f"training.run_dir={one}",
        f"training.batch_size={2 * BATCH}",
        f"training.lightning_load_from_checkpoint={last}",
    ]
    assert main(args) == 0
    _assert_same_losses(fsdp_run, one, range(3, STEPS))
    # consolidation: one file DDP resumes from, and save_pretrained weights
    from flava.convert import main as convert

    single = tmp_path / "consolidated.ckpt"
    assert convert([str(last), str(single)]) == 0
    checkpoint = torch.load(single, weights_only=True)
    assert checkpoint["global_step"] == 3 and checkpoint["PretrainingData"]["start_batch"] == 3
    assert "kmeans.centroids" in checkpoint["state_dict"]
    state = checkpoint["optimizer_states"][0]
    assert sorted(i for g in state["param_groups"] for i in g["params"]) == list(
        range(sum(len(g["params"]) for g in state["param_groups"]))
    )
    weights_dir = tmp_path / "weights"
    assert convert([str(last), str(weights_dir), "--to", "flava"]) == 0
    model = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    loaded = _weights(weights_dir)
    assert all(torch.equal(loaded[k], model[k]) for k in loaded)
    assert (weights_dir / "kmeans_codebook.safetensors").exists()


def _kill_script(folder: Path) -> str:
    path = folder / "kill_after_first.py"
    path.write_text(_KILL_AFTER_FIRST)
    return str(path)


SCALE_CONFIGS = [
    "pretraining/pmd.yaml",
    "pretraining/scaling_900m.yaml",
    "pretraining/scaling_1.8b.yaml",
    "pretraining/scaling_2.7b.yaml",
    "pretraining/scaling_4.8b.yaml",
    "pretraining/scaling_10b.yaml",
]
TINY_OVERRIDE = [
    "model.preset=tiny",
    "model.pretrained_model_key=null",
    "model.codebook=null",
    "model.mim_target=kmeans",
    "model.kmeans_codes=16",
    "model.kmeans_images=16",
    "model.init_from=[]",  # the shipped configs' pretrained encoders are not at hand here
    "datasets.text.text_max_length=null",  # tiny has 128 text positions, not 512
    "training.batch_size=2",
    "training.num_workers=0",
    "training.lightning.max_steps=2",
    "training.lightning.accelerator=cpu",
    "training.lightning.precision=32",
    "training.lightning.num_nodes=1",
    "training.lightning.limit_val_batches=1",
    "training.lightning.enable_progress_bar=false",
    "training.evaluation.enabled=false",
    "datasets.vl.train=[{type: embedded, size: 32}]",
    "datasets.image.train=[{type: embedded, size: 32}]",
    "datasets.text.train=[{type: embedded, size: 32}]",
    "datasets.vl.val=[{type: embedded, size: 8}]",
    "datasets.image.val=[{type: embedded, size: 8}]",
    "datasets.text.val=[{type: embedded, size: 8}]",
]


def _scale_args(name: str, out: Path) -> list[str]:
    """A shipped scale config shrunk to the tiny preset on embedded data, sharded on two
    processes (scaling_900m selects ddp; every one runs sharded here)."""
    return [
        f"config={name}",
        f"training.run_dir={out / name.replace('/', '_')}",
        *TINY_OVERRIDE,
        "training.lightning.devices=2",
        FSDP,
        "model.activation_checkpointing=true",  # composed with sharding
    ]


@pytest.mark.parametrize("name", SCALE_CONFIGS)
def test_shipped_scale_configs_validate(name):
    cfg = load_config([f"config={name}"], RunConfig, validate)
    assert cfg.training.lightning.strategy in ("fsdp", "ddp")


def test_one_process_sharded_checkpoint_resumes_with_two(runs):
    last = runs / "one_fsdp" / "checkpoints" / "last.ckpt"
    assert (last / "__0_0.distcp").exists() and not (last / "__1_0.distcp").exists()
    two, fsdp_run = runs / "two", runs / "fsdp"  # compiled: training.compile under FSDP2
    _assert_same_losses(fsdp_run, two, range(3, STEPS))
    assert _max_difference(_weights(two / "model"), _weights(fsdp_run / "model")) < 1e-4


def test_shipped_scale_configs_start_and_finish_under_fsdp(runs):
    for name in SCALE_CONFIGS:
        metrics = json.loads((runs / name.replace("/", "_") / "metrics.json").read_text())
        assert metrics["steps"] == 2


def test_mixed_precision_computes_in_half_and_reduces_in_fp32():
    from flava.training.sharding import mixed_precision

    policy = mixed_precision("bf16-mixed")
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert mixed_precision("16-mixed").param_dtype == torch.float16
    assert mixed_precision("32").param_dtype is None  # fp32 throughout

"""Resuming a run: the checkpoint checked before any work, and converted to the layout the
strategy reads."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from flava.checkpoints.run_dir import RunDir, fetch

if TYPE_CHECKING:
    from flava.training.module import FlavaPretrainingModule

log = logging.getLogger("flava")


def check_resume(path: str, key: str) -> str:
    """The checkpoint to resume from, checked before any work (one line, exit 2, when missing,
    incomplete or unsafe): a single file, or a sharded directory (or its `.old` copy, left
    when a crash came between swapping a new checkpoint in and removing the previous one). A
    remote one (an fsspec URL) is copied to this machine first; the local copy is returned."""
    from flava.checkpoints.io import read_checkpoint
    from flava.checkpoints.sharded import check_sharded, is_sharded_checkpoint

    path = fetch(path)

    old = Path(path + ".old")
    if not Path(path).exists() and is_sharded_checkpoint(old):
        log.warning("%s is missing; resuming from the previous checkpoint %s", path, old)
        path = str(old)
    if Path(path).is_dir():
        check_sharded(path, f"{key}={path}")
    else:
        read_checkpoint(path, key)
    return path


def check_group_layout(path: str, groups: list[tuple[dict, list]]) -> dict[str, Any] | None:
    """The single-file checkpoint at `path`, read safely, after checking that its optimizer
    holds this run's parameter `groups` (`optim.param_groups`, per `training.lr_multipliers`;
    one line, exit 2, when not: AdamW would refuse its state later, with a traceback). None for
    a sharded one."""
    from flava.checkpoints.io import CheckpointError, read_checkpoint
    from flava.checkpoints.sharded import is_sharded_checkpoint

    if is_sharded_checkpoint(path):
        return None
    key = "training.lightning_load_from_checkpoint"
    checkpoint = read_checkpoint(path, key)
    sizes = [len(named) for _, named in groups]
    for state in checkpoint.get("optimizer_states", []):
        saved = [len(group["params"]) for group in state.get("param_groups", [])]
        if saved != sizes:
            raise CheckpointError(
                f"{key}={path}: its optimizer has parameter groups of {saved} parameters, this "
                f"run's {sizes}; resume with the training.lr_multipliers and "
                "training.weight_decay_groups it was saved with (see config.yaml in its run "
                "directory)"
            )
    return checkpoint


def resume_for_strategy(
    path: str, strategy: str, module: FlavaPretrainingModule, run_dir: RunDir
) -> str:
    """`path` in the layout the strategy reads: a sharded checkpoint consolidated into one file
    for DDP / one process; a single file's optimizer state keyed by parameter name for `fsdp`
    (Lightning would otherwise key it by the order of named_parameters, not of the optimizer's
    groups). Conversions are written per process under `<run_dir>/.resume/` (a local folder: for
    a remote run directory, the run's scratch folder on this machine)."""
    from flava.checkpoints.sharded import write_consolidated
    from flava.training.optim import param_groups

    groups = param_groups(module.model.named_parameters(), module.cfg.training)
    checkpoint = check_group_layout(path, groups)
    sharded = checkpoint is None
    if sharded == (strategy == "fsdp"):
        return path
    out = run_dir.local(".resume") / f"rank{os.environ.get('RANK', '0')}.ckpt"
    if sharded:
        log.info("consolidating the sharded checkpoint %s for strategy %s", path, strategy)
        return str(write_consolidated(path, out))
    assert checkpoint is not None
    params = [(f"model.{name}", p) for _, named in groups for name, p in named]
    for state in checkpoint.get("optimizer_states", []):
        named = {params[i][0]: v for i, v in state["state"].items()}
        step = next((v["step"] for v in named.values() if "step" in v), torch.zeros(()))
        for name, p in params:  # no gradient yet: AdamW's fresh state, as it would create it
            named.setdefault(
                name,
                {
                    "step": torch.zeros_like(step),
                    "exp_avg": torch.zeros(p.shape),
                    "exp_avg_sq": torch.zeros(p.shape),
                },
            )
        state["state"] = named
        for group in state["param_groups"]:
            group["params"] = [params[i][0] for i in group["params"]]
    torch.save(checkpoint, out)
    return str(out)

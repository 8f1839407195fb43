"""Sharded (`torch.distributed.checkpoint`) training checkpoints, as `strategy: fsdp` writes them.

Layout of `<run_dir>/checkpoints/<name>.ckpt/` (a directory): one `__<rank>_0.distcp` shard file
per process holding its part of the weights (`state_dict`) and AdamW state (`optimizer_0`),
`.metadata` (DCP's index of every tensor's pieces) and `meta.pt` (everything else Lightning
keeps: step, loops, scheduler, RNG, data position, callbacks, counters), written by rank 0.

A sharded checkpoint resumes under `fsdp` with any number of processes (DCP re-shards on load).
For DDP or one process it is consolidated first, into the single-file layout DDP writes
(`consolidate`, also `python -m flava.convert CKPT_DIR OUT.ckpt`), which is then a normal
Lightning checkpoint; `python -m flava.convert CKPT_DIR OUT_DIR --to flava` writes
`save_pretrained` weights (safetensors) instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from flava.checkpoints.io import CheckpointError, safe_torch_load

META = "meta.pt"


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory written by `torch.distributed.checkpoint` with meta.pt."""
    p = Path(path)
    return p.is_dir() and (p / ".metadata").is_file()


def check_sharded(path: str | os.PathLike, what: str | None = None) -> dict[str, Any]:
    """meta.pt of a sharded checkpoint, read safely; one-line CheckpointError when incomplete."""
    p = Path(path)
    what = what or os.fspath(p)
    if not (p / ".metadata").is_file():
        raise CheckpointError(
            f"{what}: is a directory, but not a complete sharded checkpoint (no .metadata); "
            "give a checkpoint the run wrote, e.g. <run_dir>/checkpoints/last.ckpt"
        )
    if not (p / META).is_file():
        raise CheckpointError(f"{what}: sharded checkpoint without {META} (incomplete write?)")
    meta = safe_torch_load(p / META, f"{what}/{META}")
    if not isinstance(meta, dict) or "global_step" not in meta:
        raise CheckpointError(f"{what}/{META}: not a Lightning checkpoint's metadata")
    return meta


def _read_shards(path: Path) -> dict[str, Any]:
    """Every tensor of the DCP directory, assembled (no process group needed)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        whole = Path(tmp) / "whole.pt"
        dcp_to_torch_save(path, whole)
        return safe_torch_load(whole, os.fspath(path))


def _indexed_optimizer(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state keyed by parameter name (DCP) -> keyed by position, as
    `torch.optim.Optimizer.state_dict()` (and so DDP's checkpoint) holds it."""
    index: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        ids = []
        for name in group["params"]:
            index.setdefault(name, len(index))
            ids.append(index[name])
        groups.append({**group, "params": ids})
    per_param = {index[name]: values for name, values in state.get("state", {}).items()}
    return {"state": per_param, "param_groups": groups}


def consolidate(path: str | os.PathLike) -> dict[str, Any]:
    """A sharded checkpoint as one Lightning checkpoint dict in DDP's single-file layout."""
    p = Path(path)
    meta = check_sharded(p)
    shards = _read_shards(p)
    optimizers = sorted(k for k in shards if k.startswith("optimizer_"))
    checkpoint = dict(meta)
    checkpoint["state_dict"] = shards["state_dict"]
    checkpoint["optimizer_states"] = [_indexed_optimizer(shards[k]) for k in optimizers]
    return checkpoint


def write_consolidated(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """consolidate(path) written to the file `out` (atomically); returns `out`."""
    target = Path(out)
    if target.is_dir():
        raise CheckpointError(f"{target}: is a directory; give the consolidated file's path")
    target.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = consolidate(path)
    partial = target.with_name(target.name + ".partial")
    torch.save(checkpoint, partial)
    partial.replace(target)
    return target


def training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A pretraining checkpoint, sharded (directory) or single file, as one dict."""
    if is_sharded_checkpoint(path):
        return consolidate(path)
    from flava.checkpoints.io import read_checkpoint

    return read_checkpoint(path)


def model_from_training_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> Any:
    """The FlavaForPreTraining a pretraining checkpoint (read from `path`) holds; its model
    config is saved with it."""
    from flava.model.config import FlavaConfig
    from flava.model.flava import FlavaForPreTraining

    config = checkpoint.get("flava_model_config")
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path}: the checkpoint does not record its model config (written before this "
            "version); load it through a run (training.lightning_load_from_checkpoint) instead"
        )
    state = {
        k.removeprefix("model."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("model.")
    }
    has_codebook = any(k.startswith("codebook.") for k in state)
    model = FlavaForPreTraining(FlavaConfig.from_dict(config), codebook=has_codebook or None)
    model.load_state_dict(state, strict=True)
    return model

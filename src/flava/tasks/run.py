"""What the evaluation commands' runs share: the device, the weights, results and a table.

`zero_shot`, `retrieval` and `linear_probe` (their schemas: `flava.config.evaluate`) load
weights through from_pretrained or build a seeded preset, write config.yaml + metrics.json to
the run directory and print a two-column table. Under torchrun (WORLD_SIZE > 1) `processes`
joins the processes in one group, the embeddings are shared out (`flava.tasks.retrieval`) and
only rank 0 writes and prints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from flava.config import ConfigError, ModelConfig, make_directory, to_yaml
from flava.config.common import EvalCommandConfig
from flava.data.prompts import read_json_list as read_json_list  # the commands read it here
from flava.model.flava import FlavaModel

log = logging.getLogger("flava")


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"run.device={name!r} is invalid: use auto, cpu, cuda or cuda:N"
        ) from None


@contextlib.contextmanager
def processes(device: torch.device) -> Iterator[torch.device]:
    """Under torchrun (WORLD_SIZE > 1): one process group for the run (nccl on GPUs, else gloo)
    and cuda:LOCAL_RANK for a plain `cuda` device; otherwise `device` as it is."""
    import torch.distributed as dist

    joined = dist.is_available() and dist.is_initialized()  # e.g. by Lightning: kept as it is
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or joined:
        yield device
        return
    if device.type == "cuda":
        if str(device) == "cuda":  # no index given (torch's stubs type `index` as int)
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield device
        dist.barrier()  # no process leaves while another still talks to it
    finally:
        dist.destroy_process_group()


def is_rank_zero() -> bool:
    """Whether this process writes results: rank 0 of torch.distributed, or the only one."""
    from flava.tasks.retrieval import process_count_and_rank

    return process_count_and_rank()[1] == 0


def rank_zero_value(value: Any) -> Any:
    """Rank 0's `value` on every process (so that all take the same branch); `value` alone."""
    import torch.distributed as dist

    from flava.tasks.retrieval import process_count_and_rank

    if process_count_and_rank()[0] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def load_flava(mcfg: ModelConfig, seed: int = 0) -> FlavaModel:
    """FlavaModel from model.pretrained_model_key (any from_pretrained source) or a preset."""
    from flava.checkpoints.loading import from_pretrained
    from flava.model.presets import preset

    if mcfg.pretrained_model_key:
        return from_pretrained(FlavaModel, mcfg.pretrained_model_key)
    torch.manual_seed(seed)
    log.info(
        "no weights given: model.preset=%s with random initialisation "
        "(model.pretrained_model_key=flava_full reads the released weights)",
        mcfg.preset,
    )
    return FlavaModel(preset(mcfg.preset))


def model_tag(mcfg: ModelConfig, seed: int = 0) -> str:
    """What identifies the weights: the resolved path (with file times) or preset + seed."""
    key = mcfg.pretrained_model_key
    if not key:
        return f"preset:{mcfg.preset}:seed{seed}"
    path = Path(key).expanduser()
    if path.exists():
        stamps = (
            sorted(
                f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}"
                for p in path.iterdir()
                if p.is_file()
            )
            if path.is_dir()
            else [str(int(path.stat().st_mtime))]
        )
        return f"{path.resolve()}|{'|'.join(stamps)}"
    return f"key:{key}"


def check_skipped(cfg: EvalCommandConfig, metrics: dict[str, Any], skips: Any, read: int) -> None:
    """Write metrics.json and stop (DataError, exit 1) when too many samples were bad."""
    from flava.data.sources.errors import DataError
    from flava.data.sources.skips import skip_metrics, too_many_skipped

    limit = cfg.data.max_skipped_fraction
    reason = too_many_skipped(skips.counts, read, limit, "samples")
    if reason is not None:
        save_results(cfg.run.run_dir, cfg, {**metrics, **skip_metrics(skips.counts, read)})
        raise DataError(f"{reason}; fix the data or raise data.max_skipped_fraction")


def save_results(run_dir: str | Path, cfg: object, metrics: dict[str, Any]) -> Path:
    """config.yaml + metrics.json (sorted keys) in the run directory (rank 0 writes them)."""
    if not is_rank_zero():
        return Path(run_dir)
    out = make_directory(run_dir, "run.run_dir")
    (out / "config.yaml").write_text(to_yaml(cfg))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return out


def print_table(title: str, metrics: dict[str, Any]) -> str:
    """A two-column result table (numbers as percentages where they are fractions), printed
    by rank 0."""
    width = max([len(k) for k in metrics] + [30])
    lines = [f"\n{title}", f"{'metric':<{width}}  {'value':>10}"]
    for key, value in metrics.items():
        if isinstance(value, float):
            text = f"{value:10.4f}" if value == 0 or 1e-3 <= abs(value) < 1e5 else f"{value:10.3g}"
            lines.append(f"{key:<{width}}  {text}")
        elif isinstance(value, bool):
            lines.append(f"{key:<{width}}  {'yes' if value else 'no':>10}")
        elif isinstance(value, int):
            lines.append(f"{key:<{width}}  {value:10d}")
    text = "\n".join(lines)
    if is_rank_zero():
        print(text)
    return text

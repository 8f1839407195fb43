"""What the evaluation commands' runs share: the device, the weights, results and a table.

`zero_shot`, `retrieval` and `linear_probe` (their schemas: `flava.config.evaluate`) load
weights through from_pretrained or build a seeded preset, write config.yaml + metrics.json to
the run directory and print a two-column table.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from flava.config import ConfigError, make_directory, to_yaml

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


def load_flava(mcfg: Any, seed: int = 0) -> Any:
    """FlavaModel from model.pretrained_model_key (any from_pretrained source) or a preset."""
    from flava.model.flava import FlavaModel
    from flava.model.presets import preset

    if mcfg.pretrained_model_key:
        return FlavaModel.from_pretrained(mcfg.pretrained_model_key)
    torch.manual_seed(seed)
    log.info("no weights given: model.preset=%s with random initialisation", mcfg.preset)
    return FlavaModel(preset(mcfg.preset))


def model_tag(mcfg: Any, seed: int = 0) -> str:
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


def read_json_list(path: str, what: str) -> list[str]:
    """A JSON list of strings from a file; one-line ConfigError otherwise."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{what}: {p} not found")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what}: {p} is not valid JSON ({exc.msg})") from None
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise ConfigError(f"{what}: {p} must hold a JSON list of strings")
    return data


def check_skipped(cfg: DictConfig, metrics: dict[str, Any], skips: Any, read: int) -> None:
    """Write metrics.json and stop (DataError, exit 1) when too many samples were bad."""
    from flava.data.sources.base import DataError, skip_metrics, too_many_skipped

    limit = cfg.data.max_skipped_fraction
    reason = too_many_skipped(skips.counts, read, limit, "samples")
    if reason is not None:
        save_results(cfg.run.run_dir, cfg, {**metrics, **skip_metrics(skips.counts, read)})
        raise DataError(f"{reason}; fix the data or raise data.max_skipped_fraction")


def save_results(run_dir: str | Path, cfg: DictConfig, metrics: dict[str, Any]) -> Path:
    """config.yaml + metrics.json (sorted keys) in the run directory (no Lightning import)."""
    out = make_directory(run_dir, "run.run_dir")
    (out / "config.yaml").write_text(to_yaml(cfg))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return out


def print_table(title: str, metrics: dict[str, Any]) -> str:
    """A two-column result table (numbers as percentages where they are fractions)."""
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
    print(text)
    return text

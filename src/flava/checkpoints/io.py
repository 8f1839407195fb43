"""Reading and writing weight files safely: safetensors, or torch.load(weights_only=True)."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    """A checkpoint could not be read; the message is one line naming the file and the fix."""


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def read_json(path: Path) -> dict[str, Any]:
    """Load a JSON file with a one-line error on failure."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def atomic_write(path: Path, write: Any) -> None:
    """Call `write(tmp_path)` then rename onto `path`, so a crash never leaves a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically write pretty JSON."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True)))


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Atomically write a safetensors file (tensors made contiguous and unshared)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    seen: set[int] = set()
    for key, value in tensors.items():
        if value.data_ptr() in seen and value.numel():
            tensors[key] = value.clone()
        seen.add(tensors[key].data_ptr())
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def load_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True; a pickle that wants more is refused in one line."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused to unpickle (only tensors are loaded, weights_only=True): {first}"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch file ({exc})") from None
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors")
    return data


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (single or sharded safetensors / .bin)."""
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.exists():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(read_json(path).get("weight_map", {}).values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(_load_one(directory / shard))
            return state
        return _load_one(path)
    raise CheckpointError(
        f"{directory}: no weights found (expected one of {', '.join(WEIGHT_FILES)})"
    )


def _load_one(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None
    return load_torch_file(path)

"""Reading and writing weight files safely: safetensors, or torch.load(weights_only=True).

Every pickle a user can point at (a .bin, a Lightning .ckpt) is read with weights_only=True:
only tensors and plain containers; a file that needs anything else is refused in one line.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    """A checkpoint could not be read; the message is one line naming the file and the fix."""


KMEANS_FILE = "kmeans_codebook.safetensors"
"""The k-means MIM codebook a run with k-means targets writes beside its model weights."""

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


_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _refusal(exc: BaseException) -> str:
    """The line of a weights_only refusal that says what the file wanted (e.g. a GLOBAL)."""
    for line in str(exc).splitlines():
        line = line.strip().removeprefix("WeightsUnpickler error:").strip()
        if line and not line.startswith(_BOILERPLATE):
            return line[:200].rstrip(".")
    return type(exc).__name__


def safe_torch_load(path: str | os.PathLike, what: str | None = None) -> Any:
    """torch.load(weights_only=True) on CPU (memory-mapped for zip files): only tensors and
    plain containers; anything else is refused with one line naming `what` (default: the file)."""
    path = Path(path)
    what = what or str(path)
    if not path.exists():
        raise CheckpointError(f"{what}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{what}: is a directory, expected a checkpoint file")
    mmap = zipfile.is_zipfile(path)
    with path.open("rb") as f:
        head = f.read(2)
    if not mmap and head == b"PK":
        raise CheckpointError(f"{what}: a damaged or incomplete zip file (truncated?)")
    if not mmap and head[:1] != b"\x80":  # protocol 2+ pickle: torch's legacy format
        raise CheckpointError(f"{what}: not a PyTorch file (neither a torch.save zip nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{what}: refused to unpickle: it needs more than tensors and plain containers "
            f"({_refusal(exc)}); nothing in it was run"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{what}: not a readable PyTorch file ({first})") from None


def read_checkpoint(path: str | os.PathLike, key: str | None = None) -> dict[str, Any]:
    """A Lightning checkpoint (given as config `key`), read safely (weights_only=True); one-line
    CheckpointError when it is missing, unsafe, unreadable or not a Lightning checkpoint."""
    what = f"{key}={os.fspath(path)}" if key else os.fspath(path)
    data = safe_torch_load(path, what)
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        raise CheckpointError(
            f"{what}: not a Lightning checkpoint (no state_dict); give a .ckpt the run wrote, "
            "e.g. <run_dir>/checkpoints/last.ckpt"
        )
    return data


def load_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True; a pickle that wants more is refused in one line."""
    data = safe_torch_load(path)
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
                state.update(load_weight_file(directory / shard))
            return state
        return load_weight_file(path)
    raise CheckpointError(
        f"{directory}: no weights found (expected one of {', '.join(WEIGHT_FILES)})"
    )


def save_kmeans(model_dir: Path, state: dict[str, torch.Tensor]) -> None:
    """Write the k-means MIM codebook (`KMeansCodebook.state_dict()`) beside a model's weights."""
    save_weights(Path(model_dir) / KMEANS_FILE, state)


def load_kmeans(model_dir: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The k-means MIM codebook saved beside a model's weights, or None when there is none."""
    path = Path(model_dir) / KMEANS_FILE
    return load_weight_file(path) if path.is_file() else None


def load_weight_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one weight file: safetensors by suffix, else torch (weights_only=True)."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None
    return load_torch_file(path)

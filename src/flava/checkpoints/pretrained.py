"""Pretrained keys (`flava_full`) and hub ids through the Hugging Face hub cache; fails fast
offline. The codebook key `dalle` is OpenAI's DALL-E encoder where the original release keeps it
(its download through torch.hub); it is never downloaded here."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from flava.checkpoints.io import CheckpointError

PRETRAINED_KEYS: dict[str, str] = {
    "flava_full": "facebook/flava-full",
    "flava_image_codebook": "facebook/flava-image-codebook",
}
CODEBOOK_FOR_KEY: dict[str, str] = {"flava_full": "flava_image_codebook"}
DALLE_KEY = "dalle"
"""model.codebook=dalle: OpenAI's `encoder.pkl` in torch.hub's checkpoint folder."""
DALLE_URL = "https://cdn.openai.com/dall-e/encoder.pkl"
"""Where OpenAI publishes the DALL-E encoder (the original release downloads it from here)."""
_PATTERNS = [
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
]


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    port = 443 if endpoint.startswith("https") else 80
    if ":" in host:
        host, port_text = host.rsplit(":", 1)
        port = int(port_text)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_pretrained(key: str) -> Path:
    """Local directory for a pretrained key: the hub cache, downloading only when reachable."""
    return resolve_hub(
        PRETRAINED_KEYS[key],
        f"pretrained key {key!r}",
        "model.pretrained_model_key=/path/to/flava-full",
    )


def resolve_hub(repo: str, what: str, example: str) -> Path:
    """Local directory of hub repo `repo`: the cache first, a download only when the hub is
    reachable; else one line naming `what` (how the user gave it) and `example` (a local path)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise CheckpointError(
            f"{what} needs huggingface_hub; pip install huggingface_hub, or pass a local directory"
        ) from None
    try:
        return Path(snapshot_download(repo, allow_patterns=_PATTERNS, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError and friends)
        pass
    hint = (
        f"{what} needs {repo}, which is not in the Hugging Face cache and the hub "
        f"cannot be reached; on a connected machine run `huggingface-cli download {repo}` and "
        "copy ~/.cache/huggingface to this one (or set HF_HOME), or pass a local directory "
        f"instead (e.g. {example})"
    )
    if not _hub_reachable():
        raise CheckpointError(hint)
    try:
        return Path(snapshot_download(repo, allow_patterns=_PATTERNS, etag_timeout=10))
    except Exception as exc:
        raise CheckpointError(f"{hint} (download failed: {type(exc).__name__})") from None


def dalle_encoder_file() -> Path:
    """Where the original release's `torch.hub.load_state_dict_from_url(DALLE_URL)` leaves
    `encoder.pkl`: <torch.hub.get_dir()>/checkpoints (TORCH_HOME, else ~/.cache/torch/hub)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / "encoder.pkl"


def resolve_dalle() -> Path:
    """The `dalle` codebook key's file, or one line saying where to put it and the choices."""
    path = dalle_encoder_file()
    if path.is_file():
        return path
    raise CheckpointError(
        f"codebook {DALLE_KEY!r} (the DALL-E codebook of the paper's MIM targets): no "
        f"encoder.pkl at {path}, where the original release downloads it; put {DALLE_URL} "
        "there, or give model.codebook=/path/to/encoder.pkl (or flava_image_codebook from the "
        "Hugging Face cache), or predict k-means codes instead with model.mim_target=kmeans"
    )

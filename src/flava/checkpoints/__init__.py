"""Checkpoints: our `config.json` + `model.safetensors`, the transformers layout both ways, the
original release's (TorchMultimodal) files both ways (`flava.checkpoints.torchmultimodal`),
OpenAI's `encoder.pkl`, pretrained keys, and a fine-tuned classifier's model/ directory
(`flava.checkpoints.finetuned`). Every layout is one `Layout` member
(`flava.checkpoints.layouts`, with the table of how users spell them).

Loading is free functions over the model classes (`flava.checkpoints.loading`), reached as
`flava.from_pretrained(FlavaModel, "flava_full")` and `flava.save_pretrained(model, directory)`;
the model classes hold no loading code.
"""

from __future__ import annotations

from flava.checkpoints.finetuned import load_finetuned, save_finetuned
from flava.checkpoints.hf_keys import (
    flava_config_from_transformers,
    flava_config_to_transformers,
    flava_state_from_transformers,
    flava_state_to_transformers,
)
from flava.checkpoints.io import CheckpointError, load_weights, read_json, save_weights, write_json
from flava.checkpoints.layouts import Layout
from flava.checkpoints.loading import (
    FORMAT_VERSION,
    config_layout,
    directory_layout,
    export_transformers,
    from_pretrained,
    load_flava_state,
    save_pretrained,
)
from flava.checkpoints.pretrained import (
    CODEBOOK_FOR_KEY,
    DALLE_KEY,
    PRETRAINED_KEYS,
    resolve_dalle,
    resolve_pretrained,
)
from flava.model.codebook import ImageCodebook
from flava.model.config import CodebookConfig, FlavaConfig
from flava.model.flava import FlavaForPreTraining, FlavaModel

__all__ = [
    "CheckpointError",
    "Layout",
    "PRETRAINED_KEYS",
    "config_layout",
    "directory_layout",
    "export_transformers",
    "from_pretrained",
    "load_finetuned",
    "load_flava_state",
    "save_finetuned",
    "save_pretrained",
]
__all__ += [  # what this namespace held when the loading code lived here, importable as before
    "CODEBOOK_FOR_KEY",
    "DALLE_KEY",
    "FORMAT_VERSION",
    "CodebookConfig",
    "FlavaConfig",
    "FlavaForPreTraining",
    "FlavaModel",
    "ImageCodebook",
    "flava_config_from_transformers",
    "flava_config_to_transformers",
    "flava_state_from_transformers",
    "flava_state_to_transformers",
    "load_weights",
    "read_json",
    "resolve_dalle",
    "resolve_pretrained",
    "save_weights",
    "write_json",
]

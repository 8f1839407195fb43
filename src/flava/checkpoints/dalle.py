"""DALL-E image codebook weights: transformers' FlavaImageCodebook layout and OpenAI's encoder.pkl.

OpenAI's `encoder.pkl` is a `torch.save` of a whole `dall_e.encoder.Encoder` object. It is read
with a restricted unpickler: classes under `dall_e.` and `torch.nn.modules.` become inert
placeholders that only record their state, a short allow-list of callables rebuilds tensors, and
every other global is refused, so nothing in the file is executed and `dall_e` need not be
installed.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import types
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from flava.checkpoints.io import CheckpointError
from flava.model.config import CodebookConfig

TRANSFORMERS_PREFIX = "image_codebook."
"""Prefix of the codebook keys in a transformers `FlavaForPreTraining` state dict."""

_CONFIG_KEYS = ("num_groups", "input_channels", "num_blocks_per_group", "hidden_size", "vocab_size")
"""Fields shared by our CodebookConfig and transformers' FlavaImageCodebookConfig."""

_OPENAI_FIELDS = {
    "group_count": "num_groups",
    "n_hid": "hidden_size",
    "n_blk_per_group": "num_blocks_per_group",
    "input_channels": "input_channels",
    "vocab_size": "vocab_size",
}
"""dall_e.encoder.Encoder attribute -> CodebookConfig field."""

_SUFFIX = r"\.(?:weight|bias)"
_OURS = re.compile(
    rf"^blocks\.(?:input|output\.conv|group_\d+\.block_\d+\.(?:id_path|res_path\.conv_\d+)){_SUFFIX}$"
)
_TRANSFORMERS = re.compile(
    r"^blocks\.(?:input|output\.conv|group_\d+\.group\.block_\d+\."
    rf"(?:id_path|res_path\.path\.conv_\d+)){_SUFFIX}$"
)


def _one_line(text: str) -> str:
    """Collapse whitespace so an error message fits on one line."""
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------
# transformers FlavaImageCodebook <-> ours


def _from_transformers_key(key: str) -> str:
    """transformers key (no prefix) -> ours."""
    key = re.sub(r"^blocks\.(group_\d+)\.group\.", r"blocks.\1.", key)
    return key.replace(".res_path.path.", ".res_path.")


def _to_transformers_key(key: str) -> str:
    """Our key -> transformers key (no prefix)."""
    key = re.sub(r"^blocks\.(group_\d+)\.(block_\d+)\.", r"blocks.\1.group.\2.", key)
    return key.replace(".res_path.", ".res_path.path.")


def codebook_state_from_transformers(
    state: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], list[str]]:
    """transformers codebook keys (optionally under `image_codebook.`) -> (ours, unplaced keys)."""
    mapped: dict[str, Tensor] = {}
    unplaced: list[str] = []
    for key, value in state.items():
        bare = key.removeprefix(TRANSFORMERS_PREFIX)
        if _TRANSFORMERS.match(bare):
            mapped[_from_transformers_key(bare)] = value
        else:
            unplaced.append(key)
    return mapped, unplaced


def codebook_state_to_transformers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our codebook state dict -> transformers FlavaImageCodebook keys (no prefix)."""
    bad = [k for k in state if not _OURS.match(k)]
    if bad:
        raise ValueError(f"not image-codebook keys: {bad[:5]}")
    return {_to_transformers_key(k): v for k, v in state.items()}


def codebook_config_from_transformers(cfg: Mapping[str, Any]) -> CodebookConfig:
    """A FlavaImageCodebookConfig.to_dict()-style dict -> CodebookConfig (other keys ignored)."""
    config = CodebookConfig(**{k: int(cfg[k]) for k in _CONFIG_KEYS if k in cfg})
    config.validate()
    return config


def codebook_config_to_transformers(config: CodebookConfig) -> dict[str, Any]:
    """CodebookConfig -> kwargs accepted by transformers' FlavaImageCodebookConfig."""
    return {
        "model_type": "flava_image_codebook",
        "architectures": ["FlavaImageCodebook"],
        **{k: getattr(config, k) for k in _CONFIG_KEYS},
        "freeze": True,
        "initializer_range": 0.02,
    }


# ---------------------------------------------------------------------------------------------
# restricted unpickling of OpenAI's encoder.pkl


class _Placeholder:
    """Inert stand-in for a pickled class instance: records arguments and state, runs nothing."""

    _global_name = "?"

    def __new__(cls, *args: object, **kwargs: object) -> _Placeholder:
        """Accept any NEWOBJ / REDUCE arguments without calling anything."""
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        obj.__dict__["_state"] = None
        return obj

    def __init__(self, *args: object, **kwargs: object) -> None:
        """Do nothing (REDUCE calls the class)."""

    def __setstate__(self, state: object) -> None:
        """Record the BUILD state (for an nn.Module: its __dict__)."""
        self.__dict__["_state"] = state

    def fields(self) -> dict[str, Any]:
        """The recorded attribute dict (empty when there is none)."""
        state = self.__dict__["_state"]
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            merged: dict[str, Any] = {}
            for part in state:
                if isinstance(part, Mapping):
                    merged.update(part)
            return merged
        return dict(state) if isinstance(state, Mapping) else {}


def _rebuild_parameter(
    data: Tensor, requires_grad: bool, backward_hooks: object, state: object = None
) -> Tensor:
    """Stand-in for torch's parameter rebuild: the plain tensor, hooks and state dropped."""
    if not isinstance(data, Tensor):
        raise pickle.UnpicklingError("parameter data is not a tensor")
    return data.detach()


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> the real object returned for it; only what tensors need."""
    allowed: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch", "device"): torch.device,
        ("torch", "Size"): torch.Size,
        ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
    }
    for name, obj in list(vars(torch).items()):  # dtypes and layouts pickle as plain globals
        if isinstance(obj, torch.dtype | torch.layout):
            allowed[("torch", name)] = obj
    return allowed


_PLACEHOLDER_MODULES = ("dall_e", "torch.nn.modules")
"""Modules whose classes are replaced by placeholders instead of being imported."""

_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
"""Python 2 module names that protocol-2 pickles use (pickle's fix_imports)."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that never imports: placeholders for module classes, an allow-list otherwise."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        """Resolve a global without importing or calling anything outside the allow-list."""
        module = _PY2_MODULES.get(module, module)
        if any(module == m or module.startswith(m + ".") for m in _PLACEHOLDER_MODULES):
            cache = self.__dict__.setdefault("_placeholders", {})
            key = f"{module}.{name}"
            if key not in cache:
                cache[key] = type("Placeholder", (_Placeholder,), {"_global_name": key})
            return cache[key]
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _allowed_globals()
        obj = _RestrictedUnpickler._allowed.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(
                f"refused to load global {module}.{name} from the pickle; only tensors are read"
            )
        return obj


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    """pickle.load through the restricted unpickler."""
    return _RestrictedUnpickler(file, **kwargs).load()


def _restricted_loads(data: bytes, **kwargs: Any) -> Any:
    """pickle.loads through the restricted unpickler."""
    return _RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


restricted_pickle = types.ModuleType("flava_restricted_pickle", "Restricted pickle for torch.load.")
restricted_pickle.__dict__.update(
    Unpickler=_RestrictedUnpickler,
    load=_restricted_load,
    loads=_restricted_loads,
    UnpicklingError=pickle.UnpicklingError,
)


def _collect_tensors(root: _Placeholder) -> dict[str, Tensor]:
    """Walk a placeholder module tree; parameters and buffers by dotted path."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    stack: list[tuple[str, _Placeholder]] = [("", root)]
    while stack:
        prefix, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        fields = node.fields()
        for group in ("_parameters", "_buffers"):
            tensors = fields.get(group)
            if isinstance(tensors, Mapping):
                for name, t in tensors.items():
                    if isinstance(t, Tensor):
                        out[f"{prefix}{name}"] = t.detach()
        children = fields.get("_modules")
        if isinstance(children, Mapping):
            for name, child in children.items():
                if isinstance(child, _Placeholder):
                    stack.append((f"{prefix}{name}.", child))
    return out


def _normalise_key(key: str) -> str:
    """Any known naming (ours, transformers, OpenAI w/b) -> ours."""
    key = key.removeprefix(TRANSFORMERS_PREFIX)
    if _TRANSFORMERS.match(key):
        return _from_transformers_key(key)
    if key.endswith(".w"):
        return key[:-2] + ".weight"
    if key.endswith(".b"):
        return key[:-2] + ".bias"
    return key


def _infer_config(state: Mapping[str, Tensor], fields: Mapping[str, Any]) -> CodebookConfig:
    """CodebookConfig from the weight shapes, cross-checked with the Encoder's fields if any."""
    for key in ("blocks.input.weight", "blocks.output.conv.weight"):
        if key not in state:
            raise ValueError(f"missing {key}")
    inp, out = state["blocks.input.weight"], state["blocks.output.conv.weight"]
    if inp.dim() != 4 or out.dim() != 4:
        raise ValueError("blocks.input.weight and blocks.output.conv.weight must be 4-D convs")
    groups = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.group_(\d+)\.", k))}
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.group_1\.block_(\d+)", k))}
    inferred = {
        "hidden_size": int(inp.shape[0]),
        "input_channels": int(inp.shape[1]),
        "vocab_size": int(out.shape[0]),
        "num_groups": len(groups),
        "num_blocks_per_group": len(blocks),
    }
    for attr, field_name in _OPENAI_FIELDS.items():
        value = fields.get(attr)
        if isinstance(value, int) and not isinstance(value, bool):
            if value != inferred[field_name]:
                raise ValueError(
                    f"Encoder.{attr}={value} disagrees with the weights "
                    f"({field_name}={inferred[field_name]})"
                )
    config = CodebookConfig(**inferred)
    config.validate()
    return config


def _check_shapes(state: Mapping[str, Tensor], config: CodebookConfig) -> None:
    """Every expected key present with the right shape, nothing else."""
    from flava.model.codebook import ImageCodebook

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in ImageCodebook(config).state_dict().items()}
    missing = [k for k in expected if k not in state]
    if missing:
        raise ValueError(f"missing {len(missing)} codebook weights, e.g. {missing[:3]}")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise ValueError(f"{len(unexpected)} unexpected weights, e.g. {unexpected[:3]}")
    for key, shape in expected.items():
        if not state[key].is_floating_point():
            raise ValueError(f"{key} has dtype {state[key].dtype}, expected a floating type")
        if tuple(state[key].shape) != shape:
            raise ValueError(f"{key} has shape {tuple(state[key].shape)}, expected {shape}")


def _unwrap_state_dict(obj: Any) -> Mapping[str, Any] | None:
    """A tensor mapping, possibly nested under 'state_dict' / 'model'; None otherwise."""
    if not isinstance(obj, Mapping):
        return None
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        return obj
    return None


def load_openai_encoder(path: str | os.PathLike) -> tuple[CodebookConfig, dict[str, Tensor]]:
    """OpenAI's encoder.pkl (or a codebook state dict file) -> (config, our state dict), safely."""
    name = os.fspath(path)
    try:
        if not os.path.isfile(name):
            raise ValueError("no such file")
        fields: Mapping[str, Any] = {}
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj: Any = load_file(name, device="cpu")
        else:
            try:
                obj = torch.load(name, map_location="cpu", weights_only=True)
            except Exception:  # not a plain state dict: read it with the restricted unpickler
                # weights_only=False only hands torch.load our own unpickler: it imports nothing,
                # dall_e / torch.nn classes become inert placeholders, every other global is
                # refused (torch's weights_only unpickler cannot hold a pickled Encoder object)
                obj = torch.load(
                    name, map_location="cpu", weights_only=False, pickle_module=restricted_pickle
                )
        raw = _unwrap_state_dict(obj)
        if raw is None and isinstance(obj, _Placeholder):
            fields = obj.fields()
            raw = _collect_tensors(obj) or None
        if raw is None:
            raise ValueError(f"holds a {type(obj).__name__}, not a DALL-E encoder or state dict")
        state: dict[str, Tensor] = {}
        for key, value in raw.items():
            new = _normalise_key(key)
            if new in state:
                raise ValueError(f"two weights map to {new}")
            state[new] = value
        config = _infer_config(state, fields)
        _check_shapes(state, config)
    except Exception as e:
        raise CheckpointError(f"{name}: {_one_line(str(e)) or type(e).__name__}") from None
    return config, state

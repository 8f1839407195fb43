"""`training.lightning.strategy: fsdp`: PyTorch's per-module sharding (FSDP2, `fully_shard`)
driven by Lightning's `ModelParallelStrategy`, on CPU (gloo) and GPU (nccl).

Units: every transformer `Layer`, each encoder (its embeddings, final norm and pooler), each
pretraining head, and the root (the LightningModule: projections, `logit_scale`). The step runs
through the root's `forward`, so the root's parameters are gathered like every unit's. The frozen
DALL-E codebook is left out of sharding (replicated, no gradient, not in the optimizer).
(FSDP2 shards only parameters of one or more dimensions: `logit_scale` is a 1-element vector.)

Mixed precision (`bf16-mixed` / `16-mixed`): compute in the half type, gradients reduced and
master weights kept in fp32. Activation checkpointing (`model.activation_checkpointing`) is the
encoders' own, run inside each layer's unit. Checkpoints are `torch.distributed.checkpoint`
directories (one shard file per process + `meta.pt`), written next to the previous one and
swapped in when complete, so a crash mid-write leaves the previous checkpoint usable.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from flava.model.flava import FlavaForPreTraining

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule


class ShardedStrategy(ModelParallelStrategy):
    """ModelParallelStrategy for pure data-parallel sharding (one mesh dimension over every
    process) with atomic distributed checkpoints."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(save_distributed_checkpoint=True, **kwargs)

    def _setup_distributed(self) -> None:
        super()._setup_distributed()
        # every process shards the same model: data parallel over all, no tensor parallelism
        self._data_parallel_size = self.world_size
        self._tensor_parallel_size = 1

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None
    ) -> None:
        """Write into `<name>.partial`, then swap it in: the previous checkpoint survives a
        crash at any point (at worst it is left as `<name>.old`, which resume also reads)."""
        path = Path(self.broadcast(filepath))
        partial = path.with_name(path.name + ".partial")
        old = path.with_name(path.name + ".old")
        if self.global_rank == 0 and partial.exists():
            shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
        self.barrier("flava_checkpoint_clean")
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier("flava_checkpoint_written")
        if self.global_rank == 0:
            if path.exists():
                if old.exists():
                    shutil.rmtree(old) if old.is_dir() else old.unlink()
                path.rename(old)
            partial.rename(path)
            if old.exists():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        self.barrier("flava_checkpoint_swapped")

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> Any:
        """Lightning's loading of a sharded checkpoint (any process count: DCP re-shards), with
        the AdamW state of parameters that had no gradient yet (a pooler, a batch kind not yet
        seen) allowed to be absent: their fresh state is kept, as in an uninterrupted run."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import DefaultLoadPlanner
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        from flava.checkpoints.sharded import META, is_sharded_checkpoint

        path = Path(self.broadcast(checkpoint_path))
        if not is_sharded_checkpoint(path):
            return super().load_checkpoint(path, weights_only)
        from flava.checkpoints.io import safe_torch_load

        module, lightning = self.model, self.lightning_module
        assert module is not None and lightning is not None  # Lightning loads after set-up
        state = {"state_dict": get_model_state_dict(module)}
        dcp.load(state, checkpoint_id=path)
        module.load_state_dict(state["state_dict"], strict=lightning.strict_loading)
        for index, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{index}"
            optim_state = {key: get_optimizer_state_dict(module, optimizer)}
            dcp.load(
                optim_state, checkpoint_id=path, planner=DefaultLoadPlanner(allow_partial_load=True)
            )
            set_optimizer_state_dict(
                module, optimizer, optim_state[key], options=StateDictOptions(cpu_offload=True)
            )
        return safe_torch_load(path / META, str(path / META))


def is_sharded(module: nn.Module) -> TypeGuard[FSDPModule]:
    """Whether `fully_shard` has been applied to `module`."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def mixed_precision(precision: str) -> Any:
    """FSDP2's policy for a Lightning precision: half compute, fp32 reduction; None for fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    half = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
    if half is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=half, reduce_dtype=torch.float32)


def shard(root: nn.Module, model: FlavaForPreTraining, mesh: Any, precision: str) -> None:
    """Apply `fully_shard` per layer, per encoder, per head, then to `root` (which holds `model`,
    a FlavaForPreTraining, and whose forward runs the step). Idempotent."""
    from torch.distributed.fsdp import fully_shard

    if is_sharded(root):
        return
    flava = model.flava
    options = {"mesh": mesh, "mp_policy": mixed_precision(precision)}
    for layer in layers(model):
        fully_shard(layer, **options)
    for encoder in (flava.image_encoder, flava.text_encoder, flava.multimodal_encoder):
        fully_shard(encoder, **options)
    for name in ("mim_head", "mlm_head", "mmm_image_head", "mmm_text_head", "itm_head"):
        fully_shard(getattr(model, name), **options)
    frozen = set(model.codebook.parameters()) if model.codebook is not None else set()
    if model.codebook is not None:  # replicated and frozen: outside sharding and reduction
        model.codebook.to(mesh.device_type)
    fully_shard(root, ignored_params=frozen or None, **options)


def layers(model: FlavaForPreTraining) -> list[nn.Module]:
    """The transformer layers of the three encoders of a FlavaForPreTraining."""
    flava = model.flava
    encoders = (flava.image_encoder, flava.text_encoder, flava.multimodal_encoder)
    return [layer for encoder in encoders for layer in encoder.encoder.layers]


LAYER_VARIANTS = 64
"""Compiled variants the layers' shared `forward` may hold. Every layer of the three encoders runs
that one function, and a run meets several variants: fp32 or bf16 input (the multimodal
encoder's stream stays in bf16 under autocast), with or without a padding mask, with gradients or
without (validation), each at a new token count once. Dynamo's default of 8 was reached in 12
steps of the demo in bf16, after which the layers fell back to eager."""


def compile_layers(model: FlavaForPreTraining) -> None:
    """`torch.compile` every transformer layer in place (`Module.compile`: the state-dict keys
    stay as they are). Layers of one shape share their compiled code; idempotent."""
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), LAYER_VARIANTS))  # torch < 2.7: cache_size
    for layer in layers(model):
        if getattr(layer, "_compiled_call_impl", None) is None:
            layer.compile()


@contextlib.contextmanager
def gathered(root: nn.Module) -> Iterator[None]:
    """The root unit's parameters unsharded, for work outside its forward (evaluation)."""
    if not is_sharded(root):
        yield
        return
    root.unshard()
    try:
        yield
    finally:
        root.reshard()


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict of `model` (sharded or not) on CPU. Under sharding every process
    must call it and only rank 0 receives the tensors (the others get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not any(is_sharded(m) for m in model.modules()):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    # full and offloaded: plain CPU tensors (no DTensor / ShardedTensor values)
    return cast(dict[str, torch.Tensor], get_model_state_dict(model, options=options))

"""LightningModule for FLAVA pretraining: model + MIM targets + objectives + AdamW schedule."""

from __future__ import annotations

import logging
from typing import IO, TYPE_CHECKING, Any

import lightning as L
import torch

from flava.checkpoints.run_dir import RunDir
from flava.config import RunConfig
from flava.data.batch import PretrainingBatch
from flava.model.flava import FlavaForPreTraining
from flava.objectives.kinds import Kind
from flava.objectives.pretraining import (
    ContrastiveWindow,
    LossWeights,
    Window,
    pretraining_step,
    window_of,
)
from flava.objectives.targets import KMeansCodebook
from flava.training.counts import SkipCounter
from flava.training.optim import adamw_with_schedule, check_multipliers, clip_gradients

if TYPE_CHECKING:
    from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

log = logging.getLogger(__name__)


class FlavaPretrainingModule(L.LightningModule):
    """Runs the pretraining step per batch kind and logs every loss separately."""

    def __init__(
        self, cfg: RunConfig, model: FlavaForPreTraining, kmeans: KMeansCodebook | None
    ) -> None:
        """`model` and `kmeans` (k-means MIM codebook or None): `build_pretraining_model`'s."""
        super().__init__()
        self.cfg = cfg
        self.model, self.kmeans = model, kmeans
        # a prefix naming no parameter fails here, before any work
        check_multipliers((n for n, _ in model.named_parameters()), cfg.training.lr_multipliers)
        self.weights = LossWeights.from_config(cfg.model.losses)
        self.nonfinite: dict[str, int] = {}  # skipped steps per batch kind
        self.nonfinite_in_row = 0
        self.counter = SkipCounter()  # bad training samples skipped, per reason; samples read
        self.stopped: tuple[str, str] | None = None  # (checkpoint stem, one-line reason)
        self._kind = Kind.vl
        self._keys: IO[str] | None = None  # the sample key log (datasets.log_keys)
        self._contrastive: ContrastiveWindow | None = None  # the step's, under accumulation

    @property
    def codebook_size(self) -> int | None:
        """Side of the codebook view the data must provide (DALL-E: 8 px per patch), or None."""
        if self.model.codebook is None:
            return None
        return self.model.config.image.grid_size * 8

    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """MIM target ids [B, N] for a batch holding images."""
        if self.kmeans is not None:
            return self.kmeans(batch["pixel_values"])
        assert self.model.codebook is not None  # DALL-E targets: the model holds the codebook
        return self.model.codebook.get_codebook_indices(batch["codebook_pixel_values"])

    def configure_model(self) -> None:
        """Under `strategy: fsdp` (FSDP2): shard per layer, encoder, head and this module; with
        `training.compile`, compile every layer (in place: parameter names unchanged)."""
        from flava.training.sharding import ShardedStrategy, compile_layers, shard

        if isinstance(self.trainer.strategy, ShardedStrategy):
            assert self.device_mesh is not None  # the sharded strategy sets it up
            mesh = self.device_mesh["data_parallel"]
            shard(self, self.model, mesh, self.trainer.precision)
        if self.cfg.training.compile is True:  # flava.train resolves "auto" before the run
            compile_layers(self.model)

    def forward(
        self,
        batch: PretrainingBatch,
        generator: torch.Generator | None = None,
        window: Window | None = None,
    ) -> dict[str, torch.Tensor]:
        """The pretraining step of one batch (its losses); the root of sharding runs it."""
        return pretraining_step(
            self.model,
            batch.tensors,
            batch.kind,
            self.targets,
            self.weights,
            self.cfg.model.losses.itm_negative_probability,
            generator,
            window,
            self.contrastive_window(batch),
            None if window is None else window.pairings.get(batch.index),
        )

    def contrastive_window(self, batch: PretrainingBatch) -> ContrastiveWindow | None:
        """Under training.contrastive_accumulation: the step's window, at this micro-batch."""
        if batch.window_inputs is not None:  # the first micro-batch of a pair window
            self._contrastive = ContrastiveWindow(batch.window_inputs)
        if self._contrastive is None or batch.window is None or batch.kind != Kind.vl:
            return None
        indices = [int(m["batch_index"]) for m in batch.window]
        self._contrastive.position = indices.index(batch.index)
        return self._contrastive

    def step_generator(self, batch_index: int) -> torch.Generator:
        """The generator of a training batch's random draws (ITM negatives), keyed by its index."""
        return torch.Generator().manual_seed(batch_index * 7919 + self.cfg.training.seed)

    def window(self, batch: PretrainingBatch) -> Window | None:
        """Under gradient accumulation: the masked-token counts of the step's micro-batches."""
        if batch.window is None:
            return None
        p = self.cfg.model.losses.itm_negative_probability
        return window_of(batch.window, self.weights, p, self.step_generator)

    def _step(
        self,
        batch: PretrainingBatch,
        generator: torch.Generator | None,
        window: Window | None = None,
    ) -> dict[str, torch.Tensor]:
        return self(batch, generator, window)

    def _log_keys(self, batch: PretrainingBatch) -> None:
        """With datasets.log_keys: one line per sample (batch index, kind, key, epoch)."""
        if self._keys is None:
            self._keys = RunDir(self.cfg.training.run_dir).log_file(self._keys_name)
        tally = batch.tally
        epochs: list[int] | list[str] = tally.epochs or [""] * len(tally.keys)
        for key, epoch in zip(tally.keys, epochs, strict=True):
            self._keys.write(f"{batch.index}\t{batch.kind}\t{key}\t{epoch}\n")
        self._keys.flush()

    def _count_data(self, batch: PretrainingBatch) -> None:
        """Add the batch's skipped samples; stop when too large a fraction of them was bad."""
        if self.cfg.datasets.log_keys:
            self._log_keys(batch)
        self.counter.add(batch.tally.skipped, batch.tally.samples_read, batch.tally.skip_examples)
        limit, size = self.cfg.datasets.max_skipped_fraction, self.cfg.training.batch_size
        reason = self.counter.check(self, limit, "datasets.max_skipped_fraction", size)
        if reason is not None:
            self.stopped = ("bad-data-stop", reason)
            self.trainer.should_stop = True

    def data_totals(self) -> dict[str, int]:
        """Skipped samples per reason and samples read, summed over processes (all must call)."""
        return self.counter.totals(self)

    @property
    def _keys_name(self) -> str:
        return f"samples/rank-{self.global_rank}.tsv"

    def _sync_keys(self) -> None:
        """The key log so far to a run directory at a URL (with each checkpoint, at the end)."""
        if self._keys is not None:
            self._keys.flush()
            RunDir(self.cfg.training.run_dir).sync(self._keys_name)

    def on_train_end(self) -> None:
        self._sync_keys()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._sync_keys()
        checkpoint["flava_model_config"] = self.model.config.to_dict()  # for flava.convert
        checkpoint["flava_counters"] = {
            "nonfinite": dict(self.nonfinite),
            **self.counter.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = checkpoint.get("flava_counters", {})
        self.nonfinite = dict(counters.get("nonfinite", {}))
        self.counter.load_state_dict(counters)

    def training_step(self, batch: PretrainingBatch, batch_idx: int) -> torch.Tensor:
        self._count_data(batch)
        self._kind = Kind(batch.kind)
        generator = self.step_generator(batch.index)
        out = self._step(batch, generator, self.window(batch))
        size = batch.size
        # the mean over processes of each one's loss is the loss of the global batch
        sync = self.trainer.world_size > 1
        for name, value in out.items():
            if name != "loss":
                self.log(
                    f"train/{name}", value.detach(), on_step=True, batch_size=size, sync_dist=sync
                )
        loss = out["loss"].detach()
        self.log(f"train/loss_{self._kind}", loss, on_step=True, batch_size=size, sync_dist=sync)
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=size, sync_dist=sync)
        scale = self.model.flava.logit_scale.detach()
        if hasattr(scale, "full_tensor"):  # sharded (FSDP2): gather the one value
            scale = scale.full_tensor()
        self.log("train/logit_scale", scale.reshape(()), on_step=True, batch_size=size)
        return out["loss"]

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        """Skip the update when the loss or a gradient is not finite; stop after too many."""

        def closure() -> Any:
            loss = optimizer_closure()
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
            if hasattr(norm, "full_tensor"):  # sharded gradients: the norm over all shards
                norm = norm.full_tensor()
            finite = bool(torch.isfinite(norm)) and (loss is None or bool(torch.isfinite(loss)))
            if not finite:  # DDP has averaged the gradients: every process agrees
                optimizer.zero_grad(set_to_none=True)  # AdamW skips parameters without grads
                self._record_nonfinite()
            else:
                self.nonfinite_in_row = 0
            return loss

        optimizer.step(closure=closure)
        self.model.flava.clamp_logit_scale_()

    def on_train_start(self) -> None:
        self.model.flava.clamp_logit_scale_()  # a loaded scale past the bound starts inside it

    def _record_nonfinite(self) -> None:
        kind = self._kind.value  # a plain string: the counts go into checkpoints
        self.nonfinite[kind] = self.nonfinite.get(kind, 0) + 1
        self.nonfinite_in_row += 1
        log.warning(
            "step %d: non-finite loss or gradient on a %s batch; update skipped",
            self.global_step,
            self._kind,
        )
        if self.nonfinite_in_row >= self.cfg.training.nonfinite_patience:
            self.stopped = (
                "nonfinite-stop",
                f"stopped after {self.nonfinite_in_row} steps in a row with non-finite loss or "
                f"gradients (skipped per kind: {self.nonfinite}); lower training.learning_rate, "
                "use bf16-mixed instead of 16-mixed, or check the data",
            )
            self.trainer.should_stop = True

    def validation_step(
        self, batch: PretrainingBatch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        generator = torch.Generator().manual_seed(batch_idx)
        out = self._step(batch, generator)
        size = batch.size
        for name, value in out.items():
            if name != "loss":
                self.log(
                    f"val/{name}",
                    value,
                    on_epoch=True,
                    batch_size=size,
                    add_dataloader_idx=False,
                    sync_dist=True,
                )

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        return adamw_with_schedule(
            self.model.named_parameters(), self.cfg.training, self.device, self.trainer.max_steps
        )

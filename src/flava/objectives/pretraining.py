"""FLAVA's pretraining step per source kind (paper section 3.2, figure 2).

- image batch: MIM on the masked image (image encoder only);
- text batch: MLM on the masked text (text encoder only);
- vl (image-text pair) batch: global contrastive on the unmasked pair; ITM, MMM-image and
  MMM-text on the masked pair through the multimodal encoder. ITM negatives take another
  caption of the same batch; MMM losses use matched pairs only.

Masked-token losses are normalised by the masked count of all data-parallel processes
(`losses.global_mean`), over all micro-batches of the optimizer step under gradient accumulation
(`Window`); contrastive and ITM are means over equal-sized local batches, which DDP's
gradient average already makes global. With several processes MMM runs on every process, even
one whose batch has no matched pair (its share is then a zero), so that all join the count's
all-reduce and return the same keys.

Each function returns a dict of exactly the losses (and accuracies) it computed, plus "loss",
the weighted sum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from flava.model.flava import FlavaForPreTraining
from flava.objectives.kinds import Kind
from flava.objectives.losses import (
    IGNORE_INDEX,
    contrastive_loss,
    itm_loss,
    masked_prediction_loss,
    world_size,
)

Batch = dict[str, torch.Tensor]
TargetFn = Callable[[Batch], torch.Tensor]


class LossSettings(Protocol):
    """The objective weights of a `model.losses` section (`flava.config.LossConfig`)."""

    @property
    def mim_weight(self) -> float: ...
    @property
    def mlm_weight(self) -> float: ...
    @property
    def mmm_image_weight(self) -> float: ...
    @property
    def mmm_text_weight(self) -> float: ...
    @property
    def itm_weight(self) -> float: ...
    @property
    def global_contrastive_weight(self) -> float: ...


@dataclass
class LossWeights:
    """Weight of each objective in the total loss (0 skips the objective)."""

    mim: float = 1.0
    mlm: float = 1.0
    mmm_image: float = 1.0
    mmm_text: float = 1.0
    itm: float = 1.0
    contrastive: float = 1.0

    @classmethod
    def from_config(cls, losses: LossSettings) -> LossWeights:
        """The weights of a `model.losses` config (its `<objective>_weight` fields)."""
        return cls(
            mim=losses.mim_weight,
            mlm=losses.mlm_weight,
            mmm_image=losses.mmm_image_weight,
            mmm_text=losses.mmm_text_weight,
            itm=losses.itm_weight,
            contrastive=losses.global_contrastive_weight,
        )


def _total(losses: dict[str, torch.Tensor], weights: LossWeights) -> dict[str, torch.Tensor]:
    total = sum(getattr(weights, k) * v for k, v in losses.items() if hasattr(weights, k))
    return {**losses, "loss": total}


@dataclass
class Window:
    """This process's masked tokens per objective over an accumulation window of k micro-batches.

    Under gradient accumulation each micro-batch normalises its masked-token losses by the
    window's count (all-reduced over the processes in `losses.global_mean`), not its own, so
    that the optimizer step's gradient is that of the mean over every masked token of the step.
    """

    counts: dict[str, int]
    """Masked tokens per objective (mim, mlm, mmm_image, mmm_text) over the window."""
    micro_batches: int
    pairings: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """The ITM pairing (`itm_pairing`) of each pair micro-batch, by batch index: drawn once, when
    the window is counted, and used by that micro-batch's step."""

    def loss_args(self, objective: str) -> dict[str, int]:
        """Keyword arguments of `masked_prediction_loss` for one objective."""
        return {"window_count": self.counts.get(objective, 0), "accumulated": self.micro_batches}


CONTRASTIVE_INPUTS = ("pixel_values", "input_ids", "attention_mask", "token_type_ids")
"""What the contrastive loss reads of a pair batch (its unmasked image and text)."""


@dataclass
class ContrastiveWindow:
    """The unmasked pairs of all micro-batches of an optimizer step, for one contrastive loss
    over all of them (training.contrastive_accumulation; GradCache, Gao et al. 2021).

    The first micro-batch embeds every member without gradients (`embed`); micro-batch `position`
    then puts its own embeddings, with gradients, in place of its cached ones, so its loss is
    the loss of the whole window and its backward pass the gradient through its own pairs. The
    sum over the window is the full batch's gradient: each micro-batch's loss is multiplied by k
    against the 1/k of the accumulation, and the logit scale takes its gradient once (from the
    last micro-batch, the one whose backward pass data-parallel processes synchronise).
    Embeddings must not depend on the batch (no dropout), as FLAVA's defaults are.
    """

    inputs: list[Batch]
    """The `CONTRASTIVE_INPUTS` of each micro-batch of the window."""
    position: int = 0
    images: list[torch.Tensor] | None = None
    texts: list[torch.Tensor] | None = None

    @property
    def size(self) -> int:
        """Micro-batches in the window (k)."""
        return len(self.inputs)

    def embed(self, flava: Any) -> None:
        """Cache every member's image and text embeddings [B, P] (no gradients), once."""
        if self.images is not None:
            return
        self.images, self.texts = [], []
        with torch.no_grad():
            for m in self.inputs:
                image, text = contrastive_embeddings(flava, m)
                self.images.append(image.detach())
                self.texts.append(text.detach())

    def around(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The window's embeddings [k*B, P] with this micro-batch's own (live) in its place."""
        assert self.images is not None and self.texts is not None
        p = self.position
        images = [*self.images[:p], image, *self.images[p + 1 :]]
        texts = [*self.texts[:p], text, *self.texts[p + 1 :]]
        return torch.cat(images), torch.cat(texts)


def contrastive_embeddings(flava: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The projected image and text embeddings [B, P] of a batch's unmasked pairs."""
    image = flava.image_encoder(batch["pixel_values"])
    text = flava.text_encoder(
        batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
    )
    return flava.image_embedding(image), flava.text_embedding(text)


def _contrastive(
    flava: Any, batch: Batch, window: ContrastiveWindow | None
) -> tuple[dict[str, torch.Tensor], float]:
    """The contrastive loss of a pair batch (or of its window) and the factor of its term in
    the total loss (k under a `ContrastiveWindow`, else 1)."""
    image, text = contrastive_embeddings(flava, batch)
    scale = flava.logit_scale
    if window is None:
        return contrastive_loss(image, text, scale), 1.0
    window.embed(flava)
    image, text = window.around(image, text)
    if window.position != window.size - 1:
        scale = scale.detach()  # its gradient comes from the last micro-batch only
    return contrastive_loss(image, text, scale), float(window.size)


def _loss_args(window: Window | None, objective: str) -> dict[str, int]:
    return {} if window is None else window.loss_args(objective)


def masked_counts(kind: str, batch: Batch, itm_labels: torch.Tensor | None) -> dict[str, int]:
    """The masked tokens per objective that the step of this batch normalises.

    Known before the step runs: the masks come with the data, and a vl batch's matched pairs
    (MMM's tokens) from its ITM pairing's labels (None: no masked pair objective).
    """
    if kind == Kind.image:
        return {"mim": int(batch["bool_masked_pos"].sum())}
    if kind == Kind.text:
        return {"mlm": int((batch["mlm_labels"] != IGNORE_INDEX).sum())}
    if itm_labels is None:
        return {}
    masked_pos = batch["bool_masked_pos"]
    b = masked_pos.shape[0]
    positive = itm_labels.bool()
    return {
        "mmm_image": int(masked_pos.reshape(b, -1)[positive].sum()),
        "mmm_text": int((batch["mlm_labels"][positive] != IGNORE_INDEX).sum()),
    }


def window_of(
    members: list[Batch],
    weights: LossWeights,
    negative_probability: float,
    generator_of: Callable[[int], torch.Generator],
) -> Window:
    """The `Window` of an optimizer step's micro-batches (kind, batch index and masks of each;
    `generator_of(batch index)` gives the generator that micro-batch's step uses): its counts,
    and the ITM pairing of each pair micro-batch, drawn here once for its step."""
    window = Window({}, len(members))
    for m in members:
        index, labels = int(m["batch_index"]), None
        if m["kind"] == Kind.vl and _masked_pairs(weights):
            masked_pos = m["bool_masked_pos"]
            pairing = _pairing(masked_pos, weights, negative_probability, generator_of(index))
            window.pairings[index], labels = pairing, pairing[1]
        for name, n in masked_counts(str(m["kind"]), m, labels).items():
            window.counts[name] = window.counts.get(name, 0) + n
    return window


def _masked_pairs(weights: LossWeights) -> bool:
    """Whether a vl step runs its masked pair objectives (ITM, MMM)."""
    return bool(weights.itm or weights.mmm_image or weights.mmm_text)


def _pairing(
    like: torch.Tensor,
    weights: LossWeights,
    negative_probability: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ITM pairing of a vl batch of `like.shape[0]` pairs (no negatives without ITM)."""
    p = negative_probability if weights.itm else 0.0
    return itm_pairing(like.shape[0], p, generator, like.device)


def mim_labels(targets: torch.Tensor, bool_masked_pos: torch.Tensor) -> torch.Tensor:
    """Target ids [B, N] kept at masked patches, IGNORE_INDEX elsewhere."""
    mask = bool_masked_pos.reshape(targets.shape).bool()
    return targets.masked_fill(~mask, IGNORE_INDEX)


def image_step(
    model: FlavaForPreTraining,
    batch: Batch,
    targets: TargetFn,
    weights: LossWeights,
    window: Window | None = None,
) -> dict[str, torch.Tensor]:
    """MIM on an image-only batch."""
    labels = mim_labels(targets(batch), batch["bool_masked_pos"])
    image = model.flava.image_encoder(batch["pixel_values"], batch["bool_masked_pos"])
    patches = image.last_hidden_state[:, 1:]  # [B, N, D], CLS dropped
    loss = masked_prediction_loss(model.mim_head, patches, labels, **_loss_args(window, "mim"))
    return _total({"mim": loss}, weights)


def text_step(
    model: FlavaForPreTraining, batch: Batch, weights: LossWeights, window: Window | None = None
) -> dict[str, torch.Tensor]:
    """MLM on a text-only batch."""
    text = model.flava.text_encoder(
        batch["input_ids_masked"], batch["attention_mask"], batch.get("token_type_ids")
    )
    hidden, labels = text.last_hidden_state, batch["mlm_labels"]
    loss = masked_prediction_loss(model.mlm_head, hidden, labels, **_loss_args(window, "mlm"))
    return _total({"mlm": loss}, weights)


def itm_pairing(
    batch_size: int,
    negative_probability: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(text index per image [B], ITM labels [B]): negatives take another caption of the batch."""
    if batch_size < 2 or negative_probability <= 0:
        return torch.arange(batch_size, device=device), torch.ones(
            batch_size, dtype=torch.long, device=device
        )
    negative = torch.rand(batch_size, generator=generator) < negative_probability
    shift = torch.randint(1, batch_size, (batch_size,), generator=generator)
    index = torch.arange(batch_size)
    index = torch.where(negative, (index + shift) % batch_size, index)
    return index.to(device), (~negative).long().to(device)


def vl_step(
    model: FlavaForPreTraining,
    batch: Batch,
    targets: TargetFn | None,
    weights: LossWeights,
    negative_probability: float = 0.5,
    generator: torch.Generator | None = None,
    window: Window | None = None,
    contrastive_window: ContrastiveWindow | None = None,
    pairing: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """A vl batch: contrastive on the unmasked pair (over the whole accumulation window with a
    `contrastive_window`); ITM + MMM on the masked pair, paired by `pairing` (the window's draw
    for this batch), else by a draw from `generator`."""
    flava = model.flava
    losses: dict[str, torch.Tensor] = {}
    mask = batch["attention_mask"]
    types = batch.get("token_type_ids")
    masked_objectives = _masked_pairs(weights)
    if masked_objectives:
        pixels = batch["pixel_values"]
        if pairing is None:
            pairing = _pairing(pixels, weights, negative_probability, generator)
        text_index, itm_labels = (t.to(pixels.device) for t in pairing)
        positive = itm_labels.bool()
        # With several processes every one joins MMM's all-reduce, matched pairs or not.
        run_mmm = world_size() > 1 or bool(positive.any())
        masked_pos = batch["bool_masked_pos"]
        image_labels = None
        if weights.mmm_image and targets is not None and run_mmm:
            # Before any encoder runs: the frozen codebook's feature maps then come and go while
            # no activations are held for the backward pass, so they do not raise the peak memory.
            image_labels = mim_labels(targets(batch), masked_pos)[positive]
    factor = 1.0
    if weights.contrastive:
        contrastive, factor = _contrastive(flava, batch, contrastive_window)
        losses.update(contrastive)
    if not masked_objectives:
        return _window_total(losses, weights, factor)
    image_m = flava.image_encoder(batch["pixel_values"], masked_pos)
    mask_m = mask[text_index]
    text_m = flava.text_encoder(
        batch["input_ids_masked"][text_index], mask_m, None if types is None else types[text_index]
    )
    fused = flava.fuse(image_m, text_m, mask_m).last_hidden_state  # [B, 1 + (1 + Ni) + Nt, D]
    if weights.itm:
        losses.update(itm_loss(model.itm_head(fused), itm_labels))
    if not run_mmm:
        return _window_total(losses, weights, factor)
    n_image = image_m.last_hidden_state.shape[1] - 1
    mmm_text_labels = batch["mlm_labels"][positive] if weights.mmm_text else None
    losses.update(
        mmm_losses(model, fused[positive], n_image, image_labels, mmm_text_labels, window)
    )
    return _window_total(losses, weights, factor)


def _window_total(
    losses: dict[str, torch.Tensor], weights: LossWeights, factor: float
) -> dict[str, torch.Tensor]:
    """`_total` with the contrastive term counted `factor` times (logged once)."""
    out = _total(losses, weights)
    if factor != 1.0:
        out["loss"] = out["loss"] + (factor - 1.0) * weights.contrastive * losses["contrastive"]
    return out


def mmm_losses(
    model: FlavaForPreTraining,
    fused: torch.Tensor,
    n_image: int,
    image_labels: torch.Tensor | None,
    text_labels: torch.Tensor | None,
    window: Window | None = None,
) -> dict[str, torch.Tensor]:
    """MMM-image and MMM-text on the fused states [P, 1 + (1 + Ni) + Nt, D] of matched pairs."""
    losses = {}
    if image_labels is not None:
        image_part = fused[:, 2 : 2 + n_image]  # skip mm CLS and image CLS
        losses["mmm_image"] = masked_prediction_loss(
            model.mmm_image_head, image_part, image_labels, **_loss_args(window, "mmm_image")
        )
    if text_labels is not None:
        text_part = fused[:, 2 + n_image :]
        losses["mmm_text"] = masked_prediction_loss(
            model.mmm_text_head, text_part, text_labels, **_loss_args(window, "mmm_text")
        )
    return losses


def pretraining_step(
    model: FlavaForPreTraining,
    batch: Batch,
    kind: str,
    targets: TargetFn | None,
    weights: LossWeights,
    negative_probability: float = 0.5,
    generator: torch.Generator | None = None,
    window: Window | None = None,
    contrastive_window: ContrastiveWindow | None = None,
    pairing: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Dispatch one batch to its objectives by source kind ("image", "text" or "vl").

    `window`: under gradient accumulation, the masked-token counts of the optimizer step's
    micro-batches (`window_of`); None normalises by this batch's own counts. `pairing`: a vl
    batch's ITM pairing drawn with the window (`Window.pairings`).
    """
    if kind == Kind.image:
        if targets is None:
            raise ValueError("an image batch needs MIM targets (a codebook or k-means)")
        return image_step(model, batch, targets, weights, window)
    if kind == Kind.text:
        return text_step(model, batch, weights, window)
    if kind == Kind.vl:
        return vl_step(
            model,
            batch,
            targets,
            weights,
            negative_probability,
            generator,
            window,
            contrastive_window,
            pairing,
        )
    raise ValueError(f"unknown batch kind {kind!r}; expected image, text or vl")

"""Collation of pretraining batches: image views and block masks, tokens and text masks.

Every random choice of a sample (its crop and flip, its block mask, its text mask) is drawn from
its own generators, keyed by (seed, batch index, position of the sample in the global batch;
`sample_draws`), so a sample's views do not depend on which process builds it nor on the other
samples of its batch (paper, section 3: MIM and MLM masking; BEiT-style block masks).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from flava.data.sources.sample import Sample
from flava.data.tokenizer import FlavaTokenizer
from flava.data.transforms import ImageTransform
from flava.objectives.kinds import IMAGE_KINDS, TEXT_KINDS, Kind
from flava.objectives.masking import BlockMaskGenerator, mask_tokens


def sample_draws(
    seed: int, key: int, batch_index: int, positions: Sequence[int]
) -> tuple[list[np.random.Generator], list[torch.Generator]]:
    """Per-sample generators (numpy, torch) of the samples at `positions` of a global batch.

    Sample p's generators are seeded from (seed, key, batch_index, p) only, so they do not
    depend on which process builds the sample, nor on the other samples of its batch.
    """
    rngs = [np.random.default_rng([seed, key, batch_index, int(p)]) for p in positions]
    generators = [torch.Generator().manual_seed(int(r.integers(2**62))) for r in rngs]
    return rngs, generators


class BatchBuilder:
    """Turns decoded `Sample`s of one kind into a model batch (transforms, masks, tokens).

    The random draws come from `generator` (torch: crops, flips, text masks) and `rng` (numpy:
    block masks): either one of each shared by the whole batch, drawn sample after sample, or a
    sequence of each with one per item (see `sample_draws`), so that an item's crop, flip and
    masks depend on its own generators only. Texts are cut at `text_max_length` tokens (one
    length, or one per batch kind: the paper read its text-only corpora at up to 512 tokens and
    captions at 77) and padded to the batch's longest (`padding="longest"`) or to that length
    (`"max_length"`); with per-item generators a text's masks are drawn over its own tokens, so
    they do not depend on the padding. Whole-word masking is one setting or one per batch kind
    (the original release masks whole words in captions only).
    """

    def __init__(
        self,
        tokenizer: FlavaTokenizer,
        transform: ImageTransform,
        mask_generator: BlockMaskGenerator,
        text_max_length: int | Mapping[Kind, int] = 77,
        mlm_probability: float = 0.15,
        whole_word_masking: bool | Mapping[Kind, bool] = False,
        padding: str = "longest",
    ) -> None:
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        self.tokenizer = tokenizer
        self.transform = transform
        # Pairs are never flipped: a mirrored image contradicts "left of" / "right of" captions.
        self.pair_transform = copy.copy(transform)
        self.pair_transform.hflip = False
        self.mask_generator = mask_generator
        if isinstance(text_max_length, Mapping):
            self.max_lengths = {str(k): int(v) for k, v in text_max_length.items()}
            self.text_max_length = max(self.max_lengths.values())
        else:
            self.max_lengths, self.text_max_length = {}, int(text_max_length)
        self.mlm_probability = mlm_probability
        words = whole_word_masking if isinstance(whole_word_masking, Mapping) else {}
        self.whole_words = {str(k): bool(v) for k, v in words.items()}
        self.whole_word_masking = bool(whole_word_masking) if not words else False
        self.padding = padding

    def images(
        self,
        images: Sequence[Image.Image],
        generator: torch.Generator | Sequence[torch.Generator],
        rng: np.random.Generator | Sequence[np.random.Generator],
        paired: bool = False,
    ) -> dict[str, torch.Tensor]:
        """pixel_values [B, 3, S, S] (+ codebook_pixel_values) and bool_masked_pos [B, N];
        `paired` images (with captions) are never flipped."""
        transform = self.pair_transform if paired else self.transform
        out = transform.batch(images, generator=generator)
        out["bool_masked_pos"] = self.mask_generator.batch(len(images), rng)
        return out

    def texts(
        self,
        texts: Sequence[str],
        generator: torch.Generator | Sequence[torch.Generator],
        kind: str = Kind.vl,
    ) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask, token_type_ids, input_ids_masked, mlm_labels [B, L]."""
        tok = self.tokenizer(
            list(texts),
            max_length=self.max_lengths.get(kind, self.text_max_length),
            padding=self.padding,
            return_word_ids=self.whole_words.get(kind, self.whole_word_masking),
        )
        masked, labels = mask_tokens(
            tok["input_ids"],
            tok["special_tokens_mask"],
            mask_token_id=self.tokenizer.mask_token_id,
            vocab_size=self.tokenizer.vocab_size,
            probability=self.mlm_probability,
            generator=generator,
            word_ids=tok.get("word_ids"),
        )
        return {
            "input_ids": tok["input_ids"],
            "attention_mask": tok["attention_mask"],
            "token_type_ids": tok["token_type_ids"],
            "input_ids_masked": masked,
            "mlm_labels": labels,
        }

    def __call__(
        self,
        items: Sequence[Sample],
        kind: str,
        generator: torch.Generator | Sequence[torch.Generator],
        rng: np.random.Generator | Sequence[np.random.Generator],
    ) -> dict[str, torch.Tensor]:
        """The tensors of one batch of `kind` (one generator / rng for the batch, or one per
        item)."""
        batch: dict[str, torch.Tensor] = {}
        if kind in IMAGE_KINDS:
            images = [i.decoded_image for i in items]
            batch.update(self.images(images, generator, rng, kind == Kind.vl))
        if kind in TEXT_KINDS:
            batch.update(self.texts([i.decoded_text for i in items], generator, kind))
        return batch

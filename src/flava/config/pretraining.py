"""Typed schema of `python -m flava.train`: training, model and datasets sections, and checks.

The sections shared with other commands (the model's shared keys, what every data section
holds, Lightning, checkpoints, optimisation, one dataset) live in `flava.config.common`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from flava.config.checks import Check, Choice, check_directory, fail_checks
from flava.config.common import (
    DataSectionConfig,
    EvaluationConfig,
    SourceConfig,
    TrainableModelConfig,
    TrainingConfig,
    data_section_checks,
    prompt_checks,
    training_checks,
)
from flava.config.common import model_checks as shared_model_checks
from flava.objectives.kinds import Kind  # the enum lives with the objectives; re-exported here


class MimTarget(Choice):
    """Where the masked-image-modelling targets come from."""

    auto = "auto"
    dalle = "dalle"
    kmeans = "kmeans"


class Sampling(Choice):
    """How each training step picks its data kind."""

    probability = "probability"
    round_robin = "round_robin"


@dataclass
class LossConfig:
    """Objective weights (0 switches an objective off) and ITM negatives."""

    mim_weight: float = 1.0
    """Masked image modelling (image batches)."""
    mlm_weight: float = 1.0
    """Masked language modelling (text batches)."""
    mmm_image_weight: float = 1.0
    """Masked multimodal modelling, image side (pair batches)."""
    mmm_text_weight: float = 1.0
    """Masked multimodal modelling, text side (pair batches)."""
    itm_weight: float = 1.0
    """Image-text matching (pair batches)."""
    global_contrastive_weight: float = 1.0
    """Contrastive loss over the global batch (pair batches)."""
    itm_negative_probability: float = 0.1
    """ITM negatives: the probability that a pair's caption is swapped for another caption of
    its batch. MMM learns only from the matched pairs, so it also sets the share of a pair batch
    MMM sees (0.1: about 90%; 0.5: half). Default: the original release's 0.1 (TorchMultimodal's
    FLAVA `itm_probability`; the paper gives no figure)."""


class InitLayout(Choice):
    """The layout of a `model.init_from` checkpoint (told from its keys when not given)."""

    vit = "vit"
    timm = "timm"
    flava_hf = "flava_hf"
    flava = "flava"
    torchmultimodal = "torchmultimodal"


INIT_PARTS = ("image_encoder", "text_encoder", "multimodal_encoder")
"""The named parts of model.init_from; any other part is a FLAVA parameter prefix."""
PARAMETER_ROOTS = ("flava.", "mim_head", "mlm_head", "mmm_image_head", "mmm_text_head", "itm_head")
"""What a FLAVA parameter prefix (FlavaForPreTraining's key names) starts with."""


@dataclass
class InitFrom:
    """One partial initialisation, applied after the model is built."""

    part: str = ""
    """image_encoder, text_encoder, multimodal_encoder, or a FLAVA parameter prefix (e.g.
    mlm_head, flava.text_projection)."""
    path: str = ""
    """A local directory or weight file, a run directory (runs/x or runs/x/model), or a hub id
    (facebook/dino-vitb16, timm/vit_base_patch16_224.dino), read from the cache first."""
    layout: InitLayout | None = None
    """vit (transformers ViTModel / DINO), timm (VisionTransformer), flava_hf (transformers
    FLAVA), flava (ours) or torchmultimodal (the original release's .pt / Lightning .ckpt);
    None: told from the keys."""
    num_heads: int | None = None
    """The checkpoint's attention heads per layer, checked against the model's. Weights do not
    say it; None reads it from config.json (timm: model_args.num_heads, else its architecture
    name, e.g. vit_base: 12) and, where that is silent too, assumes the model's and says so in
    the start-up table."""


@dataclass
class PretrainingModelConfig(TrainableModelConfig):
    """Which model to build and how to get MIM targets."""

    mim_target: MimTarget = MimTarget.auto
    """auto: dalle when codebook weights are given, else kmeans."""
    codebook: str | None = None
    """DALL-E codebook weights: a pretrained key, a directory or OpenAI's encoder.pkl."""
    kmeans_codes: int = 256
    """k-means codebook size (used when mim_target is kmeans)."""
    kmeans_images: int = 512
    """Training images used to fit the k-means codebook."""
    init_from: list[InitFrom] = field(default_factory=list)
    """Partial initialisations applied in order after the model is built (the paper starts the
    image encoder from DINO, the text encoder from unimodal MLM), e.g.
    '[{part: image_encoder, path: facebook/dino-vitb16}]'; filled, unfilled and unused keys are
    logged in one table at start-up; a width or depth mismatch and a BERT text encoder are
    refused."""
    losses: LossConfig = field(default_factory=LossConfig)


@dataclass
class KindConfig:
    """Datasets of one kind for training and validation."""

    train: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    """Training datasets (mixed by weight)."""
    val: list[SourceConfig] = field(default_factory=lambda: [SourceConfig(size=512, seed=0)])
    """Validation datasets."""
    text_max_length: int | None = None
    """Tokens per text of this kind's batches (None for datasets.text_max_length); the paper read
    its text-only corpora at up to 512 tokens, captions at 77."""
    whole_word_masking: bool | None = None
    """MLM / MMM-text mask all pieces of a word together in this kind's texts. None:
    datasets.whole_word_masking when set, else the original release's choice for the kind:
    captions of pairs (vl) yes, text-only batches no (TorchMultimodal's FLAVA; the paper does
    not say)."""

    def entries(self, role: str) -> list[SourceConfig]:
        """The datasets of `role` ("train" or "val")."""
        return self.train if role == "train" else self.val


WHOLE_WORD_MASKING = {Kind.vl: True, Kind.text: False}
"""The original release's whole-word masking per kind: its image-text collator masks whole
words, its text-only collator single tokens."""


def kind_text_length(d: DatasetsConfig, kind: Kind) -> int:
    """Tokens per text of data kind `kind`: datasets.<kind>.text_max_length, else
    datasets.text_max_length."""
    return int(d.of(kind).text_max_length or d.text_max_length)


def kind_whole_word_masking(d: DatasetsConfig, kind: Kind) -> bool:
    """Whether kind `kind` masks whole words: datasets.<kind>.whole_word_masking, else
    datasets.whole_word_masking, else `WHOLE_WORD_MASKING`."""
    for value in (d.of(kind).whole_word_masking, d.whole_word_masking):
        if value is not None:
            return bool(value)
    return WHOLE_WORD_MASKING[kind]


@dataclass
class DatasetsConfig(DataSectionConfig):
    """Data: which kinds, how they mix per step, text and image processing."""

    selected: list[Kind] = field(default_factory=lambda: [Kind.image, Kind.text, Kind.vl])
    """Kinds in use (vl: image-text pairs)."""
    sampling: Sampling = Sampling.probability
    """probability (each step draws its kind) or round_robin."""
    probabilities: dict[str, float] = field(default_factory=dict)
    """Per-step kind weights, normalised over datasets.selected; a mapping given must name every
    selected kind. Empty: uniform, as the original release draws its loaders (the paper states
    no mix), e.g. {vl: 0.70, image: 0.15, text: 0.15} for more pair steps."""
    image: KindConfig = field(default_factory=KindConfig)
    text: KindConfig = field(default_factory=KindConfig)
    vl: KindConfig = field(default_factory=KindConfig)
    mlm_probability: float = 0.15
    """Fraction of text tokens masked."""
    whole_word_masking: bool | None = None
    """Mask all pieces of a word together in every kind's texts; None: per kind
    (datasets.<kind>.whole_word_masking: by default pairs yes, text-only no)."""
    image_mask_patches: int | None = None
    """Patches masked per image (None: 75/196 of the grid)."""
    crop_scale: list[float] = field(default_factory=lambda: [0.9, 1.0])
    """Random resized crop scale range."""
    log_keys: bool = False
    """Write the key of every training sample to RUN_DIR/samples/rank-R.tsv (batch index, kind,
    key, epoch of a streamed source), to audit what a run read (a URL run_dir receives it with
    each checkpoint and at the end)."""

    def of(self, kind: Kind | str) -> KindConfig:
        """The section of data kind `kind` (datasets.image, datasets.text, datasets.vl)."""
        return {Kind.image: self.image, Kind.text: self.text, Kind.vl: self.vl}[Kind(kind)]


@dataclass
class RunConfig:
    """The whole pretraining run."""

    training: TrainingConfig = field(default_factory=TrainingConfig)
    model: PretrainingModelConfig = field(default_factory=PretrainingModelConfig)
    datasets: DatasetsConfig = field(default_factory=DatasetsConfig)


def evaluation_checks(
    ev: EvaluationConfig, d: DatasetsConfig, max_scenes: int | None = None
) -> list[Check]:
    """Value checks of training.evaluation; `max_scenes` caps num_samples for embedded vl
    validation data (the entry point passes the scene generator's number of distinct scenes)."""
    embedded = max_scenes is not None and any(s.type == "embedded" for s in d.vl.val)
    most = max_scenes if max_scenes is not None and embedded else sys.maxsize
    return [
        (
            1 <= ev.num_samples <= most,
            "training.evaluation.num_samples",
            f"must be 1 to {max_scenes} (distinct held-out scenes)" if embedded else "must be >= 1",
        ),
        (ev.batch_size >= 1, "training.evaluation.batch_size", "must be >= 1"),
        (
            ev.every_n_steps is None or ev.every_n_steps >= 1,
            "training.evaluation.every_n_steps",
            "must be >= 1 or null",
        ),
        *prompt_checks(ev, "training.evaluation"),
    ]


def model_checks(m: PretrainingModelConfig) -> list[Check]:
    """Value checks of the model section (its shared keys, k-means, losses, init_from)."""
    weights = [name for name in LossConfig.__dataclass_fields__ if name.endswith("_weight")]
    return [
        *shared_model_checks(m),
        (m.kmeans_codes >= 2, "model.kmeans_codes", "must be >= 2"),
        (
            0 <= m.losses.itm_negative_probability < 1,
            "model.losses.itm_negative_probability",
            "must be in [0, 1)",
        ),
        *[
            (getattr(m.losses, name) >= 0, f"model.losses.{name}", "must be >= 0")
            for name in weights
        ],
        *init_from_checks(m.init_from),
    ]


def init_from_checks(entries: list[InitFrom]) -> list[Check]:
    """Each model.init_from entry names a part and a path (the weights are read at build)."""
    roots = ", ".join(PARAMETER_ROOTS)
    parts = f"must be {', '.join(INIT_PARTS)} or a FLAVA parameter prefix ({roots}...)"
    checks: list[Check] = []
    for i, entry in enumerate(entries):
        part = str(entry.part).strip()
        named = part.split(".")[0] in INIT_PARTS or part.startswith(PARAMETER_ROOTS)
        checks += [
            (bool(part) and named, f"model.init_from[{i}].part", parts),
            (
                bool(str(entry.path).strip()),
                f"model.init_from[{i}].path",
                "must name a directory, file or hub id",
            ),
            (
                entry.num_heads is None or entry.num_heads >= 1,
                f"model.init_from[{i}].num_heads",
                "must be >= 1 or null",
            ),
        ]
    return checks


def datasets_checks(d: DatasetsConfig) -> list[Check]:
    """Value checks of the datasets section."""
    checks = [
        *data_section_checks(d, "datasets"),
        (0 < d.mlm_probability < 1, "datasets.mlm_probability", "must be in (0, 1)"),
        *[
            (
                length is None or length >= 3,
                f"datasets.{k}.text_max_length",
                "must be >= 3",
            )
            for k in (Kind.text, Kind.vl)
            for length in [d.of(k).text_max_length]
        ],
        (len(d.selected) > 0, "datasets.selected", "must name at least one of image, text, vl"),
    ]
    if d.sampling == Sampling.probability and d.probabilities:
        probs = {str(k): d.probabilities.get(k) for k in d.selected}
        missing = [k for k, p in probs.items() if p is None]
        given = [p for p in probs.values() if p is not None]
        checks.append(
            (
                not missing,
                "datasets.probabilities",
                f"names no weight for the selected kind(s) {', '.join(missing)}; give one "
                "for each selected kind, or {} for uniform",
            )
        )
        checks.append(
            (
                bool(missing) or (all(p >= 0 for p in given) and sum(given) > 0),
                "datasets.probabilities",
                f"need non-negative weights with a positive sum, got {probs}",
            )
        )
    return checks


def validate(cfg: RunConfig, max_scenes: int | None = None) -> None:
    """Value checks that types alone cannot express (`max_scenes`: see `evaluation_checks`)."""
    from flava.checkpoints.run_dir import is_url

    t, d = cfg.training, cfg.datasets
    fail_checks(
        cfg,
        [
            *training_checks(t),
            *model_checks(cfg.model),
            *evaluation_checks(t.evaluation, d, max_scenes),
            *datasets_checks(d),
        ],
    )
    if not is_url(t.run_dir):
        check_directory(t.run_dir, "training.run_dir")

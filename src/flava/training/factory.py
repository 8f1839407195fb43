"""The pretraining model and its MIM targets from `cfg.model`, without Lightning.

The final model config is worked out first (a preset with the image vocabulary of its MIM
targets: the DALL-E codebook's or `model.kmeans_codes`), then the model is built once. A
pretrained key is loaded as saved; only when k-means targets replace the codebook its pretrained
heads were sized for are the two image-prediction heads rebuilt for `model.kmeans_codes`.
`model.init_from` entries then overwrite parts of it (e.g. the image encoder from DINO).
k-means fitting is a separate step of the run (`fit_kmeans`), once training images are at hand.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from flava.checkpoints.init_from import format_init_reports, init_from
from flava.checkpoints.io import KMEANS_FILE, CheckpointError, load_kmeans
from flava.checkpoints.loading import from_pretrained
from flava.config import ConfigError, PretrainingModelConfig
from flava.config.pretraining import InitFrom
from flava.model.codebook import ImageCodebook
from flava.model.config import FlavaConfig
from flava.model.flava import FlavaForPreTraining
from flava.model.presets import preset
from flava.objectives.targets import KMeansCodebook

log = logging.getLogger(__name__)


def mim_target_kind(mcfg: PretrainingModelConfig) -> str:
    """ "dalle" or "kmeans" for this model config (auto: dalle when weights are given)."""
    if mcfg.mim_target != "auto":
        return mcfg.mim_target
    return "dalle" if (mcfg.codebook or mcfg.pretrained_model_key) else "kmeans"


def check_codebook(mcfg: PretrainingModelConfig) -> None:
    """Before any work: DALL-E targets' codebook weights are at hand (a file or directory, the
    `dalle` key's encoder.pkl, a pretrained key cached or reachable), else one line."""
    from flava.checkpoints.loading import resolve_source
    from flava.checkpoints.pretrained import DALLE_KEY, PRETRAINED_KEYS

    source = mcfg.codebook
    if mim_target_kind(mcfg) != "dalle" or (mcfg.pretrained_model_key and not source):
        return
    if not source:
        raise ConfigError(
            "model.mim_target=dalle needs codebook weights: set model.codebook=dalle (OpenAI's "
            "encoder.pkl), a path or flava_image_codebook, or use model.mim_target=kmeans"
        )
    if not Path(source).expanduser().exists() and source not in (DALLE_KEY, *PRETRAINED_KEYS):
        raise CheckpointError(
            f"model.codebook={source}: no such file or directory, and not a codebook key "
            f"({DALLE_KEY}, {', '.join(PRETRAINED_KEYS)}); or use model.mim_target=kmeans"
        )
    resolve_source(source)  # the cache, encoder.pkl's place or the hub, else one line


def preset_config(name: str, image_vocab_size: int, codebook: ImageCodebook | None) -> FlavaConfig:
    """Preset `name` predicting `image_vocab_size` image tokens (with `codebook`'s config)."""
    config = preset(name)
    image = dataclasses.replace(config.image, vocab_size=image_vocab_size)
    if codebook is None:
        return dataclasses.replace(config, image=image)
    return dataclasses.replace(config, image=image, codebook=codebook.config)


def build_pretraining_model(
    mcfg: PretrainingModelConfig, initialise: bool = True
) -> tuple[FlavaForPreTraining, KMeansCodebook | None]:
    """The pretraining model (preset or pretrained) and, for k-means targets, the codebook;
    `initialise=False` (a resumed run, whose checkpoint holds the weights) skips init_from."""
    target = mim_target_kind(mcfg)
    if mcfg.pretrained_model_key:
        model, target = _load_pretrained(mcfg, mcfg.pretrained_model_key, target)
    else:
        model = _build_preset(mcfg, target)
    entries = list(mcfg.init_from) if initialise else []
    apply_init_from(model, entries)
    if mcfg.activation_checkpointing:
        for enc in (
            model.flava.image_encoder,
            model.flava.text_encoder,
            model.flava.multimodal_encoder,
        ):
            enc.set_activation_checkpointing(True)
    if target == "dalle":
        return model, None
    kmeans = KMeansCodebook(mcfg.kmeans_codes, model.config.image.patch_size)
    if mcfg.pretrained_model_key:
        _load_kmeans(kmeans, _kmeans_state(mcfg.pretrained_model_key), mcfg.pretrained_model_key)
    for where, state in _image_head_codebooks(entries, target):
        _load_kmeans(kmeans, state, where)
    return model, kmeans


IMAGE_HEADS = ("mim_head", "mmm_image_head")
"""The heads whose outputs are MIM target ids: they go with the codebook they were trained on."""


def _kmeans_state(path: str) -> dict[str, torch.Tensor] | None:
    """The k-means codebook saved beside a model directory (or a run directory's model/)."""
    folder = Path(path).expanduser()
    if folder.is_dir() and not (folder / KMEANS_FILE).is_file() and (folder / "model").is_dir():
        folder = folder / "model"
    return load_kmeans(folder) if folder.is_dir() else None


def _image_head_codebooks(
    entries: list[InitFrom], target: str
) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """(where, k-means state) of each model.init_from entry that fills an image head: its
    target ids mean patches of its own codebook, so that codebook is loaded with it (k-means
    targets); one that has none, or has one while the run predicts DALL-E tokens, is refused."""
    found = []
    for i, entry in enumerate(entries):
        if str(entry.part).strip().split(".")[0] not in IMAGE_HEADS:
            continue
        where = f"model.init_from[{i}] ({entry.part}, {entry.path})"
        state = _kmeans_state(str(entry.path))
        if target == "dalle" and state is not None:
            raise ConfigError(
                f"{where}: its image heads predict k-means codes, but this run predicts DALL-E "
                "tokens; set model.mim_target=kmeans or drop the entry"
            )
        if target == "kmeans" and state is None:
            raise ConfigError(
                f"{where}: no {KMEANS_FILE} beside its weights, so its image heads' target ids "
                "would mean nothing to a newly fitted k-means codebook; give the model/ "
                "directory of the k-means run that trained them, or drop the entry"
            )
        if state is not None:
            found.append((where, state))
    return found


def _load_kmeans(kmeans: KMeansCodebook, state: dict[str, torch.Tensor] | None, where: str) -> None:
    """The k-means codebook a model's image heads were trained with: their target ids keep
    meaning the same patches (without one, a fresh codebook is fitted)."""
    if state is None:
        return
    codes = int(state["centroids"].shape[0])
    if codes != kmeans.num_codes:
        raise ConfigError(
            f"model.kmeans_codes={kmeans.num_codes}, but {where} was trained with a {codes}-code "
            f"k-means codebook; set model.kmeans_codes={codes} to keep its MIM heads' targets"
        )
    kmeans.load_state_dict(state)
    log.info("k-means MIM codebook (%d codes) loaded from %s", codes, where)


def apply_init_from(model: FlavaForPreTraining, entries: list[InitFrom]) -> None:
    """Apply `model.init_from` entries in order; log one table of filled / unfilled / unused
    keys (a refusal is one line naming the entry)."""
    reports = []
    for i, entry in enumerate(entries):
        try:
            reports.append(init_from(model, entry.part, entry.path, entry.layout, entry.num_heads))
        except CheckpointError as exc:
            raise CheckpointError(f"model.init_from[{i}] ({entry.part}): {exc}") from None
    if reports:
        log.info("%s", format_init_reports(reports))


def _build_preset(mcfg: PretrainingModelConfig, target: str) -> FlavaForPreTraining:
    """A randomly initialised preset whose image heads fit its MIM targets."""
    if target == "kmeans":
        config = preset_config(mcfg.preset, mcfg.kmeans_codes, None)
        return FlavaForPreTraining(config, codebook=None)
    check_codebook(mcfg)
    assert mcfg.codebook is not None  # check_codebook refuses DALL-E targets without one
    codebook = from_pretrained(ImageCodebook, mcfg.codebook)
    config = preset_config(mcfg.preset, codebook.config.vocab_size, codebook)
    return FlavaForPreTraining(config, codebook=codebook)


def _load_pretrained(
    mcfg: PretrainingModelConfig, key: str, target: str
) -> tuple[FlavaForPreTraining, str]:
    """The pretrained model `key` and its MIM target kind (k-means when it has no codebook)."""
    model = from_pretrained(FlavaForPreTraining, key, codebook=mcfg.codebook)
    if target == "dalle" and model.codebook is None:
        log.warning("no codebook weights with %s: using k-means MIM targets", key)
        target = "kmeans"
    if target == "dalle":
        return model, target
    model.codebook = None  # k-means targets: no DALL-E codebook in the model
    if model.config.image.vocab_size != mcfg.kmeans_codes:  # heads sized for another codebook
        model.resize_image_heads(mcfg.kmeans_codes)
    return model, target


def fit_kmeans(kmeans: KMeansCodebook, images: torch.Tensor, seed: int, requested: int) -> None:
    """Fit the k-means MIM codebook on `images` [N, 3, S, S] (`requested`: model.kmeans_images)."""
    try:
        inertia = kmeans.fit(images.to(kmeans.centroids.device), seed=seed)
    except ValueError as exc:  # too few patches for the codebook
        raise ConfigError(
            f"model.kmeans_codes={kmeans.num_codes}: {exc} (model.kmeans_images="
            f"{requested}, {images.shape[0]} training images found)"
        ) from None
    log.info(
        "fitted a %d-code k-means MIM codebook on %d images (inertia %.4f)",
        kmeans.num_codes,
        images.shape[0],
        inertia,
    )

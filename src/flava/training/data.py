"""LightningDataModule for pretraining: builds sources, the batch builder and the mixed stream."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import lightning as L
import torch

from flava.config import ConfigError, RunConfig, SourceConfig
from flava.config.pretraining import kind_text_length, kind_whole_word_masking
from flava.data.batch import PretrainingBatch
from flava.data.mixing import (
    KINDS,
    BatchBuilder,
    FixedBatches,
    MixedBatches,
    Stream,
)
from flava.data.sources.factory import checked_source
from flava.data.streams import Layout, ReaderKey, elastic_states, is_iterable, stream_seed
from flava.data.tokenizer import load_tokenizer
from flava.data.transforms import image_transform
from flava.model.config import FlavaConfig
from flava.objectives.kinds import Kind
from flava.objectives.masking import BlockMaskGenerator
from flava.objectives.pretraining import CONTRASTIVE_INPUTS

log = logging.getLogger("flava")


def _where(kind: str, role: str, index: int, entry: SourceConfig) -> str:
    name = entry.key or entry.path or (entry.shards[0] if entry.shards else "")
    return f"datasets.{kind}.{role}[{index}] ({entry.type}{' ' + str(name) if name else ''})"


def check_source_fields(cfg: RunConfig) -> None:
    """Every dataset entry of every kind sets only fields of its type (one-line SourceError)."""
    from flava.data import sources

    for kind in KINDS:
        for role in ("train", "val"):
            for i, entry in enumerate(cfg.datasets.of(kind).entries(role)):
                sources.check_fields(entry, f"datasets.{kind}.{role}[{i}]")


def check_sources(cfg: RunConfig) -> None:
    """Fail within seconds, with one line, if a configured dataset cannot be reached.

    First every entry's fields (`check_source_fields`); then every selected kind's train and
    val entries without reading data: local paths and shards exist, Hugging Face sets are
    cached (offline) or answer on the Hub (short timeout).
    """
    from flava.data import sources

    check_source_fields(cfg)
    d = cfg.datasets
    for kind in KINDS:
        if kind not in d.selected:
            continue
        for role in ("train", "val"):
            for i, entry in enumerate(d.of(kind).entries(role)):
                try:
                    sources.check(entry)
                except ConfigError as exc:
                    raise sources.SourceError(f"{_where(kind, role, i, entry)}: {exc}") from None


class PretrainingData(L.LightningDataModule):
    """Mixed-kind training batches and fixed validation batches per kind."""

    def __init__(
        self, cfg: RunConfig, model_config: FlavaConfig, codebook_size: int | None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.model_config = model_config
        self.codebook_size = codebook_size
        self.start_batch = 0  # index of the next training batch: the data position
        self.saved: dict[str, Any] = {}  # the data state of the checkpoint resumed from
        self.initial_states: dict[ReaderKey, dict[str, Any]] = {}  # this rank's readers at start
        self.stream_states: dict[ReaderKey, dict[str, Any]] = {}  # each reader's, as trained
        self._train: MixedBatches | None = None
        d = cfg.datasets
        image = model_config.image
        self.tokenizer = load_tokenizer()
        masker = BlockMaskGenerator.for_image(
            image.image_size, image.patch_size, num_masking_patches=d.image_mask_patches
        )
        lengths = {k: kind_text_length(d, k) for k in (Kind.text, Kind.vl)}
        whole_words = {k: kind_whole_word_masking(d, k) for k in (Kind.text, Kind.vl)}
        positions = model_config.text.max_position_embeddings
        for kind, length in lengths.items():
            if length > positions:
                key = (
                    f"datasets.{kind}.text_max_length"
                    if d.of(kind).text_max_length
                    else "datasets.text_max_length"
                )
                raise ConfigError(
                    f"{key}={length} is more than the text encoder's {positions} positions; "
                    f"set it to at most {positions}"
                )
        self.train_builder = BatchBuilder(
            self.tokenizer,
            image_transform(
                "pretrain", image.image_size, codebook_size, (d.crop_scale[0], d.crop_scale[1])
            ),
            masker,
            lengths,
            d.mlm_probability,
            whole_words,
        )
        self.val_builder = BatchBuilder(
            self.tokenizer,
            image_transform("eval", image.image_size, codebook_size),
            masker,
            lengths,
            d.mlm_probability,
            whole_words,
        )
        self._streams: dict[str, dict[Kind, Stream]] = {}
        check_sources(cfg)  # unreachable data fails here, before any data is read

    def streams(self, role: str) -> dict[Kind, Stream]:
        """The configured streams per kind for "train" or "val" (built once)."""
        if role not in self._streams:
            d = self.cfg.datasets
            size = self.model_config.image.image_size
            out = {}
            for kind in KINDS:
                if kind not in d.selected:
                    continue
                entries = d.of(kind).entries(role)
                if not entries:
                    continue
                sources = []
                for i, entry in enumerate(entries):
                    where = _where(kind, role, i, entry)
                    sources.append(checked_source(entry, role, size, kind, where))
                out[kind] = Stream(kind, sources, [float(e.weight) for e in entries])
            self._streams[role] = out
        return self._streams[role]

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def train_dataloader(self) -> torch.utils.data.DataLoader | AccumulationWindows:
        t, d = self.cfg.training, self.cfg.datasets
        rank, world = self._rank()
        dataset = MixedBatches(
            self.streams("train"),
            self.train_builder,
            batch_size=t.batch_size,
            seed=t.seed,
            sampling=d.sampling,
            probabilities=dict(d.probabilities),
            rank=rank,
            world_size=world,
            start_batch=self.start_batch,
            accumulation=int(t.lightning.accumulate_grad_batches),
            sample_positions=self.saved.get("sample_positions"),
        )
        self.initial_states = self._resume_streams(dataset, max(1, t.num_workers))
        dataset.stream_states = self.initial_states
        self._train = dataset
        loader = _loader(dataset, t.num_workers)
        k = int(t.lightning.accumulate_grad_batches)
        if k == 1:
            return loader
        return AccumulationWindows(loader, k, bool(t.contrastive_accumulation))

    def val_dataloader(self) -> list[torch.utils.data.DataLoader]:
        t = self.cfg.training
        rank, world = self._rank()
        loaders = []
        for kind, stream in self.streams("val").items():
            try:
                ds = FixedBatches(
                    stream,
                    self.val_builder,
                    t.batch_size,
                    t.lightning.limit_val_batches,
                    t.seed,
                    rank,
                    world,
                )
            except ValueError as exc:
                raise ConfigError(f"datasets.{kind}.val: {exc}") from None
            loaders.append(_loader(ds, 0))
        return loaders

    def _resume_streams(
        self, dataset: MixedBatches, readers: int
    ) -> dict[ReaderKey, dict[str, Any]]:
        """The starting state of each reader of this process (see `flava.data.streams`): its own
        saved state at the same layout, else the saved epochs' leftovers dealt anew; says in one
        line what a changed layout does."""
        saved = {ReaderKey.parse(n): v for n, v in self.saved.get("streams", {}).items()}
        rank, world = dataset.rank, dataset.world_size
        out, notes = {}, []
        for k, kind in enumerate(dataset.kinds):
            for i, source in enumerate(dataset.streams[kind].sources):
                if not is_iterable(source):
                    continue
                first = ReaderKey(kind, i, rank, 0)
                old = [v for key, v in saved.items() if key.same_stream(first)]
                same = all(list(v["layout"][1::2]) == [world, readers] for v in old)
                for reader in range(readers):
                    layout = Layout(rank, world, reader, readers)
                    key = ReaderKey(kind, i, rank, reader)
                    if same:
                        state = dict(saved.get(key, {}))
                    else:
                        seed = stream_seed(dataset.seed, (k, i))
                        state, note = elastic_states(old, source, seed, layout)
                        if reader == 0:
                            notes.append(f"{kind}/{i} {note}")
                    state.setdefault("layout", [rank, world, reader, readers])
                    state.setdefault("shards", source.num_shards())
                    out[key] = state
        self._say_layout(world, readers, notes)
        return out

    def _say_layout(self, world: int, readers: int, notes: list[str]) -> None:
        """One start-up line when the run resumes at another process or worker count."""
        before = self.saved.get("layout")
        if not before or [before["processes"], before["readers"]] == [world, readers]:
            return
        if self._rank()[0] == 0:
            log.warning(
                "resuming %d process(es) x %d reader(s) from a checkpoint of %d x %d: global "
                "batch %d -> %d samples; streams: %s; random-access sources go on from the "
                "sample their epoch had reached",
                world,
                readers,
                before["processes"],
                before["readers"],
                before["processes"] * self.cfg.training.batch_size,
                world * self.cfg.training.batch_size,
                "; ".join(notes) or "none",
            )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A training batch on its way to its step moves the data position past it: the next
        batch's index, and the position its readers reached (carried in the batch, since the
        readers run in the loader's worker processes)."""
        if self.trainer is not None and self.trainer.training:
            self.start_batch = batch.index + 1
            self.stream_states.update(batch.tally.stream_states)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The data position (saved in every checkpoint): index of the next training batch,
        every reader's position of every process (gathered: all processes call this together),
        and the samples consumed of each random-access source."""
        batch = self.start_batch
        positions = {**self.initial_states, **self.stream_states}
        local = {str(key): state for key, state in positions.items()}
        out: dict[str, Any] = {"start_batch": batch, "streams": _gathered(local)}
        if self._train is not None:
            readers = max(1, self.cfg.training.num_workers)
            out["layout"] = {"processes": self._train.world_size, "readers": readers}
            out["sample_positions"] = self._train.sample_positions_at(batch)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start_batch = int(state.get("start_batch", 0))
        self.saved = dict(state)


def _gathered(local: dict[str, Any]) -> dict[str, Any]:
    """`local` merged with every other process's (one dict of all readers' states)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return {k: v for part in parts for k, v in part.items()}


WINDOW_TENSORS = ("bool_masked_pos", "mlm_labels")
"""What each micro-batch carries of every member of its window (with its kind and batch index):
enough to count the masks."""


class AccumulationWindows:
    """The training batches in windows of `k` (one optimizer step under gradient accumulation).

    Each micro-batch carries, in `window`, the kind, batch index and masks of every member of
    its window, so that its masked-token losses can be normalised by the window's count before
    the window's later micro-batches have run (`objectives.pretraining.window_counts`). Windows
    start at the first batch, as Lightning's accumulation does; a checkpoint is written after an
    optimizer step, so a resumed run starts on a window boundary.
    """

    def __init__(
        self, loader: Iterable[PretrainingBatch], k: int, contrastive: bool = False
    ) -> None:
        self.loader, self.k, self.contrastive = loader, k, contrastive

    def __iter__(self) -> Iterator[PretrainingBatch]:
        batches = iter(self.loader)
        while window := list(itertools.islice(batches, self.k)):
            members = [_member(b) for b in window]
            window = [dataclasses.replace(b, window=members) for b in window]
            if self.contrastive and window[0].kind == Kind.vl:
                # the first micro-batch carries every member's pairs (the contrastive window)
                inputs = [_only(b.tensors, CONTRASTIVE_INPUTS) for b in window]
                window[0].window_inputs = inputs
            yield from window


def _only(tensors: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {k: tensors[k] for k in names if k in tensors}


def _member(batch: PretrainingBatch) -> dict[str, Any]:
    """A window member: kind, batch index and masks (`objectives.pretraining.window_of`)."""
    return {"kind": batch.kind, "batch_index": batch.index, **_only(batch.tensors, WINDOW_TENSORS)}


def _loader(dataset: torch.utils.data.Dataset, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )

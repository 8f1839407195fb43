"""Hugging Face datasets: load_dataset / load_from_disk, column mapping, streaming, the Hub probe.

The one place that asks the Hub whether a dataset can be had (`check_huggingface`): without the
`datasets` package it says how to install it, offline it looks for a cached copy, online it asks
once with a short timeout, and either way a dataset that cannot be had fails at once with one
line saying how to provide it. The original release's `IMAGENET_TAR` (an ImageNet archive for a
retired `imagenet-1k` loading script) is refused in one line naming the source that replaces it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from flava.config import SourceConfig
from flava.data.sources.errors import SourceError
from flava.data.sources.readers import IndexedSource, StreamingSource
from flava.data.sources.registry import CAPTIONED_IMAGES, LABELLED_IMAGES, SourceType
from flava.data.sources.sample import Sample, has_text_field, set_label, texts_of
from flava.objectives.kinds import Kind

log = logging.getLogger("flava.data.sources")

# Packaged Hugging Face builders: keys that name a file format, not a dataset on the Hub.
_PACKAGED = frozenset(
    {"parquet", "json", "csv", "text", "arrow", "imagefolder", "webdataset", "pandas", "sql"}
)


_HUB_ANSWERED: set[tuple[str, bool]] = set()  # datasets the Hub confirmed in this process


def _offline() -> bool:
    from huggingface_hub import constants

    try:
        import datasets.config as dconfig

        offline = bool(dconfig.HF_HUB_OFFLINE)
    except ImportError:
        offline = False
    return offline or bool(constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def _forced_offline() -> Iterator[None]:
    """Read the local cache only (the Hub did not answer)."""
    import datasets.config as dconfig
    from huggingface_hub import constants

    saved = (dconfig.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    dconfig.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dconfig.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _hf_cached(key: str, cache_dir: str | None) -> bool:
    """Whether a copy of dataset `key` seems to be in the datasets or hub cache."""
    import datasets.config as dconfig
    from datasets.naming import camelcase_to_snakecase
    from huggingface_hub import constants

    parts = key.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    roots = [Path(cache_dir or dconfig.HF_DATASETS_CACHE) / "___".join(parts)]
    roots.append(Path(constants.HF_HUB_CACHE) / ("datasets--" + key.replace("/", "--")))
    return any(r.is_dir() for r in roots)


DATASETS_INSTALL = "pip install 'datasets>=3.1'"
"""The command that installs the Hugging Face datasets package (also: the `data` extra)."""
IMAGENET_KEYS = frozenset({"imagenet-1k", "ILSVRC/imagenet-1k", "aps/imagenet2012"})
"""Hub keys under which the original release read ImageNet with `data_dir: $IMAGENET_TAR`."""


def require_datasets(what: str) -> None:
    """Fail (SourceError, one line) unless the Hugging Face `datasets` package imports; `what`
    names the dataset that needs it."""
    try:
        importlib.import_module("datasets")
    except ImportError:
        raise SourceError(
            f"{what} needs the Hugging Face datasets package, which is not installed: "
            f"{DATASETS_INSTALL}"
        ) from None


def refuse_imagenet_tar(cfg: SourceConfig) -> None:
    """Refuse the original release's IMAGENET_TAR for an ImageNet Hub entry, in one line.

    The original debug config passed it as `data_dir` to the `imagenet-1k` loading script of
    2022, which read Kaggle's ILSVRC archive; that script is gone (the Hub set is parquet now,
    and `datasets` runs no scripts), and a single 150 GB gzip stream cannot be split over
    processes or resumed in O(shards). Reading the Hub copy instead would ignore the user's
    archive without a word, so the run stops and names the source that reads the archive.
    """
    archive = os.environ.get("IMAGENET_TAR")
    if not archive or cfg.key not in IMAGENET_KEYS or cfg.path:
        return
    train = "DIR/ILSVRC/Data/CLS-LOC/train"
    raise SourceError(
        f"IMAGENET_TAR={archive} is not read (the original release passed it to a retired "
        f"{cfg.key} loading script): extract the archive it names (tar xzf ARCHIVE -C DIR) and "
        f"replace the {cfg.key} entries with its class folders, e.g. 'datasets.image.train="
        f"[{{type: image_folder, path: {train}}}]' (or shards of them: python -m "
        f"flava.data.write_shards {train} SHARDS), or unset IMAGENET_TAR to read {cfg.key} "
        "from the Hub"
    )


def _hf_name(cfg: SourceConfig) -> str:
    return f"{cfg.key}/{cfg.subset}" if cfg.subset else str(cfg.key)


def _hf_hint(cfg: SourceConfig) -> str:
    token = ""
    if cfg.gated:
        token = "it is gated: accept its terms on huggingface.co and log in (hf auth login or "
        token += "HF_TOKEN); "
    return (
        f"{token}run once online to fill the cache (HF_DATASETS_CACHE), or give path: to a copy "
        "saved with save_to_disk, or use webdataset shards (python -m flava.data.write_shards)"
    )


def _hf_local_key(key: str) -> bool:
    return key in _PACKAGED or Path(key).expanduser().exists()


def check_huggingface(cfg: SourceConfig) -> bool:
    """Fail fast (SourceError) if the dataset cannot be had; True if only the cache can serve it.

    Offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) it looks for a cached copy; online it asks
    the Hub once with a short timeout (no retries): missing, gated without a token, unreachable
    and not cached all fail with one line; so do a missing `datasets` package and IMAGENET_TAR.
    """
    refuse_imagenet_tar(cfg)
    require_datasets(f"dataset {_hf_name(cfg) if cfg.key else cfg.path}")
    if cfg.path:
        if not Path(cfg.path).expanduser().exists():
            raise SourceError(
                f"Hugging Face dataset {cfg.path} (saved with save_to_disk) not found"
            )
        return False
    if not cfg.key:
        raise SourceError("huggingface source needs key: (Hub dataset) or path: (save_to_disk)")
    if _hf_local_key(cfg.key):
        return False
    name = _hf_name(cfg)
    if _offline():
        if _hf_cached(cfg.key, cfg.cache_dir):
            return True
        raise SourceError(
            f"Hugging Face dataset {name} is not in the local cache and the Hub is offline "
            f"(HF_HUB_OFFLINE); {_hf_hint(cfg)}"
        )
    if (cfg.key, bool(cfg.gated)) in _HUB_ANSWERED:
        return False
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError

    try:
        info = HfApi().dataset_info(cfg.key, timeout=cfg.timeout)
    except GatedRepoError:
        raise SourceError(f"Hugging Face dataset {name}: access denied; {_hf_hint(cfg)}") from None
    except RepositoryNotFoundError:
        raise SourceError(
            f"Hugging Face dataset {cfg.key} not found on the Hub (private or gated: log in with "
            "hf auth login or HF_TOKEN)"
        ) from None
    except Exception as exc:  # connection refused, DNS, timeout, offline mode
        if _hf_cached(cfg.key, cfg.cache_dir):
            log.warning("the Hub is unreachable; using the cached copy of %s", name)
            return True
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise SourceError(
            f"Hugging Face dataset {name} cannot be reached ({reason}) and is not cached; "
            f"{_hf_hint(cfg)}"
        ) from None
    if getattr(info, "gated", False) and get_token() is None:
        raise SourceError(
            f"Hugging Face dataset {name} is gated and no token is set; {_hf_hint(cfg)}"
        )
    _HUB_ANSWERED.add((cfg.key, bool(cfg.gated)))
    return False


def _split(cfg: SourceConfig, role: str) -> str:
    split = cfg.split or ("train" if role == "train" else "validation")
    return str(dict(cfg.split_key_mapping).get(split, split))


def load_huggingface(cfg: SourceConfig, role: str) -> Any:
    """The configured split as a `datasets.Dataset` or `IterableDataset` (streaming)."""
    import datasets

    split = _split(cfg, role)
    name = _hf_name(cfg) if cfg.key else str(cfg.path)
    cached_only = check_huggingface(cfg)
    try:
        if cfg.path:
            ds = datasets.load_from_disk(str(Path(cfg.path).expanduser()))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise SourceError(
                        f"{cfg.path} has no split {split!r} (splits: {', '.join(ds)}); "
                        "set split: or split_key_mapping:"
                    )
                ds = ds[split]
            if cfg.streaming:
                ds = ds.to_iterable_dataset(num_shards=max(1, min(cfg.stream_shards, len(ds))))
        else:
            kwargs: dict[str, Any] = {"split": split, "streaming": cfg.streaming}
            if cfg.cache_dir:
                kwargs["cache_dir"] = cfg.cache_dir
            if cfg.data_files:
                kwargs["data_files"] = list(cfg.data_files)
            with _forced_offline() if cached_only else contextlib.nullcontext():
                ds = datasets.load_dataset(cfg.key, cfg.subset, **kwargs)
    except SourceError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise SourceError(
            f"Hugging Face dataset {name} ({split}) cannot be loaded: {type(exc).__name__}: "
            f"{reason}; {_hf_hint(cfg)}"
        ) from None
    return _prepare_columns(ds, cfg)


def _prepare_columns(ds: Any, cfg: SourceConfig) -> Any:
    """Rename, drop unused columns, keep images encoded (decoded by us, lazily)."""
    import datasets

    for old, new in cfg.rename_columns:
        if ds.column_names is not None and old in ds.column_names:
            ds = ds.rename_column(old, new)
    columns = ds.column_names
    if columns is not None:
        drop = [c for c in cfg.remove_columns if c in columns]
        if drop:
            ds = ds.remove_columns(drop)
        wanted = (cfg.image_column, *cfg.text_columns, cfg.text_pair_column, cfg.label_column)
        keep = [c for c in wanted if c and c in columns]
        keep = [c for c in dict.fromkeys(keep) if c not in drop]
        if not keep:
            raise SourceError(
                f"Hugging Face dataset {_hf_name(cfg) if cfg.key else cfg.path}: none of the "
                f"columns image_column={cfg.image_column!r}, text_columns="
                f"{list(cfg.text_columns)} exist (columns: {', '.join(columns)})"
            )
        ds = ds.select_columns(keep)
    features = ds.features
    if features is not None and isinstance(features.get(cfg.image_column), datasets.Image):
        ds = ds.cast_column(cfg.image_column, datasets.Image(decode=False))
    return ds


def row_sample(row: dict[str, Any], key: str, cfg: SourceConfig) -> Sample:
    """One dataset row as a raw sample (images kept encoded; the label as read)."""
    image = row.get(cfg.image_column)
    if isinstance(image, dict):
        data = image.get("bytes")
        if data is None and image.get("path"):
            data = Path(image["path"]).read_bytes()
        image = data
    elif isinstance(image, str):
        image = image.strip() or None  # a URL or path column (e.g. red_caps' image_url)
    elif image is not None and not isinstance(image, (bytes, Image.Image)):
        image = None
    texts = [t for c in cfg.text_columns for t in texts_of(row.get(c))]
    empty = not texts and any(has_text_field(row.get(c)) for c in cfg.text_columns)
    pair = texts_of(row.get(cfg.text_pair_column)) if cfg.text_pair_column else []
    sample = Sample(key=key, image=image, texts=texts, pair=pair[0] if pair else None)
    sample.empty_text = empty
    set_label(sample, row.get(cfg.label_column))
    return sample


def _class_names(dataset: Any, column: str) -> list[str] | None:
    """The names of a `ClassLabel` column, else None."""
    feature = (dataset.features or {}).get(column)
    names = getattr(feature, "names", None)
    return list(names) if names else None


def _kinds(columns: Sequence[str] | None, cfg: SourceConfig) -> frozenset[str]:
    if columns is None:
        return frozenset(Kind)
    has_image = cfg.image_column in columns
    has_text = any(c in columns for c in cfg.text_columns)
    kinds = {Kind.image} if has_image else set()
    kinds |= {Kind.text} if has_text else set()
    kinds |= {Kind.vl} if has_image and has_text else set()
    return frozenset(kinds)


class HuggingFaceSource(IndexedSource):
    """A Hugging Face `datasets.Dataset` read by index (rows with empty texts are dropped)."""

    split: str | None = None
    """The split read (set by `from_config`)."""

    def __init__(self, dataset: Any, cfg: SourceConfig, name: str) -> None:
        text_columns = [c for c in cfg.text_columns if c in dataset.column_names]
        if text_columns and cfg.image_column not in dataset.column_names:

            def non_empty(*columns: list[Any]) -> list[bool]:
                return [any(texts_of(v) for v in values) for values in zip(*columns, strict=True)]

            dataset = dataset.filter(non_empty, input_columns=text_columns, batched=True)
        self.dataset = dataset
        self.cfg = cfg
        self.name = name
        self.kinds = _kinds(dataset.column_names, cfg)
        self.class_names = _class_names(dataset, cfg.label_column)

    @classmethod
    def from_config(cls, cfg: SourceConfig, role: str) -> IndexedSource | StreamingSource:
        """The configured dataset: random access, or `HuggingFaceStream` when streaming."""
        ds = load_huggingface(cfg, role)
        name = f"huggingface {_hf_name(cfg) if cfg.key else cfg.path} ({_split(cfg, role)})"
        source = HuggingFaceStream(ds, cfg, name) if cfg.streaming else cls(ds, cfg, name)
        source.split = _split(cfg, role)
        return source

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, index: int) -> Sample:
        """Row `index` as a raw sample."""
        return row_sample(self.dataset[int(index)], str(index), self.cfg)

    def labels(self) -> list[Any]:
        """The label column (no image is decoded)."""
        if self.cfg.label_column not in self.dataset.column_names:
            return [None] * len(self)
        return list(self.dataset[self.cfg.label_column])

    def describe(self) -> str:
        """Dataset name, split and size."""
        return f"{self.name}, {len(self)} rows"


class HuggingFaceStream(StreamingSource):
    """A streamed Hugging Face `IterableDataset`; its data files are the shards."""

    split: str | None = None
    """The split read (set by `HuggingFaceSource.from_config`)."""

    def __init__(self, dataset: Any, cfg: SourceConfig, name: str) -> None:
        super().__init__(cfg.shuffle_buffer, cfg.resampled, cfg.preview_size)
        self.dataset = dataset
        self.cfg = cfg
        self.name = name
        self.kinds = _kinds(dataset.column_names, cfg)
        self.class_names = _class_names(dataset, cfg.label_column)

    def num_shards(self) -> int:
        """Number of shards (data files) of the stream."""
        shards = getattr(self.dataset, "num_shards", None) or self.dataset.n_shards
        return int(shards)

    def shard_samples(self, shard: int) -> Iterator[Sample]:
        """Rows of one shard."""
        part = self.dataset.shard(num_shards=self.num_shards(), index=shard, contiguous=True)
        for i, row in enumerate(part):
            yield row_sample(row, f"{shard}:{i}", self.cfg)

    def describe(self) -> str:
        """Dataset name and shard count."""
        return f"{self.name}, streamed in {self.num_shards()} shards"


def _build(cfg: SourceConfig, role: str, image_size: int) -> IndexedSource | StreamingSource:
    return HuggingFaceSource.from_config(cfg, role)


def _check(cfg: SourceConfig) -> None:
    check_huggingface(cfg)


HUGGINGFACE = SourceType(
    "huggingface",
    (
        "key",
        "subset",
        "path",
        "split",
        "split_key_mapping",
        "data_files",
        "cache_dir",
        "gated",
        "timeout",
        "rename_columns",
        "remove_columns",
        "image_column",
        "text_columns",
        "text_pair_column",
        "label_column",
        "streaming",
        "stream_shards",
        "shuffle_buffer",
        "resampled",
        "preview_size",
    ),
    _build,
    _check,
    frozenset({LABELLED_IMAGES, CAPTIONED_IMAGES}),
)
"""`type: huggingface`: a Hub dataset (`key`, `subset`) or a `save_to_disk` copy (`path`)."""

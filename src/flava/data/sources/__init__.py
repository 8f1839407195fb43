"""Data sources: one reader per format, used by every command (pretraining, fine-tuning,
zero-shot, retrieval, linear probe and the shard writer).

Types (`SourceConfig.type`), declared in their backend's module (`registry.SourceType`: the fields
the type reads, how it is built and checked) and registered in `factory.TYPES`; a field of
another type is refused in one line (`factory.check_fields`):

- ``huggingface`` (`huggingface.py`): `load_dataset(key, subset, split)` or
  `load_from_disk(path)`, with `rename_columns`, `remove_columns`, `split_key_mapping`,
  `text_columns`, `image_column`, `label_column`; `streaming: true` streams it. Gated sets use
  your token from `HF_TOKEN` or `hf auth login` (never passed through the config).
- ``webdataset`` (`webdataset.py`): tar shards (see `TarShards` for the layout).
- ``image_folder`` (`folders.py`): ``root/<class>/<image>``; label = index of the class name.
- ``captions`` (`folders.py`): images under a folder and a JSONL or CSV captions file, the
  captions of one image gathered.
- ``records`` (`folders.py`): one example per JSONL / CSV row (image path, texts, a second
  text, a label), for fine-tuning on your own data.
- ``karpathy`` (`karpathy.py`): a Karpathy COCO / Flickr30K split, every caption of each image.
- ``text_files`` (`text.py`): one document per line (.txt) or JSONL with a text field.
- ``embedded`` (`embedded.py`): the generated scenes (`flava.data.scenes`).
- ``glue`` (`glue.py`): a GLUE task (`subset`) through Hugging Face, with its text columns.
- ``torchvision`` (`torchvision_sets.py`): a torchvision classification set (`key`) under
  `path`, in torchvision's layout.
- ``vqa`` (`vqa.py`): VQAv2 questions with their COCO images and human answers.
- ``snli_ve`` (`snli_ve.py`): SNLI-VE hypotheses with their Flickr30k images and gold labels.
- ``hateful_memes`` (`hateful_memes.py`): the memes' jsonl as a ``records`` source.

`build(cfg, role, image_size, kind, whole)` is the one way every command makes a source.
Every reader yields `sample.Sample`s; images are decoded by `images.decode_image` only, and a sample
that cannot be used raises `errors.BadSample` with one of `errors.SKIP_REASONS`.
"""

from flava.data.sources.errors import (
    SAMPLE_ERRORS,
    SKIP_REASONS,
    BadSample,
    DataError,
    SourceError,
    UnreadableShard,
    skip_reason,
)
from flava.data.sources.factory import (
    SOURCE_TYPES,
    TYPES,
    build,
    check,
    check_fields,
    set_fields,
    source_type,
    unknown_type,
)
from flava.data.sources.folders import (
    CaptionedImages,
    ImageFolder,
    Records,
    read_captions,
    read_rows,
)
from flava.data.sources.huggingface import (
    HuggingFaceSource,
    HuggingFaceStream,
    check_huggingface,
    load_huggingface,
    row_sample,
)
from flava.data.sources.images import (
    IMAGE_EXTENSIONS,
    decode_image,
    fetch,
    fetch_image,
    image_files,
    image_format,
)
from flava.data.sources.readers import IndexedSource, SampleList, StreamingSource, describe
from flava.data.sources.registry import SourceType
from flava.data.sources.remote import open_shard, read_range
from flava.data.sources.sample import CAPTION_FIELDS, Sample
from flava.data.sources.skips import SkipLog, robust_item, robust_read, too_many_skipped
from flava.data.sources.text import TextFiles
from flava.data.sources.webdataset import (
    TarShards,
    expand_braces,
    expand_shards,
    image_member,
    read_member_at,
    read_tar_samples,
    sample_from_files,
    split_member_name,
)

__all__ = [
    "CAPTION_FIELDS",
    "IMAGE_EXTENSIONS",
    "SAMPLE_ERRORS",
    "SKIP_REASONS",
    "SOURCE_TYPES",
    "TYPES",
    "BadSample",
    "CaptionedImages",
    "DataError",
    "HuggingFaceSource",
    "HuggingFaceStream",
    "ImageFolder",
    "IndexedSource",
    "Sample",
    "SampleList",
    "SkipLog",
    "SourceError",
    "SourceType",
    "StreamingSource",
    "UnreadableShard",
    "TarShards",
    "TextFiles",
    "build",
    "check",
    "check_fields",
    "check_huggingface",
    "decode_image",
    "describe",
    "expand_braces",
    "expand_shards",
    "fetch",
    "fetch_image",
    "image_files",
    "image_format",
    "load_huggingface",
    "open_shard",
    "image_member",
    "read_captions",
    "read_member_at",
    "read_range",
    "read_rows",
    "read_tar_samples",
    "Records",
    "robust_item",
    "robust_read",
    "row_sample",
    "set_fields",
    "source_type",
    "sample_from_files",
    "skip_reason",
    "split_member_name",
    "too_many_skipped",
    "unknown_type",
]

"""`Sample`, the one record type every reader yields, and the parsing of its text and label fields.

As read (raw), a sample holds an encoded image (bytes, a PIL image or a URL / path), all its
texts, an optional second text and a label; `Sample.decoded` decodes the image and draws one text
for the kind of batch it serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from flava.data.sources.errors import BadSample
from flava.data.sources.images import decode_image
from flava.objectives.kinds import IMAGE_KINDS, TEXT_KINDS, Kind

CAPTION_FIELDS = ("caption", "captions", "text")
"""Fields read as captions when no other text field is configured."""


@dataclass
class Sample:
    """One sample: an image, texts, a label, and what a task makes of them.

    As read (raw), the image is encoded bytes, a PIL image or a URL / path string and `texts`
    holds every text of the sample. Decoded (`decoded`, a fine-tuning or evaluation dataset),
    the image is a PIL image (or None) and `texts` holds the one text drawn (or none).
    """

    key: str
    image: bytes | Image.Image | str | None = None
    texts: list[str] = field(default_factory=list)
    label: int | None = None
    pair: str | None = None
    """A second text (sentence pairs: premise / hypothesis, question / sentence)."""
    raw_label: Any = None
    """The label field as read (an int, a float for regression, a class name), for fine-tuning."""
    empty_text: bool = False
    """A text field is present but every value in it is empty or whitespace."""
    bad_label: Any = None
    """A label field whose value is not an integer class (kept to name it in the skip log)."""
    target: Any = None
    """What a fine-tuning or evaluation task predicts (`flava.tasks.task_data` sets it on decoded
    samples): a class index, a float (regression) or {answer index: soft score} (VQA)."""
    origin: str | None = None
    """Where the image's file lives when `image` holds its bytes (image folders), for tables
    that point at it (`flava.collection`); a path or URL in `image` says it already."""
    meta: dict[str, Any] = field(default_factory=dict)
    """The record's other fields as read (a webdataset sample's JSON, a records row's other
    columns), kept in the embedding tables of `flava.collection`."""
    image_range: tuple[int, int] | None = None
    """Where the image's bytes lie in the uncompressed tar shard it was read from (webdataset):
    (offset of the image member's data, its size), the member's 512-byte header just before it;
    None for other sources and gzipped shards. `flava.collection` keeps it in its tables, so a
    thumbnail reads that range alone instead of the shard up to the record."""

    @property
    def text(self) -> str | None:
        """The first text (a decoded sample's one text), else None."""
        return self.texts[0] if self.texts else None

    @property
    def decoded_image(self) -> Image.Image:
        """The image of a decoded sample; a sample whose image is not decoded fails."""
        if not isinstance(self.image, Image.Image):
            kind = type(self.image).__name__
            raise TypeError(f"sample {self.key!r}: the image is not decoded (a {kind})")
        return self.image

    @property
    def decoded_text(self) -> str:
        """The one text of a sample decoded for a text kind; a sample without text fails."""
        if self.text is None:
            raise TypeError(f"sample {self.key!r} holds no text")
        return self.text

    @property
    def kind(self) -> str:
        """ "vl" (image and text), "image" or "text"."""
        if self.image is not None:
            return Kind.vl if self.text is not None else Kind.image
        return Kind.text

    def has(self, kind: str) -> bool:
        """Whether this sample can serve a batch of `kind`."""
        if kind == Kind.image:
            return self.image is not None
        if kind == Kind.text:
            return bool(self.texts)
        return self.image is not None and bool(self.texts)

    def problem(self, kind: str) -> str | None:
        """The skip reason of a sample meant for `kind` but unusable for it, else None."""
        if self.empty_text and not self.texts and kind in TEXT_KINDS:
            if kind == Kind.text or self.image is not None:
                return "empty_text"
        if self.bad_label is not None and self.has(kind):
            return "bad_label"
        return None

    def require(self, kind: str) -> None:
        """Raise `BadSample` (missing_image / empty_text) unless the sample can serve `kind`."""
        if not self.has(kind):
            reason = "missing_image" if self.image is None and kind != Kind.text else "empty_text"
            raise BadSample(reason, f"sample {self.key!r} has no {kind} data")

    def decoded(self, kind: str, rng: np.random.Generator) -> Sample:
        """This sample decoded for `kind`: its image decoded and / or one of its texts drawn
        with `rng` (a modality `kind` does not read is left out)."""
        problem = self.problem(kind)
        if problem == "bad_label":
            raise BadSample(problem, f"sample {self.key!r}: label {self.bad_label!r} is not an int")
        if problem == "empty_text":
            raise BadSample(problem, f"sample {self.key!r}: empty or whitespace-only text")
        self.require(kind)
        text = None
        if kind in TEXT_KINDS:
            many = len(self.texts) > 1
            text = self.texts[int(rng.integers(len(self.texts)))] if many else self.texts[0]
        image = decode_image(self.image) if kind in IMAGE_KINDS else None
        return replace(self, image=image, texts=[] if text is None else [text])


def texts_of(value: Any) -> list[str]:
    """Non-empty strings from a text field: a string, or a list of strings."""
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, (list, tuple)):
        return [v.strip() for v in value if isinstance(v, str) and v.strip()]
    return []


def label_index(value: Any) -> int | None:
    """An integer class label from an int, a bool (0 / 1), an integral float or a digit
    string; else None."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer, bool, np.bool_)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def set_label(sample: Sample, value: Any) -> None:
    """Set `sample.label` from a label field, flagging a value that is not an integer class."""
    sample.raw_label = value
    sample.label = label_index(value)
    if (
        sample.label is None
        and value is not None
        and not (isinstance(value, str) and not value.strip())
    ):
        sample.bad_label = value if not isinstance(value, bytes) else value[:40]


def has_text_field(value: Any) -> bool:
    """Whether a text field holds something (a string or a list), even if only whitespace."""
    return isinstance(value, str) or (isinstance(value, (list, tuple)) and len(value) > 0)

"""The pretraining data kinds, one spelling for every layer (model, objectives, data, config).

Here, not in `flava.config`, because the objectives (and the data they are fed) may not import
the configuration; `flava.config.pretraining.Kind` is this enum. Members are strings
(`Kind.vl == "vl"`, same hash, `f"{Kind.vl}"` is "vl"), so metric names, log lines, checkpoint
keys and saved configs read as the plain spelling.
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    """A pretraining data kind: images, texts or image-text pairs."""

    image = "image"
    text = "text"
    vl = "vl"

    def __repr__(self) -> str:
        """The spelling, quoted as a plain string would be (messages read as before)."""
        return repr(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """Every spelling, in declaration order."""
        return tuple(member.value for member in cls)


KINDS: tuple[Kind, ...] = tuple(Kind)
"""Every kind, in the fixed order of the mixing's draws (image, text, vl)."""

TEXT_KINDS = frozenset({Kind.text, Kind.vl})
"""The kinds whose batches hold texts."""

IMAGE_KINDS = frozenset({Kind.image, Kind.vl})
"""The kinds whose batches hold images."""

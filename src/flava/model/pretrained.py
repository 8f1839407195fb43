"""Where `from_pretrained` / `save_pretrained` are: `flava.from_pretrained(cls, name_or_path)`.

The model package holds no loading code and imports nothing of `flava.checkpoints`; loading
is free functions over the model classes there (as open_clip's factory loads its models). A
user who types the transformers spelling, `FlavaModel.from_pretrained(...)`, gets one line
naming the function to call instead.
"""

from __future__ import annotations

from typing import Any, NoReturn


class Pretrained:
    """Mixin: the transformers-style method names, each answering where loading lives."""

    def save_pretrained(self, directory: Any) -> NoReturn:
        """Not here: `flava.save_pretrained(model, directory)` writes a model."""
        name = type(self).__name__
        raise AttributeError(
            f"{name}.save_pretrained is not a method: call flava.save_pretrained(model, directory)"
        )

    @classmethod
    def from_pretrained(cls, name_or_path: Any, **kwargs: Any) -> NoReturn:
        """Not here: `flava.from_pretrained(cls, name_or_path)` loads a model."""
        raise AttributeError(
            f"{cls.__name__}.from_pretrained is not a method: call "
            f"flava.from_pretrained({cls.__name__}, {str(name_or_path)!r})"
        )

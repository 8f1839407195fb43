"""`save_pretrained` / `from_pretrained` on the model classes; the loading lives elsewhere.

The model knows no checkpoint format. `flava.checkpoints` holds the loading code (free
functions over the model classes) and hands it to this module with `install_checkpoint_io`
when it is imported; `import flava`, which runs before any `flava.*` module, imports it, so
the methods below work whichever `flava` module was imported first (spawned processes too).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Self

from torch import nn

Save = Callable[[nn.Module, str | os.PathLike], None]
"""`save(module, directory)`: write `module`'s config and weights to `directory`."""
Load = Callable[..., nn.Module]
"""`load(cls, name_or_path, **options)`: build `cls` and load its weights."""

_io: dict[str, Callable[..., Any]] = {}


def install_checkpoint_io(save: Save, load: Load) -> None:
    """Route every `Pretrained` class's `save_pretrained` / `from_pretrained` to these."""
    _io.update(save=save, load=load)


def _installed(name: str, what: str) -> Callable[..., Any]:
    """The installed function, or a one-line error naming what was called and the fix."""
    if name not in _io:
        raise RuntimeError(
            f"{what} needs the checkpoint code, which was never installed: "
            "`import flava.checkpoints` (done by `import flava`) installs it"
        )
    return _io[name]


class Pretrained:
    """Mixin: `save_pretrained(directory)` and `cls.from_pretrained(name_or_path, ...)`."""

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `config.json` + `model.safetensors` to `directory` (flava.checkpoints)."""
        save = _installed("save", f"{type(self).__name__}.save_pretrained")
        save(self, directory)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> Self:
        """Load from our directory, a transformers-layout directory or a pretrained key.

        Keyword options are those of `flava.checkpoints.from_pretrained` (`strict`, `codebook`).
        """
        load = _installed("load", f"{cls.__name__}.from_pretrained")
        return load(cls, name_or_path, **kwargs)

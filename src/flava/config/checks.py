"""What every schema's checks share: `ConfigError`, fixed choices, value checks, directories."""

from __future__ import annotations

from enum import EnumMeta, StrEnum
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf

T = TypeVar("T")

Check = tuple[bool, str, str]
"""(condition, key, hint): the check passes when the condition holds."""


class ConfigError(ValueError):
    """A bad configuration; the message is one line naming the key or file and a hint."""


class Choice(StrEnum):
    """A fixed set of spellings for one key: YAML and command line give the value as typed.

    Members are strings (`cfg.training.lr_schedule == "cosine"` holds) and the saved
    config.yaml keeps the spelling. A YAML / command-line number (`precision: 32`) is read as
    its digits, so a member spelled "32" is found either way.
    """

    @classmethod
    def _missing_(cls, value: object) -> Choice | None:
        """Find a member spelled with digits from an integer (`32` -> "32")."""
        if isinstance(value, int) and not isinstance(value, bool):
            member = cls._value2member_map_.get(str(value))
            return member if isinstance(member, cls) else None
        return None

    def __repr__(self) -> str:
        """The spelling, quoted as a plain string would be (messages read as before)."""
        return repr(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """Every spelling, in declaration order."""
        return tuple(member.value for member in cls)


def choices(name: str, values: tuple[str, ...], module: str) -> type[Choice]:
    """A `Choice` whose members are spelled as `values` (also spellings that are not names,
    such as "32"); `module` is where it is bound under `name`, so that its members pickle."""
    made = EnumMeta.__call__(Choice, name, [(value, value) for value in values], module=module)
    if not issubclass(made, Choice):
        raise TypeError(f"{name} is not a Choice")
    return made


def given(value: T | None, message: str) -> T:
    """`value` of a key that must be set, else `ConfigError(message)` (one line naming the key
    and how to set it)."""
    if value is None:
        raise ConfigError(message)
    return value


def select(cfg: object, key: str) -> Any:
    """The value at dotted `key` (`a.b`, `a.list[0].c`) of a config's dataclasses, as OmegaConf
    shows it (None where there is none)."""
    return OmegaConf.select(OmegaConf.structured(cfg), key)


def fail_checks(cfg: object, checks: list[Check]) -> None:
    """Raise ConfigError for the first failed (ok, key, hint) check of config `cfg`."""
    for ok, key, hint in checks:
        if not ok:
            raise ConfigError(f"{key}={select(cfg, key)!r} is invalid: {hint}")


def check_directory(path: str | Path, key: str) -> None:
    """Fail with one line, before any work, if a file stands where directory `path` would go."""
    from flava.checkpoints.run_dir import is_url

    if is_url(path):
        raise ConfigError(
            f"{key}={str(path)!r}: this command writes to a local folder; give a local path "
            "(the run directory of flava.train and flava.finetune may be a URL)"
        )
    for candidate in (Path(path), *Path(path).parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise ConfigError(
                    f"{key}={str(path)!r}: {candidate} is a file, not a directory; "
                    "choose another path"
                )
            return


def make_directory(path: str | Path, key: str) -> Path:
    """Create the directory `path` (config key `key`), or fail with one line saying why."""
    check_directory(path, key)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{key}={str(path)!r}: cannot create it ({exc.strerror})") from None
    return Path(path)

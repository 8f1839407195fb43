"""One loader for every command: typed schema <- YAML file(s) <- command-line dotlist.

`load_config(argv, schema, check)` takes the arguments users of the original release type:
`config=flava/configs/pretraining/debug.yaml training.lightning.max_steps=1000`. Unknown keys,
wrong types, values outside a field's choices and values `check` refuses fail with one line
naming the key and what is allowed (`ConfigError`, exit status 2 from `cli_main`). The run code
gets the schema's own dataclasses (`OmegaConf.to_object` of the merged config, interpolations
resolved), so a type checker follows each key from YAML to layer; OmegaConf stays here, where
configs are merged, checked and written (`to_yaml`: what config.yaml keeps). `from_fields`
builds one section (e.g. a `SourceConfig`) from plain fields with the same checks. A key that
moved is still read under its old spelling when the schema lists it in `renamed_keys` (old ->
new): it is moved to the new key with a one-line warning, and config.yaml keeps only the new
one. `describe` lists every key with its type, default and the docstring written under its
field (`--help`).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import logging
import re
import sys
import textwrap
import typing
from collections.abc import Callable, Mapping
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flava.config.checks import ConfigError

log = logging.getLogger("flava")

T = TypeVar("T")

_CHOICE_ERROR = re.compile(r"Invalid value '(.*)', expected one of \[(.*)\]")


def shipped_configs() -> list[str]:
    """Names of the configs shipped inside the package."""
    root = resources.files("flava") / "configs"
    names = []
    for group in root.iterdir():
        if group.is_dir():
            names += [f"{group.name}/{f.name}" for f in group.iterdir() if f.name.endswith(".yaml")]
    return sorted(names)


def config_path(text: str) -> Path:
    """A config path as typed: a file, or a name relative to the shipped configs."""
    path = Path(text).expanduser()
    if path.is_file():
        return path
    shipped = resources.files("flava") / "configs"
    for prefix in ("flava/configs/", "configs/", "src/flava/configs/", ""):
        if text.startswith(prefix):
            rel = text[len(prefix) :]
            for candidate in (rel, rel + ".yaml"):
                item = shipped.joinpath(candidate)
                if item.is_file():
                    return Path(str(item))
    raise ConfigError(
        f"config file {text!r} not found; give a path or a shipped name such as "
        f"pretraining/demo.yaml (shipped: {', '.join(shipped_configs())})"
    )


_SPACE_HINT = (
    "put a space after each ':' ({type: webdataset, shards: [x.tar]}) and quote the whole argument"
)
_COLON_KEY = re.compile(r"Key '[^' ]+:[^' ]*' not in")


def _one_line(exc: OmegaConfBaseException) -> str:
    """The first line of an OmegaConf error, naming the key; a value outside a field's choices
    reads like the value checks' messages."""
    msg = str(exc).strip().splitlines()[0]
    key = getattr(exc, "full_key", None)
    choice = _CHOICE_ERROR.fullmatch(msg)
    if key and choice:
        return f"{key}={choice.group(1)!r} is invalid: must be one of {choice.group(2)}"
    text = f"{key}: {msg}" if key and key not in msg else msg
    if _COLON_KEY.search(msg):  # omegaconf < 2.4 reads {type:x} as the key "type:x"
        return f"{text}: in {{...}} and [...] {_SPACE_HINT}"
    return f"{text} (see --help for the keys)"


def _read_yaml(path: Path) -> Any:
    """A YAML file, with keys of the original release's configs that mean nothing here dropped."""
    try:
        data = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    if isinstance(data, DictConfig) and "datasets" in data and "_delete_" in data.datasets:
        data.datasets.pop("_delete_")
    return data


def renamed_keys(schema: type) -> dict[str, str]:
    """Old dotted keys `schema` still reads, each with the key it now is."""
    return dict(getattr(schema, "renamed_keys", {}))


def move_renamed(data: Any, renamed: dict[str, str], where: str) -> Any:
    """`data` (a YAML file or one override) with each old key of `renamed` moved to its new
    key with a one-line warning; both spellings with different values fail in one line."""
    if not isinstance(data, DictConfig):
        return data
    for old, new in renamed.items():
        parent_key, _, leaf = old.rpartition(".")
        parent = OmegaConf.select(data, parent_key) if parent_key else data
        if not isinstance(parent, DictConfig) or leaf not in parent:
            continue
        value = parent.pop(leaf)
        given = OmegaConf.select(data, new, default=None)
        if given is not None and given != value:
            raise ConfigError(
                f"{where}: {old}={value!r} and {new}={given!r} set one key; keep only {new}"
            )
        OmegaConf.update(data, new, value, force_add=True)
        log.warning("%s: %s is now %s (the old spelling is still read)", where, old, new)
    return data


def _dotlist_item(item: str) -> DictConfig:
    """One `key=value` override; a value that is not YAML fails in one line naming it."""
    import yaml

    try:
        return OmegaConf.from_dotlist([item])
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(
            f"{item!r}: the value is not YAML ({where}); in {{...}} and [...] {_SPACE_HINT}"
        ) from None


def load_config(argv: list[str], schema: type[T], check: Callable[[T], None] | None = None) -> T:
    """Merge `schema` <- YAML files (config=...) <- dotlist overrides into the schema's
    dataclasses; then `check(cfg)`."""
    file_args = [a for a in argv if a.startswith("config=")]
    overrides = [a for a in argv if not a.startswith("config=")]
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"argument {item!r} is not key=value; e.g. training.lightning.max_steps=1000"
            )
    merged, renamed = OmegaConf.structured(schema), renamed_keys(schema)
    try:
        for arg in file_args:
            path = config_path(arg.split("=", 1)[1])
            merged = OmegaConf.merge(merged, move_renamed(_read_yaml(path), renamed, str(path)))
        for item in overrides:
            try:
                merged = OmegaConf.merge(
                    merged, move_renamed(_dotlist_item(item), renamed, "command line")
                )
            except TypeError as exc:  # e.g. a list entry set by index: a dict onto a list
                first = str(exc).strip().splitlines()[0]  # omegaconf < 2.4: several lines
                raise ConfigError(
                    f"{item!r}: {first}; set a list as a whole, e.g. "
                    "'model.init_from=[{part: image_encoder, path: DIR}]'"
                ) from None
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc)) from None
    cfg = _as_object(merged, schema)
    if check is not None:
        check(cfg)
    return cfg


def _as_object(merged: DictConfig, schema: type[T]) -> T:
    """The schema's dataclasses of a merged config (interpolations resolved: one line when one
    cannot be)."""
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc)) from None
    if not isinstance(cfg, schema):
        raise TypeError(f"the config is a {type(cfg).__name__}, not a {schema.__name__}")
    return cfg


def from_fields(schema: type[T], *fields: Mapping[str, Any] | object, where: str = "") -> T:
    """A `schema` dataclass from its defaults merged with each of `fields` in turn (mappings of
    field values, or dataclasses of the schema), checked as the loader checks a file: an
    unknown field or a value of the wrong type fails in one line (`ConfigError`; `where`: the
    section named before OmegaConf's message instead of the loader's wording)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), *fields)
    except OmegaConfBaseException as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{where}: {first}" if where else _one_line(exc)) from None
    if not isinstance(merged, DictConfig):
        raise TypeError(f"{schema.__name__} is not a dataclass")
    return _as_object(merged, schema)


def to_yaml(cfg: object) -> str:
    """The resolved config as YAML (what the run directory keeps; choices as typed)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


@functools.cache
def field_docs(schema: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass, by field name."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(schema)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _type_name(kind: Any) -> str:
    """A field's type as --help shows it; a choice lists its values."""
    if isinstance(kind, type) and issubclass(kind, Enum):
        return "{" + ", ".join(str(m.value) for m in kind) + "}"
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (list, dict) and args:
        return f"{typing.get_origin(kind).__name__}[{', '.join(map(_type_name, args))}]"
    if args:
        return " | ".join(_type_name(a) for a in args)
    if kind is type(None):
        return "None"
    return getattr(kind, "__name__", str(kind).replace("typing.", ""))


def _item_class(kind: Any) -> type | None:
    """The dataclass of a list-of-dataclasses field (e.g. list[SourceConfig]), else None."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) is list and args and _is_section(args[0]):
        return args[0]
    return None


def _is_section(kind: Any) -> typing.TypeGuard[type]:
    """Whether a field's type is a dataclass (a nested section, or a list entry's class)."""
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def _plain(value: object) -> dict[str, Any]:
    """A dataclass's fields as plain values (choices by their spelling)."""
    out = OmegaConf.to_container(OmegaConf.structured(value), enum_to_str=True)
    if not isinstance(out, dict):
        raise TypeError(f"{type(value).__name__} is not a dataclass")
    return {str(k): v for k, v in out.items()}


def _default_text(value: Any, item: type | None = None) -> str:
    """A default as --help shows it: null / true / false as in YAML, strings quoted; entries
    of a list of dataclasses show only the fields that differ from the entry's defaults."""
    if item is not None:
        base = _plain(item())
        value = [{k: v for k, v in _plain(row).items() if v != base[k]} for row in value]
    elif dataclasses.is_dataclass(value):
        value = _plain(value)
    elif isinstance(value, list):
        value = [v.value if isinstance(v, Enum) else v for v in value]
    if isinstance(value, Enum):
        value = value.value
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def _doc_for(schema: type, name: str) -> str:
    """A field's docstring, looked up along the class and its dataclass bases."""
    for cls in schema.__mro__:
        if dataclasses.is_dataclass(cls) and name in field_docs(cls):
            return field_docs(cls)[name]
    return ""


def _describe(schema: type, prefix: str, defaults: Any, items: dict[type, str]) -> list[str]:
    """`describe` of one (nested) section; list entry classes are collected in `items`."""
    hints = typing.get_type_hints(schema)
    lines = []
    for f in dataclasses.fields(schema):
        kind, value, key = hints[f.name], getattr(defaults, f.name), f"{prefix}{f.name}"
        if _is_section(kind):
            heading = (inspect.getdoc(kind) or "").splitlines()[0]
            lines += [f"  {key}.*  ({heading})", *_describe(kind, f"{key}.", value, items)]
            continue
        item = _item_class(kind)
        if item is not None:
            items.setdefault(item, key)
        lines.append(f"  {key}: {_type_name(kind)} = {_default_text(value, item)}")
        doc = _doc_for(schema, f.name)
        if doc:
            lines += textwrap.wrap(doc, 96, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return lines


def describe(schema: type) -> list[str]:
    """Lines for --help: per key its type and default, then its field docstring; nested
    sections under their docstring's first line; the keys of list entries (such as each
    dataset of datasets.vl.train) once at the end."""
    items: dict[type, str] = {}
    lines = _describe(schema, "", schema(), items)
    done: set[type] = set()
    while len(done) < len(items):
        item, key = next((c, k) for c, k in items.items() if c not in done)
        done.add(item)
        heading = (inspect.getdoc(item) or "").splitlines()[0]
        lines += [
            f"  {key}[i].*  (each entry of a {item.__name__} list: {heading})",
            *_describe(item, f"{key}[i].", item(), items),
        ]
    for old, new in renamed_keys(schema).items():
        lines.append(f"  {old} -> {new}  (old spelling, still read)")
    return lines


def cli_main(
    argv: list[str] | None,
    doc: str | None,
    help_lines: Callable[[], list[str]],
    load: Callable[[list[str]], Any],
    run: Callable[[Any], object],
    stop_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Body shared by the entry points: --help, logging, and one-line errors.

    Exit status 2 for a bad configuration or unreachable data/weights, 1 for a run that
    stopped early (`stop_errors`), 0 otherwise.
    """
    from flava.checkpoints.io import CheckpointError

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(doc)
        print("\n".join(help_lines()))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for chatty in ("botocore", "aiobotocore", "s3fs"):  # e.g. a line per S3 client made
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        run(load(argv))
    except (ConfigError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except stop_errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0

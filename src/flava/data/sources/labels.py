"""Labels as a task reads them: (class names, label value -> target) of a source.

One rule per source: a type that fixes its classes (`IndexedSource.numbered_classes`: GLUE,
torchvision, SNLI-VE, Hateful Memes, image folders) has labels that number them; any other
source's classes are named by its labels as read: integer labels (`base.label_index`) are class
numbers, named by `class_names` where the data names them (a `ClassLabel`, a shard manifest),
other values are the sorted distinct label strings. Regression targets are floats. A value
outside the space raises `BadSample("bad_label")`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from flava.data.sources.errors import BadSample
from flava.data.sources.sample import label_index

LabelSpace = tuple[list[str], Callable[[Any], Any]]
"""(class names, label value -> target)."""


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BadSample("bad_label", f"label {value!r} is not a number") from None


def label_space(
    values: Sequence[Any], class_names: Sequence[str] | None, task_type: str
) -> LabelSpace:
    """(class names, label value -> target) for labels `values` as read (see the module doc)."""
    if task_type == "regression":
        return [], _number
    present = [v for v in values if v is not None and v != ""]
    ints = [i for i in (label_index(v) for v in present) if i is not None and i >= 0]
    if present and len(ints) == len(present):
        count = max(max(ints) + 1, len(class_names or []))
        names = list(class_names) if class_names and len(class_names) >= count else None
        names = names or [str(i) for i in range(count)]
        index: dict[Any, int] = {}
    else:
        names = sorted({str(v).strip() for v in present})
        index = {n: i for i, n in enumerate(names)}

    def target(value: Any) -> int:
        i = label_index(value) if not index else index.get(str(value).strip())
        if i is None or not 0 <= i < len(names):
            raise BadSample("bad_label", f"label {value!r} is not one of the {len(names)} classes")
        return i

    return names, target


def space_of(source: Any, task_type: str) -> LabelSpace:
    """The label space of a source by its type's rule (see the module doc)."""
    fixed = getattr(source, "numbered_classes", None)
    if task_type != "regression" and fixed:
        return label_space(list(range(len(fixed))), fixed, task_type)
    return label_space(source.labels(), source.class_names, task_type)

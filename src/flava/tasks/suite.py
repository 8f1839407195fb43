"""The paper's evaluation as one suite (paper section 5, table 2): tasks, runs, the table.

A suite is a list of tasks (`configs/evaluation/*.yaml`). Each task names the command that runs
it (`linear_probe`, `finetune`, `retrieval` or `zero_shot`, each run in-process through its own
`main(argv)` with the task's dotlist), the paths it needs under `data.root`, the metrics.json
keys whose mean is its figure, and the paper's figure where FACTS.md gives one. The suite:

- writes `results/<task>.json` as each task finishes (status `ok`, `failed` with the one-line
  reason, or `missing` with how to get the data); a rerun skips the tasks already `ok`;
- goes on after a task fails: the failure is a row of the table, not a stop;
- writes `table.md`, `table.csv`, `metrics.json` and `figure.png` (ours against the paper);
- macro-averages the figures per group (vision, NLP, multimodal) over the tasks that ran, and
  overall as the mean of the group averages (the paper's 75.85 = mean of 79.44, 78.19, 69.92).

Compute is estimated from `flava.planning`'s FLOP counts before anything runs (`run.plan=true`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flava.config.evaluate import EvaluateConfig, Group, TaskSpec

log = logging.getLogger("flava")

GROUPS = Group.values()
PAPER_AVERAGES = {"vision": 79.44, "nlp": 78.19, "multimodal": 69.92, "overall": 75.85}
"""The paper's macro averages (FLAVA-full; FACTS.md). Its multimodal average rests on its own
per-task figures, which for retrieval are not all published: compare per task."""


@dataclass
class TaskResult:
    """What one task gave: the figure or why there is none."""

    name: str
    group: str
    status: str  # ok | failed | missing
    value: float | None = None
    paper: float | None = None
    detail: str = ""
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def difference(self) -> float | None:
        """Ours minus the paper's figure, where both exist."""
        if self.value is None or self.paper is None:
            return None
        return self.value - self.paper


def format_root(text: str, root: str) -> str:
    """`text` with `{root}` replaced by the data root."""
    return text.replace("{root}", root)


def missing_paths(task: TaskSpec, root: str) -> list[str]:
    """The task's needed paths that are not on disk."""
    return [p for p in task.needs if not (Path(root) / p).exists()]


def read_figure(task: TaskSpec, metrics: dict[str, Any]) -> float:
    """The task's figure: the mean of its metric keys in the command's metrics.json, scaled."""
    absent = [k for k in task.metric if not isinstance(metrics.get(k), (int, float))]
    if absent:
        raise KeyError(f"metrics.json has no {', '.join(absent)}")
    return sum(float(metrics[k]) for k in task.metric) / len(task.metric) * task.scale


@contextlib.contextmanager
def tee_stderr() -> Iterator[io.StringIO]:
    """Copy what is written to stderr (a command's one-line error), still showing it."""
    buffer = io.StringIO()
    real = sys.stderr

    class Tee(io.TextIOBase):
        def write(self, text: str) -> int:
            buffer.write(text)
            return real.write(text)

        def flush(self) -> None:
            real.flush()

    with contextlib.redirect_stderr(Tee()):
        yield buffer


def _result_path(out: Path, name: str) -> Path:
    return out / "results" / f"{name}.json"


def save_result(out: Path, result: TaskResult) -> None:
    """results/<task>.json, written atomically as the task finishes."""
    path = _result_path(out, result.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: getattr(result, k) for k in TaskResult.__dataclass_fields__}
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def load_result(out: Path, name: str) -> TaskResult | None:
    """A finished (`ok`) task's saved result, or None."""
    path = _result_path(out, name)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        result = TaskResult(**data)
    except (ValueError, TypeError):
        return None
    return result if result.status == "ok" else None


def selected_tasks(cfg: EvaluateConfig) -> list[TaskSpec]:
    """The suite's tasks as `TaskSpec`s, restricted to `only` when it is set."""
    tasks = list(cfg.tasks)
    if cfg.only:
        wanted = set(cfg.only)
        tasks = [t for t in tasks if t.name in wanted]
    return tasks


# --------------------------------------------------------------------------- averages, table


def macro_averages(results: Sequence[TaskResult]) -> dict[str, float | None]:
    """Mean figure per group over the tasks that gave one; overall = mean of group averages."""
    out: dict[str, float | None] = {}
    for group in GROUPS:
        values = [r.value for r in results if r.group == group and r.value is not None]
        out[group] = sum(values) / len(values) if values else None
    present = [v for v in out.values() if v is not None]
    out["overall"] = sum(present) / len(present) if present else None
    return out


def _cell(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def table_rows(results: Sequence[TaskResult]) -> list[list[str]]:
    """[task, group, metric status, ours, paper, difference, note] per task."""
    rows = []
    for r in results:
        note = "" if r.status == "ok" else f"{r.status}: {r.detail}"
        rows.append(
            [r.name, r.group, _cell(r.value), _cell(r.paper), _cell(r.difference, True), note]
        )
    return rows


def average_rows(results: Sequence[TaskResult]) -> list[list[str]]:
    """The macro-average rows: ours, the paper's, over which tasks."""
    ours = macro_averages(results)
    rows = []
    for group in (*GROUPS, "overall"):
        if group == "overall":
            counted = [g for g in GROUPS if ours[g] is not None]
            over = f"mean of {', '.join(counted) or 'no'} group averages"
        else:
            ran = sum(1 for r in results if r.group == group and r.value is not None)
            left = [r.name for r in results if r.group == group and r.value is None]
            over = f"{ran} task{'' if ran == 1 else 's'}" + (
                f"; missing: {', '.join(left)}" if left else ""
            )
        average = ours[group]
        diff = None if average is None else average - PAPER_AVERAGES[group]
        rows.append(
            [
                f"average {group}",
                group,
                _cell(ours[group]),
                _cell(PAPER_AVERAGES[group]),
                _cell(diff, True),
                over,
            ]
        )
    return rows


HEADER = ["task", "group", "ours", "paper", "difference", "note"]


def markdown_table(results: Sequence[TaskResult], suite: str) -> str:
    """The table as Markdown: one row per task, then the macro averages."""
    lines = [f"# Evaluation: suite `{suite}`", "", "| " + " | ".join(HEADER) + " |"]
    lines.append("|" + "---|" * len(HEADER))
    for row in table_rows(results) + average_rows(results):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, results: Sequence[TaskResult], suite: str) -> None:
    """table.md, table.csv, metrics.json and figure.png under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown_table(results, suite))
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(table_rows(results) + average_rows(results))
    metrics = {
        "suite": suite,
        "tasks": {
            r.name: {
                "group": r.group,
                "status": r.status,
                "value": r.value,
                "paper": r.paper,
                "detail": r.detail,
                "seconds": r.seconds,
            }
            for r in results
        },
        "averages": macro_averages(results),
        "paper_averages": PAPER_AVERAGES,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_results(results, out / "figure.png")
    log.info("wrote %s (table.md, table.csv, metrics.json, figure.png)", out)


def plot_results(results: Sequence[TaskResult], path: Path) -> None:
    """One panel per group: ours against the paper per task (absent bars: no figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in GROUPS if any(r.group == g for r in results)] or ["vision"]
    widths = [max(1, sum(r.group == g for r in results)) for g in groups]
    fig, axes = plt.subplots(
        1,
        len(groups),
        figsize=(2 + sum(widths) * 0.6, 4),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    for ax, group in zip(axes[0], groups, strict=True):
        rows = [r for r in results if r.group == group]
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r.value or 0 for r in rows], 0.4, label="ours")
        ax.bar([x + 0.2 for x in xs], [r.paper or 0 for r in rows], 0.4, label="paper")
        ax.set_xticks(list(xs), [r.name for r in rows], rotation=60, ha="right", fontsize=7)
        ax.set_title(group)
    axes[0][0].set_ylabel("figure (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""What a run logged, read back: the CSV logger's rows across resumes, and loss trends."""

from __future__ import annotations

import csv
import math

from flava.checkpoints.run_dir import RunDir

LOGGED = "logs/metrics.csv"
"""The CSV logger's file in a run directory."""


def keep_earlier_logs(run_dir: RunDir) -> None:
    """Before a resumed run logs into `run_dir`: keep the CSV log of the runs before it as
    logs/metrics.before-<k>.csv (Lightning's CSV logger would write over it)."""
    if run_dir.exists(LOGGED):
        run_dir.move(LOGGED, f"logs/metrics.before-{len(_earlier_logs(run_dir))}.csv")


def _earlier_logs(run_dir: RunDir) -> list[str]:
    parts = run_dir.glob("logs/metrics.before-*.csv")
    return sorted(parts, key=lambda p: int(p.removesuffix(".csv").rpartition("-")[2]))


def _csv_rows(run_dir: RunDir, name: str) -> list[dict[str, float]]:
    with run_dir.open(name) as f:
        return [
            {k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)
        ]


def read_logged(run_dir: RunDir) -> list[dict[str, float]]:
    """Rows of the CSV logger (one per logging step), numbers only, across resumes: the rows of
    a run before a resume, then the resumed run's (which redoes the steps after its checkpoint,
    so an earlier part's rows from the resumed run's first step on are dropped)."""
    parts = [*_earlier_logs(run_dir), LOGGED]
    rows: list[dict[str, float]] = []
    for name in (p for p in parts if run_dir.exists(p)):
        later = _csv_rows(run_dir, name)
        steps = [r["step"] for r in later if "step" in r]
        if steps:
            rows = [r for r in rows if r.get("step", -1.0) < min(steps)]
        rows += later
    return rows


def _first_last(prefix: str, series: dict[str, list[float]], window: float) -> dict[str, float]:
    """`<prefix>/<name>/first|last`: means of the first and last `window` of each series."""
    out: dict[str, float] = {}
    for name, raw in series.items():
        values = [v for v in raw if math.isfinite(v)]
        if len(values) < 2:
            continue
        n = max(1, int(len(values) * window))
        out[f"{prefix}/{name}/first"] = sum(values[:n]) / n
        out[f"{prefix}/{name}/last"] = sum(values[-n:]) / n
    return out


def row_kind(row: dict[str, float], kinds: list[str]) -> str | None:
    """The batch kind of a logged training row: the one whose train/loss_<kind> is its loss."""
    loss = row.get("train/loss")
    return next((k for k in kinds if loss is not None and row.get(f"train/loss_{k}") == loss), None)


def fresh_values(rows: list[dict[str, float]], key: str) -> list[float]:
    """A key's logged values with each unchanged repeat dropped.

    Lightning hands the logger every key's latest value, so a row repeats the objectives that
    another kind of batch logged at an earlier step.
    """
    values: list[float] = []
    for row in rows:
        if key in row and (not values or row[key] != values[-1]):
            values.append(row[key])
    return values


def loss_trends(rows: list[dict[str, float]], window: float = 0.1) -> dict[str, float]:
    """First / last `window` means of the training losses, never a total over mixed kinds.

    Pretraining (rows with `train/loss_<kind>`): each kind's total over that kind's rows
    (`train/<kind>/loss/first|last`) and each objective, which one kind computes, over its new
    values (`train/<objective>/first|last`). Fine-tuning: `train/loss/first|last`.
    """
    kinds = sorted(
        {k.removeprefix("train/loss_") for r in rows for k in r if k.startswith("train/loss_")}
    )
    out: dict[str, float] = {}
    for kind in kinds:
        own = [r[f"train/loss_{kind}"] for r in rows if row_kind(r, kinds) == kind]
        out.update(_first_last(f"train/{kind}", {"loss": own}, window))
    names = {k.removeprefix("train/") for r in rows for k in r if k.startswith("train/")}
    names = {n for n in names if not n.startswith("loss_") and not n.endswith("accuracy")}
    names -= {"logit_scale", "loss"} if kinds else {"logit_scale"}
    logged = fresh_values if kinds else lambda rs, k: [r[k] for r in rs if k in r]
    series = {name: logged(rows, f"train/{name}") for name in sorted(names)}
    out.update(_first_last("train", series, window))
    return out

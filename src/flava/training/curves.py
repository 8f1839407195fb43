"""curves.png: a run's training losses and evaluation metrics over steps."""

from __future__ import annotations

from typing import Any

from flava.checkpoints.run_dir import RunDir


def plot_curves(
    run_dir: RunDir, rows: list[dict[str, float]], history: list[dict[str, float]]
) -> None:
    """curves.png: smoothed training losses per objective, and evaluation metrics over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(
        {
            k
            for r in rows
            for k in r
            if k.startswith("train/")
            and not k.startswith(("train/loss", "train/logit"))
            and not k.endswith("accuracy")
        }
    )
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in names:
        pts = [(r["step"], r[name]) for r in rows if name in r and "step" in r]
        pts = [p for i, p in enumerate(pts) if i == 0 or p[1] != pts[i - 1][1]]  # fresh values
        if not pts:
            continue
        steps, values = zip(*pts, strict=True)
        k = max(1, len(values) // 20)
        smooth = [
            sum(values[max(0, i - k + 1) : i + 1]) / len(values[max(0, i - k + 1) : i + 1])
            for i in range(len(values))
        ]
        marker = "o" if len(steps) < 3 else None  # a line needs two points
        axes[0].plot(steps, smooth, marker=marker, label=name.removeprefix("train/"))
    axes[0].set(title="training losses (smoothed)", xlabel="step", ylabel="loss")
    if axes[0].get_lines():
        axes[0].legend(fontsize=8)
    else:  # a run shorter than training.lightning.log_every_n_steps logs no loss
        _note(axes[0], "no training losses logged\n(fewer steps than log_every_n_steps)")
    plot_evaluation(axes[1], history)
    fig.tight_layout()
    with run_dir.open("curves.png", "wb") as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)


def plot_evaluation(ax: Any, history: list[dict[str, float]]) -> None:
    """Retrieval (solid) and zero-shot (dashed) metrics over steps on one matplotlib axis."""
    keys = list(dict.fromkeys(k for h in history for k in h if k != "step"))
    for key in keys:
        pts = [(h["step"], h[key]) for h in history if key in h]
        steps, values = zip(*pts, strict=True)
        style = "--" if key.startswith("zero_shot/") else "-"
        ax.plot(steps, values, style, marker="o", markersize=3, label=key)
    ax.set(title="zero-shot evaluation (validation)", xlabel="step", ylim=(0, 1.02))
    if keys:
        ax.legend(fontsize=7)
    else:
        note = "no evaluation\n(disabled, or no usable vl validation pairs\n"
        _note(ax, note + "nor labelled image validation)")


def _note(ax: Any, text: str) -> None:
    """`text` centred on an empty matplotlib axis (what a panel would have shown, and why not)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, transform=ax.transAxes)

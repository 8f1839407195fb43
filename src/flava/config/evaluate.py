"""Typed schema of `python -m flava.evaluate`: a suite of tasks, the model, the data root."""

from __future__ import annotations

from dataclasses import dataclass, field

from flava.config.checks import Choice, ConfigError, check_directory, fail_checks
from flava.config.common import ModelConfig, model_checks


class Group(Choice):
    """The macro average a task counts towards."""

    vision = "vision"
    nlp = "nlp"
    multimodal = "multimodal"


class Command(Choice):
    """The command that runs a task (in-process, through its `main(argv)`)."""

    linear_probe = "linear_probe"
    finetune = "finetune"
    retrieval = "retrieval"
    zero_shot = "zero_shot"


@dataclass
class TaskSpec:
    """One task of a suite: what runs it, on which data, and which figure it reports."""

    name: str = "task"
    """Short name: the results file is results/<name>.json."""
    group: Group = Group.vision
    """vision, nlp or multimodal: the macro average it counts towards."""
    command: Command = Command.linear_probe
    """linear_probe, finetune, retrieval or zero_shot: the command that runs it."""
    metric: list[str] = field(default_factory=lambda: ["accuracy"])
    """metrics.json keys of the command; the task's figure is their mean times `scale`."""
    scale: float = 100.0
    """Factor from the command's metric to the table's figure (100: a fraction in percent)."""
    paper: float | None = None
    """The paper's figure for FLAVA-full (FACTS.md), None where it is not given."""
    needs: list[str] = field(default_factory=list)
    """Paths under data.root that must exist for the task to run."""
    get: str = ""
    """How to get the data, shown in the table when it is not on disk."""
    args: list[str] = field(default_factory=list)
    """The command's dotlist; `{root}` is data.root. fine-tuning: starts with config=..."""
    images: int = 0
    """Images the command encodes (linear probe, retrieval, zero-shot): for the estimate."""
    texts: int = 0
    """Texts the command encodes (retrieval captions, zero-shot prompts): for the estimate."""


@dataclass
class SuiteData:
    """Where the datasets are."""

    root: str = "data"
    """Directory holding every dataset of the suite, each in its task's layout."""


@dataclass
class SuiteRun:
    """Where results go and how much to run."""

    run_dir: str = "runs/evaluate"
    """Output directory: results/<task>.json, tasks/<task>/, table.md, table.csv, ..."""
    device: str = "auto"
    """Device of the encoding commands (auto: cuda when available, else cpu)."""
    finetune_scale: float = 1.0
    """Factor on each fine-tuning recipe's steps (0.1: a quick look; 1: the paper's recipe)."""
    finetune_max_steps: int | None = None
    """Cap on each fine-tuning run's steps after scaling (None: no cap)."""
    finetune_args: list[str] = field(default_factory=list)
    """Overrides appended to every fine-tuning task (e.g. [training.batch_size=16])."""
    eval_args: list[str] = field(default_factory=list)
    """Overrides appended to every linear-probe, retrieval and zero-shot task (e.g.
    [data.max_skipped_fraction=0.3, run.batch_size=256])."""
    rerun: bool = False
    """Run tasks again that finished in an earlier run of this run_dir."""
    plan: bool = False
    """Print the tasks, the data found and the estimated compute, and run nothing."""
    gpu_tflops: float = 989.0
    """Peak TFLOP/s of one GPU for the estimate (989: H100 dense bf16)."""
    mfu: float = 0.4
    """Model FLOPs utilisation assumed by the estimate."""


@dataclass
class EvaluateConfig:
    """`python -m flava.evaluate`: a suite of tasks, the model, the data root, the run."""

    suite: str = "paper"
    """Name of the suite (shown in the table)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model every task starts from (passed to each task's command)."""
    data: SuiteData = field(default_factory=SuiteData)
    run: SuiteRun = field(default_factory=SuiteRun)
    tasks: list[TaskSpec] = field(default_factory=list)
    """The tasks (see configs/evaluation/paper.yaml for the fields of one)."""
    only: list[str] = field(default_factory=list)
    """Run only these tasks, by name (empty: all)."""


def validate_suite(cfg: EvaluateConfig) -> None:
    """One-line errors for a suite that cannot run: no tasks, repeated names, unknown `only`."""
    if not cfg.tasks:
        raise ConfigError("the suite has no tasks: give config=evaluation/paper.yaml or your own")
    names = [t.name for t in cfg.tasks]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"tasks: names must be unique; repeated: {', '.join(repeated)}")
    empty = [t.name for t in cfg.tasks if not t.metric]
    if empty:
        raise ConfigError(f"task {empty[0]}: metric is empty: name its metrics.json keys")
    unknown = sorted(set(cfg.only) - set(names))
    if unknown:
        raise ConfigError(f"only: no task named {', '.join(unknown)} (tasks: {', '.join(names)})")
    r = cfg.run
    fail_checks(
        cfg,
        [
            *model_checks(cfg.model),
            (r.finetune_scale > 0, "run.finetune_scale", "must be > 0 (1: the paper's recipe)"),
            (
                r.finetune_max_steps is None or r.finetune_max_steps >= 1,
                "run.finetune_max_steps",
                "must be >= 1, or null for no cap",
            ),
            (0 < r.mfu <= 1, "run.mfu", "must be in (0, 1]"),
            (r.gpu_tflops > 0, "run.gpu_tflops", "must be > 0"),
        ],
    )
    check_directory(r.run_dir, "run.run_dir")

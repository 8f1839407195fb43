"""`python -m flava.finetune config=PATH_OR_NAME [key=value ...]`: fine-tune FLAVA on a task.

Examples:
    python -m flava.finetune config=finetuning/embedded_image.yaml      # offline, tiny, CPU
    python -m flava.finetune config=finetuning/mnli.yaml training.lightning.devices=4
    python -m flava.finetune config=finetuning/vqa.yaml data.root=/data/vqa
Writes <run_dir>/metrics.json, config.yaml, logs/, checkpoints/ (last.ckpt, best-*.ckpt) and
model/ (the best checkpoint: FlavaModel.from_pretrained-loadable + head.safetensors +
task.json). Keys: `python -m flava.finetune --help`.
"""

from __future__ import annotations

import sys
from typing import Any

from flava.config import cli_main
from flava.data.sources.base import DataError
from flava.tasks.finetune_config import (
    FinetuneConfig,
    describe_schema,
    load_schema_config,
    validate_finetune,
)


def _run(cfg: Any) -> object:
    from flava.checkpoints.io import read_checkpoint
    from flava.tasks.finetuning import run
    from flava.training.precision import resolve_precision

    resolve_precision(cfg)  # a precision the hardware lacks fails here, before any work
    resume = cfg.training.lightning_load_from_checkpoint
    if resume:  # missing, or needing more than tensors and plain containers: one line, exit 2
        read_checkpoint(resume, "training.lightning_load_from_checkpoint")
    return run(cfg)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a bad configuration or missing data)."""
    return cli_main(
        argv,
        __doc__,
        lambda: describe_schema(FinetuneConfig),
        lambda a: load_schema_config(a, FinetuneConfig, validate_finetune),
        _run,
        stop_errors=(DataError,),
    )


if __name__ == "__main__":
    sys.exit(main())

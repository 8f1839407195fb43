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

import logging
import sys

from flava.checkpoints import CheckpointError
from flava.config import ConfigError
from flava.tasks.finetune_config import (
    FinetuneConfig,
    describe_schema,
    load_schema_config,
    validate_finetune,
)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a bad configuration or missing data)."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("\n".join(describe_schema(FinetuneConfig)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = load_schema_config(argv, FinetuneConfig, validate_finetune)
        from flava.tasks.finetuning import run

        run(cfg)
    except (ConfigError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

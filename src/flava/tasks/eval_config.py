"""Kept until fine-tuning (finetune.py) and the files with uncommitted one-line import edits
(linear_probe.py, tasks/zero_shot.py, training/callbacks.py) import flava.tasks.run and
flava.config; then delete it."""

from flava.config import LinearProbeRunConfig, validate_linear_probe  # noqa: F401
from flava.tasks.run import (  # noqa: F401
    check_skipped,
    load_flava,
    print_table,
    read_json_list,
    resolve_device,
    save_results,
)

"""Kept until linear_probe.py imports flava.config and flava.tasks.run (edit in the working
tree, not yet committed); then delete this file and tasks/finetune_config.py."""

from flava.config import LinearProbeRunConfig, validate_linear_probe  # noqa: F401
from flava.tasks.run import (  # noqa: F401
    check_skipped,
    load_flava,
    print_table,
    resolve_device,
    save_results,
)

"""Several runs in one launch: `torchrun ... run_plan.py PLAN.json` runs each entry of the plan in
order in the same processes (a launch costs 10-15 s of start-up before its first step; the runs
of a plan share it) and writes every run's exit status to `codes.json` beside the plan. An entry
is `{"args": [...]}`: the arguments of `flava.train`, or of the `main` of the module named by
`"command"` (`"zero_shot"` is `flava.zero_shot`; a dotted name is taken as it is, from the
repository's root); `"sgd": true` trains with plain SGD in place of AdamW.
Started by `launch.run_plan`."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

import flava.training.module as module

ADAMW = module.adamw_with_schedule


def sgd(named: Any, t: Any, device: Any, max_steps: int) -> dict[str, Any]:
    """Plain SGD in place of AdamW: no division by sqrt(v) to amplify reduction order."""
    return {"optimizer": torch.optim.SGD([p for _, p in named if p.requires_grad], lr=0.05)}


def run(plan_file: Path) -> int:
    """Run the plan's entries in order; the highest exit status."""
    codes = []
    for entry in json.loads(plan_file.read_text()):
        module.adamw_with_schedule = sgd if entry.get("sgd") else ADAMW
        name = entry.get("command", "train")
        command = importlib.import_module(name if "." in name else f"flava.{name}")
        codes.append(command.main(entry["args"]))
    if int(os.environ.get("RANK", "0")) == 0:
        (plan_file.parent / "codes.json").write_text(json.dumps(codes))
    return max(codes, default=0)


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))

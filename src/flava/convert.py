"""`python -m flava.convert SRC DST`: transformers layout / encoder.pkl / pretrained key <-> ours,
and pretraining checkpoints to weights.

The direction is detected from SRC: a transformers-layout directory, OpenAI's `encoder.pkl` or
a pretrained key converts to our layout; one of our checkpoints converts to the transformers
layout. `--to` forces the target.

A pretraining checkpoint (`<run_dir>/checkpoints/*.ckpt`: a sharded directory written under
`strategy: fsdp`, or DDP's single file) converts to `--to ckpt` (one consolidated file, which
DDP or one process resumes from; the default when DST ends in .ckpt), `--to flava`
(`save_pretrained` weights in safetensors, plus the k-means codebook when there is one) or
`--to transformers`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flava.checkpoints import CheckpointError, directory_layout, export_transformers
from flava.checkpoints.pretrained import PRETRAINED_KEYS
from flava.checkpoints.sharded import (
    is_sharded_checkpoint,
    model_from_training_checkpoint,
    training_checkpoint,
    write_consolidated,
)


def _source_kind(src: str) -> tuple[str, str]:
    """(layout, class name) of SRC."""
    path = Path(src).expanduser()
    if is_sharded_checkpoint(path) or path.suffix == ".ckpt":
        return "training", "FlavaForPreTraining"
    if not path.exists():
        if src in PRETRAINED_KEYS:
            cls = "ImageCodebook" if "codebook" in src else "FlavaForPreTraining"
            return "transformers", cls
        raise CheckpointError(f"{src}: no such file or directory, and not a pretrained key")
    if path.is_file():
        return "openai", "ImageCodebook"
    return directory_layout(path)


def _class(name: str) -> type:
    from flava.model import FlavaForPreTraining, FlavaModel
    from flava.model.codebook import ImageCodebook

    return {
        "FlavaModel": FlavaModel,
        "FlavaForPreTraining": FlavaForPreTraining,
        "ImageCodebook": ImageCodebook,
    }[name]


def _save_kmeans(state: dict[str, Any], out: Path) -> None:
    """kmeans_codebook.safetensors beside the weights when the checkpoint has k-means targets."""
    from flava.checkpoints.io import save_kmeans

    kmeans = {k.removeprefix("kmeans."): v for k, v in state.items() if k.startswith("kmeans.")}
    if kmeans:
        save_kmeans(out, kmeans)


def main(argv: list[str] | None = None) -> int:
    """Convert one checkpoint; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m flava.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", help="checkpoint directory, encoder.pkl or pretrained key")
    parser.add_argument("dst", help="output directory")
    parser.add_argument(
        "--to",
        choices=["flava", "transformers", "ckpt"],
        default=None,
        help="target layout (default: the other one; ckpt for a DST ending in .ckpt)",
    )
    args = parser.parse_args(argv)
    try:
        layout, cls_name = _source_kind(args.src)
        default = "transformers" if layout == "flava" else "flava"
        target = args.to or ("ckpt" if args.dst.endswith(".ckpt") else default)
        if target == "ckpt":
            if layout != "training":
                raise CheckpointError(f"{args.src}: --to ckpt needs a pretraining checkpoint")
            write_consolidated(args.src, args.dst)
            print(f"wrote the consolidated pretraining checkpoint {args.dst} from {args.src}")
            return 0
        checkpoint = None
        if layout == "training":
            checkpoint = training_checkpoint(args.src)
            model = model_from_training_checkpoint(checkpoint, args.src)
        else:
            model = _class(cls_name).from_pretrained(args.src)
        if target == "transformers":
            export_transformers(model, args.dst)
        else:
            model.save_pretrained(args.dst)
            if checkpoint is not None:
                _save_kmeans(checkpoint["state_dict"], Path(args.dst))
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {cls_name} ({n:,} parameters) from {args.src} ({layout}) to {args.dst} ({target})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

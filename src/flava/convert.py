"""`python -m flava.convert SRC DST`: transformers layout / encoder.pkl / pretrained key <-> ours.

The direction is detected from SRC: a transformers-layout directory, OpenAI's `encoder.pkl` or
a pretrained key converts to our layout; one of our checkpoints converts to the transformers
layout. `--to` forces the target.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flava.checkpoints import CheckpointError, export_transformers
from flava.checkpoints.io import read_json
from flava.checkpoints.pretrained import PRETRAINED_KEYS


def _source_kind(src: str) -> tuple[str, str]:
    """(layout, class name) of SRC."""
    path = Path(src).expanduser()
    if not path.exists():
        if src in PRETRAINED_KEYS:
            cls = "ImageCodebook" if "codebook" in src else "FlavaForPreTraining"
            return "transformers", cls
        raise CheckpointError(f"{src}: no such file or directory, and not a pretrained key")
    if path.is_file():
        return "openai", "ImageCodebook"
    raw = read_json(path / "config.json")
    if "flava_format" in raw:
        return "flava", raw.get("class", "FlavaForPreTraining")
    if raw.get("model_type") == "flava_image_codebook":
        return "transformers", "ImageCodebook"
    architectures = raw.get("architectures") or []
    return "transformers", "FlavaModel" if architectures == [
        "FlavaModel"
    ] else "FlavaForPreTraining"


def _class(name: str) -> type:
    from flava.model import FlavaForPreTraining, FlavaModel
    from flava.model.codebook import ImageCodebook

    return {
        "FlavaModel": FlavaModel,
        "FlavaForPreTraining": FlavaForPreTraining,
        "ImageCodebook": ImageCodebook,
    }[name]


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
        choices=["flava", "transformers"],
        default=None,
        help="target layout (default: the other one)",
    )
    args = parser.parse_args(argv)
    try:
        layout, cls_name = _source_kind(args.src)
        target = args.to or ("transformers" if layout == "flava" else "flava")
        model = _class(cls_name).from_pretrained(args.src)
        if target == "transformers":
            export_transformers(model, args.dst)
        else:
            model.save_pretrained(args.dst)
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

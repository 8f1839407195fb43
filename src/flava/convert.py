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

The original release's files (TorchMultimodal's FLAVA: the published `FLAVAForPreTraining` and
`FLAVAModel` .pt files, its examples' Lightning .ckpt files, pretraining or classification) are
told from their keys (or given with `--from torchmultimodal`) and convert to our layout (a
classifier to a fine-tuned model/ directory); the shapes give the config, `--num-heads` the one
setting they cannot (default width / 64). `--to torchmultimodal` writes a .pt state dict that
TorchMultimodal's `FLAVAForPreTraining` (for a FlavaModel: `FLAVAModel`) loads with strict=True.

`--to onnx` writes the image and text encoders with their projections (what `encode_image` /
`encode_text` return) as ONNX graphs with dynamic batch and text-length axes, from any FLAVA
source above (a pretraining checkpoint included), and prints how far onnxruntime's embeddings are
from PyTorch's on a probe batch; `flava.checkpoints.onnx.OnnxEncoders(DST)` runs them. Needs
`pip install 'flava[onnx]'`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flava.checkpoints import (
    CheckpointError,
    directory_layout,
    export_transformers,
    from_pretrained,
    save_pretrained,
)
from flava.checkpoints.io import safe_torch_load
from flava.checkpoints.layouts import CONVERT_SPELLINGS, Layout, convert_spelling
from flava.checkpoints.onnx import META_FILE as ONNX_META
from flava.checkpoints.onnx import require as require_onnx
from flava.checkpoints.pretrained import PRETRAINED_KEYS
from flava.checkpoints.sharded import (
    is_sharded_checkpoint,
    model_from_training_checkpoint,
    training_checkpoint,
    write_consolidated,
)
from flava.checkpoints.tmm_keys import tmm_prefix

if TYPE_CHECKING:
    from flava.model import FlavaForPreTraining, FlavaModel
    from flava.model.codebook import ImageCodebook

TMM = Layout.torchmultimodal
"""The original release's layout."""
SOURCES = [convert_spelling(TMM)]
"""--from's choices (`layouts.CONVERT_SPELLINGS`)."""


def _source_kind(src: str, given: str | None = None) -> tuple[Layout, str]:
    """(layout, class name) of SRC (`given`: --from, as spelled)."""
    path = Path(src).expanduser()
    if (path / ONNX_META).is_file():
        raise CheckpointError(
            f"{src} is an ONNX export, which converts to nothing; convert the checkpoint it was "
            "exported from"
        )
    if given is not None and CONVERT_SPELLINGS[given] is TMM:
        return TMM, "FLAVAForPreTraining"
    if is_sharded_checkpoint(path):
        return Layout.training, "FlavaForPreTraining"
    if path.is_file() and path.suffix == ".ckpt":  # ours, or TorchMultimodal's examples'
        data = safe_torch_load(path)
        state = data.get("state_dict") if isinstance(data, dict) else None
        tmm = isinstance(state, dict) and tmm_prefix(state) is not None
        return (TMM, "FLAVAForPreTraining") if tmm else (Layout.training, "FlavaForPreTraining")
    if path.is_dir() and not (path / "config.json").exists():
        return TMM, "FLAVAForPreTraining"  # a directory holding the release's .pt
    if not path.exists():
        if src in PRETRAINED_KEYS:
            cls = "ImageCodebook" if "codebook" in src else "FlavaForPreTraining"
            return Layout.transformers, cls
        raise CheckpointError(f"{src}: no such file or directory, and not a pretrained key")
    if path.is_file():
        return (Layout.openai, "ImageCodebook") if path.suffix == ".pkl" else (TMM, "FLAVAModel")
    return directory_layout(path)


def _class(name: str) -> type[FlavaModel | FlavaForPreTraining | ImageCodebook]:
    from flava.model import FlavaForPreTraining, FlavaModel
    from flava.model.codebook import ImageCodebook

    classes: dict[str, type[FlavaModel | FlavaForPreTraining | ImageCodebook]] = {
        "FlavaModel": FlavaModel,
        "FlavaForPreTraining": FlavaForPreTraining,
        "ImageCodebook": ImageCodebook,
    }
    return classes[name]


def _save_kmeans(state: dict[str, Any], out: Path) -> None:
    """kmeans_codebook.safetensors beside the weights when the checkpoint has k-means targets."""
    from flava.checkpoints.io import save_kmeans

    kmeans = {k.removeprefix("kmeans."): v for k, v in state.items() if k.startswith("kmeans.")}
    if kmeans:
        save_kmeans(out, kmeans)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flava.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "src", help="checkpoint directory or file (.ckpt, TorchMultimodal .pt, encoder.pkl), or key"
    )
    parser.add_argument(
        "dst", help="output directory (a file for --to ckpt / torchmultimodal; onnx: a directory)"
    )
    parser.add_argument(
        "--to",
        choices=list(CONVERT_SPELLINGS),
        default=None,
        help="target layout (default: the other one; ckpt for a DST ending in .ckpt)",
    )
    parser.add_argument(
        "--from",
        dest="source",
        choices=SOURCES,
        default=None,
        help="source layout, when its keys should not decide (default: told from SRC)",
    )
    parser.add_argument(
        "--num-heads",
        type=int,
        default=None,
        help="TorchMultimodal source: attention heads of every encoder (default: width / 64)",
    )
    parser.add_argument(
        "--modality",
        choices=["text", "image", "multimodal"],
        default=None,
        help="TorchMultimodal classifier: the encoder its head reads (the weights cannot tell)",
    )
    parser.add_argument(
        "--activation",
        default="relu",
        help="TorchMultimodal classifier: its MLP's activation (default: relu, as its default)",
    )
    return parser


def _from_tmm(args: argparse.Namespace) -> tuple[Any, str]:
    """Our model (and its class name) from a TorchMultimodal file; prints what was filled in."""
    from flava.checkpoints.torchmultimodal import build_from_torchmultimodal, read_torchmultimodal

    config, tmm = read_torchmultimodal(args.src, args.num_heads)
    model = build_from_torchmultimodal(config, tmm, args.modality, args.activation)
    for note in tmm.notes:
        print(f"note: {note}")
    if tmm.unplaced:
        print(f"note: {len(tmm.unplaced)} keys not used, e.g. {tmm.unplaced[0]}")
    return model, type(model).__name__


def _write(model: Any, args: argparse.Namespace, target: Layout, checkpoint: Any) -> None:
    """Write `model` to DST in the `target` layout."""
    from flava.model.classifier import FlavaClassifier

    if target is Layout.onnx:
        from flava.checkpoints.onnx import export_onnx

        gaps = export_onnx(model, args.dst)
        print(
            f"onnxruntime vs PyTorch, max |difference|: {gaps['image']:.1e} (image embeddings),"
            f" {gaps['text']:.1e} (text embeddings)"
        )
    elif target is TMM:
        from flava.checkpoints.torchmultimodal import export_torchmultimodal

        export_torchmultimodal(model, args.dst)
    elif target is Layout.transformers:
        export_transformers(model.flava if isinstance(model, FlavaClassifier) else model, args.dst)
    elif isinstance(model, FlavaClassifier):
        from flava.checkpoints.finetuned import save_finetuned

        n = model.settings["num_outputs"]
        extra = {"task": Path(args.src).stem, "type": "classification"}
        save_finetuned(model, args.dst, {**extra, "class_names": [str(i) for i in range(n)]})
    else:
        save_pretrained(model, args.dst)
        if checkpoint is not None:
            _save_kmeans(checkpoint["state_dict"], Path(args.dst))


def main(argv: list[str] | None = None) -> int:
    """Convert one checkpoint; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        layout, cls_name = _source_kind(args.src, args.source)
        default = Layout.transformers if layout is Layout.flava else Layout.flava
        if args.to is not None:
            target = CONVERT_SPELLINGS[args.to]
        else:
            target = Layout.training if args.dst.endswith(".ckpt") else default
        if target is Layout.onnx:
            require_onnx("onnx", "onnxruntime")  # before a model is read
        if target is Layout.training:
            if layout is not Layout.training:
                raise CheckpointError(f"{args.src}: --to ckpt needs a pretraining checkpoint")
            write_consolidated(args.src, args.dst)
            print(f"wrote the consolidated pretraining checkpoint {args.dst} from {args.src}")
            return 0
        checkpoint = None
        if layout is TMM:
            model, cls_name = _from_tmm(args)
        elif layout is Layout.training:
            checkpoint = training_checkpoint(args.src)
            model = model_from_training_checkpoint(checkpoint, args.src)
        else:
            model = from_pretrained(_class(cls_name), args.src)
        _write(model, args, target, checkpoint)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = sum(p.numel() for p in model.parameters())
    to = convert_spelling(target)
    print(f"wrote {cls_name} ({n:,} parameters) from {args.src} ({layout}) to {args.dst} ({to})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m flava.clip_benchmark eval ...`: LAION's CLIP_benchmark with FLAVA as a model type.

Takes CLIP_benchmark's own arguments (`clip_benchmark eval --help`) and runs its code (datasets,
zero-shot classification, retrieval, its metrics), with `--model_type flava` added: `--pretrained`
is a FLAVA model directory (`flava.save_pretrained`, a run's model/, a transformers FLAVA
directory) or a pretrained key (flava_full); `--model` only names the results. Any other
--model_type runs as in CLIP_benchmark itself.

Examples:
    flava-write-shards src=/data/classes dst=/data/bench/mine layout=clip_benchmark
    python -m flava.clip_benchmark eval --model_type flava --pretrained runs/demo/model \\
        --model flava --dataset wds/mine --dataset_root /data/bench/mine --no_amp
    python -m flava.clip_benchmark eval --model_type flava --pretrained flava_full --model flava \\
        --dataset wds/coco --dataset_root /data/bench/coco --task zeroshot_retrieval

On the same data (`flava-write-shards layout=clip_benchmark` writes a class folder or a
captions folder as CLIP_benchmark's local webdataset layout) its figures equal `flava.zero_shot`'s
top-1 / top-5 and `flava.retrieval`'s R@k: acc1 = zero_shot/top1, image_retrieval_recall@k =
text_to_image/R@k, text_retrieval_recall@k = image_to_text/R@k. CLIP_benchmark runs under
autocast by default (bf16 on a CPU): `--no_amp` computes in fp32, as the flava commands do.
Needs `pip install 'flava[benchmark]'`.
"""

from __future__ import annotations

import sys

INSTALL = "pip install 'flava[benchmark]' (or: pip install clip-benchmark)"
PROG = "python -m flava.clip_benchmark"


def main(argv: list[str] | None = None) -> int:
    """Run CLIP_benchmark's command line with FLAVA registered; returns the exit status."""
    from flava.checkpoints.io import CheckpointError
    from flava.config import ConfigError
    from flava.tasks.clip_benchmark import register

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
    try:
        cli = register()
    except ImportError as exc:
        print(f"error: CLIP_benchmark cannot be imported ({exc}): {INSTALL}", file=sys.stderr)
        return 2
    saved, sys.argv = sys.argv, [PROG, *argv]  # its main reads sys.argv
    try:
        cli.main()
    except SystemExit as exc:  # argparse: --help, or a bad argument (its message printed)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    except (CheckpointError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())

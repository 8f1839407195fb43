"""`python -m flava.filter [config=...] [key=value ...]`: filter, deduplicate and decontaminate
a collection of image-text pairs with the model's scores.

Reads an embedding folder of pairs (`python -m flava.embed ... embed.modality=pair`), scores each
pair by its image-text cosine, drops copies of the evaluation sets' images, near-duplicate
images (one of each group kept: the lowest key) and pairs under a score (or outside a kept
fraction), and writes the kept pairs as webdataset shards that pretraining reads
(`datasets.vl.train`), with report.json (counts per reason, bad records, examples), scores.png
(the score histogram) and decisions.parquet (every pair's decision); docs/collection.md.

Examples:
    python -m flava.filter embeddings=/data/emb out=/data/filtered filter.keep_fraction=0.7
    python -m flava.filter embeddings=/data/emb out=/data/clean filter.min_score=0.25 \\
        'eval_sets=[{type: image_folder, path: /data/eval/val}]' filter.eval_threshold=0.95

Under torchrun (`torchrun --nproc_per_node N -m flava.filter ...`) the processes share the
similarity searches (faiss: exact by default, or the index filter.index names), one unit per
embedding shard, and rank 0 decides and writes; the output is the same at any process count.
The same command run again resumes an interrupted run (filter.json holds its settings; other
settings stop in one line) and does nothing for a finished one. The decisions are the same for
the same folder and settings, and the report's examples are drawn with filter.seed.
Keys: `python -m flava.filter --help`.
"""

from __future__ import annotations

import sys
from typing import Any

from flava.config import cli_main, describe, load_config
from flava.config.filter import FilterRunConfig, validate_filter
from flava.data.sources import DataError


def run(cfg: FilterRunConfig) -> dict[str, Any]:
    """Filter per `cfg`; the report."""
    from flava.collection.filter_run import filter_collection

    return filter_collection(cfg)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad configuration or data)."""
    return cli_main(
        argv,
        __doc__,
        lambda: describe(FilterRunConfig),
        lambda a: load_config(a, FilterRunConfig, validate_filter),
        run,
        stop_errors=(DataError,),
    )


if __name__ == "__main__":
    sys.exit(main())

"""`python -m flava.embed [config=...] [key=value ...]`: embed a collection's images and texts.

Reads any source the other commands read (data.source.*: image folders, captions files, record
files, Hugging Face datasets, webdataset shards, ...) and writes embedding shards to `out`:
float16 arrays (image/shard-NNNNNN.npy, text/shard-NNNNNN.npy) row-aligned with a parquet table
(table/shard-NNNNNN.parquet: key, path, caption, captions, metadata) and manifest.json; the
layout is in docs/collection.md and reads with numpy and pyarrow alone.

Examples:
    python -m flava.embed data.source.type=captions data.source.path=/data/pics out=/data/emb \\
        model.pretrained_model_key=flava_full
    python -m flava.embed data.source.type=webdataset 'data.source.shards=[/data/shards]' \\
        out=/data/emb model.pretrained_model_key=runs/demo/model embed.precision=bf16
    torchrun --nproc_per_node 4 -m flava.embed config=my_embed.yaml   # each process its slice

A killed run resumes where it stopped when run again with the same settings (at any process
count), and every record ends embedded exactly once. A record that cannot be used (unreadable,
truncated or SVG image, no caption where one is embedded) is skipped and counted per reason in
manifest.json; above data.max_skipped_fraction the command stops with one line (exit 1).
Keys: `python -m flava.embed --help`.
"""

from __future__ import annotations

import sys
from typing import Any

from flava.config import cli_main, describe, load_config
from flava.config.embed import EmbedRunConfig, validate_embed
from flava.data.sources import DataError, check_fields


def checks(cfg: EmbedRunConfig) -> None:
    """The loader's checks: the schema's values, then the fields data.source sets."""
    validate_embed(cfg)
    check_fields(cfg.data.source, "data.source")


def run(cfg: EmbedRunConfig) -> dict[str, Any]:
    """Embed per `cfg` (under torchrun: in every process); the summary."""
    from flava.collection import embed_collection

    return embed_collection(cfg)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad configuration or data, 1: too many bad
    records)."""
    return cli_main(
        argv,
        __doc__,
        lambda: describe(EmbedRunConfig),
        lambda a: load_config(a, EmbedRunConfig, checks),
        run,
        stop_errors=(DataError,),
    )


if __name__ == "__main__":
    sys.exit(main())

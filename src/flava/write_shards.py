"""`flava-write-shards`: webdataset tar shards from any random-access source (the command of
`flava.data.write_shards`, which also runs as `python -m flava.data.write_shards`)."""

from __future__ import annotations

import sys

from flava.data import write_shards


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1: too many bad samples, 2: bad source/argument)."""
    return write_shards.main(argv)


if __name__ == "__main__":
    sys.exit(main())

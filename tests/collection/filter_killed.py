"""`flava.filter` whose processes kill themselves (SIGKILL, no clean-up): after
FLAVA_TEST_KILL_AFTER_UNITS units' matches each, before the next is saved; or, on rank 0's
writing, after FLAVA_TEST_KILL_AFTER_SHARDS output shards, while the next one is still a
temporary file. Run by test_filter_runs.py (under torchrun, or as a plain script)."""

from __future__ import annotations

import os
import signal
import sys

from flava.collection import filter_run
from flava.data import write_shards
from flava.filter import main


def killed(argv: list[str]) -> int:
    """`main(argv)` with the process killed at the (KILL_AFTER + 1)-th unit or shard."""
    units = int(os.environ.get("FLAVA_TEST_KILL_AFTER_UNITS", "-1"))
    shards = int(os.environ.get("FLAVA_TEST_KILL_AFTER_SHARDS", "-1"))
    save, close, count = filter_run.save_matches, write_shards._ShardFile.close, [0, 0]

    def save_matches(*args):
        if count[0] == units:
            os.kill(os.getpid(), signal.SIGKILL)
        save(*args)
        count[0] += 1

    def close_shard(self):
        if count[1] == shards:
            self.tar.close()  # the temporary tar stays, never renamed
            os.kill(os.getpid(), signal.SIGKILL)
        count[1] += 1
        return close(self)

    filter_run.save_matches = save_matches
    write_shards._ShardFile.close = close_shard
    return main(argv)


if __name__ == "__main__":
    sys.exit(killed(sys.argv[1:]))

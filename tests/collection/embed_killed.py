"""`flava.embed` whose processes kill themselves (SIGKILL, no clean-up) halfway through writing
a shard: after FLAVA_TEST_KILL_AFTER shards each, the next one's arrays are half written and
its table never is. Run under torchrun by test_distributed_embed.py."""

from __future__ import annotations

import os
import signal
import sys

import numpy as np

from flava.collection import layout
from flava.embed import main


def killed(argv: list[str]) -> int:
    """`main(argv)` with each process killed while writing its (KILL_AFTER + 1)-th shard."""
    kill_after = int(os.environ.get("FLAVA_TEST_KILL_AFTER", "-1"))
    real, written = layout.write_shard, []

    def write(folder, unit, rows):
        if len(written) == kill_after:
            for kind, array in rows.arrays.items():
                path = folder / kind / f"{layout.shard_name(unit)}.npy"
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, array[: len(array) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real(folder, unit, rows)
        written.append(unit)

    layout.write_shard = write
    return main(argv)


if __name__ == "__main__":
    sys.exit(killed(sys.argv[1:]))

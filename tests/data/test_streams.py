"""Stream readers: one epoch reads every record once, a saved position resumes exactly in O(shards),
and at another reader count the epoch still ends with every record read exactly once."""

from __future__ import annotations

import copy
import http.server
import threading
from collections import Counter

import numpy as np
import pytest

from flava.data import sources
from flava.data.sources.skips import SkipLog
from flava.data.streams import Layout, StreamReader, elastic_states, stream_seed

from . import sample_data

KEY = (1, 0)
SEED = 3


def text_shards(root, shards: int = 8, per_shard: int = 5) -> list[str]:
    """`shards` tar shards of `per_shard` text records each, record text 's<shard>-<i>'."""
    root.mkdir(parents=True, exist_ok=True)
    urls = []
    for s in range(shards):
        members = [(f"{s}-{i:03d}.txt", f"s{s}-{i}".encode()) for i in range(per_shard)]
        urls.append(str(sample_data.tar_file(root / f"t-{s:03d}.tar", members)))
    return urls


@pytest.fixture(scope="module")
def urls(tmp_path_factory):
    return text_shards(tmp_path_factory.mktemp("streams"))


def source(urls, buffer: int = 4, resampled: bool = False) -> sources.TarShards:
    return sources.TarShards(urls, shuffle_buffer=buffer, resampled=resampled)


def reader(src, layout: Layout, state=None, skips=None) -> StreamReader:
    return StreamReader(src, "text", SEED, KEY, layout, state, skips)


def text(record) -> str:
    return record.texts[0]


def rest_of_epoch(r: StreamReader, epoch: int) -> list[str]:
    """What `r` hands out until its epoch `epoch` ends (one record of the next is dropped)."""
    out = []
    while r.epoch <= epoch:
        record = next(r)
        if r.epoch == epoch:
            out.append(text(record))
    return out


def layouts(world: int, readers: int) -> list[Layout]:
    return [Layout(p, world, w, readers) for p in range(world) for w in range(readers)]


@pytest.mark.parametrize("buffer", [0, 4])
@pytest.mark.parametrize(("world", "readers"), [(2, 2), (3, 4)])
def test_one_epoch_reads_every_record_once(urls, buffer, world, readers):
    everything = sorted(text(s) for s in source(urls).records(range(len(urls)), "text"))
    assert len(everything) == 40
    seen = []
    for layout in layouts(world, readers):  # 3 x 4 readers share the 8 shards
        seen += rest_of_epoch(reader(source(urls, buffer), layout), 0)
    assert sorted(seen) == everything
    # the shard order changes with the epoch
    r = reader(source(urls, buffer), Layout(0, 2, 0, 2))
    assert rest_of_epoch(r, 0) != rest_of_epoch(r, 1)


@pytest.mark.parametrize("resampled", [False, True])
def test_a_saved_position_continues_exactly(urls, resampled):
    layout = Layout(1, 2, 0, 2)
    full = reader(source(urls, 4, resampled), layout)
    straight = [text(next(full)) for _ in range(60)]  # three epochs and more
    for cut in (0, 1, 3, 7, 10, 11, 23, 40):
        first = reader(source(urls, 4, resampled), layout)
        head = [text(next(first)) for _ in range(cut)]
        state = copy.deepcopy(first.state())
        again = reader(source(urls, 4, resampled), layout, state)
        assert head + [text(next(again)) for _ in range(60 - cut)] == straight, cut


def test_resume_cost_does_not_grow_with_the_run(urls):
    """Restoring a position reads the current shard and the buffer's, not the records before."""
    layout = Layout(0, 1, 0, 1)
    costs = []
    for records in (17, 10 * 40 + 17):  # within the first epoch; after ten epochs
        first = reader(source(urls, 4), layout)
        for _ in range(records):
            next(first)
        src = source(urls, 4)
        read = Counter()
        shard_samples = src.shard_samples

        def counted(shard, read=read, shard_samples=shard_samples):
            for sample in shard_samples(shard):
                read[shard] += 1
                yield sample

        src.shard_samples = counted
        resumed = reader(src, layout, first.state())
        next(resumed)
        costs.append(sum(read.values()))
    # at most the buffer's shards and the current one (3 x 5 records), after 17 or 417 records
    assert max(costs) <= 3 * 5, costs


def test_buffered_records_leave_within_four_buffer_sizes(urls):
    """So a restore reopens only the shards of the last few buffer sizes of records."""
    r = reader(source(urls, 3), Layout(0, 1, 0, 1))
    ages = []
    for _ in range(35):
        next(r)
        state = r.state()
        ages += [state["inserted"] - serial for _, _, serial in state["buffer"]]
    assert max(ages) <= 4 * 3 and len(set(ages)) > 5


def audit_elastic(urls, before: tuple[int, int], after: tuple[int, int], buffer: int, seed: int):
    """Old readers stop at random places; the new ones finish the epoch: each record once."""
    rng = np.random.default_rng(seed)
    consumed, states = [], []
    for layout in layouts(*before):
        r = reader(source(urls, buffer), layout)
        share = len(rest_of_epoch(reader(source(urls, buffer), layout), 0))
        take = int(rng.integers(0, share + 1))
        consumed += [text(next(r)) for _ in range(take)]
        states.append({**copy.deepcopy(r.state())})
    src = source(urls, buffer)
    for layout in layouts(*after):
        start, _ = elastic_states(states, src, stream_seed(SEED, KEY), layout)
        consumed += rest_of_epoch(reader(source(urls, buffer), layout, start), 0)
    return consumed


@pytest.mark.parametrize(
    ("before", "after"), [((2, 2), (1, 2)), ((1, 1), (2, 2)), ((2, 2), (3, 1)), ((3, 4), (1, 1))]
)
@pytest.mark.parametrize("buffer", [0, 4])
def test_another_reader_count_finishes_the_epoch_exactly_once(urls, before, after, buffer):
    everything = sorted(text(s) for s in source(urls).records(range(len(urls)), "text"))
    for seed in range(4):
        assert sorted(audit_elastic(urls, before, after, buffer, seed)) == everything


def test_an_elastic_position_resumes_again_at_either_layout(urls):
    """Positions after an elastic resume carry the leftovers: resumed again, still exactly once."""
    everything = sorted(text(s) for s in source(urls).records(range(len(urls)), "text"))
    consumed, states = [], []
    for layout in layouts(2, 2):
        r = reader(source(urls, 4), layout)
        consumed += [text(next(r)) for _ in range(3)]
        states.append(r.state())
    middle = []
    for layout in layouts(1, 3):
        start, _ = elastic_states(states, source(urls, 4), stream_seed(SEED, KEY), layout)
        r = reader(source(urls, 4), layout, start)
        consumed += [text(next(r)) for _ in range(2)]
        middle.append(r.state())
    for layout in layouts(2, 1):
        start, _ = elastic_states(middle, source(urls, 4), stream_seed(SEED, KEY), layout)
        consumed += rest_of_epoch(reader(source(urls, 4), layout, start), 0)
    assert sorted(consumed) == everything
    # the next epoch is split the new way: every record once again
    epoch1 = []
    for layout in layouts(2, 1):
        start, _ = elastic_states(middle, source(urls, 4), stream_seed(SEED, KEY), layout)
        epoch1 += rest_of_epoch(reader(source(urls, 4), layout, start), 1)
    assert sorted(epoch1) == everything


def test_elastic_resampled_and_changed_shards_start_fresh(urls):
    states = [reader(source(urls, 4, True), lay).state() for lay in layouts(2, 1)]
    states[1]["epoch"] = 2
    start, note = elastic_states(states, source(urls, 4, True), [0], Layout(0, 1, 0, 1))
    assert start == {"epoch": 3} and "fresh draws" in note
    plain = [reader(source(urls), lay).state() for lay in layouts(2, 1)]
    start, note = elastic_states(plain, source(urls[:5]), [0], Layout(0, 1, 0, 1))
    assert start == {"epoch": 1} and "shard count changed" in note


def test_a_truncated_shard_is_skipped_and_counted(tmp_path):
    urls = text_shards(tmp_path, shards=2, per_shard=6)
    data = open(urls[0], "rb").read()
    with open(urls[0], "wb") as f:
        f.write(data[: 512 * 7])  # three whole members, then the tar ends mid-member
    skips = SkipLog()
    got = rest_of_epoch(reader(source(urls, 0), Layout(0, 1, 0, 1), skips=skips), 0)
    assert sorted(got) == sorted([f"s0-{i}" for i in range(3)] + [f"s1-{i}" for i in range(6)])
    assert skips.take() == {"shard_unreadable": 1}


class _Flaky(http.server.SimpleHTTPRequestHandler):
    """Serves files; the first `drops[path]` GETs of a path send half of it, then hang up."""

    drops: dict[str, int] = {}

    def do_GET(self):
        left = self.drops.get(self.path, 0)
        if left <= 0:
            return super().do_GET()
        self.drops[self.path] = left - 1
        body = open(self.translate_path(self.path), "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_http_shards_are_retried_then_skipped_and_counted(tmp_path):
    text_shards(tmp_path, shards=2, per_shard=20)
    handler = lambda *a, **k: _Flaky(*a, directory=str(tmp_path), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        remote = [f"{base}/t-000.tar", f"{base}/t-001.tar"]
        _Flaky.drops = {"/t-000.tar": 1, "/t-001.tar": 99}
        src = source(remote, 0)
        src.backoff = 0.01
        skips = SkipLog()
        got = rest_of_epoch(reader(src, Layout(0, 1, 0, 1), skips=skips), 0)
    finally:
        server.shutdown()
    shard0 = [f"s0-{i}" for i in range(20)]
    assert sorted(t for t in got if t.startswith("s0")) == sorted(shard0)  # retried, read whole
    assert 0 < sum(t.startswith("s1") for t in got) < 20  # read until it kept failing
    assert skips.take() == {"shard_unreadable": 1}


def test_a_failing_pipe_command_is_retried_then_skipped(tmp_path):
    urls = text_shards(tmp_path, shards=2, per_shard=6)
    cut = [f"pipe:head -c 3584 {urls[0]}; exit 3", urls[1]]  # three members, then status 3
    src = source(cut, 0)
    src.backoff = 0.01
    skips = SkipLog()
    got = rest_of_epoch(reader(src, Layout(0, 1, 0, 1), skips=skips), 0)
    assert sorted(got) == sorted([f"s0-{i}" for i in range(3)] + [f"s1-{i}" for i in range(6)])
    assert skips.take() == {"shard_unreadable": 1}


def test_reader_keys_keep_the_checkpoint_names():
    from flava.data.streams import ReaderKey

    key = ReaderKey("vl", 0, 1, 2)
    assert str(key) == "vl/0/1/2" and ReaderKey.parse("vl/0/1/2") == key
    assert key.same_stream(ReaderKey.parse("vl/0/0/1")) and not key.same_stream(
        ReaderKey("vl", 1, 1, 2)
    )

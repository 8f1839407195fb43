"""flava.filter's searches and runs: faiss finds exactly the pairs the quadratic products find,
cosines at the threshold count (>=), an approximate index (filter.index) finds the planted
pairs, two processes write what one writes byte for byte, a run killed while searching and
again while writing its shards ends as an uninterrupted one, and reruns (finished, or with other
settings) are handled in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from flava.collection import similarity
from flava.collection.filter_run import DECISIONS, MATCHES, REPORT
from flava.filter import main as filter_main
from flava.index import main as index_main

from ..training.launch import environment, torchrun
from .test_filter import _filter, embedded, planted  # noqa: F401 (fixtures)

DRIVER = str(Path(__file__).with_name("filter_killed.py"))
PLANTED = ["filter.duplicate_threshold=0.995", "filter.eval_threshold=0.995"]


def _eval_set(planted) -> str:  # noqa: F811
    return f"eval_sets=[{{type: image_folder, path: {planted[1]}}}]"


def _quadratic_links(images: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """The pairs i < j whose cosine reaches `threshold`: every row against every row."""
    sims = images.astype(np.float64) @ images.astype(np.float64).T
    rows, cols = np.nonzero(sims >= threshold)
    return {(int(i), int(j)) for i, j in zip(rows, cols, strict=True) if i < j}


def test_range_search_finds_the_pairs_of_the_quadratic_products():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    images = centres[rng.integers(0, 40, 300)] + 0.08 * rng.normal(size=(300, 32))
    images = (images / np.linalg.norm(images, axis=1, keepdims=True)).astype(np.float32)
    for threshold in (0.9, 0.97, 0.995):
        want = _quadratic_links(images, threshold)
        found = np.concatenate([similarity.exact_links(images, s, s + 100, threshold)
                                for s in (0, 100, 200)])  # fmt: skip
        assert {tuple(p) for p in found.tolist()} == want and len(found) == len(want)
    score, match = similarity.nearest_eval(images[:50], images[250:])
    sims = images[:50].astype(np.float64) @ images[250:].T.astype(np.float64)
    np.testing.assert_allclose(score, sims.max(1), atol=1e-12)
    assert (sims[np.arange(50), match] >= sims.max(1) - 1e-6).all()


def test_a_cosine_equal_to_the_threshold_counts():
    images = np.zeros((3, 8), np.float32)
    images[0, 0] = 1.0
    images[1, :2] = [0.5, np.sqrt(0.75)]  # cosine to row 0: 0.5 exactly
    images[2, 2] = 1.0
    assert similarity.exact_links(images, 0, 3, 0.5).tolist() == [[0, 1]]
    assert similarity.exact_links(images, 0, 3, float(np.nextafter(0.5, 1))).tolist() == []
    score, match = similarity.nearest_eval(images[1:], images[:1])
    assert score.tolist() == [0.5, 0.0] and match.tolist() == [0, 0]


def _decided(out: Path) -> dict[str, tuple[str, str | None]]:
    table = pq.read_table(out / DECISIONS).to_pylist()
    return {r["key"]: (r["reason"], r["duplicate_of"]) for r in table}


def test_an_hnsw_index_finds_the_planted_duplicates(embedded, planted, tmp_path, capsys):  # noqa: F811
    index = tmp_path / "index"
    assert index_main([f"embeddings=[{embedded}]", f"out={index}", "index.kind=hnsw",
                       "index.field=image", "index.queries=4"]) == 0  # fmt: skip
    exact = _filter(embedded, tmp_path / "exact", *PLANTED)
    approx = _filter(embedded, tmp_path / "hnsw", *PLANTED, f"filter.index={index}")
    assert approx["dropped"] == exact["dropped"] == {
        "eval_copy": 0, "near_duplicate": 3, "low_score": 0}  # fmt: skip
    assert _decided(tmp_path / "hnsw") == _decided(tmp_path / "exact")
    text = tmp_path / "text_index"
    assert index_main([f"embeddings=[{embedded}]", f"out={text}", "index.kind=flat",
                       "index.field=text", "index.queries=4"]) == 0  # fmt: skip
    capsys.readouterr()
    args = [f"embeddings={embedded}", f"out={tmp_path / 'bad'}", f"filter.index={text}"]
    assert filter_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "filter.index" in err and "index.field=image" in err


def _files(out: Path) -> dict[str, bytes]:
    """The kept shards and the decisions, by name."""
    names = [DECISIONS, *json.loads((out / REPORT).read_text())["shards"]]
    return {name: (out / name).read_bytes() for name in names}


def _counts(report: dict) -> tuple:
    return report["pairs"], report["dropped"], report["kept"], report["written"], report["shards"]


@pytest.mark.distributed
def test_two_processes_write_what_one_writes(embedded, planted, tmp_path):  # noqa: F811
    one = _filter(embedded, tmp_path / "one", *PLANTED, _eval_set(planted))
    args = [f"embeddings={embedded}", f"out={tmp_path / 'two'}", *PLANTED, _eval_set(planted)]
    torchrun(2, "-m", "flava.filter", *args, timeout=300)
    two = json.loads((tmp_path / "two" / REPORT).read_text())
    assert _counts(two) == _counts(one) and two["examples"] == one["examples"]
    assert _files(tmp_path / "two") == _files(tmp_path / "one")
    assert len(list((tmp_path / "two" / MATCHES).glob("*.npz"))) == 3


def _killed(args: list[str], nproc: int, **kill: int) -> int:
    """One run of the driver killing itself (see filter_killed.py); its exit status."""
    env = {f"FLAVA_TEST_KILL_AFTER_{k.upper()}": str(v) for k, v in kill.items()}
    os.environ.update(env)
    try:
        if nproc > 1:
            return torchrun(nproc, DRIVER, *args, timeout=300, check=False).returncode
        done = subprocess.run([sys.executable, DRIVER, *args], env=environment(), timeout=300,
                              capture_output=True)  # fmt: skip
        return done.returncode
    finally:
        for k in env:
            del os.environ[k]


@pytest.mark.distributed
def test_a_killed_run_resumes_to_the_same_output(embedded, planted, tmp_path):  # noqa: F811
    settings = [*PLANTED, _eval_set(planted), "filter.shard_size=4"]
    reference = _filter(embedded, tmp_path / "reference", *settings)
    out = tmp_path / "out"
    args = [f"embeddings={embedded}", f"out={out}", *settings]
    # two processes, each killed before saving its second unit: rank 0 has units 0 and 2
    assert _killed(args, 2, units=1) != 0
    searched = {p.name: p.stat().st_mtime_ns for p in (out / MATCHES).glob("*.npz")}
    assert 1 <= len(searched) < 3 and not (out / REPORT).exists()
    # one process, killed while writing its second output shard
    assert _killed(args, 1, shards=1) != 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / MATCHES).glob("*.npz")
            if p.name in searched} == searched  # fmt: skip
    shards = sorted(out.glob("filtered-*.tar"))
    assert [p.name for p in shards] == ["filtered-000000.tar"] and not (out / REPORT).exists()
    first = shards[0].stat().st_mtime_ns
    resumed = _filter(embedded, out, *settings)
    assert _counts(resumed) == _counts(reference) and resumed["examples"] == reference["examples"]
    assert resumed["bad_records"] == reference["bad_records"]
    assert _files(out) == _files(tmp_path / "reference")
    assert (out / "filtered-000000.tar").stat().st_mtime_ns == first  # kept, not written again
    assert len(resumed["shards"]) == 3


def test_reruns_finished_or_with_other_settings(embedded, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    first = _filter(embedded, out, "filter.duplicate_threshold=0.995")
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    assert _filter(embedded, out, "filter.duplicate_threshold=0.995") == first
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == stamps
    capsys.readouterr()
    args = [f"embeddings={embedded}", f"out={out}", "filter.duplicate_threshold=0.99"]
    assert filter_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "filter.duplicate_threshold: 0.995 there, 0.99 now" in err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("")
    assert filter_main([f"embeddings={embedded}", f"out={tmp_path / 'other'}"]) == 2
    assert "give a new folder" in capsys.readouterr().err

"""flava.index: the kind and search parameter follow the size, the budget and measured recall@10
(checked again here against numpy's exact search on other queries); shards are added to an
existing index; bad inputs fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flava.collection import build_index, indexing, layout, read_index
from flava.collection.embed_run import finish
from flava.config.index import IndexOptions, parse_bytes
from flava.index import main

SETTINGS = {
    "model": {"tag": "synthetic", "pretrained_model_key": None, "preset": "tiny", "seed": 0},
    "modality": "image",
    "normalized": True,
    "precision": "fp32",
    "text_max_length": 77,
}


def clustered(n: int, d: int = 64, seed: int = 0) -> np.ndarray:
    """`n` unit vectors in clusters on a 12-dimensional subspace plus a little noise (the shape
    of an embedding collection: few directions carry most of the variance)."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(0).standard_normal((12, d))
    centres = rng.standard_normal((32, 12))
    z = centres[rng.integers(32, size=n)] + 0.5 * rng.standard_normal((n, 12))
    x = z @ basis + 0.3 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic_folder(out: Path, vectors: np.ndarray, shard_size: int = 1000, tag: str = "") -> Path:
    """An embedding folder holding `vectors` as image embeddings (keys v<row>)."""
    starts = range(0, len(vectors), shard_size)
    for unit, start in enumerate(starts):
        part = vectors[start : start + shard_size]
        rows = layout.ShardRows(
            keys=[f"{tag}v{start + i}" for i in range(len(part))],
            paths=[None] * len(part),
            captions=[[f"vector {start + i}"] for i in range(len(part))],
            metadata=[{}] * len(part),
            arrays={"image": part},
            stats={"unit": unit, "covers": "", "records_read": len(part), "skipped": {}},
        )
        layout.write_shard(out, unit, rows)
    finish(out, SETTINGS, len(starts), vectors.shape[1])
    return out


def exact_recall(index, vectors: np.ndarray, ids: np.ndarray, k: int = 10) -> float:
    """Recall@k of `index` for the queries vectors[ids] against numpy's exact top k (each
    query's own row left out of both), on the vectors as the shards store them."""
    stored = vectors.astype(np.float16).astype(np.float32)  # as the shards hold them
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    queries = stored[ids]
    scores = queries @ stored.T
    scores[np.arange(len(ids)), ids] = -np.inf
    truth = np.argsort(-scores, axis=1)[:, :k]
    _, found = index.search(queries, k + 1)
    hits = [len(set(f[f != q][:k]) & set(t)) for f, t, q in zip(found, truth, ids, strict=True)]
    return sum(hits) / (k * len(ids))


def build(folders: list[Path], out: Path, *extra: str) -> dict:
    listed = ",".join(str(f) for f in folders)
    assert main([f"embeddings=[{listed}]", f"out={out}", "index.queries=300", *extra]) == 0
    return json.loads((out / "index.json").read_text())


def test_a_small_collection_is_searched_exactly(tmp_path):
    vectors = clustered(2000)
    info = build([synthetic_folder(tmp_path / "emb", vectors)], tmp_path / "index")
    assert info["kind"] == "flat" and info["vectors"] == 2000 and info["recall_at_10"] == 1.0
    assert info["size_bytes"] >= 2000 * 64 * 4 and info["query_ms"] > 0
    index, _ = read_index(tmp_path / "index")
    assert exact_recall(index, vectors, np.arange(0, 2000, 7)) == 1.0


@pytest.mark.parametrize(("budget", "code"), [("2MB", "SQ8"), ("1MB", "PQ8np")])
def test_ivf_fits_the_budget_and_its_nprobe_is_the_smallest_reaching_the_target(
    tmp_path, budget, code
):
    vectors = clustered(20000)
    folder = synthetic_folder(tmp_path / "emb", vectors, 5000)
    info = build([folder], tmp_path / "index", f"index.memory_budget={budget}")
    assert info["kind"] == "ivf" and info["params"]["code"] == code  # the largest that fits
    assert info["size_bytes"] <= parse_bytes(budget) < 20000 * 64 * 4
    nprobe, sweep = info["search"]["nprobe"], info["sweep"]
    index, _ = read_index(tmp_path / "index")
    assert index.nprobe == nprobe
    others = np.random.default_rng(7).choice(20000, 300, replace=False)
    measured = exact_recall(index, vectors, others)  # other queries, numpy's exact search
    assert abs(measured - info["recall_at_10"]) < 0.05
    if code == "SQ8":  # reaches the target; one probe less does not
        assert info["target_reached"] and info["recall_at_10"] >= 0.95 and nprobe > 1
        assert sweep[-1] == {"nprobe": nprobe, "recall_at_10": info["recall_at_10"]}
        assert all(s["recall_at_10"] < 0.95 for s in sweep[:-1])
    else:  # 8 bytes a vector cannot: the best value is kept, and index.json says so
        assert not info["target_reached"] and len(sweep) == len(indexing.candidates("ivf", index))
        assert info["recall_at_10"] == max(s["recall_at_10"] for s in sweep) < 0.95


def test_hnsw_past_exact_max_with_the_smallest_efsearch_reaching_the_target(tmp_path):
    vectors = clustered(6000)
    folder = synthetic_folder(tmp_path / "emb", vectors, 2000)
    info = build([folder], tmp_path / "index", "index.exact_max=1000", "index.target_recall=0.97")
    assert info["kind"] == "hnsw" and info["params"]["M"] == 32
    ef = info["search"]["efSearch"]
    assert info["recall_at_10"] >= 0.97 and all(
        s["recall_at_10"] < 0.97 for s in info["sweep"][:-1]
    )
    index, _ = read_index(tmp_path / "index")
    assert index.hnsw.efSearch == ef
    assert exact_recall(index, vectors, np.arange(0, 6000, 20)) >= 0.95


def test_new_shards_are_added_to_an_index(tmp_path):
    first = synthetic_folder(tmp_path / "a", clustered(3000, seed=1), 1000)
    more = clustered(1000, seed=2)
    second = synthetic_folder(tmp_path / "b", more, 400, tag="b")
    out = tmp_path / "index"
    built = build([first], out, "index.kind=ivf", "index.target_recall=0.9")
    index, _ = read_index(out)
    centroids = index.quantizer.reconstruct_n(0, index.nlist)
    added = build([first, second], out, "index.kind=ivf", "index.target_recall=0.9")
    assert added["vectors"] == 4000 and added["params"] == built["params"]
    assert [s["name"] for s in added["shards"]] == [f"shard-00000{i}" for i in (0, 1, 2, 0, 1, 2)]
    index, _ = read_index(out)
    np.testing.assert_array_equal(index.quantizer.reconstruct_n(0, index.nlist), centroids)
    _, ids = index.search(more[[0, 555, 999]], 1)
    assert ids[:, 0].tolist() == [3000, 3555, 3999]  # the new vectors, numbered after the old
    again = build_index([str(first), str(second)], out, IndexOptions(queries=300))
    assert again["new_vectors"] == 0 and again["vectors"] == 4000  # nothing new to add


def test_bad_inputs_fail_in_one_line(tmp_path, capsys):
    first = synthetic_folder(tmp_path / "a", clustered(500), 250)
    second = synthetic_folder(tmp_path / "b", clustered(300, seed=3), 300)
    build([first, second], tmp_path / "index")
    bigger = synthetic_folder(tmp_path / "c", clustered(2500), 2500)
    cases = [
        ([f"embeddings=[{second},{first}]"], "list its embedding folders first"),
        ([f"embeddings=[{tmp_path / 'none'}]"], "no embeddings (manifest.json not found)"),
        ([f"embeddings=[{bigger}]", "index.memory_budget=1KB", "index.rebuild=true"], "raise it"),
        ([f"embeddings=[{first}]", "index.kind=ivf", "index.rebuild=true"], "use index.kind=flat"),
        ([f"embeddings=[{first}]", "index.memory_budget=lots"], "must be a size such as 2GB"),
        ([f"embeddings=[{first}]", "index.field=text"], "holds no text embeddings"),
        (["out=x"], "embeddings is not set"),
    ]
    for args, message in cases:
        assert main([f"out={tmp_path / 'index'}", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (args, err)


def test_an_unfinished_embedding_folder_is_refused(tmp_path, capsys):
    folder = synthetic_folder(tmp_path / "a", clustered(100), 50)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    assert main([f"embeddings=[{folder}]", f"out={tmp_path / 'index'}"]) == 2
    assert "has not finished (2 of 2 shards); run the same flava.embed" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["garbage", "other_count"])
def test_a_corrupt_index_is_reported_in_one_line(tmp_path, damage):
    from flava.collection import IndexUnavailable

    folder = synthetic_folder(tmp_path / "a", clustered(200), 100)
    build([folder], tmp_path / "index")
    if damage == "garbage":
        (tmp_path / "index" / "index.faiss").write_bytes(b"not an index at all" * 10)
        message = "the index cannot be read"
    else:
        info = json.loads((tmp_path / "index" / "index.json").read_text())
        (tmp_path / "index" / "index.json").write_text(json.dumps({**info, "vectors": 5}))
        message = "index.faiss holds 200 vectors, index.json says 5"
    with pytest.raises(IndexUnavailable, match=message) as caught:
        read_index(tmp_path / "index")
    assert caught.value.status == 503 and "\n" not in str(caught.value)

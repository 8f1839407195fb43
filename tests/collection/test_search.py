"""flava.search and `Searcher`: a record's own picture or caption finds that record first; the
command prints a table or JSON lines; bad queries and broken indexes fail in one line with the
status a server maps them to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flava.collection import IndexUnavailable, QueryError, Searcher
from flava.embed import main as embed
from flava.index import main as index
from flava.search import main as search

from ..data import sample_data
from .test_embed import captions_args, embed_args


@pytest.fixture(scope="module")
def indexed(tiny_model, messy_pairs, tmp_path_factory) -> dict[str, Path]:
    """The messy captions folder embedded (pairs) and indexed twice: images and captions."""
    root = tmp_path_factory.mktemp("indexed")
    args = embed_args(tiny_model, root / "emb", *captions_args(messy_pairs), "embed.shard_size=4")
    assert embed([*args, "data.max_skipped_fraction=0.5"]) == 0
    for field in ("image", "text"):
        out = root / field
        assert index([f"embeddings=[{root / 'emb'}]", f"out={out}", f"index.field={field}"]) == 0
    return {"root": root, "folder": messy_pairs, "image": root / "image", "text": root / "text"}


GOOD = [f for f, _, reason in sample_data.messy_files(10)[:9] if reason is None]


def test_a_records_own_picture_finds_it_first(indexed):
    searcher = Searcher.open(indexed["image"])
    assert searcher.size == 9
    for i in (0, 4, 7):  # an RGB JPEG, an I;16 PNG, a P PNG
        path = indexed["folder"] / "images" / GOOD[i]
        for query in (str(path), path.read_bytes()):
            results = searcher.search_image(query, k=3)
            best = results[0]
            assert best.key == f"images/{GOOD[i]}" and best.path == str(path)
            assert best.score > 0.999 and best.rank == 1 and len(results) == 3
            assert best.caption == sample_data.captions_of(i)[0]
            assert results[1].score <= best.score and results[1].rank == 2


def test_a_records_own_caption_finds_it_first_in_a_caption_index(indexed):
    searcher = Searcher.open(indexed["text"], device="cpu")
    for i in (1, 5):
        best = searcher.search_text(sample_data.captions_of(i)[0], k=1)[0]
        assert best.key == f"images/{GOOD[i]}" and best.score > 0.999
        assert best.to_dict()["metadata"] == {} and best.shard.endswith(f"shard-00000{i // 4}")
        assert best.row == i % 4 and best.id == i  # shards of 4 records; the bad ones come last
    assert len(searcher.search_text("a cat", k=100)) == 9  # k past the collection: all of it


def test_the_command_prints_a_table_or_json_lines(indexed, capsys):
    query = sample_data.captions_of(2)[0]
    assert search([f"index={indexed['text']}", f"text={query}", "k=2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "key", "path", "caption"]
    assert lines[1].split()[:3] == ["1", lines[1].split()[1], f"images/{GOOD[2]}"]
    assert len(lines) == 3
    picture = indexed["folder"] / "images" / GOOD[3]
    assert search([f"index={indexed['image']}", f"image={picture}", "format=jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == 9 and rows[0]["key"] == f"images/{GOOD[3]}"
    assert set(rows[0]) == {"rank", "score", "key", "path", "caption", "metadata"} | {
        "id",
        "shard",
        "row",
    }


def test_bad_queries_are_400s_in_one_line(indexed):
    searcher = Searcher.open(indexed["image"])
    images = indexed["folder"] / "images"
    cases = [
        (lambda: searcher.search_text("   "), "the text query is empty"),
        (lambda: searcher.search_image(sample_data.SVG), "unsupported image format"),
        (lambda: searcher.search_image((images / "truncated.png").read_bytes()), "truncated"),
        (lambda: searcher.search_image(b""), "zero byte image"),
        (lambda: searcher.search_image(str(images / "gone.jpg")), "image unavailable"),
        (lambda: searcher.search_text("a cat", k=0), "k=0: ask for at least 1 result"),
    ]
    for call, message in cases:
        with pytest.raises(QueryError, match=message) as caught:
            call()
        assert caught.value.status == 400 and "\n" not in str(caught.value)
    assert searcher.search_text("still serving", k=1)  # the searcher is unharmed


def test_a_missing_or_broken_index_is_a_503_in_one_line(indexed, tmp_path, capsys):
    with pytest.raises(IndexUnavailable, match="no index") as caught:
        Searcher.open(tmp_path / "nowhere")
    assert caught.value.status == 503
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("index.json", "index.faiss"):
        (broken / name).write_bytes((indexed["image"] / name).read_bytes())
    (broken / "index.faiss").write_bytes((broken / "index.faiss").read_bytes()[:100])
    assert search([f"index={broken}", "text=a cat"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the index cannot be read" in err and len(err.splitlines()) == 1
    assert search([f"index={indexed['image']}", "text=a cat", "model=/no/such/model"]) == 2
    assert "the query model cannot be loaded" in capsys.readouterr().err
    table = indexed["root"] / "emb" / "table" / "shard-000001.parquet"
    saved = table.read_bytes()
    try:
        table.write_bytes(saved[: len(saved) // 2])
        with pytest.raises(IndexUnavailable, match="cannot read the shard table"):
            Searcher.open(indexed["image"])
    finally:
        table.write_bytes(saved)


def test_the_command_refuses_no_query_or_an_empty_one(indexed, capsys):
    assert search([f"index={indexed['image']}"]) == 2
    assert "give one query" in capsys.readouterr().err
    assert search([f"index={indexed['image']}", "text=' '"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: the text query is empty; type what to look for"

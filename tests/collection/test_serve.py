"""flava.serve's JSON API on a loopback port, over indexes built from the held-out captions folder
and from webdataset shards: the library's answers by text and by uploaded picture, thumbnails
of the records' own images, every bad input answered with its status and one sentence while
the server goes on serving, an index broken and mended under it, queries off the event loop."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flava.collection import Searcher
from flava.serve import main as serve

from ..data import sample_data
from .conftest import WDS_PER_SHARD, wds_members
from .serving import call, messy_index, multipart, serving, wds_index

GOOD = [(f, data) for f, data, reason in sample_data.messy_files(10)[:9] if reason is None]
SRC = Path(__file__).parents[2] / "src"


@pytest.fixture(scope="module")
def messy(tiny_model, messy_pairs, tmp_path_factory) -> Path:
    """The held-out captions folder's image index."""
    return messy_index(tiny_model, messy_pairs, tmp_path_factory.mktemp("serve_messy"))


@pytest.fixture(scope="module")
def server(messy) -> str:
    with serving(messy) as url:
        yield url


def get_json(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    status, _, body = call(url, data, headers)
    return status, json.loads(body)


def text_url(base: str, q: str, k: int | str | None = None) -> str:
    params = {"q": q} | ({} if k is None else {"k": k})
    return f"{base}/api/search?{urllib.parse.urlencode(params)}"


def upload(base: str, name: str, data: bytes, kind: str = "image/png", **fields: str):
    body, headers = multipart({"image": (name, data, kind), **fields})
    return call(f"{base}/api/search/image", body, headers)


def test_health_names_the_collection_and_its_model(server, messy, tiny_model):
    status, info = get_json(f"{server}/api/health")
    assert status == 200 and info["status"] == "ok"
    assert info["records"] == 9 and info["dim"] == 128 and info["field"] == "image"
    assert info["kind"] == "flat" and info["model"]["pretrained_model_key"] == str(tiny_model)
    assert (info["k"], info["max_k"], info["max_upload"]) == (6, 20, 64000)
    status, headers, page = call(f"{server}/")
    assert status == 200 and b'id="results"' in page and "text/html" in headers["content-type"]
    for name in ("app.js", "app.css"):
        assert call(f"{server}/static/{name}")[0] == 200
    _, schema = get_json(f"{server}/api/openapi.json")
    assert {"/api/search", "/api/search/image", "/api/health"} <= set(schema["paths"])


def test_text_queries_answer_what_the_library_answers(server, messy):
    searcher = Searcher.open(messy, device="cpu")
    for i in (0, 3, 6):
        q = sample_data.captions_of(i)[0]
        status, answer = get_json(text_url(server, q))
        assert status == 200 and answer["k"] == 6 and answer["query"] == {"text": q}
        expected = [r.to_dict() for r in searcher.search_text(q, 6)]
        got = answer["results"]
        assert [{k: v for k, v in r.items() if k != "thumbnail"} for r in got] == expected
        assert [r["rank"] for r in got] == [1, 2, 3, 4, 5, 6]
        assert all(a["score"] >= b["score"] for a, b in zip(got, got[1:], strict=False))
        assert got[0]["thumbnail"] == f"/api/thumbnail/{got[0]['id']}?v=0"
    body = json.dumps({"q": sample_data.captions_of(3)[0], "k": 3}).encode()
    status, posted = get_json(f"{server}/api/search", body, {"Content-Type": "application/json"})
    assert status == 200 and [r["key"] for r in posted["results"]] == [
        r.key for r in searcher.search_text(sample_data.captions_of(3)[0], 3)
    ]


def test_a_records_own_picture_uploaded_finds_it_first(server):
    for i in (0, 2, 4):  # an RGB JPEG, a P PNG, an I;16 PNG
        name, data = GOOD[i]
        status, _, body = upload(server, name, data, k="4")
        answer = json.loads(body)
        assert status == 200 and len(answer["results"]) == 4
        best = answer["results"][0]
        assert best["key"] == f"images/{name}" and best["score"] > 0.999
        assert best["caption"] == sample_data.captions_of(i)[0]
    status, raw = get_json(
        f"{server}/api/search/image?k=2", GOOD[1][1], {"Content-Type": "image/png"}
    )
    assert status == 200 and raw["results"][0]["key"] == f"images/{GOOD[1][0]}"


def test_thumbnails_are_the_records_own_images(server, messy_pairs):
    _, answer = get_json(text_url(server, "a cup of coffee", 20))
    assert len(answer["results"]) == 9
    for result in answer["results"]:
        status, headers, body = call(server + result["thumbnail"])
        assert status == 200 and headers["content-type"] == "image/jpeg"
        assert headers["x-thumbnail"] == "image"
        thumb = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.float32)
        source = Image.open(result["path"])
        assert max(thumb.shape[:2]) <= 64 and thumb.shape[1] == source.width
        own = np.asarray(sample_data_rgb(source), dtype=np.float32)
        assert np.abs(thumb - own).mean() < 8  # the JPEG of the same pixels


def sample_data_rgb(image: Image.Image) -> Image.Image:
    from flava.data.transforms import to_rgb

    return to_rgb(image)


def test_thumbnails_only_of_indexed_records(server):
    for ident, status, words in [
        ("9", 404, "no record 9 in the index; its ids run from 0 to 8"),
        ("..%2F..%2Fetc%2Fpasswd", 404, "there is no"),
        ("-1", 400, "is not a record id"),
    ]:
        got, body = get_json(f"{server}/api/thumbnail/{ident}")
        assert got == status and words in body["error"], body


BAD_INPUTS = [
    # (what, request arguments, status, words of the sentence)
    ("empty query", ("GET", {"q": "   "}), 400, "the text query is empty; type what to look for"),
    ("no query", ("GET", {}), 400, "the text query is empty"),
    ("k zero", ("GET", {"q": "a cat", "k": "0"}), 400, "k=0 is out of range; ask for 1 to 20"),
    ("k too large", ("GET", {"q": "a cat", "k": "21"}), 400, "k=21 is out of range"),
    ("k not a number", ("GET", {"q": "a cat", "k": "ten"}), 400, "k='ten' is not a whole number"),
    ("body not JSON", ("POST", b"q=a cat"), 400, "the body is not a JSON object"),
    ("an SVG", ("UPLOAD", sample_data.SVG), 400, "unsupported image format"),
    ("a text file", ("UPLOAD", b"hello, I am not a picture\n" * 4), 400, "not an image"),
    ("truncated", ("UPLOAD", sample_data.truncated_png(48)), 400, "truncated image"),
    ("empty file", ("UPLOAD", b""), 400, "zero byte image"),
    ("no file", ("FORM", None), 400, "no picture was sent"),
    ("too large", ("UPLOAD", b"\xff" * 70_000), 413, "larger than this server's limit of 64 KB"),
    ("too large, chunked", ("CHUNKED", b"\xff" * 70_000), 413, "limit of 64 KB"),
    ("unknown endpoint", ("GET /api/nowhere", None), 404, "there is no /api/nowhere here"),
    ("wrong method", ("PUT", None), 405, "PUT is not allowed on /api/search"),
]


def send_bad(base: str, how: str, arg: object) -> tuple[int, bytes]:
    """One bad request as a user's client sends it."""
    if how == "GET":
        return call(f"{base}/api/search?{urllib.parse.urlencode(arg)}")[::2]
    if how.startswith("GET "):
        return call(base + how[4:])[::2]
    if how == "POST":
        return call(f"{base}/api/search", arg, {"Content-Type": "application/json"})[::2]
    if how == "UPLOAD":
        return upload(base, "query.png", arg)[::2]
    if how == "FORM":
        body, headers = multipart({"k": "3"})
        return call(f"{base}/api/search/image", body, headers)[::2]
    if how == "PUT":
        request = urllib.request.Request(f"{base}/api/search", data=b"{}", method="PUT")
        try:
            urllib.request.urlopen(request, timeout=30)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
    if how == "CHUNKED":  # no Content-Length: the limit applies as the body arrives
        return chunked_post(f"{base}/api/search/image", arg)
    raise AssertionError(how)


def chunked_post(url: str, data: bytes) -> tuple[int, bytes]:
    import http.client

    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    chunks = (data[i : i + 8192] for i in range(0, len(data), 8192))
    connection.request(
        "POST", parts.path, chunks, {"Content-Type": "image/png"}, encode_chunked=True
    )
    response = connection.getresponse()
    status, body = response.status, response.read()
    connection.close()
    return status, body


@pytest.mark.parametrize(
    ("what", "request_", "status", "words"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_is_one_sentence_and_the_server_goes_on(server, what, request_, status, words):
    got, body = send_bad(server, *request_)
    message = json.loads(body)
    assert got == status and set(message) == {"error"}, message
    assert words in message["error"] and "\n" not in message["error"], message
    ok, answer = get_json(text_url(server, "a ginger cat", 2))
    assert ok == 200 and len(answer["results"]) == 2


def test_an_index_broken_while_serving_is_a_503_until_mended(messy, wds, tiny_model, tmp_path):
    folder = tmp_path / "index"
    shutil.copytree(messy, folder)
    faiss_file = folder / "index.faiss"
    whole = faiss_file.read_bytes()
    with serving(folder) as url:
        _, before = get_json(text_url(url, "a clock on a wall"))
        faiss_file.write_bytes(whole[:100])
        for endpoint in (text_url(url, "a clock on a wall"), f"{url}/api/health"):
            status, body = get_json(endpoint)
            assert status == 503 and "the index cannot be read" in body["error"], body
            assert "\n" not in body["error"] and "rebuild it" in body["error"]
        faiss_file.unlink()
        status, body = get_json(f"{url}/api/health")
        assert status == 503 and "no index" in body["error"]
        faiss_file.write_bytes(whole)
        status, after = get_json(text_url(url, "a clock on a wall"))
        assert status == 200 and after["results"] == [
            {**r, "thumbnail": r["thumbnail"].replace("v=0", "v=1")} for r in before["results"]
        ]
        other = wds_index(tiny_model, wds, tmp_path / "wds")  # another index written over it
        for name in ("index.faiss", "index.json"):
            shutil.copy(other / name, folder / name)
        status, info = get_json(f"{url}/api/health")
        assert status == 200 and info["records"] == 3 * WDS_PER_SHARD + 1


def test_webdataset_records_thumbnails_come_from_their_tar(tiny_model, wds, tmp_path):
    folder = wds_index(tiny_model, wds, tmp_path)
    members = dict(wds_members(1))
    with serving(folder) as url:
        picture = members["001001.jpg"]
        status, _, body = upload(url, "q.jpg", picture, "image/jpeg", k="3")
        best = json.loads(body)["results"][0]
        assert status == 200 and best["key"] == "001001" and best["path"] is None
        assert best["metadata"]["shard"] == str(wds / "part-001.tar")
        status, headers, thumb = call(url + best["thumbnail"])
        assert status == 200 and headers["x-thumbnail"] == "image"
        got = np.asarray(Image.open(io.BytesIO(thumb)), dtype=np.float32)
        own = np.asarray(Image.open(io.BytesIO(picture)), dtype=np.float32)
        assert got.shape == own.shape and np.abs(got - own).mean() < 8


def test_a_record_whose_image_is_gone_gets_a_placeholder(messy, messy_pairs):
    name = GOOD[5][0]
    original = messy_pairs / "images" / name
    saved = original.read_bytes()
    original.unlink()
    try:
        with serving(messy) as url:
            _, answer = get_json(text_url(url, "old coins", 20))
            gone = next(r for r in answer["results"] if r["key"] == f"images/{name}")
            status, headers, body = call(url + gone["thumbnail"])
            assert status == 200 and headers["x-thumbnail"] == "placeholder"
            assert Image.open(io.BytesIO(body)).size == (64, 64)
    finally:
        original.write_bytes(saved)


def test_queries_run_off_the_event_loop_and_a_full_queue_is_a_503(messy, monkeypatch):
    from flava.collection.encoder import Encoder

    real, started = Encoder.text_query, threading.Event()

    def slow(self, text):
        started.set()
        time.sleep(1.5)
        return real(self, text)

    monkeypatch.setattr(Encoder, "text_query", slow)
    with serving(messy, workers=1, queue=0) as url:
        first: list = []
        worker = threading.Thread(target=lambda: first.append(call(text_url(url, "a moon"))))
        worker.start()
        assert started.wait(10)
        t0 = time.perf_counter()
        status, info = get_json(f"{url}/api/health")
        thumb = call(f"{url}/api/thumbnail/0")[0]
        waited = time.perf_counter() - t0
        busy, body = get_json(text_url(url, "a rocket"))
        worker.join(30)
    assert status == 200 and thumb == 200 and waited < 1.0  # answered while the query ran
    assert (
        busy == 503
        and "the server is busy (1 queries running or waiting); try again" in body["error"]
    )
    assert first[0][0] == 200


def test_the_command_refuses_a_missing_index_or_a_taken_port(messy, tmp_path, capsys):
    assert serve([f"index={tmp_path / 'nowhere'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no index" in err and len(err.splitlines()) == 1
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve([f"index={messy}", f"port={port}", "device=cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert serve([f"index={messy}", "max_upload=lots"]) == 2
    assert "max_upload='lots' is invalid" in capsys.readouterr().err


@pytest.mark.slow  # a process of its own: imports torch and loads the model (10-20 s)
def test_the_command_serves_until_interrupted(messy, tmp_path):
    import signal
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    command = [sys.executable, "-m", "flava.serve", f"index={messy}", f"port={port}", "device=cpu"]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, info = get_json(f"http://127.0.0.1:{port}/api/health")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.2)
        assert status == 200 and info["records"] == 9
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    assert f"http://127.0.0.1:{port}" in proc.stderr.read()

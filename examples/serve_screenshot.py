"""The README's picture of flava.serve's page (docs/serve.png), made as a user would see it.

Writes held-out generated scenes as a captions folder (PNG files + captions.jsonl), embeds and
indexes them with the given model, serves the index on a loopback port and photographs the page
after a text query in headless chromium (Debian's, through the system chromedriver).

    python examples/serve_screenshot.py --model runs/demo/model --out docs/serve.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path


def scenes_folder(root: Path, count: int, size: int) -> Path:
    """`count` held-out (test split) scenes as root/images/*.png with root/captions.jsonl."""
    from flava.data.scenes.dataset import SceneDataset

    (root / "images").mkdir(parents=True)
    scenes = SceneDataset(split="test", size=count, image_size=size)
    with (root / "captions.jsonl").open("w") as f:
        for i in range(count):
            scene = scenes[i]
            scene.image.save(root / "images" / f"{i:05d}.png")
            f.write(json.dumps({"image": f"images/{i:05d}.png", "captions": scene.captions}))
            f.write("\n")
    return root


def index_of(folder: Path, model: str, work: Path) -> Path:
    """The folder embedded with `model` (a model folder, key, or preset:NAME) and indexed."""
    from flava.embed import main as embed
    from flava.index import main as index

    weights = f"model.preset={model[7:]}" if model.startswith("preset:") else None
    weights = weights or f"model.pretrained_model_key={model}"
    source = ["data.source.type=captions", f"data.source.path={folder}"]
    assert embed([*source, weights, f"out={work / 'emb'}", "embed.progress=false"]) == 0
    assert index([f"embeddings=[{work / 'emb'}]", f"out={work / 'index'}"]) == 0
    return work / "index"


@contextlib.contextmanager
def served(index: Path) -> Iterator[str]:
    """flava.serve's app over `index` on a free loopback port, in a thread."""
    import uvicorn

    from flava.config.serve import ServeRunConfig
    from flava.serve import build

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    settings = ServeRunConfig(index=str(index), device="cpu", k=12)
    server = uvicorn.Server(uvicorn.Config(build(settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def photograph(url: str, query: str, out: Path, profile: Path) -> None:
    """The page after `query`, every thumbnail loaded, saved as a PNG at `out`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
        "--disable-background-networking --disable-component-update --disable-sync "
        "--disable-dev-shm-usage --window-size=1100,900 --force-device-scale-factor=1"
    ).split() + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        browser.get(url + "/")
        ready = "return document.body.dataset.ready === 'true'"
        WebDriverWait(browser, 30).until(lambda b: b.execute_script(ready))
        browser.find_element("id", "q").send_keys(query, Keys.ENTER)
        loaded = (
            "const imgs = [...document.querySelectorAll('#results img')];"
            "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)"
        )
        WebDriverWait(browser, 30).until(lambda b: b.execute_script(loaded))
        browser.save_screenshot(str(out))
    finally:
        browser.quit()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="preset:tiny", help="model folder or key, or preset:NAME")
    p.add_argument("--query", default="a red circle")
    p.add_argument("--scenes", type=int, default=400, help="scenes in the collection")
    p.add_argument("--size", type=int, default=128, help="scene images' side in pixels")
    p.add_argument("--out", type=Path, default=Path("docs/serve.png"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = scenes_folder(work / "scenes", args.scenes, args.size)
        with served(index_of(folder, args.model, work)) as url:
            photograph(url, args.query, args.out.resolve(), work / "profile")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

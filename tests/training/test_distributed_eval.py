"""Evaluation shared over two processes (gloo, torchrun) equals one process to 1e-6: the
embeddings, retrieval R@k and zero-shot accuracy, of the library, the `retrieval` / `zero_shot`
commands and the pretraining callback, with sets that do not split evenly.

Run as a script under torchrun (`python -m torch.distributed.run ... THIS_FILE OUT`), it writes
each rank's embeddings and metrics to OUT/rank<r>.pt.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

FAST = ["model.preset=tiny", "run.progress=false", "run.num_workers=0", "run.batch_size=4"]
BAD = (2, 5)  # images that fail to load in the usable-images case


def _torchrun(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Two CPU processes (gloo); fails the test with their stderr."""
    from .launch import torchrun  # noqa: TID252 (imported here: this file also runs as a script)

    return torchrun(2, *args, timeout=300)


def _embeddings() -> dict[str, Any]:
    """Images (9, batches of 2), texts (13, batches of 3), usable images with two bad ones, and
    the callback's metrics, of the seeded tiny model on held-out scenes."""
    from flava.data.sources.base import BadSample, SkipLog
    from flava.data.tokenizer import load_tokenizer
    from flava.data.transforms import image_transform
    from flava.model.flava import FlavaModel
    from flava.model.presets import preset
    from flava.tasks.retrieval import embed_images, embed_texts, embed_usable_images
    from flava.training.callbacks import scene_evaluation_set, zero_shot_metrics

    torch.manual_seed(0)
    model = FlavaModel(preset("tiny")).eval()
    size = model.config.image.image_size
    data = scene_evaluation_set(9, size)
    tokenizer, transform = load_tokenizer(), image_transform("eval", image_size=size)
    texts = [c for caps in data.captions for c in caps][:13]

    def load(i: int) -> Any:
        if i in BAD:
            raise BadSample("unreadable_image", f"image {i} is broken")
        return data.images[i]

    batches: list[int] = []  # the image batch sizes this process ran
    encode = model.encode_image
    model.encode_image = lambda pixels: batches.append(len(pixels)) or encode(pixels)
    images = embed_images(model, data.images, transform, batch_size=2)
    del model.encode_image  # the class method again
    skips = SkipLog()
    usable, kept = embed_usable_images(model, load, 9, transform, skips, batch_size=2)
    return {
        "images": images,
        "batches": batches,
        "texts": embed_texts(model, tokenizer, texts, batch_size=3),
        "usable": usable,
        "kept": kept,
        "skipped": dict(skips.counts),
        "metrics": zero_shot_metrics(model, data, tokenizer, transform, batch_size=2),
    }


def test_two_processes_embed_and_score_like_one(tmp_path):
    _torchrun([__file__, str(tmp_path)])
    one = _embeddings()
    assert one["kept"] == [i for i in range(9) if i not in BAD]
    assert one["skipped"] == {"unreadable_image": 2}
    assert {"retrieval/image_to_text/R@1", "zero_shot/top1"} <= set(one["metrics"])
    assert one["batches"] == [2, 2, 2, 2, 1]
    # every 2nd batch; rank 1 repeats batch 0 to run as many as rank 0 (sharded models)
    shares = {0: [2, 2, 1], 1: [2, 2, 2]}
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert got["batches"] == shares[rank]
        for key in ("images", "texts", "usable"):
            torch.testing.assert_close(got[key], one[key], rtol=0, atol=1e-6)
        assert got["kept"] == one["kept"] and got["skipped"] == one["skipped"]
        assert got["metrics"] == pytest.approx(one["metrics"], abs=1e-6)


def _metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


def test_zero_shot_command_under_torchrun(tmp_path):
    from flava import zero_shot

    argv = [*FAST, "data.size=13"]  # 4 batches of images: 8 on rank 0, 5 on rank 1
    assert zero_shot.main([*argv, f"run.run_dir={tmp_path / 'one'}"]) == 0
    result = _torchrun(["-m", "flava.zero_shot", *argv, f"run.run_dir={tmp_path / 'two'}"])
    assert result.stdout.count("zero-shot classification (") == 1  # rank 0's table only
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert two["images"] == one["images"] == 13
    for key in ("zero_shot/top1", "zero_shot/top5"):
        assert two[key] == pytest.approx(one[key], abs=1e-6)


def test_retrieval_command_under_torchrun(tmp_path):
    from flava import retrieval

    argv = [*FAST, "data.size=9"]  # 3 batches of images, 36 captions in 3 batches of 16
    assert retrieval.main([*argv, f"run.run_dir={tmp_path / 'one'}"]) == 0
    result = _torchrun(["-m", "flava.retrieval", *argv, f"run.run_dir={tmp_path / 'two'}"])
    assert result.stdout.count("retrieval (") == 1
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert (two["images"], two["captions"]) == (one["images"], one["captions"]) == (9, 36)
    recalls = [k for k in one if k.startswith("retrieval/")]
    assert len(recalls) == 6
    assert {k: two[k] for k in recalls} == pytest.approx({k: one[k] for k in recalls}, abs=1e-6)
    (cached_one,), (cached_two,) = (
        list((tmp_path / r / "cache").iterdir()) for r in ("one", "two")
    )
    a, b = (torch.load(p, weights_only=True) for p in (cached_one, cached_two))
    for key in ("images", "texts"):
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    assert torch.equal(b["text_to_image"], a["text_to_image"])
    _torchrun(["-m", "flava.retrieval", *argv, f"run.run_dir={tmp_path / 'two'}"])
    again = _metrics(tmp_path / "two")  # every process took rank 0's branch: the cache
    assert again["cache_hit"] is True and all(again[k] == two[k] for k in recalls)


def _pretraining(extra: list[str]) -> list[str]:
    from .test_train import SMALL  # noqa: TID252

    return [
        *SMALL,
        "training.lightning.max_steps=1",
        "training.evaluation.num_samples=9",  # 5 image batches of 2, 36 captions in 5 of 8
        "training.evaluation.batch_size=2",
        *extra,
    ]


def _before(run_dir: Path) -> dict[str, float]:
    """The callback's evaluation before training (step 0, the seeded initial weights)."""
    metrics = _metrics(run_dir)
    prefixes = ("before/retrieval/", "before/zero_shot/")
    return {k: v for k, v in metrics.items() if k.startswith(prefixes)}


@pytest.fixture(scope="module")
def one_process_evaluation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    from flava.train import main

    run_dir = tmp_path_factory.mktemp("one")
    assert main(_pretraining([f"training.run_dir={run_dir}"])) == 0
    return _before(run_dir)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_pretraining_evaluation_under_torchrun(tmp_path, strategy, one_process_evaluation):
    """The callback's step-0 evaluation of a 2-process run is one process's; under FSDP the
    ranks run as many batches, so their collectives line up."""
    two = [f"training.lightning.strategy={strategy}", "training.lightning.devices=2"]
    _torchrun(["-m", "flava.train", *_pretraining([*two, f"training.run_dir={tmp_path}"])])
    assert len(one_process_evaluation) == 8
    assert _before(tmp_path) == pytest.approx(one_process_evaluation, abs=1e-6)


def _worker(out: Path) -> None:
    """One torchrun process: join the gloo group, embed its share, save what it gathered."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        torch.save(_embeddings(), out / f"rank{dist.get_rank()}.pt")
        dist.barrier()  # no process leaves while another still talks to it
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))

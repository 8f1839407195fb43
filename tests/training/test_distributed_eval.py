"""Evaluation shared over two processes (gloo, torchrun) equals one process to 1e-6: the
embeddings, retrieval R@k and zero-shot accuracy, of the library, the `retrieval` / `zero_shot`
commands and the pretraining callback, with sets that do not split evenly.

Under torchrun, this module's `main([OUT])` writes each rank's embeddings and metrics to
OUT/rank<r>.pt (a `launch.run_plan` entry).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from .launch import run_plan

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

FAST = ["model.preset=tiny", "run.progress=false", "run.num_workers=0", "run.batch_size=4"]
BAD = (2, 5)  # images that fail to load in the usable-images case


def _embeddings() -> dict[str, Any]:
    """Images (9, batches of 2), texts (13, batches of 3), usable images with two bad ones, and
    the callback's metrics, of the seeded tiny model on held-out scenes."""
    from flava.data.sources.errors import BadSample
    from flava.data.sources.skips import SkipLog
    from flava.data.tokenizer import load_tokenizer
    from flava.data.transforms import image_transform
    from flava.model.flava import FlavaModel
    from flava.model.presets import preset
    from flava.tasks.eval_sets import scene_evaluation_set
    from flava.tasks.retrieval import embed_images, embed_texts, embed_usable_images
    from flava.training.callbacks import zero_shot_metrics

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


def test_two_processes_embed_and_score_like_one(launched):
    out, _ = launched
    one = _embeddings()
    assert one["kept"] == [i for i in range(9) if i not in BAD]
    assert one["skipped"] == {"unreadable_image": 2}
    assert {"retrieval/image_to_text/R@1", "zero_shot/top1"} <= set(one["metrics"])
    assert one["batches"] == [2, 2, 2, 2, 1]
    # every 2nd batch; rank 1 repeats batch 0 to run as many as rank 0 (sharded models)
    shares = {0: [2, 2, 1], 1: [2, 2, 2]}
    for rank in (0, 1):
        got = torch.load(out / "embeddings" / f"rank{rank}.pt", weights_only=False)
        assert got["batches"] == shares[rank]
        for key in ("images", "texts", "usable"):
            torch.testing.assert_close(got[key], one[key], rtol=0, atol=1e-6)
        assert got["kept"] == one["kept"] and got["skipped"] == one["skipped"]
        assert got["metrics"] == pytest.approx(one["metrics"], abs=1e-6)


def _metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


ZERO_SHOT = [*FAST, "data.size=13"]  # 4 batches of images: 8 on rank 0, 5 on rank 1
RETRIEVAL = [*FAST, "data.size=9"]  # 3 batches of images, 36 captions in 3 batches of 16


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The two-process runs, in order in one launch (their folder, their output): pretraining
    under ddp and under fsdp, the library's embeddings (this module's `main`), zero-shot,
    retrieval, and retrieval again from the first retrieval's cache."""
    out = tmp_path_factory.mktemp("two")
    two = ["training.lightning.devices=2"]
    again = [f"retrieval.cache_dir={out / 'retrieval' / 'cache'}"]
    plan = [
        *(
            {"args": _pretraining([*two, f"training.{k}", f"training.run_dir={out / s}"])}
            for s, k in (("ddp", "lightning.strategy=ddp"), ("fsdp", "lightning.strategy=fsdp"))
        ),
        {"command": "tests.training.test_distributed_eval", "args": [str(out / "embeddings")]},
        {"command": "zero_shot", "args": [*ZERO_SHOT, f"run.run_dir={out / 'zero_shot'}"]},
        {"command": "retrieval", "args": [*RETRIEVAL, f"run.run_dir={out / 'retrieval'}"]},
        {"command": "retrieval", "args": [*RETRIEVAL, f"run.run_dir={out / 'again'}", *again]},
    ]
    return out, run_plan(2, plan, out / "plan", timeout=600).stdout


def test_zero_shot_command_under_torchrun(tmp_path, launched):
    from flava import zero_shot

    out, stdout = launched
    assert zero_shot.main([*ZERO_SHOT, f"run.run_dir={tmp_path / 'one'}"]) == 0
    assert stdout.count("zero-shot classification (") == 1  # rank 0's table only
    one, two = _metrics(tmp_path / "one"), _metrics(out / "zero_shot")
    assert two["images"] == one["images"] == 13
    for key in ("zero_shot/top1", "zero_shot/top5"):
        assert two[key] == pytest.approx(one[key], abs=1e-6)


def test_retrieval_command_under_torchrun(tmp_path, launched):
    from flava import retrieval

    out, stdout = launched
    assert retrieval.main([*RETRIEVAL, f"run.run_dir={tmp_path / 'one'}"]) == 0
    assert stdout.count("retrieval (") == 2  # rank 0's table of each of the two runs
    one, two = _metrics(tmp_path / "one"), _metrics(out / "retrieval")
    assert (two["images"], two["captions"]) == (one["images"], one["captions"]) == (9, 36)
    recalls = [k for k in one if k.startswith("retrieval/")]
    assert len(recalls) == 6
    assert {k: two[k] for k in recalls} == pytest.approx({k: one[k] for k in recalls}, abs=1e-6)
    (cached_one,), (cached_two,) = (
        list(run.iterdir()) for run in (tmp_path / "one" / "cache", out / "retrieval" / "cache")
    )
    a, b = (torch.load(p, weights_only=True) for p in (cached_one, cached_two))
    for key in ("images", "texts"):
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    assert torch.equal(b["text_to_image"], a["text_to_image"])
    again = _metrics(out / "again")  # every process took rank 0's branch: the cache
    assert again["cache_hit"] is True and all(again[k] == two[k] for k in recalls)


def _pretraining(extra: list[str]) -> list[str]:
    from .test_train import SMALL

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
def test_pretraining_evaluation_under_torchrun(strategy, launched, one_process_evaluation):
    """The callback's step-0 evaluation of a 2-process run is one process's; under FSDP the
    ranks run as many batches, so their collectives line up."""
    assert len(one_process_evaluation) == 8
    assert _before(launched[0] / strategy) == pytest.approx(one_process_evaluation, abs=1e-6)


def main(argv: list[str]) -> int:
    """One torchrun process (in the process group of an earlier run of the plan, or its own):
    embed its share, save what it gathered to argv[0]/rank<r>.pt."""
    import torch.distributed as dist

    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    joined = dist.is_initialized()
    if not joined:
        dist.init_process_group("gloo")
    try:
        torch.save(_embeddings(), out / f"rank{dist.get_rank()}.pt")
        dist.barrier()  # no process leaves while another still talks to it
    finally:
        if not joined:
            dist.destroy_process_group()
    return 0

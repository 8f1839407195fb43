"""`python -m flava.evaluate`: the paper suite on tiny copies of the real on-disk layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flava import evaluate
from flava.tasks.suite import TaskResult, macro_averages

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def _image(path: Path, colour: tuple[int, int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.integers(-30, 30, (40, 40, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def food101(root: Path) -> None:
    """torchvision's Food101 layout: food-101/images/<class>/<id>.jpg + meta/{train,test}.json."""
    base = root / "food-101"
    split: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for c, (name, colour) in enumerate(COLOURS.items()):
        for i in range(8):
            _image(base / "images" / name / f"{i}.jpg", colour, 10 * c + i)
            split["train" if i < 5 else "test"].setdefault(name, []).append(f"{name}/{i}")
    (base / "meta").mkdir(parents=True)
    for s, rows in split.items():
        (base / "meta" / f"{s}.json").write_text(json.dumps(rows))


def dtd(root: Path) -> None:
    """torchvision's DTD layout: dtd/dtd/images/<class>/<name>.jpg, labels/{split}1.txt."""
    base = root / "dtd" / "dtd"
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c, (name, colour) in enumerate(COLOURS.items()):
        for i in range(9):
            _image(base / "images" / name / f"{name}_{i}.jpg", colour, 100 + 10 * c + i)
            lists[("train", "val", "test")[i % 3]].append(f"{name}/{name}_{i}.jpg")
    (base / "labels").mkdir()
    for s, rows in lists.items():
        (base / "labels" / f"{s}1.txt").write_text("\n".join(rows) + "\n")


def flickr30k(root: Path) -> None:
    """Karpathy's dataset_flickr30k.json + flickr30k-images/: 6 test images, 2 captions each."""
    base = root / "flickr30k"
    images = []
    for i, (name, colour) in enumerate(list(COLOURS.items()) * 2):
        _image(base / "flickr30k-images" / f"{i}.jpg", colour, 200 + i)
        sentences = [{"raw": f"a {name} square"}, {"raw": f"something {name}, picture {i}"}]
        images.append({"filename": f"{i}.jpg", "split": "test", "sentences": sentences})
    (base / "dataset_flickr30k.json").write_text(json.dumps({"images": images}))


def glue_rte(root: Path) -> None:
    """A GLUE-shaped RTE saved with `datasets`: sentence1, sentence2, label (2 classes)."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "sentence1": datasets.Value("string"),
            "sentence2": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["entailment", "not_entailment"]),
            "idx": datasets.Value("int32"),
        }
    )

    def split(n: int) -> object:
        rows = {
            "sentence1": [f"the {c} box is on the table" for c in ("red", "blue") * (n // 2)],
            "sentence2": [f"a box is {c}" for c in ("red", "green") * (n // 2)],
            "label": [0, 1] * (n // 2),
            "idx": list(range(n)),
        }
        return datasets.Dataset.from_dict(rows, features=features)

    ds = datasets.DatasetDict({"train": split(16), "validation": split(8)})
    ds.save_to_disk(str(root / "glue" / "rte"))


def vqa(root: Path) -> None:
    """VQAv2's published files: questions + annotations JSON, COCO-named images, train and val."""
    base = root / "vqa"
    for split in ("train", "val"):
        questions, annotations = [], []
        for i, (name, colour) in enumerate(list(COLOURS.items()) * 2):
            image_id = 10 + i
            _image(base / f"{split}2014" / f"COCO_{split}2014_{image_id:012d}.jpg", colour, i)
            questions.append({"question_id": i, "image_id": image_id, "question": "what colour?"})
            answers = [{"answer": name}] * 10
            annotations.append({"question_id": i, "image_id": image_id, "answers": answers})
        q = base / f"v2_OpenEnded_mscoco_{split}2014_questions.json"
        q.write_text(json.dumps({"questions": questions}))
        a = base / f"v2_mscoco_{split}2014_annotations.json"
        a.write_text(json.dumps({"annotations": annotations}))


QUICK = [
    "model.preset=tiny",
    "run.finetune_scale=0.001",
    "run.finetune_max_steps=2",
    "run.finetune_args=[training.num_workers=0,training.batch_size=4,data.text_max_length=24]",
    "run.device=cpu",
]


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """The `paper` suite with the tiny preset on a data root holding five of its tasks."""
    root = tmp_path_factory.mktemp("data")
    for make in (food101, dtd, flickr30k, glue_rte, vqa):
        make(root)
    out = tmp_path_factory.mktemp("evaluate") / "run"
    argv = ["config=evaluation/paper.yaml", f"data.root={root}", f"run.run_dir={out}", *QUICK]
    return root, out, evaluate.main(argv)


PRESENT = {"food101", "dtd", "flickr30k", "rte", "vqa"}


@pytest.mark.slow
def test_the_table_holds_every_task_with_a_number_or_not_on_disk(
    suite_run: tuple[Path, Path, int],
) -> None:
    _, out, rc = suite_run
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    tasks = metrics["tasks"]
    assert len(tasks) == 35
    ok = {name for name, t in tasks.items() if t["status"] == "ok"}
    assert ok == PRESENT, {n: t["detail"] for n, t in tasks.items() if n in PRESENT}
    for name, t in tasks.items():
        if name in PRESENT:
            assert t["value"] is not None and 0.0 <= t["value"] <= 100.0
        else:
            assert t["status"] == "missing" and t["detail"].startswith("not on disk (")
        assert (out / "results" / f"{name}.json").is_file()
    table = (out / "table.md").read_text()
    for name in tasks:
        assert f"| {name} |" in table
    assert "| imagenet | vision |  | 75.54 |  | missing: not on disk (" in table
    csv_rows = (out / "table.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 35 + 4
    assert (out / "figure.png").stat().st_size > 1000


@pytest.mark.slow
def test_macro_averages_are_those_of_the_per_task_figures(
    suite_run: tuple[Path, Path, int],
) -> None:
    _, out, _ = suite_run
    metrics = json.loads((out / "metrics.json").read_text())
    tasks, averages = metrics["tasks"], metrics["averages"]
    vision = np.mean([tasks["food101"]["value"], tasks["dtd"]["value"]])
    nlp = tasks["rte"]["value"]
    multimodal = np.mean([tasks["flickr30k"]["value"], tasks["vqa"]["value"]])
    assert averages["vision"] == pytest.approx(vision)
    assert averages["nlp"] == pytest.approx(nlp)
    assert averages["multimodal"] == pytest.approx(multimodal)
    assert averages["overall"] == pytest.approx(np.mean([vision, nlp, multimodal]))
    # each figure is the command's own metrics.json value, in percent
    probe = json.loads((out / "tasks" / "dtd" / "metrics.json").read_text())
    assert tasks["dtd"]["value"] == pytest.approx(100 * probe["probe/test_accuracy"])
    ret = json.loads((out / "tasks" / "flickr30k" / "metrics.json").read_text())
    both = [ret["retrieval/image_to_text/R@1"], ret["retrieval/text_to_image/R@1"]]
    assert tasks["flickr30k"]["value"] == pytest.approx(100 * np.mean(both))
    assert "average overall" in (out / "table.md").read_text()


@pytest.mark.slow
def test_a_rerun_skips_finished_tasks(
    suite_run: tuple[Path, Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, out, _ = suite_run
    ran: list[str] = []
    real = evaluate.run_task

    def spy(task, cfg, out_dir):
        ran.append(task.name)
        return real(task, cfg, out_dir)

    monkeypatch.setattr(evaluate, "run_task", spy)
    before = (out / "results" / "dtd.json").read_text()
    argv = ["config=evaluation/paper.yaml", f"data.root={root}", f"run.run_dir={out}", *QUICK]
    assert evaluate.main(argv) == 0
    assert PRESENT.isdisjoint(ran) and len(ran) == 35 - len(PRESENT)  # the missing ones look again
    assert (out / "results" / "dtd.json").read_text() == before


@pytest.mark.slow
def test_a_task_that_raises_is_recorded_and_the_rest_finish(
    suite_run: tuple[Path, Path, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _, _ = suite_run
    real = evaluate.command_main

    def broken(command: str):
        if command == "retrieval":
            raise RuntimeError("the retrieval command fell over\nsecond line")
        return real(command)

    monkeypatch.setattr(evaluate, "command_main", broken)
    out = tmp_path / "run"
    argv = [
        "config=evaluation/paper.yaml",
        f"data.root={root}",
        f"run.run_dir={out}",
        "only=[flickr30k,dtd]",
        *QUICK,
    ]
    assert evaluate.main(argv) == 0
    tasks = json.loads((out / "metrics.json").read_text())["tasks"]
    assert tasks["flickr30k"]["status"] == "failed"
    assert tasks["flickr30k"]["detail"] == "RuntimeError: the retrieval command fell over"
    assert tasks["dtd"]["status"] == "ok"


@pytest.mark.slow
def test_plan_prints_tasks_data_and_compute_without_running(
    suite_run: tuple[Path, Path, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _, _ = suite_run
    out = tmp_path / "plan"
    argv = ["config=evaluation/paper.yaml", f"data.root={root}", f"run.run_dir={out}"]
    assert evaluate.main([*argv, "run.plan=true", "model.preset=flava_full"]) == 0
    text = capsys.readouterr().out
    assert "data on disk for 5 of 35 tasks" in text
    assert not (out / "results").exists()
    rows = {line.split()[0]: line for line in text.splitlines()[2:-1]}
    assert len(rows) == 35 and "found" in rows["dtd"] and "missing" in rows["imagenet"]
    hours = {name: float(line.split()[-1]) for name, line in rows.items()}
    assert all(h > 0 for h in hours.values())
    assert hours["imagenet"] > hours["dtd"]  # 1.3M images against 5.6k
    assert hours["mnli"] > hours["rte"]  # 36k steps against 780


def test_bad_suites_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = tmp_path / "mine.yaml"
    suite.write_text("tasks:\n  - {name: a, command: train, metric: [x]}\n")
    assert evaluate.main([f"config={suite}", f"run.run_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: command='train' is invalid: must be one of linear_probe, finetune, retrieval, "
        "zero_shot"
    )
    assert evaluate.main(["only=[nope]", f"run.run_dir={tmp_path / 'r'}"]) == 2
    assert "only: no task named nope" in capsys.readouterr().err


def test_macro_averages_skip_tasks_without_a_figure() -> None:
    results = [
        TaskResult("a", "vision", "ok", 50.0),
        TaskResult("b", "vision", "missing"),
        TaskResult("c", "nlp", "ok", 70.0),
    ]
    averages = macro_averages(results)
    assert averages == {"vision": 50.0, "nlp": 70.0, "multimodal": None, "overall": 60.0}

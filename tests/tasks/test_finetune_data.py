"""Downstream dataset loaders on tiny files written in the published layouts, and fast failures."""

from __future__ import annotations

import json
import time

import pytest
import torch
from PIL import Image

from flava.config import FinetuneConfig, load_config, validate_finetune
from flava.data.sources import decode_image
from flava.data.tokenizer import load_tokenizer
from flava.data.transforms import image_transform
from flava.tasks.finetuning import build_datasets
from flava.tasks.metrics import majority_baseline
from flava.tasks.task_data import (
    DatasetUnavailable,
    SceneTask,
    glue_dataset,
    image_folder_task,
    read_source,
)
from flava.training.finetune_data import Collator


def _image(path, colour=(200, 30, 30), size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def write_vqa(root):
    """Two COCO images, three questions, ten answers each (VQAv2 layout)."""
    for image_id in (1, 2):
        _image(root / "train2014" / f"COCO_train2014_{image_id:012d}.jpg")
    questions = [
        {"image_id": 1, "question": "What colour is it?", "question_id": 10},
        {"image_id": 1, "question": "How many?", "question_id": 11},
        {"image_id": 2, "question": "Is it red?", "question_id": 20},
    ]
    human = {
        10: ["red"] * 7 + ["dark red"] * 3,
        11: ["2", "two", "2", "3", "3", "2", "2", "2", "1", "2"],
        20: ["yes"] * 9 + ["no"],
    }
    annotations = [
        {
            "question_id": qid,
            "image_id": 1 if qid < 20 else 2,
            "multiple_choice_answer": answers[0],
            "answers": [
                {"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                for i, a in enumerate(answers)
            ],
        }
        for qid, answers in human.items()
    ]
    (root / "questions.json").write_text(json.dumps({"questions": questions}))
    (root / "annotations.json").write_text(json.dumps({"annotations": annotations}))


VQA_FILES = "{questions: questions.json, annotations: annotations.json, images: train2014}"


def _cfg(argv):
    return load_config(argv, FinetuneConfig, validate_finetune)


def test_vqa_layout_soft_scores_and_collation(tmp_path):
    write_vqa(tmp_path)
    cfg = _cfg(
        [
            "config=finetuning/vqa.yaml",
            f"data.root={tmp_path}",
            "data.answer_vocab_size=4",
            f"data.train={{name: train, files: {VQA_FILES}}}",
            f"data.val=[{{name: val, files: {VQA_FILES}}}]",
        ]
    )
    train, vals, answers, outputs = build_datasets(cfg, 32)
    # answer counts: 2 x7 (two -> 2), yes x9, red x7, dark red x3, 3 x2 ... top 4 by count
    assert answers == ["yes", "2", "red", "dark red"] and outputs == 4
    ex = train[1]
    assert ex.text == "How many?" and ex.image.size == (40, 30)
    assert ex.target == {1: 1.0}  # "2" from 7 humans; "3" and "1" are not in the vocabulary
    assert train[0].target == {2: 1.0, 3: 1.0}
    assert vals[0][0] == "val" and len(vals[0][1]) == 3
    base = majority_baseline(train, vals, "vqa")
    assert base["val/vqa_accuracy"] == pytest.approx(1 / 3)  # top-answer "yes": q20 only
    tok = load_tokenizer()
    collate = Collator("multimodal", "vqa", outputs, tok, image_transform("eval", image_size=32))
    batch = collate([train[i] for i in range(3)])
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert batch["targets"].shape == (3, 4) and batch["targets"][2, 0] == 1.0
    assert batch["input_ids"].shape[0] == 3


def test_vqa_missing_files_fail_in_one_line(tmp_path):
    cfg = _cfg(["config=finetuning/vqa.yaml", f"data.root={tmp_path}"])
    with pytest.raises(
        DatasetUnavailable, match="v2_OpenEnded_mscoco_train2014_questions.json"
    ) as e:
        build_datasets(cfg, 32)
    assert "\n" not in str(e.value)
    write_vqa(tmp_path)
    (tmp_path / "train2014" / "COCO_train2014_000000000001.jpg").unlink()
    files = "{questions: questions.json, annotations: annotations.json, images: train2014}"
    cfg = _cfg(["config=finetuning/vqa.yaml", f"data.root={tmp_path}", f"data.train.files={files}"])
    with pytest.raises(DatasetUnavailable, match="COCO_train2014_000000000001.jpg"):
        build_datasets(cfg, 32)


def test_snli_ve_and_hateful_memes_layouts(tmp_path):
    snli = tmp_path / "snli"
    _image(snli / "flickr30k_images" / "111.jpg")
    rows = [
        {"Flikr30kID": "111.jpg", "sentence2": "A dog runs.", "gold_label": "entailment"},
        {"Flikr30kID": "111.jpg", "sentence2": "A cat sleeps.", "gold_label": "contradiction"},
        {"Flikr30kID": "111.jpg", "sentence2": "Unclear.", "gold_label": "-"},
        {"Flikr30kID": "111", "sentence2": "Maybe a dog.", "gold_label": "neutral"},
    ]
    (snli / "snli_ve_train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (snli / "snli_ve_dev.jsonl").write_text(json.dumps(rows[0]) + "\n")
    dev = "[{name: dev, files: {annotations: snli_ve_dev.jsonl, images: flickr30k_images}}]"
    cfg = _cfg(["config=finetuning/snli_ve.yaml", f"data.root={snli}", f"data.val={dev}"])
    train, vals, names, outputs = build_datasets(cfg, 32)
    assert names == ["entailment", "neutral", "contradiction"] and outputs == 3
    assert [train[i].target for i in range(len(train))] == [0, 2, 1]  # "-" dropped
    assert train[0].text == "A dog runs." and train[2].image is not None

    memes = tmp_path / "memes"
    _image(memes / "img" / "01.png")
    _image(memes / "img" / "02.png", (10, 10, 10))
    lines = [
        {"id": 1, "img": "img/01.png", "label": 0, "text": "a nice day"},
        {"id": 2, "img": "img/02.png", "label": 1, "text": "something mean"},
    ]
    for name in ("train.jsonl", "dev_seen.jsonl"):
        (memes / name).write_text("\n".join(json.dumps(r) for r in lines))
    cfg = _cfg(["config=finetuning/hateful_memes.yaml", f"data.root={memes}"])
    train, vals, names, outputs = build_datasets(cfg, 32)
    assert outputs == 2 and [train[i].target for i in range(2)] == [0, 1]
    assert train[1].text == "something mean" and train[1].image.getpixel((0, 0)) == (10, 10, 10)
    cfg = _cfg(["config=finetuning/hateful_memes.yaml", f"data.root={tmp_path / 'none'}"])
    with pytest.raises(DatasetUnavailable, match="train.jsonl"):
        build_datasets(cfg, 32)


def test_image_folder_and_retrieval_layouts(tmp_path):
    for split in ("train", "val"):
        for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            for i in range(2):
                _image(tmp_path / "folder" / split / c / f"{i}.png", colour)
    train = image_folder_task(str(tmp_path / "folder"), "train")
    assert train.class_names == ["cat", "dog"] and len(train) == 4
    assert [train.target(i) for i in range(4)] == [0, 0, 1, 1]
    assert train[3].image.getpixel((0, 0)) == (0, 0, 255)
    _image(tmp_path / "folder" / "val" / "bird" / "0.png")
    with pytest.raises(DatasetUnavailable, match="bird"):
        image_folder_task(str(tmp_path / "folder"), "val", train.class_names)

    coco = tmp_path / "coco"
    _image(coco / "val2014" / "COCO_val2014_000000000042.jpg")
    entries = [
        {
            "split": "test",
            "filepath": "val2014",
            "filename": "COCO_val2014_000000000042.jpg",
            "sentences": [{"raw": "A red square."}, {"raw": "Something red."}],
        },
        {"split": "train", "filepath": "train2014", "filename": "x.jpg", "sentences": []},
    ]
    (coco / "dataset_coco.json").write_text(json.dumps({"images": entries}))
    annotations = str(coco / "dataset_coco.json")
    data = read_source(type="karpathy", path=annotations, image_root=str(coco), split="test")
    assert data.captions == [["A red square.", "Something red."]]
    assert decode_image(data.sample(0).image).size == (40, 30)
    with pytest.raises(DatasetUnavailable, match="dataset_flickr30k.json"):
        read_source(type="karpathy", path=str(coco / "dataset_flickr30k.json"))

    folder = tmp_path / "caps"
    _image(folder / "a.png")
    (folder / "captions.jsonl").write_text(json.dumps({"image": "a.png", "captions": ["x", "y"]}))
    assert read_source(type="captions", path=str(folder)).captions == [["x", "y"]]


def test_embedded_tasks_and_pair_collation():
    pair = SceneTask("pair", "train", 6, 32)
    ex = pair[0]
    assert ex.image is None and ex.pair and ex.target in (0, 1)
    collate = Collator("text", "classification", 2, load_tokenizer(), image_transform("eval", 32))
    batch = collate([pair[i] for i in range(4)])
    types, mask = batch["token_type_ids"], batch["attention_mask"]
    assert (types[:, 0] == 0).all() and types.max() == 1  # [CLS] a [SEP] (0), b [SEP] (1)
    assert ((types == 1) <= (mask == 1)).all()
    assert batch["targets"].dtype == torch.long
    vqa = SceneTask("vqa", "val", 4, 32)
    assert vqa.num_outputs == 26 and list(vqa[0].target.values()) == [1.0]


def test_glue_offline_fails_fast_in_one_line():
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailable) as info:
        glue_dataset("qnli", "train")
    message = str(info.value)
    assert "GLUE qnli" in message and "datasets" in message and "\n" not in message
    assert time.perf_counter() - start < 60


def test_a_named_kind_is_its_source_config(tmp_path):
    # data.kind=hateful_memes data.root=DIR is data.kind=source {type: hateful_memes, path: DIR}
    memes = tmp_path / "memes"
    for i in range(2):
        _image(memes / "img" / f"{i}.png", (10 * i, 10 * i, 10 * i))
    rows = [{"id": i, "img": f"img/{i}.png", "text": f"t{i}", "label": i} for i in range(2)]
    for name in ("train.jsonl", "dev_seen.jsonl"):
        (memes / name).write_text("\n".join(json.dumps(r) for r in rows))
    named = _cfg(["config=finetuning/hateful_memes.yaml", f"data.root={memes}"])
    source = _cfg(
        [
            "config=finetuning/hateful_memes.yaml",
            "data.kind=source",
            "data.source.type=hateful_memes",
            f"data.source.path={memes}",
        ]
    )
    a, b = build_datasets(named, 32), build_datasets(source, 32)
    assert a[2] == b[2] == ["not hateful", "hateful"] and a[3] == b[3] == 2
    assert [a[0][i].target for i in range(2)] == [b[0][i].target for i in range(2)] == [0, 1]
    assert len(a[1][0][1]) == len(b[1][0][1]) == 2

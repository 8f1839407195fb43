"""The downstream layouts as source types of the one factory (VQAv2, SNLI-VE, Hateful Memes,
GLUE, torchvision): each gives the same `Sample` record the other sources give, and a missing
file fails in one line."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from flava.config import SourceConfig
from flava.config.loader import from_fields
from flava.data import sources


def _cfg(**fields):
    return from_fields(SourceConfig, fields)


def _image(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 10), colour).save(path)


def test_vqa_questions_are_samples_with_their_human_answers(tmp_path):
    _image(tmp_path / "val2014" / "COCO_val2014_000000000007.jpg")
    questions = [{"image_id": 7, "question": "What colour?", "question_id": 70}]
    answers = [{"question_id": 70, "answers": [{"answer": "red"}, {"answer": "Red"}]}]
    (tmp_path / "q.json").write_text(json.dumps({"questions": questions}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": answers}))
    files = {"questions": "q.json", "annotations": "a.json", "images": "val2014"}
    cfg = _cfg(type="vqa", path=str(tmp_path), files=files)
    sources.check_fields(cfg, "here")
    sources.check(cfg)
    source = sources.build(cfg, "train")
    sample = source.sample(0)
    assert isinstance(sample, sources.Sample) and source.kinds == {"vl"}
    assert sample.key == "70" and sample.texts == ["What colour?"]
    assert sample.raw_label == ["red", "Red"] and source.labels() == [["red", "Red"]]
    assert sources.decode_image(sample.image).size == (20, 10)
    with pytest.raises(sources.SourceError, match="VQA questions file: .*nothing.json not found"):
        sources.check(_cfg(type="vqa", path=str(tmp_path), files={"questions": "nothing.json"}))


def test_snli_ve_and_hateful_memes_are_samples_with_class_labels(tmp_path):
    _image(tmp_path / "flickr30k_images" / "5.jpg")
    rows = [
        {"Flickr30kID": "5", "sentence2": "A red box.", "gold_label": "entailment"},
        {"Flickr30kID": "5", "sentence2": "No idea.", "gold_label": "-"},
        {"Flickr30kID": "5.jpg", "sentence2": "A cat.", "gold_label": "contradiction"},
    ]
    (tmp_path / "snli_ve_train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    snli = sources.build(_cfg(type="snli_ve", path=str(tmp_path)), "train")
    assert snli.class_names == ["entailment", "neutral", "contradiction"]
    assert [snli.sample(i).label for i in range(len(snli))] == [0, 2]
    assert snli.sample(1).texts == ["A cat."] and snli.sample(1).image.endswith("5.jpg")

    _image(tmp_path / "img" / "1.png")
    memes = [{"id": 1, "img": "img/1.png", "label": 1, "text": "mean words"}]
    (tmp_path / "dev_seen.jsonl").write_text(json.dumps(memes[0]))
    files = {"annotations": "dev_seen.jsonl"}
    source = sources.build(_cfg(type="hateful_memes", path=str(tmp_path), files=files), "val")
    sample = source.sample(0)
    assert source.class_names == ["not hateful", "hateful"]
    assert sample.label == 1 and sample.texts == ["mean words"]
    assert sources.decode_image(sample.image).size == (20, 10)
    with pytest.raises(sources.SourceError, match=r"Hateful Memes file: .*train\.jsonl not found"):
        sources.build(_cfg(type="hateful_memes", path=str(tmp_path / "none")), "train")


def test_glue_and_torchvision_fail_in_one_line_without_their_data(tmp_path, monkeypatch):
    import datasets.config as dconfig
    from huggingface_hub import constants

    monkeypatch.setattr(dconfig, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(dconfig, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(sources.SourceError) as info:
        sources.build(_cfg(type="glue", subset="rte", split="train"), "train")
    assert str(info.value).startswith("GLUE rte (train): Hugging Face dataset glue/rte")
    with pytest.raises(sources.SourceError, match="GLUE task 'nope' is not known"):
        sources.check(_cfg(type="glue", subset="nope"))
    with pytest.raises(sources.SourceError, match=r"Food101 test not found under .*food-101"):
        sources.build(_cfg(type="torchvision", key="food101", path=str(tmp_path)), "val")
    with pytest.raises(sources.SourceError, match="torchvision set 'imagenet' is not known"):
        sources.check(_cfg(type="torchvision", key="imagenet", path=str(tmp_path)))
    # a layout field on a type that does not read it
    with pytest.raises(sources.SourceError, match="`download` is not a field of type glue"):
        sources.check_fields(_cfg(type="glue", subset="rte", download=True), "here")

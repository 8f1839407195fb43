"""The paper's recipe, or the original release's where the paper is silent, as named settings:
each default and what it does (issue: the recipe's deviations from the original release)."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

from flava.config import ConfigError, RunConfig, load_config, validate
from flava.config.pretraining import kind_whole_word_masking
from flava.data.collate import BatchBuilder
from flava.data.mixing import MixedBatches
from flava.data.tokenizer import load_tokenizer
from flava.data.transforms import image_transform
from flava.objectives.masking import BlockMaskGenerator

from ..data.test_pretraining_data import TextOnlyBuilder, stream_set


def _cfg(*argv: str):
    return load_config(list(argv), RunConfig, validate)


def test_defaults_are_the_original_releases():
    cfg = _cfg()
    assert cfg.model.losses.itm_negative_probability == 0.1
    assert cfg.training.weight_decay_groups == "all"
    assert dict(cfg.datasets.probabilities) == {}
    assert kind_whole_word_masking(cfg.datasets, "vl") is True
    assert kind_whole_word_masking(cfg.datasets, "text") is False


def test_whole_word_masking_per_kind_then_for_all_then_the_default():
    d = _cfg("datasets.whole_word_masking=false", "datasets.text.whole_word_masking=true").datasets
    assert kind_whole_word_masking(d, "text") is True
    assert kind_whole_word_masking(d, "vl") is False
    d = _cfg("datasets.whole_word_masking=true").datasets
    assert kind_whole_word_masking(d, "text") is kind_whole_word_masking(d, "vl") is True


def test_the_builder_masks_whole_words_only_in_the_kinds_that_ask():
    """ "unbelievably" is several word pieces: whole-word masking hides all or none of them."""
    tokenizer = load_tokenizer()
    pieces = tokenizer(["unbelievably"])["input_ids"][0]
    assert int((pieces > 0).sum()) - 2 > 1  # [CLS] + several pieces + [SEP]
    builder = BatchBuilder(
        tokenizer,
        image_transform("pretrain", image_size=32),
        BlockMaskGenerator.for_image(32, 4),
        64,
        mlm_probability=0.5,
        whole_word_masking={"vl": True},
    )
    split = Counter()
    for seed in range(40):
        for kind in ("vl", "text"):
            g = torch.Generator().manual_seed(seed)
            out = builder.texts(["unbelievably unbelievably unbelievably"], g, kind=kind)
            labels = out["mlm_labels"][0][out["attention_mask"][0].bool()]
            words = labels[1:-1].reshape(3, -1) != -100  # three copies of the same word
            partial = bool(((words.sum(1) > 0) & (words.sum(1) < words.shape[1])).any())
            split[kind] += partial
    assert split["vl"] == 0 and split["text"] > 0


def test_kinds_are_drawn_uniformly_unless_weights_are_given():
    ds = MixedBatches(stream_set(), TextOnlyBuilder(), 4, seed=3, probabilities={})
    counts = Counter(ds.kind_of(b) for b in range(9_000))
    assert all(abs(n / 9_000 - 1 / 3) < 0.02 for n in counts.values()) and len(counts) == 3


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (
            ["datasets.probabilities={vl: 0.7, image: 0.3}"],
            "no weight for the selected kind(s) text",
        ),
        (["datasets.probabilities={vl: 0, image: 0, text: 0}"], "positive sum"),
        (["training.weight_decay_groups=some"], "training.weight_decay_groups"),
        (["model.init_from=[{part: image_encoder, path: x, num_heads: 0}]"], "num_heads"),
    ],
)
def test_bad_recipe_settings_fail_in_one_line(argv, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)) as info:
        _cfg(*argv)
    assert "\n" not in str(info.value)


def test_the_paper_configs_predict_dalle_tokens_and_say_how_to_grow_the_batch():
    from flava.config import shipped_configs
    from flava.config.loader import config_path

    for name in ("pretraining/pmd.yaml", "pretraining/unimodal_image.yaml"):
        cfg = _cfg(f"config={name}")
        assert cfg.model.mim_target == "dalle" and cfg.model.codebook == "dalle"
    assert "pretraining/pmd.yaml" in shipped_configs()
    text = config_path("pretraining/pmd.yaml").read_text()
    assert "training.contrastive_accumulation=true" in text


def test_a_run_without_the_dalle_encoder_stops_before_any_work(tmp_path, monkeypatch, capsys):
    """The paper configs' model.codebook=dalle without encoder.pkl: one line, exit 2, no run
    directory (here on the demo's embedded data, so that the data check passes)."""
    from flava.train import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    run = tmp_path / "run"
    argv = ["config=pretraining/demo.yaml", "model.mim_target=dalle", "model.codebook=dalle"]
    assert main([*argv, f"training.run_dir={run}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert "put https://cdn.openai.com/dall-e/encoder.pkl there" in err[0]
    assert "model.mim_target=kmeans" in err[0]
    assert not run.exists()

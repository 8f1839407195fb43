"""A source type accepts only its own fields: every shipped config passes, and an entry that sets
a field of another type is refused in one line naming the type, the field and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from flava.config import (
    FinetuneConfig,
    RunConfig,
    SourceConfig,
    load_config,
    shipped_configs,
    validate,
)
from flava.config.evaluate import EvaluateConfig, validate_suite
from flava.config.loader import from_fields
from flava.data import sources
from flava.data.scenes import MAX_DISTINCT_SCENES
from flava.evaluate import finetune_config, run_task, task_argv
from flava.tasks.finetuning import validate_config
from flava.training.data import check_source_fields

FOREIGN = "{type: image_folder, path: /data/imagenet, shards: [x.tar]}"
MESSAGE = (
    "`shards` is not a field of type image_folder (its fields: path, classes, weight); "
    "remove it or use type: webdataset"
)


def _pretraining(argv: list[str]):
    return load_config(argv, RunConfig, lambda c: validate(c, MAX_DISTINCT_SCENES))


def _suite(argv: list[str]):
    return load_config(argv, EvaluateConfig, validate_suite)


@pytest.mark.parametrize("name", shipped_configs())
def test_every_shipped_config_sets_only_fields_of_its_source_types(name, tmp_path):
    group = name.split("/")[0]
    if group == "pretraining":
        check_source_fields(_pretraining([f"config={name}"]))
    elif group == "finetuning":
        cfg = load_config([f"config={name}"], FinetuneConfig, validate_config)
        sources.check_fields(cfg.data.source, "data.source")
    else:
        suite = _suite([f"config={name}"])
        assert suite.tasks
        for task in suite.tasks:
            if task.command == "finetune":  # through the fine-tuning command's own loader
                finetune_config(task_argv(task, suite, tmp_path / task.name))


def test_fields_the_schema_fills_in_are_not_counted_as_set():
    filled = from_fields(SourceConfig, {"type": "image_folder"})
    assert sources.set_fields(filled) == ["type"]
    # set to their default values by hand: not set either
    same = from_fields(
        SourceConfig, filled, {"shuffle_buffer": 1000, "timeout": 5, "text_columns": ["text"]}
    )
    assert sources.set_fields(same) == ["type"]
    sources.check_fields(same, "here")
    assert sources.set_fields(SourceConfig(type="karpathy", path="x.json")) == ["type", "path"]
    for kind in sources.SOURCE_TYPES:  # every type with nothing but its type set
        sources.check_fields(from_fields(SourceConfig, filled, {"type": kind}), kind)


def test_every_schema_field_belongs_to_a_type():
    owned = {f for t in sources.TYPES.values() for f in t.fields} | {"type", "weight"}
    assert owned == set(SourceConfig.__dataclass_fields__)


def test_a_pretraining_entry_with_another_types_field_is_refused(tmp_path):
    cfg = _pretraining(
        ["config=pretraining/demo.yaml", f"datasets.vl.train=[{FOREIGN}]", "datasets.selected=[vl]"]
    )
    with pytest.raises(sources.SourceError) as info:
        check_source_fields(cfg)
    assert str(info.value) == f"datasets.vl.train[0]: {MESSAGE}"
    # the example: loaded and passed the checks before; the first foreign field named
    example = "{type: image_folder, shards: [x.tar], key: imagenet-1k, streaming: true}"
    cfg = _pretraining([f"datasets.image.train=[{example}]"])
    assert _message(lambda: check_source_fields(cfg)).startswith(
        "datasets.image.train[0]: `key` is not a field of type image_folder"
    )
    # a field several types read names them all; an unknown type names the known ones
    cfg = _pretraining(["datasets.text.val=[{type: embedded, text_columns: [body]}]"])
    with pytest.raises(sources.SourceError, match=r"datasets\.text\.val\[0\]: `text_columns`.*"):
        check_source_fields(cfg)
    message = _message(lambda: check_source_fields(cfg))
    assert message.endswith("use type: huggingface, webdataset, captions, records or text_files")
    cfg = _pretraining(["datasets.image.val=[{type: tfrecord}]"])
    assert "datasets.image.val[0]: source type 'tfrecord' is not known" in _message(
        lambda: check_source_fields(cfg)
    )


def _message(call) -> str:
    with pytest.raises(sources.SourceError) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_the_train_command_refuses_it_before_any_work(tmp_path, capsys):
    from flava.train import main

    argv = [
        "config=pretraining/demo.yaml",
        f"datasets.vl.train=[{FOREIGN}]",
        f"training.run_dir={tmp_path / 'run'}",
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"error: datasets.vl.train[0]: {MESSAGE}"
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_finetuning_source_with_another_types_field_is_refused(tmp_path, capsys):
    from flava.finetune import main

    argv = ["config=finetuning/own_data.yaml", f"data.source={FOREIGN}"]
    message = _message(lambda: load_config(argv, FinetuneConfig, validate_config))
    assert message == f"data.source: {MESSAGE}"
    assert main([*argv, f"training.run_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err.strip() == f"error: data.source: {MESSAGE}"
    # the records type takes its own columns
    ok = ["config=finetuning/own_data.yaml", "data.source.text_pair_column=hypothesis"]
    load_config(ok, FinetuneConfig, validate_config)


def test_an_evaluation_suite_task_with_another_types_field_is_refused(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "suite: mine\ntasks:\n"
        "  - {name: mine, group: vision, command: finetune, metric: [val/accuracy],\n"
        '     args: [config=finetuning/own_data.yaml, data.kind=source, "data.source='
        + FOREIGN.replace("/data/imagenet", "{root}/imagenet")
        + '"]}\n'
    )
    cfg = _suite([f"config={suite}", f"data.root={tmp_path}", f"run.run_dir={tmp_path / 'run'}"])
    task = cfg.tasks[0]
    message = _message(lambda: finetune_config(task_argv(task, cfg, tmp_path / "t")))
    assert message == f"data.source: {MESSAGE}"
    result = run_task(task, cfg, Path(cfg.run.run_dir))  # the suite records it as the row
    assert result.status == "failed" and result.detail == f"data.source: {MESSAGE}"


def test_write_shards_refuses_it(tmp_path):
    from flava.data.write_shards import source_config

    message = _message(
        lambda: source_config(None, {"type": "captions", "path": "x", "classes": ["a"]})
    )
    assert message.startswith("source: `classes` is not a field of type captions")
    assert message.endswith("remove it or use type: image_folder")

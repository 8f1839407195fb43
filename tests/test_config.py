"""Every shipped config validates; malformed configs fail with one line and exit status 2."""

from __future__ import annotations

import pickle

import pytest
import yaml

from flava.config import (
    ConfigError,
    FinetuneConfig,
    RunConfig,
    describe,
    load_config,
    shipped_configs,
    to_yaml,
    validate,
    validate_finetune,
)
from flava.train import main


@pytest.mark.slow
def test_every_shipped_pretraining_config_validates():
    names = [n for n in shipped_configs() if n.startswith("pretraining/")]
    assert "pretraining/demo.yaml" in names
    for name in names:
        cfg = load_config([f"config={name}"], RunConfig, validate)
        assert cfg.training.learning_rate > 0


def test_every_shipped_finetuning_config_validates():
    names = [n for n in shipped_configs() if n.startswith("finetuning/")]
    assert "finetuning/own_data.yaml" in names
    for name in names:
        cfg = load_config([f"config={name}"], FinetuneConfig, validate_finetune)
        assert cfg.training.learning_rate > 0 and cfg.data.kind


def test_original_release_paths_resolve():
    for spelling in (
        "flava/configs/pretraining/demo.yaml",
        "configs/pretraining/demo.yaml",
        "pretraining/demo",
    ):
        cfg = load_config([f"config={spelling}", "training.lightning.max_steps=7"], RunConfig)
        assert cfg.training.lightning.max_steps == 7 and cfg.model.preset == "tiny"


BAD = [
    (["training.lightning.max_stepz=3"], "max_stepz"),
    (["training.batch_size=many"], "batch_size"),
    (["training.learning_rate=-0.1"], "learning_rate"),
    (["model.preset=giant"], "model.preset"),
    (["config=does/not/exist.yaml"], "not found"),
    (["training.lightning.precision=8"], "precision"),
    (["training.lr_schedule=cos"], "training.lr_schedule='cos' is invalid: must be one of cosine"),
    (["model.mim_target=pixels"], "model.mim_target"),
    (["datasets.sampling=random"], "datasets.sampling"),
    (["datasets.selected=[audio]"], "datasets.selected"),
    (["model.losses.itm_weight=-1"], "itm_weight"),
    (["nonsense"], "key=value"),
    (["datasets.vl.train=[{type:webdataset,shards:[x.tar]}]"], "put a space after each ':'"),
    (["model.init_from.0.path=x"], "set a list as a whole"),
]


@pytest.mark.parametrize(("argv", "needle"), BAD)
def test_bad_configs_fail_in_one_line(argv, needle, capsys):
    with pytest.raises(ConfigError, match=needle) as info:
        load_config(argv, RunConfig, validate)
    assert "\n" not in str(info.value)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and len(err.splitlines()) == 1


def test_yaml_syntax_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed\n")
    assert main([f"config={bad}"]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "YAML" in err and len(err.strip().splitlines()) == 1


def test_a_file_where_the_run_directory_goes_fails_in_one_line(tmp_path, capsys):
    from flava import linear_probe

    blocker = tmp_path / "taken"
    blocker.write_text("not a directory")
    assert main(["config=pretraining/debug.yaml", f"training.run_dir={blocker}"]) == 2
    assert "training.run_dir" in capsys.readouterr().err
    # Evaluation commands write results at the end: they check before doing any work.
    assert linear_probe.main([f"run.run_dir={blocker}/probe"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{blocker} is a file" in err


def test_evaluation_set_size_is_checked_before_any_work(capsys):
    assert main(["config=pretraining/demo.yaml", "training.evaluation.num_samples=3000"]) == 2
    err = capsys.readouterr().err.strip()
    assert "training.evaluation.num_samples=3000" in err and len(err.splitlines()) == 1


def test_choices_keep_their_spellings_and_the_saved_config_loads_again(tmp_path):
    argv = ["config=pretraining/demo.yaml", "training.lightning.precision=bf16-mixed"]
    cfg = load_config(argv, RunConfig, validate)
    assert cfg.training.lightning.precision == "bf16-mixed" and cfg.training.lr_schedule == "cosine"
    assert repr(cfg.model.mim_target) == "'kmeans'"  # messages show the value as typed
    assert list(cfg.datasets.selected) == ["image", "text", "vl"]
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))
    assert (
        "precision: bf16-mixed" in saved.read_text() and "lr_schedule: cosine" in saved.read_text()
    )
    again = load_config([f"config={saved}"], RunConfig, validate)
    assert to_yaml(again) == to_yaml(cfg)
    assert to_yaml(pickle.loads(pickle.dumps(cfg))) == to_yaml(cfg)  # spawned workers get it
    for typed in ("32", 32):  # a YAML / dotlist number reads as the spelling "32"
        (tmp_path / "p.yaml").write_text(f"training:\n  lightning:\n    precision: {typed!r}\n")
        cfg = load_config([f"config={tmp_path / 'p.yaml'}"], RunConfig)
        assert (
            cfg.training.lightning.precision == "32"
            and str(cfg.training.lightning.precision) == "32"
        )
    assert (
        load_config(["training.lightning.precision=16"], RunConfig).training.lightning.precision
        == "16"
    )


def test_help_lists_every_key_with_type_default_and_docstring(capsys):
    lines = describe(RunConfig)
    text = "\n".join(lines)
    assert "  training.lr_schedule: {cosine, linear, constant} = 'cosine'" in lines
    assert "Decay after warm-up." in text
    assert "training.lightning.precision: {auto, 32, 32-true," in text
    assert "  datasets.selected: list[{image, text, vl}] = ['image', 'text', 'vl']" in lines
    keys = [line.split(":")[0].strip() for line in lines if line.startswith("  ") and ": " in line]
    assert "model.losses.itm_weight" in keys and "datasets.vl.val" in keys
    assert len(keys) == len(set(keys))
    assert "  datasets.vl.val: list[SourceConfig] = [{'size': 512}]" in lines
    at = lines.index("  datasets.image.train[i].shards: list[str] = []")  # list entries' keys once
    assert lines[at + 1].strip().startswith("webdataset shards:")
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "training.run_dir: str = 'runs/flava'" in out and "Run directory: config.yaml" in out
    finetune = "\n".join(describe(FinetuneConfig))
    assert "training.lr_schedule: {cosine, linear, constant} = 'linear'" in finetune
    assert "task.metrics: list[{accuracy, f1," in finetune


def test_every_command_help_names_its_keys(capsys):
    from flava import finetune, linear_probe, retrieval, zero_shot

    for command, key in (
        (finetune, "data.kind: {source, embedded, glue,"),
        (zero_shot, "data.kind: {source, embedded, image_folder, torchvision} = 'embedded'"),
        (retrieval, "data.kind: {source, embedded, coco, flickr30k, captions} = 'embedded'"),
        (linear_probe, "probe.features: {encoder_cls, projection, mean_patch}"),
    ):
        assert command.main(["--help"]) == 0
        out = capsys.readouterr().out
        assert key in out, command.__name__
        # data.kind=source: every command lists the source's keys, with the one default type
        for source_key in (
            "data.source.type: str = 'records'",
            "data.source.shards: list[str] = []",
            "data.source.label_column: str = 'label'",
        ):
            assert source_key in out, (command.__name__, source_key)
    assert retrieval.main(["data.kind=flickr"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: data.kind='flickr' is invalid: must be one of source, embedded, coco, flickr30k, "
        "captions"
    )


def test_the_config_package_does_not_import_the_data_layer():
    import ast
    from pathlib import Path

    import flava.config

    for path in Path(flava.config.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                )
                assert not any(n.startswith("flava.data") for n in names), path.name


# ---------------------------------------------------------------------------------------------
# one model section, one home per setting


def _command_schemas() -> dict[str, type]:
    from flava.config import LinearProbeRunConfig, RetrievalRunConfig, ZeroShotRunConfig
    from flava.config.embed import EmbedRunConfig
    from flava.config.evaluate import EvaluateConfig

    return {
        "train": RunConfig,
        "embed": EmbedRunConfig,
        "finetune": FinetuneConfig,
        "evaluate": EvaluateConfig,
        "zero_shot": ZeroShotRunConfig,
        "retrieval": RetrievalRunConfig,
        "linear_probe": LinearProbeRunConfig,
    }


def _declarations() -> dict[str, set[str]]:
    """Field name -> the classes declaring it, over every section of every command."""
    import dataclasses
    import typing

    from flava.config.loader import _item_class

    found: dict[str, set[str]] = {}
    todo, seen = list(_command_schemas().values()), set()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for base in cls.__mro__:
            if dataclasses.is_dataclass(base):
                for name in vars(base).get("__annotations__", {}):
                    found.setdefault(name, set()).add(base.__name__)
        for kind in typing.get_type_hints(cls).values():
            nested = kind if dataclasses.is_dataclass(kind) else _item_class(kind)
            if nested is not None:
                todo.append(nested)
    return found


def test_every_command_builds_its_model_from_one_section_with_one_default():
    import dataclasses
    import typing

    from flava.config import DEFAULT_PRESET, ModelConfig

    assert DEFAULT_PRESET == "flava_full"
    for command, schema in _command_schemas().items():
        section = typing.get_type_hints(schema)["model"]
        assert issubclass(section, ModelConfig), command
        shared = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
        mine = {f.name: f.default for f in dataclasses.fields(section) if f.name in shared}
        assert mine == shared, command  # a subclass adds keys, never redeclares these
        cfg = load_config([], schema)
        assert cfg.model.preset == DEFAULT_PRESET and cfg.model.pretrained_model_key is None


def test_each_shared_setting_is_declared_in_one_place():
    found = _declarations()
    assert found["preset"] == found["pretrained_model_key"] == {"ModelConfig"}
    assert found["activation_checkpointing"] == {"TrainableModelConfig"}
    assert found["class_names"] == found["templates"] == {"PromptConfig"}
    assert found["max_skipped_fraction"] == {"DataSectionConfig"}
    # data.kind=source: one data.source field for fine-tuning and the evaluation commands
    assert found["source"] == {"SourceDataConfig"}
    # one home, with the per-kind override of pretraining (datasets.text.text_max_length: 512)
    assert found["text_max_length"] == {"DataSectionConfig", "KindConfig"}


def test_text_max_length_has_one_name_and_one_default_in_every_data_section():
    from flava.config import LinearProbeRunConfig, RetrievalRunConfig, ZeroShotRunConfig

    assert load_config([], RunConfig).datasets.text_max_length == 77
    for schema in (FinetuneConfig, ZeroShotRunConfig, RetrievalRunConfig, LinearProbeRunConfig):
        cfg = load_config([], schema)
        run = vars(cfg.run) if hasattr(cfg, "run") else {}  # (fine-tuning has no run section)
        assert cfg.data.text_max_length == 77 and "text_max_length" not in run


def test_the_old_spelling_run_text_max_length_is_read_as_data_text_max_length(
    tmp_path, caplog, capsys
):
    import logging

    from flava import zero_shot
    from flava.config import ZeroShotRunConfig, validate_zero_shot

    with caplog.at_level(logging.WARNING, logger="flava"):
        cfg = load_config(["run.text_max_length=40"], ZeroShotRunConfig, validate_zero_shot)
    assert cfg.data.text_max_length == 40 and "text_max_length" not in vars(cfg.run)
    assert "run.text_max_length is now data.text_max_length" in caplog.text
    saved = yaml.safe_load(to_yaml(cfg))  # config.yaml keeps only the new key
    assert saved["data"]["text_max_length"] == 40 and "text_max_length" not in saved["run"]
    # a config.yaml saved before the move loads as it did
    old = tmp_path / "config.yaml"
    old.write_text("run:\n  text_max_length: 33\n  batch_size: 5\n")
    cfg = load_config([f"config={old}"], ZeroShotRunConfig)
    assert cfg.data.text_max_length == 33 and cfg.run.batch_size == 5
    # both spellings with different values in one file: one line naming the key to keep
    old.write_text("run:\n  text_max_length: 33\ndata:\n  text_max_length: 50\n")
    with pytest.raises(ConfigError, match="keep only data.text_max_length") as info:
        load_config([f"config={old}"], ZeroShotRunConfig)
    assert "\n" not in str(info.value)
    assert zero_shot.main(["--help"]) == 0
    assert "run.text_max_length -> data.text_max_length" in capsys.readouterr().out


def test_evaluate_and_zero_shot_check_model_and_prompts_before_any_work():
    from flava.config import ZeroShotRunConfig, validate_zero_shot
    from flava.config.evaluate import EvaluateConfig, validate_suite

    argv = ["config=evaluation/zero_shot.yaml", "model.preset=giant"]
    with pytest.raises(ConfigError, match="model.preset='giant' is invalid"):
        load_config(argv, EvaluateConfig, validate_suite)
    with pytest.raises(ConfigError, match="zero_shot.templates='nowhere.json' is invalid"):
        load_config(["zero_shot.templates=nowhere.json"], ZeroShotRunConfig, validate_zero_shot)

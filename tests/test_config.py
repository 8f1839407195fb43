"""Every shipped config validates; malformed configs fail with one line and exit status 2."""

from __future__ import annotations

import pytest

from flava.config import ConfigError, load_config, shipped_configs
from flava.train import main


def test_every_shipped_pretraining_config_validates():
    names = [n for n in shipped_configs() if n.startswith("pretraining/")]
    assert "pretraining/demo.yaml" in names
    for name in names:
        cfg = load_config([f"config={name}"])
        assert cfg.training.learning_rate > 0


def test_every_shipped_finetuning_config_validates():
    from flava.tasks.finetune_config import FinetuneConfig, load_schema_config, validate_finetune

    names = [n for n in shipped_configs() if n.startswith("finetuning/")]
    assert "finetuning/own_data.yaml" in names
    for name in names:
        cfg = load_schema_config([f"config={name}"], FinetuneConfig, validate_finetune)
        assert cfg.training.learning_rate > 0 and cfg.data.kind


def test_original_release_paths_resolve():
    for spelling in (
        "flava/configs/pretraining/demo.yaml",
        "configs/pretraining/demo.yaml",
        "pretraining/demo",
    ):
        cfg = load_config([f"config={spelling}", "training.lightning.max_steps=7"])
        assert cfg.training.lightning.max_steps == 7 and cfg.model.preset == "tiny"


BAD = [
    (["training.lightning.max_stepz=3"], "max_stepz"),
    (["training.batch_size=many"], "batch_size"),
    (["training.learning_rate=-0.1"], "learning_rate"),
    (["model.preset=giant"], "model.preset"),
    (["config=does/not/exist.yaml"], "not found"),
    (["training.lightning.precision=8"], "precision"),
    (["datasets.selected=[audio]"], "datasets.selected"),
    (["model.losses.itm_weight=-1"], "itm_weight"),
    (["nonsense"], "key=value"),
]


@pytest.mark.parametrize(("argv", "needle"), BAD)
def test_bad_configs_fail_in_one_line(argv, needle, capsys):
    with pytest.raises(ConfigError, match=needle) as info:
        load_config(argv)
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

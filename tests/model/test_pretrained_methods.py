"""The model classes' save_pretrained / from_pretrained are flava.checkpoints' loading, which
`flava.model` never imports: the checkpoints install it (`flava.model.pretrained`)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import flava.checkpoints
from flava.model import FlavaForPreTraining, FlavaModel, preset
from flava.model import pretrained as pretrained_module
from flava.model.codebook import ImageCodebook

MODEL_DIR = Path(flava.checkpoints.__file__).resolve().parents[1] / "model"


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import in `path` outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [a.name for a in node.names]))
    return found


def test_model_imports_nothing_above_it_and_no_private_names():
    files = sorted(MODEL_DIR.glob("*.py"))
    assert MODEL_DIR / "pretrained.py" in files and MODEL_DIR / "fused.py" in files
    bad = []
    for path in files:
        for line, module, names in _imports(path):
            where = f"{path.name}:{line} {module}"
            if module.split(".")[0] == "flava" and not module.startswith("flava.model"):
                bad.append(f"{where} (above flava.model)")
            if module.startswith("flava.") and any(n.startswith("_") for n in names):
                bad.append(f"{where} imports a private name {names}")
    assert not bad


def _tiny_pretraining() -> FlavaForPreTraining:
    torch.manual_seed(0)
    return FlavaForPreTraining(preset("tiny"))


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_methods_are_the_checkpoint_functions(tmp_path):
    model = _tiny_pretraining()
    model.save_pretrained(tmp_path / "method")
    flava.checkpoints.save_pretrained(model, tmp_path / "function")
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "method" / name).read_bytes() == (
            tmp_path / "function" / name
        ).read_bytes()
    loaded = FlavaForPreTraining.from_pretrained(tmp_path / "method")
    assert type(loaded) is FlavaForPreTraining and _same_state(loaded, model)
    encoders = FlavaModel.from_pretrained(tmp_path / "method", strict=True)
    assert type(encoders) is FlavaModel and _same_state(encoders, model.flava)
    codebook = ImageCodebook.from_pretrained(tmp_path / "method")
    assert _same_state(codebook, model.codebook)
    source = tmp_path / "method"
    with_codebook = FlavaForPreTraining.from_pretrained(source, codebook=source)
    assert _same_state(with_codebook, model)


def test_a_missing_hook_fails_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained_module, "_io", {})
    with pytest.raises(RuntimeError, match=r"^FlavaModel\.from_pretrained needs .*import flava"):
        FlavaModel.from_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match=r"^ImageCodebook\.save_pretrained needs"):
        ImageCodebook(preset("tiny").codebook).save_pretrained(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "first_import",
    ["import flava.model.codebook", "import flava.model.pretrained", "import flava.model.flava"],
)
def test_methods_work_in_a_fresh_interpreter_whatever_is_imported_first(tmp_path, first_import):
    _tiny_pretraining().save_pretrained(tmp_path)
    script = textwrap.dedent(
        f"""
        import sys
        {first_import}
        from flava.model.codebook import ImageCodebook
        from flava.model.flava import FlavaForPreTraining
        assert "lightning" not in sys.modules and "datasets" not in sys.modules
        FlavaForPreTraining.from_pretrained(sys.argv[1])
        ImageCodebook.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[1] + "/cb")
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert (tmp_path / "cb" / "model.safetensors").is_file()


def _load_in_child(rank: int, directory: str) -> None:
    """Spawned child: load with the class method and write the result next to the checkpoint."""
    model = FlavaModel.from_pretrained(directory)
    torch.save({"ok": True, "logit_scale": model.logit_scale.detach()}, f"{directory}/child.pt")


@pytest.mark.slow
def test_methods_work_in_a_spawned_process(tmp_path):
    model = _tiny_pretraining()
    model.save_pretrained(tmp_path)
    mp.spawn(_load_in_child, args=(str(tmp_path),), nprocs=1, join=True)
    result = torch.load(tmp_path / "child.pt")
    assert result["ok"] and torch.equal(result["logit_scale"], model.flava.logit_scale.detach())

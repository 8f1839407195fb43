"""Loading is reached as `flava.from_pretrained(cls, source)` / `flava.save_pretrained(model,
directory)` (flava.checkpoints' functions); `flava.model` imports nothing of them, and the
transformers spellings on the classes answer with the call to make."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import flava
import flava.checkpoints
from flava.model import FlavaForPreTraining, FlavaModel, preset
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


def test_the_package_functions_load_every_class(tmp_path):
    model = _tiny_pretraining()
    flava.save_pretrained(model, tmp_path)
    assert flava.save_pretrained is flava.checkpoints.save_pretrained
    loaded = flava.from_pretrained(FlavaForPreTraining, tmp_path)
    assert type(loaded) is FlavaForPreTraining and _same_state(loaded, model)
    encoders = flava.from_pretrained(FlavaModel, tmp_path, strict=True)
    assert type(encoders) is FlavaModel and _same_state(encoders, model.flava)
    codebook = flava.from_pretrained(ImageCodebook, tmp_path)
    assert _same_state(codebook, model.codebook)
    with_codebook = flava.from_pretrained(FlavaForPreTraining, tmp_path, codebook=tmp_path)
    assert _same_state(with_codebook, model)


def test_the_method_spellings_name_the_function_in_one_line(tmp_path):
    with pytest.raises(
        AttributeError,
        match=r"^FlavaModel\.from_pretrained is not a method: call "
        r"flava\.from_pretrained\(FlavaModel, 'flava_full'\)$",
    ):
        FlavaModel.from_pretrained("flava_full")
    with pytest.raises(AttributeError, match=r"^ImageCodebook\.save_pretrained is not a method"):
        ImageCodebook(preset("tiny").codebook).save_pretrained(tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_import_flava_is_light_and_loads_on_first_use(tmp_path):
    """`import flava` imports no checkpoint code, Lightning or datasets; the functions import
    it when first reached, in a fresh interpreter."""
    flava.save_pretrained(_tiny_pretraining(), tmp_path)
    script = (
        "import sys\n"
        "import flava\n"
        "assert not {'flava.checkpoints', 'lightning', 'datasets'} & set(sys.modules)\n"
        "from flava import FlavaModel, from_pretrained\n"
        "print(type(from_pretrained(FlavaModel, sys.argv[1])).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "FlavaModel"

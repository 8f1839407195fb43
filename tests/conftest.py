"""Shared test fixtures: tiny configs, seeded RNG, no network."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _temporary_files(tmp_path_factory: pytest.TempPathFactory):
    """The system's temporary folder, for this process and the processes tests start, is one in
    pytest's: what runs leave there (the scratch copies of remote run directories, fsspec's
    half-written files of runs killed mid-save) goes with pytest's folders of earlier runs,
    not onto the machine's /tmp for good."""
    folder = tmp_path_factory.mktemp("tmp", numbered=False)
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"], tempfile.tempdir = str(folder), str(folder)
    yield
    tempfile.tempdir = None
    if before is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = before


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _new_run() -> None:
    """Each test is a run: a bad-sample reason is logged once per run (`log_first`)."""
    from flava.data.sources.skips import new_run

    new_run()


def _smooth_images(batch: int, size: int) -> torch.Tensor:
    """Smooth-ish images in [0, 1]."""
    x = torch.rand(batch, 3, size // 4, size // 4)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")


# OpenAI's encoder.pkl: a whole pickled `dall_e` Encoder (a stand-in package written here)

_DALL_E_UTILS = """
import torch
import torch.nn.functional as F
from torch import nn


class Conv2d(nn.Module):
    def __init__(self, n_in, n_out, kw, use_float16=True, device=torch.device("cpu"),
                 requires_grad=False):
        super().__init__()
        self.n_in, self.n_out, self.kw = n_in, n_out, kw
        self.use_float16, self.device, self.requires_grad = use_float16, device, requires_grad
        w = torch.randn(n_out, n_in, kw, kw) / (n_in * kw**2) ** 0.5
        self.w = nn.Parameter(w, requires_grad=requires_grad)
        self.b = nn.Parameter(torch.randn(n_out) * 0.1, requires_grad=requires_grad)

    def forward(self, x):
        return F.conv2d(x, self.w, self.b, padding=(self.kw - 1) // 2)
"""

_DALL_E_ENCODER = """
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from dall_e.utils import Conv2d


class EncoderBlock(nn.Module):
    def __init__(self, n_in, n_out, n_layers, device=None, requires_grad=False):
        super().__init__()
        self.n_in, self.n_out, self.n_layers = n_in, n_out, n_layers
        self.n_hid = n_out // 4
        self.post_gain = 1 / (n_layers**2)
        make_conv = partial(Conv2d, device=device, requires_grad=requires_grad)
        self.id_path = make_conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.res_path = nn.Sequential(OrderedDict([
            ("relu_1", nn.ReLU()), ("conv_1", make_conv(n_in, self.n_hid, 3)),
            ("relu_2", nn.ReLU()), ("conv_2", make_conv(self.n_hid, self.n_hid, 3)),
            ("relu_3", nn.ReLU()), ("conv_3", make_conv(self.n_hid, self.n_hid, 3)),
            ("relu_4", nn.ReLU()), ("conv_4", make_conv(self.n_hid, n_out, 1)),
        ]))

    def forward(self, x):
        return self.id_path(x) + self.post_gain * self.res_path(x)


@dataclass(eq=False, repr=False)
class Encoder(nn.Module):
    group_count: int = 4
    n_hid: int = 256
    n_blk_per_group: int = 2
    input_channels: int = 3
    vocab_size: int = 8192
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    requires_grad: bool = False
    use_mixed_precision: bool = True

    def __post_init__(self):
        super().__init__()
        blk_range = range(self.n_blk_per_group)
        n_layers = self.group_count * self.n_blk_per_group
        make_conv = partial(Conv2d, device=self.device, requires_grad=self.requires_grad)
        make_blk = partial(EncoderBlock, n_layers=n_layers, device=self.device,
                           requires_grad=self.requires_grad)
        h = self.n_hid

        def group(n_in, n_out, pool):
            items = [(f"block_{i + 1}", make_blk(n_in if i == 0 else n_out, n_out))
                     for i in blk_range]
            if pool:
                items.append(("pool", nn.MaxPool2d(kernel_size=2)))
            return nn.Sequential(OrderedDict(items))

        self.blocks = nn.Sequential(OrderedDict([
            ("input", make_conv(self.input_channels, h, 7)),
            ("group_1", group(h, h, True)),
            ("group_2", group(h, 2 * h, True)),
            ("group_3", group(2 * h, 4 * h, True)),
            ("group_4", group(4 * h, 8 * h, False)),
            ("output", nn.Sequential(OrderedDict([
                ("relu", nn.ReLU()),
                ("conv", make_conv(8 * h, self.vocab_size, 1, use_float16=False)),
            ]))),
        ]))

    def forward(self, x):
        return self.blocks(x)
"""


@pytest.fixture
def openai_encoder(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor], torch.Tensor, int]:
    """A fake dall_e Encoder pickled whole; returns (path, its state, pixels, logits)."""
    package = tmp_path / "src" / "dall_e"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "utils.py").write_text(textwrap.dedent(_DALL_E_UTILS))
    (package / "encoder.py").write_text(textwrap.dedent(_DALL_E_ENCODER))
    sys.path.insert(0, str(package.parent))
    try:
        from dall_e.encoder import Encoder  # type: ignore[import-not-found]

        encoder = Encoder(n_hid=16, n_blk_per_group=2, vocab_size=64).eval()
        from flava.model.codebook import ImageCodebook

        pixels = ImageCodebook.map_pixels(_smooth_images(2, 32))
        with torch.no_grad():
            logits = encoder(pixels)
        state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        path = tmp_path / "encoder.pkl"
        torch.save(encoder, path)
    finally:
        sys.path.remove(str(package.parent))
        for name in [m for m in sys.modules if m == "dall_e" or m.startswith("dall_e.")]:
            del sys.modules[name]
    return path, state, pixels, logits


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) behind a fault proxy on a loopback port, for the
    session; the standard AWS_ENDPOINT_URL and dummy credentials point every client at it."""
    from .s3_store import ENVIRONMENT, S3Store

    botocore = pytest.importorskip("botocore")
    if tuple(int(x) for x in botocore.__version__.split(".")[:2]) < (1, 31):
        pytest.skip(
            f"botocore {botocore.__version__} ignores AWS_ENDPOINT_URL (1.31 and later read it)"
        )
    server = S3Store().start()
    saved = {k: os.environ.get(k) for k in [*ENVIRONMENT, "AWS_ENDPOINT_URL", "AWS_PROFILE"]}
    os.environ.update({**ENVIRONMENT, "AWS_ENDPOINT_URL": server.endpoint})
    os.environ.pop("AWS_PROFILE", None)
    yield server
    server.stop()
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture
def store(s3_server, request):
    """The S3 server with no faults and a new bucket named after the test (`store.bucket`)."""
    from .s3_store import filesystem

    s3_server.clear()
    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-")
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
    s3_server.bucket = f"t-{name}-{digest}"
    filesystem().mkdir(s3_server.bucket)
    yield s3_server
    s3_server.clear()

"""Typed schema of `python -m flava.embed`: any source's images and / or texts -> embedding
shards (`flava.collection`); its checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from flava.config.checks import Check, Choice, fail_checks
from flava.config.common import ModelConfig, SourceDataConfig, data_section_checks, model_checks


class Modality(Choice):
    """What is embedded of each record."""

    auto = "auto"
    image = "image"
    text = "text"
    pair = "pair"


class EmbedPrecision(Choice):
    """The number format the encoders compute in (the shards hold float16 either way)."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class Runtime(Choice):
    """What computes the embeddings."""

    pytorch = "pytorch"
    onnx = "onnx"


@dataclass
class EmbedOptions:
    """What is embedded, how, and in what pieces."""

    modality: Modality = Modality.auto
    """image, text, pair (both; a record missing either is skipped and counted) or auto (what
    the source holds: pair when it has images and texts)."""
    normalize: bool = True
    """L2-normalise the embeddings (cosine similarity is then a dot product); false: the raw
    projected CLS vectors."""
    precision: EmbedPrecision = EmbedPrecision.auto
    """fp32 or bf16; auto: bf16 where the device has native bf16 units (GPUs since Ampere, CPUs
    with AVX512-BF16 or AMX), else fp32."""
    shard_size: int = 10000
    """Records per output shard of a random-access source (folders, record files, saved
    datasets); a streamed source (webdataset, streaming) writes one output shard per input
    shard. A killed run resumes at the first shard not written."""
    batch_size: int = 64
    """Images per encoder batch (texts: 4x as many)."""
    num_workers: int = 2
    """Threads reading and decoding images while the encoder runs (0: none)."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:1 ..."""
    seed: int = 0
    """Seed of random initialisation (presets without weights)."""
    progress: bool = True
    """Show a progress bar (records/s, time left) on rank 0."""
    compile: bool = False
    """Compile the encoders with TorchInductor, the weights frozen into the graph (pytorch
    runtime): about 15 s of compiling per process before the first batch, then faster batches,
    most of all in bf16 on a CPU (benchmarks/RESULTS.md); worth it for large collections."""
    runtime: Runtime = Runtime.pytorch
    """pytorch, or onnx: the ONNX export in embed.onnx_dir on onnxruntime (CPU, fp32; needs the
    onnx extra). The model section still names the model (the manifest and flava.search use
    it): give the model the export was written from."""
    onnx_dir: str | None = None
    """embed.runtime=onnx: the folder `python -m flava.convert MODEL DIR --to onnx` wrote."""


@dataclass
class EmbedRunConfig:
    """`python -m flava.embed`."""

    out: str | None = None
    """Output folder: shard-NNNNNN.parquet / .image.npy / .text.npy and manifest.json
    (docs/collection.md). A rerun into the same folder resumes."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: SourceDataConfig = field(default_factory=SourceDataConfig)
    embed: EmbedOptions = field(default_factory=EmbedOptions)


def validate_embed(cfg: EmbedRunConfig) -> None:
    """Value checks of the embed command (the source is checked when opened)."""
    e = cfg.embed
    checks: list[Check] = [
        (cfg.out is not None and str(cfg.out) != "", "out", "give the output folder: out=DIR"),
        *model_checks(cfg.model),
        *data_section_checks(cfg.data, "data"),
        (e.shard_size >= 1, "embed.shard_size", "must be >= 1"),
        (e.batch_size >= 1, "embed.batch_size", "must be >= 1"),
        (e.num_workers >= 0, "embed.num_workers", "must be >= 0"),
        (
            str(e.runtime) != "onnx" or bool(e.onnx_dir),
            "embed.onnx_dir",
            "give the ONNX export's folder with embed.runtime=onnx (python -m flava.convert "
            "MODEL DIR --to onnx writes it)",
        ),
        (
            str(e.runtime) != "onnx" or str(e.precision) != "bf16",
            "embed.precision",
            "embed.runtime=onnx computes in fp32: use embed.precision=auto or fp32",
        ),
        (
            str(e.runtime) != "onnx" or not e.compile,
            "embed.compile",
            "compiles the PyTorch encoders; onnxruntime optimises the export itself: drop "
            "embed.compile=true with embed.runtime=onnx",
        ),
    ]
    fail_checks(cfg, checks)

"""Run configuration: one loader (`flava.config.loader`) and one schema module per command.

`pretraining` (`flava.train`), `finetune`, `evaluate`, `zero_shot`, `retrieval`,
`linear_probe` and `write_shards` hold typed dataclasses whose field docstrings are the
`--help` text; what more than one command has is declared once in `common` (the model section
every command uses, with one default preset; what every data section holds; prompts;
training). Fixed choices are `Choice` enums, so the allowed values, the check and the message
are one. The schemas import nothing from `flava.data`: checks that need the data layer's
numbers take them from the entry point.
"""

from flava.config.checks import (
    Check,
    Choice,
    ConfigError,
    check_directory,
    choices,
    fail_checks,
    make_directory,
)
from flava.config.common import (
    DEFAULT_PRESET,
    PRECISIONS,
    CheckpointConfig,
    DataSectionConfig,
    EvaluationConfig,
    LightningConfig,
    LrSchedule,
    ModelConfig,
    Precision,
    PromptConfig,
    SourceConfig,
    SourceDataConfig,
    TrainableModelConfig,
    TrainingConfig,
    training_checks,
)
from flava.config.finetune import FinetuneConfig, validate_finetune
from flava.config.linear_probe import LinearProbeRunConfig, validate_linear_probe
from flava.config.loader import (
    cli_main,
    config_path,
    describe,
    field_docs,
    load_config,
    shipped_configs,
    to_yaml,
)
from flava.config.pretraining import (
    DatasetsConfig,
    Kind,
    KindConfig,
    LossConfig,
    MimTarget,
    PretrainingModelConfig,
    RunConfig,
    Sampling,
    validate,
)
from flava.config.retrieval import RetrievalRunConfig, validate_retrieval
from flava.config.write_shards import WriteShardsConfig, validate_write_shards
from flava.config.zero_shot import ZeroShotRunConfig, validate_zero_shot

__all__ = [
    "DEFAULT_PRESET",
    "PRECISIONS",
    "Check",
    "CheckpointConfig",
    "Choice",
    "ConfigError",
    "DataSectionConfig",
    "DatasetsConfig",
    "EvaluationConfig",
    "FinetuneConfig",
    "Kind",
    "KindConfig",
    "LightningConfig",
    "LinearProbeRunConfig",
    "LossConfig",
    "LrSchedule",
    "MimTarget",
    "ModelConfig",
    "Precision",
    "PretrainingModelConfig",
    "PromptConfig",
    "RetrievalRunConfig",
    "RunConfig",
    "Sampling",
    "SourceConfig",
    "SourceDataConfig",
    "TrainableModelConfig",
    "TrainingConfig",
    "WriteShardsConfig",
    "ZeroShotRunConfig",
    "check_directory",
    "choices",
    "cli_main",
    "config_path",
    "describe",
    "fail_checks",
    "field_docs",
    "load_config",
    "make_directory",
    "shipped_configs",
    "to_yaml",
    "training_checks",
    "validate",
    "validate_finetune",
    "validate_linear_probe",
    "validate_retrieval",
    "validate_write_shards",
    "validate_zero_shot",
]

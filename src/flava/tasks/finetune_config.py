"""Kept until fine-tuning imports flava.config.finetune (its loader: flava.config.loader)."""

from flava.config import (  # noqa: F401
    FinetuneConfig,
    validate_finetune,
)
from flava.config import describe as describe_schema  # noqa: F401
from flava.config import load_config as load_schema_config  # noqa: F401

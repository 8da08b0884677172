"""The models imgrag can embed with, by Bedrock model id or short name."""

from __future__ import annotations

from imgrag.embedders.base import ModelFormat, ModelSpec
from imgrag.embedders.cohere import CohereFormat
from imgrag.embedders.nova import NovaFormat
from imgrag.embedders.titan import TitanFormat
from imgrag.errors import ConfigError

FORMATS: dict[str, type[ModelFormat]] = {
    f.spec.model_id: f for f in (TitanFormat, NovaFormat, CohereFormat)
}
DEFAULT_MODEL_ID = TitanFormat.spec.model_id


def model_format(name: str) -> type[ModelFormat]:
    """The format of the model ``name`` (its id or short name); ConfigError if unknown."""
    for fmt in FORMATS.values():
        if name in (fmt.spec.model_id, fmt.spec.short_name):
            return fmt
    known = ", ".join(f"{f.spec.short_name} ({f.spec.model_id})" for f in FORMATS.values())
    raise ConfigError(f"unsupported model {name!r}; known: {known}")


def model_spec(name: str) -> ModelSpec:
    """The facts of the model ``name``."""
    return model_format(name).spec

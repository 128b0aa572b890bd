"""The zoo file: the models whichmodel pre-trains itself (``sweeps/configs/zoo.yaml``).

Validated like a sweep file (:mod:`sweeps.config`): unknown keys are refused with their path, every
error is one ``ConfigError`` line naming the file and the key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from sweeps.config import (
    MAX_STEPS,
    STEPS_WHY,
    ConfigError,
    Name,
    Strict,
    batch_field,
    format_validation_error,
    read_yaml,
)

# Bump when the architectures or the pre-training code change what a recipe produces.
ZOO_FORMAT = 3  # 3: channels-last pre-training (other float rounding)


class ZooTraining(Strict):
    steps: int = Field(400, ge=0, le=MAX_STEPS, description=STEPS_WHY)
    batch_size: int = batch_field(128)
    lr: float = Field(0.05, gt=0, le=10, allow_inf_nan=False)


class ZooModel(Strict):
    name: Name
    arch: str
    arch_kwargs: dict[str, Any] = {}
    # Source families it is trained on (empty: the random-initialisation control).
    upstream: list[str] = []
    objective: Literal["supervised", "rotation", "none"] = "supervised"
    training: ZooTraining | None = None  # overrides the zoo-wide training settings

    @model_validator(mode="after")
    def _objective_needs_data(self):
        if self.objective != "none" and not self.upstream:
            raise ValueError(f"model {self.name!r}: objective {self.objective!r} needs upstream "
                             "families; use objective: none for a random-initialisation control")
        return self


class SourceSize(Strict):
    n_train: int = Field(4000, ge=10, le=1_000_000, description="10 to 10**6 rendered images")
    n_val: int = Field(1000, ge=10, le=1_000_000, description="10 to 10**6 rendered images")


class ZooConfig(Strict):
    name: str = "zoo"
    seed: int = Field(0, ge=0, le=2**32 - 1)
    image_size: int = Field(32, ge=8, le=512)
    source: SourceSize = SourceSize()
    training: ZooTraining = ZooTraining()
    cpus_per_trial: int = Field(1, ge=1, le=1024)
    models: list[ZooModel] = Field(min_length=1)

    @field_validator("models")
    @classmethod
    def _unique(cls, models: list[ZooModel]):
        seen: set[str] = set()
        for i, m in enumerate(models):
            if m.name in seen:
                raise ValueError(f"models[{i}]: duplicate model name {m.name!r}")
            seen.add(m.name)
        return models

    def model(self, name: str) -> ZooModel:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def recipe(self, name: str) -> dict[str, Any]:
        """Everything that determines a zoo model's weights (its rebuild key)."""
        m = self.model(name)
        return {"model": m.model_dump(exclude={"training"}),
                "training": (m.training or self.training).model_dump(),
                "seed": self.seed, "image_size": self.image_size,
                "source": self.source.model_dump()}

    def recipe_hash(self, name: str) -> str:
        """A short hash of the recipe, kept in the model's ``meta.json``: a model whose hash
        matches is not built again."""
        recipe = {"format": ZOO_FORMAT, **self.recipe(name)}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]



def load_zoo_config(path: str | Path) -> ZooConfig:
    path, data = read_yaml(path)
    try:
        return ZooConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(path, err, ZooConfig)) from None

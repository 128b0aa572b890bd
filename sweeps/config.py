"""Typed sweep and zoo configuration, validated before anything starts.

A sweep file (``sweeps/configs/*.yaml``) names the models and tasks, the probe and fine-tune
protocols and the resources; a zoo file names the models the project pre-trains itself. Unknown or
misspelled keys are rejected with their path (``finetune.lrz``), like nanoGPT's config overrides.
Every error is a :class:`ConfigError` whose one-line message names the file and key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class WhichModelError(Exception):
    """An error the CLI reports on one line with exit code 2 (bad input, not a bug)."""


class ConfigError(WhichModelError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def unique_grid(values: list[Any] | None) -> list[Any] | None:
    """A grid (learning rates, names) lists each value once: a repeated value is a one-line error
    naming it (pydantic adds the key), never a silently merged or lost trial."""
    for i, v in enumerate(values or []):
        if v in values[:i]:
            raise ValueError(f"{v!r} listed twice; list each value once")
    return values


# --------------------------------------------------------------------------- zoo
# Bump when the architectures or the pre-training code change what a recipe produces.
ZOO_FORMAT = 2


class ZooTraining(_Strict):
    steps: int = Field(400, ge=0)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.05, gt=0)


class ZooModel(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
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


class SourceSize(_Strict):
    n_train: int = Field(4000, ge=10)
    n_val: int = Field(1000, ge=10)


class ZooConfig(_Strict):
    name: str = "zoo"
    seed: int = 0
    image_size: int = Field(32, ge=8, le=512)
    source: SourceSize = SourceSize()
    training: ZooTraining = ZooTraining()
    cpus_per_trial: int = Field(1, ge=1)
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


# --------------------------------------------------------------------------- sweep
class LinearProbeSettings(_Strict):
    """The linear proxy: the paper's lrs, steps and repetitions; batch 256 is this project's
    choice (the paper does not give one), as is standardising the features."""

    lrs: list[float] = Field([0.1, 0.01], min_length=1)
    steps: int = Field(2500, ge=1)
    repeats: int = Field(5, ge=1)
    batch_size: int = Field(256, ge=1)

    _unique = field_validator("lrs")(unique_grid)


class KnnSettings(_Strict):
    k: int = Field(1, ge=1)


class EarlyStopSettings(_Strict):
    """The paper's early-stop proxy (Appendix I): a few fine-tune steps, no warm-up."""

    lrs: list[float] = Field([0.01, 0.001], min_length=1)
    steps: int = Field(50, ge=1)
    repeats: int = Field(3, ge=1)
    batch_size: int = Field(64, ge=1)

    _unique = field_validator("lrs")(unique_grid)


def known_proxy(names: list[str]) -> list[str]:
    """Proxy names are the proxy registry's (``whichmodel list proxies``)."""
    from selection.proxies import list_proxies

    known = list_proxies()
    for name in names:
        if name not in known:
            raise ValueError(f"unknown proxy {name!r}; known: {', '.join(known)}")
    return unique_grid(names)


class ProbeProtocol(_Strict):
    enabled: bool = True
    proxies: list[str] = ["linear", "knn"]
    linear: LinearProbeSettings = LinearProbeSettings()
    knn: KnnSettings = KnnSettings()
    early_stop: EarlyStopSettings = EarlyStopSettings()
    # Keep each pair's features (train/val/test, float16 .npz) and log them as an artifact of
    # its probe run, for reuse (ChoiceNet v2, new proxies) without another forward pass.
    save_features: bool = False

    _known = field_validator("proxies")(known_proxy)

    def proxy_settings(self, seed: int) -> dict[str, dict[str, Any]]:
        """Each named proxy's keyword arguments: its settings block here (``probe.<name>``),
        and the sweep's seed where the proxy takes one."""
        from selection.proxies import get_proxy

        out = {}
        for name in self.proxies:
            block = getattr(self, name, None)
            kwargs = block.model_dump() if isinstance(block, BaseModel) else {}
            if "seed" in get_proxy(name).settings:
                kwargs["seed"] = seed
            out[name] = kwargs
        return out


class FinetuneProtocol(_Strict):
    enabled: bool = True
    # The paper's profile is 2 lrs x 2500 steps x batch 512 x 5 repetitions; smaller profiles
    # must say so by name (reports and MLflow carry it).
    profile: str = "paper"
    lrs: list[float] = Field([0.01, 0.001], min_length=1)
    head_steps: int = Field(500, ge=0)
    steps: int = Field(2500, ge=0)
    batch_size: int = Field(512, ge=1)
    repeats: int = Field(5, ge=1)
    # Surgical fine-tuning (Lee et al. 2022): which block group stage 2 trains.
    trainable: Literal["all", "first", "middle", "last", "head"] = "all"
    curve_every: int = Field(10, ge=1)  # training-loss points logged to the child runs
    # Lightning precision of stage 2; auto: bf16-mixed on a GPU, 32-true on the CPU.
    precision: Literal["auto", "bf16-mixed", "16-mixed", "32-true"] = "auto"

    _unique = field_validator("lrs")(unique_grid)


class TrialResources(_Strict):
    cpus: float = Field(1, gt=0)
    gpus: float = Field(0, ge=0)  # fractions are logical only: no GPU memory isolation


class Resources(_Strict):
    num_cpus: int | None = Field(None, ge=1)  # local Ray only; None: all cores
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(1, ge=0)  # retries of a failed trial
    probe: TrialResources = TrialResources()
    finetune: TrialResources = TrialResources()


class BudgetedSearch(_Strict):
    """Successive halving (ASHA) over fine-tune steps, run after the exhaustive sweep."""

    enabled: bool = False
    scheduler: Literal["asha"] = "asha"
    lrs: list[float] | None = None  # learning rates searched; default: finetune.lrs
    rung_steps: int = Field(25, ge=1)  # fine-tune steps between two ASHA decisions
    reduction_factor: int = Field(3, ge=2)
    grace_rungs: int = Field(1, ge=1)

    _unique = field_validator("lrs")(unique_grid)


class ChoiceNetSettings(_Strict):
    enabled: bool = True
    # The fixed probe model of ChoiceNet v2's task embedding (default: the first model of the
    # sweep whose name contains "generalist", else the first model).
    probe_model: str | None = None
    steps: int = Field(500, ge=1)


class ReportSettings(_Strict):
    max_budget: int = Field(3, ge=1, le=10)
    strategies: list[str] | None = None
    choicenet: ChoiceNetSettings = ChoiceNetSettings()


HUB_PREFIXES = ("timm:", "torchvision:", "local:")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


class ModelEntry(_Strict):
    """A model from a hub or a local folder (``lightning_modules.hub``), named in the sweep."""

    name: str = Field(pattern=_NAME)
    spec: str  # timm:<name>[.<tag>] | torchvision:<name> | local:<path>
    weights: str | None = None  # a local weight file, read through the hub's own code path
    pretrained: bool = True  # False: the architecture at random initialisation (a control)
    # imagenet_acc (fraction), upstream_size, upstream, params, ...; wins over the library's info
    meta: dict[str, Any] = {}

    @field_validator("spec")
    @classmethod
    def _known_prefix(cls, spec: str):
        if not spec.startswith(HUB_PREFIXES) or spec.endswith(":"):
            raise ValueError(f"model spec {spec!r}: write timm:<name>[.<tag>], "
                             "torchvision:<name> or local:<path>")
        return spec


class TaskEntry(_Strict):
    """A task read from an ImageFolder layout: ``path/{train,test}/<class>/*`` (+ ``val/``)."""

    name: str = Field(pattern=_NAME)
    loader: Literal["imagefolder"] = "imagefolder"
    path: str  # relative paths are relative to the sweep file
    group: Literal["natural", "specialized", "structured"]


class DataSettings(_Strict):
    # Where hub datasets (VTAB-1k through torchvision) and their caches live; default
    # $WHICHMODEL_HOME/data. Relative paths are relative to the sweep file.
    root: str | None = None
    download: bool = False  # let torchvision download missing datasets (never by default)


class TrackingSettings(_Strict):
    experiment: str | None = None  # default: the sweep's name


class SweepConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    description: str = ""
    seed: int = 0
    image_size: int = Field(32, ge=8, le=512)
    zoo: str = "zoo.yaml"  # the zoo file, relative to this sweep file (needed for zoo models)
    # Zoo model names, hub specs (timm:..., torchvision:..., local:...), catalog names, or
    # entries {name, spec, weights, pretrained, meta}; "all": the catalog's models if a catalog
    # is given, else the zoo's.
    models: list[str | ModelEntry] | Literal["all"] = "all"
    # Offline task names, VTAB-1k tasks as vtab:<name>, or ImageFolder entries; "all": the
    # offline suite.
    tasks: list[str | TaskEntry] | Literal["all"] = "all"
    # A catalog file (relative to this sweep file) with more model entries and named pools,
    # e.g. pools/renggli2022.yaml; the sweep's own pools win on a name clash.
    catalog: str | None = None
    pools: dict[str, list[str] | Literal["all"]] = {"all": "all"}
    data: DataSettings = DataSettings()
    probe: ProbeProtocol = ProbeProtocol()
    finetune: FinetuneProtocol = FinetuneProtocol()
    resources: Resources = Resources()
    search: BudgetedSearch = BudgetedSearch()
    report: ReportSettings = ReportSettings()
    tracking: TrackingSettings = TrackingSettings()

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    def protocol_settings(self, protocol: str) -> dict[str, Any]:
        """What determines a (model, task, protocol) result: its key's settings.

        Only settings that change results are included (e.g. the settings of proxies the sweep
        runs, not of the others), so adding an option with a default keeps old results valid.
        """
        data: dict[str, Any] = {"image_size": self.image_size, "seed": self.seed}
        if protocol == "probe":
            data["proxies"] = list(self.probe.proxies)
            for name in self.probe.proxies:
                block = getattr(self.probe, name, None)
                if isinstance(block, BaseModel):
                    data[name] = block.model_dump()
        elif protocol == "finetune":
            data.update(self.finetune.model_dump(exclude={"enabled", "curve_every", "trainable",
                                                          "precision"}))
            if self.finetune.trainable != "all":
                data["trainable"] = self.finetune.trainable
            if self.finetune.precision != "auto":
                data["precision"] = self.finetune.precision
        else:
            raise KeyError(protocol)
        return data

    def protocol_hash(self, protocol: str) -> str:
        blob = json.dumps(self.protocol_settings(protocol), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- loading
def _format_validation_error(path: Path, err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in e["loc"]).replace(".[", "[")
    kind, msg = e["type"], e["msg"]
    if kind == "extra_forbidden":
        msg = "unknown key (misspelled?); remove it or see the README's configuration table"
    elif kind == "missing":
        msg = "required key missing"
    else:
        msg = msg.removeprefix("Value error, ")
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    where = f"key {loc!r}" if loc else "top level"
    return f"{path}: {where}: {msg}{more}"


def _read_yaml(path: str | Path) -> tuple[Path, dict[str, Any]]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got "
                          f"{type(data).__name__}")
    return path, data


def load_zoo_config(path: str | Path) -> ZooConfig:
    path, data = _read_yaml(path)
    try:
        return ZooConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(path, err)) from None


class Catalog(_Strict):
    """A models-and-pools file: hub model entries and named pools of their names."""

    description: str = ""
    models: list[ModelEntry] = []
    pools: dict[str, list[str]] = {}
    # Paper model -> entry name or None (no public equivalent); documentation only.
    mapping: dict[str, str | None] = {}


def load_catalog(path: str | Path) -> Catalog:
    path, data = _read_yaml(path)
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(path, err)) from None
    names = [m.name for m in catalog.models]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"{path}: key 'models[{i}].name': model {name!r} listed twice")
    for pool, members in catalog.pools.items():
        for i, m in enumerate(members):
            if m not in names:
                raise ConfigError(f"{path}: key 'pools.{pool}[{i}]': model {m!r} is not one of "
                                  "this file's models")
    return catalog


def load_sweep_config(path: str | Path) -> tuple[SweepConfig, Path]:
    """Parse a sweep file; returns the config and the path of its zoo file."""
    path, data = _read_yaml(path)
    try:
        cfg = SweepConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(path, err)) from None
    return cfg, (path.parent / cfg.zoo)

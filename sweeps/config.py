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


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def unique_grid(values: list[Any] | None) -> list[Any] | None:
    """A grid (learning rates, names) lists each value once: a repeated value is a one-line error
    naming it (pydantic adds the key), never a silently merged or lost trial."""
    for i, v in enumerate(values or []):
        if v in values[:i]:
            raise ValueError(f"{v!r} listed twice; list each value once")
    return values


# --------------------------------------------------------------------------- sweep
class LinearProbeSettings(Strict):
    """The linear proxy: the paper's lrs, steps and repetitions; batch 256 is this project's
    choice (the paper does not give one), as is standardising the features."""

    lrs: list[float] = Field([0.1, 0.01], min_length=1)
    steps: int = Field(2500, ge=1)
    repeats: int = Field(5, ge=1)
    batch_size: int = Field(256, ge=1)

    _unique = field_validator("lrs")(unique_grid)


class KnnSettings(Strict):
    k: int = Field(1, ge=1)


class EarlyStopSettings(Strict):
    """The early-stop proxy (Renggli et al. 2022, Appendix I): zero-initialised head, no warm-up,
    constant learning rate, 10 SGD steps of batch 512, both fine-tune learning rates, max
    validation accuracy, median of 5 repetitions. Smaller profiles say so by name."""

    profile: str = "paper"
    lrs: list[float] = Field([0.01, 0.001], min_length=1)
    steps: int = Field(10, ge=1)
    repeats: int = Field(5, ge=1)
    batch_size: int = Field(512, ge=1)

    _unique = field_validator("lrs")(unique_grid)


def known_proxy(names: list[str]) -> list[str]:
    """Proxy names are the proxy registry's (``whichmodel list proxies``)."""
    from selection.proxies import list_proxies

    known = list_proxies()
    for name in names:
        if name not in known:
            raise ValueError(f"unknown proxy {name!r}; known: {', '.join(known)}")
    return unique_grid(names)


class ProbeProtocol(Strict):
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
            accepted = get_proxy(name).settings
            block = getattr(self, name, None)
            kwargs = block.model_dump() if isinstance(block, BaseModel) else {}
            kwargs = {k: v for k, v in kwargs.items() if k in accepted}  # not e.g. its profile
            if "seed" in accepted:
                kwargs["seed"] = seed
            out[name] = kwargs
        return out


class FinetuneProtocol(Strict):
    """The fine-tune protocol (Renggli et al. 2022, Sec. 4.3): a linear head on the frozen
    backbone, then the whole network with SGD at each learning rate, best by validation, median
    over repetitions. The head stage's length, momentum 0.9 and the 5% warm-up then cosine decay
    are this project's choices (the paper does not give them)."""

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
    curve_every: int = Field(10, ge=1)  # steps between training-loss points (the curves artifact)
    # Lightning precision of stage 2; auto: bf16-mixed on a GPU, 32-true on the CPU.
    precision: Literal["auto", "bf16-mixed", "16-mixed", "32-true"] = "auto"
    # per_run: a trial per (learning rate, repetition), so a lost node loses little; per_pair:
    # all runs of a pair (and its early-stop proxy) in one trial, sharing the loads and the head
    # stage's frozen features (small runs on one machine).
    trials: Literal["per_run", "per_pair"] = "per_run"

    _unique = field_validator("lrs")(unique_grid)


class TrialResources(Strict):
    cpus: float = Field(1, gt=0)
    gpus: float = Field(0, ge=0)  # fractions are logical only: no GPU memory isolation


class Resources(Strict):
    num_cpus: int | None = Field(None, ge=1)  # local Ray only; None: all cores
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(1, ge=0)  # retries of a failed trial
    probe: TrialResources = TrialResources()
    finetune: TrialResources = TrialResources()


class BudgetedSearch(Strict):
    """Successive halving (ASHA) over fine-tune steps, run after the exhaustive sweep."""

    enabled: bool = False
    scheduler: Literal["asha"] = "asha"
    lrs: list[float] | None = None  # learning rates searched; default: finetune.lrs
    rung_steps: int = Field(25, ge=1)  # fine-tune steps between two ASHA decisions
    reduction_factor: int = Field(3, ge=2)
    grace_rungs: int = Field(1, ge=1)

    _unique = field_validator("lrs")(unique_grid)


class ChoiceNetSettings(Strict):
    enabled: bool = True
    # The fixed probe model of ChoiceNet v2's task embedding (default: the first model of the
    # sweep whose name contains "generalist", else the first model).
    probe_model: str | None = None
    steps: int = Field(500, ge=1)
    # The low-rank reductions of the embeddings (v1: the model's, the study's LoRA-like map; v2
    # and v3: both), fixed here, never tuned on held-out tasks.
    rank: int = Field(16, ge=1)


class TaskAgnosticSettings(Strict):
    # Approximate ties of ImageNet accuracy (a fraction: 0.005 = 0.5 points) go to the model
    # with more parameters (Renggli et al. 2022, Sec. 2); 0 gives the strict order.
    tie_tolerance: float = Field(0.005, ge=0, le=1)


class NearestTaskSettings(Strict):
    """Appendix H: the best models of the most similar other task, by Task2Vec."""

    enabled: bool = True
    # The fixed probe network of Task2Vec (default: the sweep's first model whose name contains
    # "generalist", else the first model; the paper used a ResNet-34).
    probe_model: str | None = None
    head_steps: int = Field(200, ge=1)  # SGD steps of the probe's head on the task's train split
    max_examples: int = Field(800, ge=10)  # training examples the Fisher information averages


class ReportSettings(Strict):
    max_budget: int = Field(3, ge=1, le=10)
    strategies: list[str] | None = None
    task_agnostic: TaskAgnosticSettings = TaskAgnosticSettings()
    choicenet: ChoiceNetSettings = ChoiceNetSettings()
    nearest_task: NearestTaskSettings = NearestTaskSettings()


class PoolDefinition(Strict):
    """A pool as a rule over model metadata (``params <= 24.0e6``), a list, or both (their
    union), inside another pool (``within``)."""

    rule: str | None = None
    models: list[str] = []
    within: str | None = None
    note: str = ""

    @field_validator("rule")
    @classmethod
    def _readable(cls, rule: str | None):
        if rule is not None:
            from selection.pools import parse_rule

            parse_rule(rule)
        return rule

    @model_validator(mode="after")
    def _something(self):
        if self.rule is None and not self.models:
            raise ValueError("a pool needs a rule, models, or both")
        unique_grid(self.models)
        return self


HUB_PREFIXES = ("timm:", "torchvision:", "local:")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"  # names of sweeps, tasks and models


class ModelEntry(Strict):
    """A model from a hub or a local folder (``lightning_modules.hub``), named in the sweep."""

    name: str = Field(pattern=NAME_PATTERN)
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


class TaskEntry(Strict):
    """A task read from an ImageFolder layout: ``path/{train,test}/<class>/*`` (+ ``val/``)."""

    name: str = Field(pattern=NAME_PATTERN)
    loader: Literal["imagefolder"] = "imagefolder"
    path: str  # relative paths are relative to the sweep file
    group: Literal["natural", "specialized", "structured"]


class DataSettings(Strict):
    # Where hub datasets (VTAB-1k through torchvision) and their caches live; default
    # $WHICHMODEL_HOME/data. Relative paths are relative to the sweep file.
    root: str | None = None
    download: bool = False  # let torchvision download missing datasets (never by default)


class TrackingSettings(Strict):
    experiment: str | None = None  # default: the sweep's name


class SweepConfig(Strict):
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
    # Named pools: "all", a list of models, or {rule, models, within, note}: a rule over model
    # metadata (selection/pools.py), the listed models, inside another pool.
    pools: dict[str, list[str] | Literal["all"] | PoolDefinition] = {"all": "all"}
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
        # "seeds": every run's RNGs are seeded from (seed, model, task, lr, repetition)
        data: dict[str, Any] = {"image_size": self.image_size, "seed": self.seed,
                                "seeds": "derived"}
        if protocol == "probe":
            data["proxies"] = list(self.probe.proxies)
            for name in self.probe.proxies:
                block = getattr(self.probe, name, None)
                if isinstance(block, BaseModel):
                    data[name] = block.model_dump()
        elif protocol == "finetune":
            data.update(self.finetune.model_dump(exclude={"enabled", "curve_every", "trainable",
                                                          "precision", "trials"}))
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
_UNION_TAGS = {"PoolDefinition", "ModelEntry", "TaskEntry"}


def _key_parts(loc: tuple) -> list:
    """A location without pydantic's union-branch tags (``list[str]``, ``PoolDefinition``)."""
    return [p for p in loc if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))]


def format_validation_error(path: Path, err: ValidationError) -> str:
    errors = err.errors()
    # Where a value may take several forms (a list or an entry), the error of the form the user
    # wrote is the deepest one; a type mismatch with another form says less.
    e = max(errors, key=lambda x: (x["type"] not in ("list_type", "literal_error", "model_type",
                                                     "string_type", "dict_type"),
                                   len(_key_parts(x["loc"]))))
    loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]"
                   for p in _key_parts(e["loc"])).replace(".[", "[")
    kind, msg = e["type"], e["msg"]
    if kind == "extra_forbidden":
        msg = "unknown key (misspelled?); remove it or see the README's configuration table"
    elif kind == "missing":
        msg = "required key missing"
    else:
        msg = msg.removeprefix("Value error, ")
    others = {tuple(_key_parts(x["loc"])) for x in errors} - {tuple(_key_parts(e["loc"]))}
    more = f" (and {len(others)} more)" if others else ""
    where = f"key {loc!r}" if loc else "top level"
    return f"{path}: {where}: {msg}{more}"


def read_yaml(path: str | Path) -> tuple[Path, dict[str, Any]]:
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


class PaperModel(Strict):
    """One model of a paper's study and its public equivalent (None: there is none)."""

    paper_model: str
    feature_dim: int | None = None
    params: int | None = None
    imagenet_acc: float | None = Field(None, ge=0, le=1)
    equivalent: str | None = None
    note: str = ""


class Catalog(Strict):
    """A models-and-pools file: hub model entries, named pools (lists or rules over the entries'
    metadata) and the study's models mapped to the entries."""

    description: str = ""
    models: list[ModelEntry] = []
    pools: dict[str, list[str] | PoolDefinition] = {}
    mapping: list[PaperModel] = []


def load_catalog(path: str | Path) -> Catalog:
    path, data = read_yaml(path)
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(path, err)) from None
    names = [m.name for m in catalog.models]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"{path}: key 'models[{i}].name': model {name!r} listed twice")
    for pool, members in catalog.pools.items():
        listed = members.models if isinstance(members, PoolDefinition) else members
        key = f"pools.{pool}.models" if isinstance(members, PoolDefinition) else f"pools.{pool}"
        for i, m in enumerate(listed):
            if m not in names:
                raise ConfigError(f"{path}: key '{key}[{i}]': model {m!r} is not one of "
                                  "this file's models")
    check_within(path, catalog.pools)
    for i, paper in enumerate(catalog.mapping):
        if paper.equivalent is not None and paper.equivalent not in names:
            raise ConfigError(f"{path}: key 'mapping[{i}].equivalent': {paper.equivalent!r} is not "
                              "one of this file's models")
    return catalog


def check_within(path: Path, pools: dict[str, Any], earlier: tuple[str, ...] = ()) -> None:
    """A pool's ``within`` names a pool defined before it (or ``all``)."""
    seen = {"all", *earlier}
    for name, definition in pools.items():
        within = getattr(definition, "within", None)
        if within is not None and within not in seen:
            raise ConfigError(f"{path}: key 'pools.{name}.within': {within!r} is not a pool defined "
                              f"above it; known: {', '.join(sorted(seen))}")
        seen.add(name)


def load_sweep_config(path: str | Path) -> tuple[SweepConfig, Path]:
    """Parse a sweep file; returns the config and the path of its zoo file."""
    path, data = read_yaml(path)
    try:
        cfg = SweepConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(path, err)) from None
    return cfg, (path.parent / cfg.zoo)

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
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sweeps.config_read import ConfigError, format_validation_error, read_yaml
from whichmodel.names import NAME_PATTERN, name_message

__all__ = ["ConfigError", "format_validation_error", "read_yaml", "NAME_PATTERN"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def unique_grid(values: list[Any] | None) -> list[Any] | None:
    """A grid (learning rates, names) lists each value once: a repeated value is a one-line error
    naming it (pydantic adds the key), never a silently merged or lost trial."""
    for i, v in enumerate(values or []):
        if v in values[:i]:
            raise ValueError(f"{v!r} listed twice; list each value once")
    return values


def path_name(value: str) -> str:
    """A name that becomes part of a path passes the base layer's one check
    (:func:`whichmodel.names.check_name`)."""
    message = name_message(value)
    if message is not None:
        raise ValueError(message)
    return value


#: the name of a sweep, experiment, task, model or pool (each becomes a folder or file name)
Name = Annotated[str, AfterValidator(path_name)]

# Bounds, each with its reason (the error message repeats it): numbers far past the paper's
# protocol are typos, and a typo should cost an error message, not days of compute or memory.
MAX_STEPS = 1_000_000
STEPS_WHY = f"at most {MAX_STEPS:,}: the paper's fine-tune is 2,500 steps; more would not end"
REPEATS_WHY = "1 to 100: the paper takes the median of 5, and each repetition is a whole run"
BATCH_WHY = "1 to 65,536: the paper's batch is 512; a larger batch fits no device"
#: a learning rate: positive, finite, at most 10 (the paper's are 0.1 .. 0.001)
LearningRate = Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)]
LRS_WHY = "1 to 20 learning rates, each in (0, 10]: the paper's are 0.1 .. 0.001"


def steps_field(default: int, ge: int = 1) -> Any:
    return Field(default, ge=ge, le=MAX_STEPS, description=STEPS_WHY)


def repeats_field(default: int) -> Any:
    return Field(default, ge=1, le=100, description=REPEATS_WHY)


def batch_field(default: int) -> Any:
    return Field(default, ge=1, le=65_536, description=BATCH_WHY)


def lrs_field(default: list[float]) -> Any:
    return Field(default, min_length=1, max_length=20, description=LRS_WHY)


# --------------------------------------------------------------------------- sweep
class LinearProbeSettings(Strict):
    """The linear proxy: the paper's lrs, steps and repetitions; batch 256 is this project's
    choice (the paper does not give one), as is standardising the features."""

    lrs: list[LearningRate] = lrs_field([0.1, 0.01])
    steps: int = steps_field(2500)
    repeats: int = repeats_field(5)
    batch_size: int = batch_field(256)

    _unique = field_validator("lrs")(unique_grid)


class KnnSettings(Strict):
    k: int = Field(1, ge=1, le=800, description="1 to 800: the neighbours among the 800 "
                  "training examples")


def micro_batch_value(value: int | str) -> int | str:
    """``auto`` or a whole number of examples per device pass."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(f"{value!r}: write auto or a whole number of examples >= 1")


MicroBatch = Annotated[int | str, AfterValidator(micro_batch_value)]


def micro_within_batch(settings):
    """A fixed micro-batch is at most the (effective) batch it splits."""
    if settings.micro_batch != "auto" and settings.micro_batch > settings.batch_size:
        raise ValueError(f"micro_batch {settings.micro_batch} is larger than batch_size "
                         f"{settings.batch_size}; use at most the batch, or auto")
    return settings


class EarlyStopSettings(Strict):
    """The early-stop proxy (Renggli et al. 2022, Appendix I): zero-initialised head, no warm-up,
    constant learning rate, 10 SGD steps of batch 512, both fine-tune learning rates, max
    validation accuracy, median of 5 repetitions. Smaller profiles say so by name."""

    profile: str = "paper"
    lrs: list[LearningRate] = lrs_field([0.01, 0.001])
    steps: int = steps_field(10)
    repeats: int = repeats_field(5)
    batch_size: int = batch_field(512)
    micro_batch: MicroBatch = "auto"  # as finetune.micro_batch; batch_size is the effective batch
    # SGD momentum of its steps: the fine-tune protocol's 0.9, so that the proxy is the first
    # steps of the fine-tune it predicts (the paper gives none; 0 makes 10 steps plain SGD)
    momentum: float = Field(0.9, ge=0, lt=1)

    _unique = field_validator("lrs")(unique_grid)
    _micro = model_validator(mode="after")(micro_within_batch)


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
    # Keep each pair's features (.npz: train/val at float32, what the proxies read; test at
    # float16) and log them as an artifact of its probe run, for reuse without another forward
    # pass (whichmodel proxy score).
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
    over repetitions; one head per repetition, shared by its learning rates. The head stage's
    length and learning rate, momentum 0.9 and the 5% warm-up then cosine decay are this
    project's choices (the paper does not give them)."""

    enabled: bool = True
    # The paper's profile is 2 lrs x 2500 steps x batch 512 x 5 repetitions; smaller profiles
    # must say so by name (reports and MLflow carry it).
    profile: str = "paper"
    lrs: list[LearningRate] = lrs_field([0.01, 0.001])
    head_steps: int = steps_field(500, ge=0)
    # The head stage's learning rate: one head per repetition, trained once and fine-tuned at
    # every lr (Sec. 4.3: "fine-tune the obtained model twice"); its value is this project's
    head_lr: LearningRate = 0.01
    # At least one step: 0 would log the head stage alone as if it were a fine-tune (to train
    # only the head, write trainable: head; to skip fine-tunes, enabled: false).
    steps: int = Field(2500, ge=1, le=MAX_STEPS, description=(
        f"1 to {MAX_STEPS:,}: 0 fine-tunes nothing (trainable: head trains the head alone, "
        "enabled: false skips fine-tunes); the paper's is 2,500"))
    batch_size: int = batch_field(512)  # the effective batch: one optimizer step sees all of it
    # Per device pass: auto (on a GPU the largest halving of the batch that fits, found once
    # per architecture, input size, precision and device, remembered under $WHICHMODEL_HOME;
    # on the CPU the whole batch) or N; gradients accumulate up to the batch. BatchNorm
    # normalises each micro-batch by its own statistics.
    micro_batch: MicroBatch = "auto"
    repeats: int = repeats_field(5)
    # Surgical fine-tuning (Lee et al. 2022): which block group stage 2 trains.
    trainable: Literal["all", "first", "middle", "last", "head"] = "all"
    curve_every: int = Field(10, ge=1, le=MAX_STEPS)  # steps between training-loss points
    # Lightning precision of stage 2; auto: bf16-mixed on a GPU, 32-true on the CPU.
    precision: Literal["auto", "bf16-mixed", "16-mixed", "32-true"] = "auto"
    # per_run: a trial per (learning rate, repetition), so a lost node loses little; per_pair:
    # all runs of a pair (and its early-stop proxy) in one trial, sharing the loads and the head
    # stage's frozen features (small runs on one machine).
    trials: Literal["per_run", "per_pair"] = "per_run"

    _unique = field_validator("lrs")(unique_grid)
    _micro = model_validator(mode="after")(micro_within_batch)


class TrialResources(Strict):
    cpus: float = Field(1, gt=0, le=1024, description="more than 0, at most 1,024 CPUs a trial")
    # fractions are logical only: no GPU memory isolation
    gpus: float = Field(0, ge=0, le=64, description="0 to 64 GPUs a trial")


#: The device rate a plan's cost is estimated at (``resources.device_tflops``): an H100's dense
#: bf16 peak (989 TFLOP/s, NVIDIA's data sheet) at 10% utilisation, what CNN fine-tuning in
#: PyTorch reaches (ResNet-50 at 224 px, batch 512: ~4,000 images/s of 24.5 GFLOP each; the
#: project's own target is >= 2,000 images/s, 5%). ``measured``: the rate ``benchmarks.gpu``
#: wrote (sweeps/cost.py).
DEFAULT_DEVICE_TFLOPS = 100.0


class Resources(Strict):
    num_cpus: int | None = Field(None, ge=1, le=4096)  # local Ray only; None: all cores
    max_concurrent_trials: int | None = Field(None, ge=1, le=100_000)
    # retries of a failed trial
    max_failures: int = Field(1, ge=0, le=100, description="0 to 100 retries of a failed trial")
    probe: TrialResources = TrialResources()
    finetune: TrialResources = TrialResources()
    # Memory of one GPU (GiB): validate estimates each model's micro-batch on it and refuses a
    # model whose micro-batch of 1 does not fit (sweeps/memory_plan.py).
    gpu_memory_gib: float = Field(80, gt=0)
    # TFLOP/s one trial's device sustains, for the cost estimate (validate, submit, recommend
    # --compute-budget, the progress line); "measured": $WHICHMODEL_HOME/device_rate.json
    device_tflops: float | Literal["measured"] = DEFAULT_DEVICE_TFLOPS

    @field_validator("device_tflops", mode="before")
    @classmethod
    def _rate(cls, value: Any) -> Any:
        if value == "measured":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{value!r}: give the device's TFLOP/s (a number > 0) or 'measured' "
                             "(the rate python -m benchmarks.gpu wrote)")
        return float(value)


class BudgetedSearch(Strict):
    """Successive halving (ASHA) over fine-tune steps, run after the exhaustive sweep."""

    enabled: bool = False
    scheduler: Literal["asha"] = "asha"
    # learning rates searched; default: finetune.lrs
    lrs: list[LearningRate] | None = Field(None, min_length=1, max_length=20, description=LRS_WHY)
    rung_steps: int = steps_field(25)  # fine-tune steps between two ASHA decisions
    reduction_factor: int = Field(3, ge=2, le=100)
    grace_rungs: int = Field(1, ge=1, le=1000)

    _unique = field_validator("lrs")(unique_grid)


class ChoiceNetSettings(Strict):
    enabled: bool = True
    # The fixed probe model of ChoiceNet v2's task embedding (default: the first model of the
    # sweep whose name contains "generalist", else the first model).
    probe_model: str | None = None
    steps: int = steps_field(500)
    # The low-rank reductions of the embeddings (v1: the model's, the study's LoRA-like map; v2
    # and v3: both), fixed here, never tuned on held-out tasks.
    rank: int = Field(16, ge=1, le=4096, description="1 to 4,096: a low rank of embeddings "
                      "no wider than that")


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
    head_steps: int = steps_field(200)  # SGD steps of the probe's head on the task's train split
    # training examples the Fisher information averages
    max_examples: int = Field(800, ge=10, le=1_000_000)


class ReportSettings(Strict):
    """``max_budget``: B = 1 .. K (this project caps K at 10, as the paper's figures go); the
    ``strategies`` to report (default: every one the results support); ``deltas``: comparisons
    ``"a vs b"`` (default: the paper's figures)."""

    max_budget: int = Field(3, ge=1, le=10)
    strategies: list[str] | None = None
    deltas: list[str] | None = None

    _unique = field_validator("strategies", "deltas")(unique_grid)

    @field_validator("deltas")
    @classmethod
    def _delta_form(cls, values: list[str] | None) -> list[str] | None:
        from selection.scoring import parse_delta

        for v in values or []:
            parse_delta(v)
        return values
    task_agnostic: TaskAgnosticSettings = TaskAgnosticSettings()
    choicenet: ChoiceNetSettings = ChoiceNetSettings()
    nearest_task: NearestTaskSettings = NearestTaskSettings()


class PoolDefinition(Strict):
    """A pool as a rule over model metadata (``params <= 24.0e6``), a list, or both (their
    union), inside another pool (``within``)."""

    rule: str | None = Field(None, max_length=2000)
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


class ModelEntry(Strict):
    """A model from a hub or a local folder (``lightning_modules.hub``), named in the sweep."""

    name: Name
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

    name: Name
    loader: Literal["imagefolder"] = "imagefolder"
    path: str  # relative paths are relative to the sweep file
    group: Literal["natural", "specialized", "structured"]


class DataSettings(Strict):
    # Where hub datasets (VTAB-1k through torchvision) and their caches live; default
    # $WHICHMODEL_HOME/data. Relative paths are relative to the sweep file.
    root: str | None = None
    download: bool = False  # let torchvision download missing datasets (never by default)


class TrackingSettings(Strict):
    experiment: Name | None = None  # default: the sweep's name


class SweepConfig(Strict):
    name: Name
    description: str = ""
    seed: int = Field(0, ge=0, le=2**32 - 1, description="0 to 2**32 - 1: numpy's and "
                      "torch's seeds")
    image_size: int = Field(32, ge=8, le=512, description="8 to 512 px: VTAB-1k resizes to "
                            "224; a task's cached images grow with the square of the size")
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
    pools: dict[Name, list[str] | Literal["all"] | PoolDefinition] = {"all": "all"}
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
                    data[name] = _without_auto(block.model_dump())
        elif protocol == "finetune":
            data.update(_without_auto(self.finetune.model_dump(
                exclude={"enabled", "curve_every", "trainable", "precision", "trials"})))
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


def _without_auto(settings: dict[str, Any]) -> dict[str, Any]:
    """``micro_batch: auto`` depends on the device, not the protocol: left out of the key (so
    results from before the setting existed stay valid); a fixed size is in it (BatchNorm
    normalises per micro-batch)."""
    return {k: v for k, v in settings.items() if not (k == "micro_batch" and v == "auto")}


# --------------------------------------------------------------------------- loading
def load_sweep_config(path: str | Path) -> tuple[SweepConfig, Path]:
    """Parse a sweep file; returns the config and the path of its zoo file."""
    path, data = read_yaml(path)
    try:
        cfg = SweepConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(path, err, SweepConfig)) from None
    return cfg, (path.parent / cfg.zoo)

"""Which micro-batch each model of a GPU sweep gets, known before launch (``whichmodel validate``).

For a sweep whose fine-tunes ask for GPUs (``resources.finetune.gpus > 0``), every model's
architecture is traced at its own input size on the meta device
(:func:`lightning_modules.memory.estimate_step_memory`: no weights read, nothing computed) for
the fine-tune's precision, giving the estimated peak of a fine-tune step at micro-batches 1, 2,
4, ... up to the effective batch, and the micro-batch that fits a GPU of
``resources.gpu_memory_gib``. A model whose micro-batch of 1 does not fit is refused with one
line naming it (exit code 2) before anything runs: it would fail every try on the cluster.

Estimates are remembered for the life of the process, keyed by architecture, input size,
precision and what trains (``validate`` writes nothing, so not on disk): tracing the 24 models of
``pools/renggli2022.yaml`` takes about 20 s on 2 CPU cores.
"""

from __future__ import annotations

import json
from typing import Any

from sweeps.config import ConfigError

_ESTIMATES: dict[str, dict[str, Any]] = {}  # this process's traces, by model_memory's key


def gpu_sweep(cfg) -> bool:
    return cfg.resources.finetune.gpus > 0


def finetune_precision(cfg) -> str:
    """The precision fine-tunes run at on a GPU (``auto``: bf16-mixed, as make_trainer picks)."""
    return "bf16-mixed" if cfg.finetune.precision == "auto" else cfg.finetune.precision


def _build(plan, name: str):
    """The model's architecture on the meta device (random weights, no file read) and its
    identity for the cache; None when only its weights folder could tell (local zoo models)."""
    import torch

    ref = plan.model_refs.get(name, {"source": "zoo"})
    with torch.device("meta"):
        if ref.get("source", "zoo") == "zoo":
            from lightning_modules.backbones import create_backbone
            from sweeps.zoo_config import load_zoo_config

            zoo = load_zoo_config(plan.zoo_path)
            m = zoo.model(name)
            backbone = create_backbone(m.arch, input_size=zoo.image_size, **m.arch_kwargs)
            return backbone, f"zoo:{m.arch}{json.dumps(m.arch_kwargs, sort_keys=True)}"
        from lightning_modules.hub import build_architecture

        try:
            backbone, _ = build_architecture(ref["spec"])
        except (OSError, ValueError):  # a local: folder that is not here (file-only checks)
            return None
        return backbone, ref["spec"]


def model_memory(plan, name: str) -> dict[str, Any] | None:
    """The model's :class:`~lightning_modules.memory.StepMemory` fields and input size (traced
    once per process)."""
    from lightning_modules.memory import estimate_step_memory
    from lightning_modules.training import set_trainable

    cfg = plan.cfg
    precision, trainable = finetune_precision(cfg), cfg.finetune.trainable
    built = _build(plan, name)
    if built is None:
        return None
    backbone, arch = built
    size = int(backbone.preprocessing["input_size"])
    key = f"{arch}|{size}|{precision}|{trainable}"
    if key not in _ESTIMATES:
        set_trainable(backbone, "all" if trainable == "head" else trainable)
        memory = estimate_step_memory(backbone, size, precision)
        _ESTIMATES[key] = {"input_size": size, **memory.to_dict()}
    return _ESTIMATES[key]


def memory_table(plan) -> dict[str, dict[str, Any]]:
    """Per model: input size, precision, the estimated peak (GiB) of a fine-tune step at each
    micro-batch 1, 2, 4 .. effective batch, and the micro-batch it gets for the fine-tunes and
    for the early-stop proxy on a GPU of ``resources.gpu_memory_gib`` (None: does not fit)."""
    from lightning_modules.memory import GIB, StepMemory, micro_batch_for, usable_bytes
    from lightning_modules.micro_batch import halvings

    cfg = plan.cfg
    budget = usable_bytes(cfg.resources.gpu_memory_gib)
    table = {}
    for name in plan.models:
        found = model_memory(plan, name)
        if found is None:
            table[name] = {"estimate": "unknown: the architecture needs its weights folder"}
            continue
        memory = StepMemory(**{k: v for k, v in found.items() if k != "input_size"})

        def micro(effective: int, setting, memory=memory) -> int | None:
            fits = micro_batch_for(memory, effective, budget)
            return fits if setting == "auto" or fits is None else min(fits, int(setting))

        effective = cfg.finetune.batch_size
        table[name] = {
            "input_size": found["input_size"], "precision": finetune_precision(cfg),
            "gpu_memory_gib": cfg.resources.gpu_memory_gib,
            "peak_gib": {str(b): round(memory.peak(b) / GIB, 2)
                         for b in reversed(halvings(effective))},
            "micro_batch": micro(effective, cfg.finetune.micro_batch),
            "early_stop_micro_batch": micro(cfg.probe.early_stop.batch_size,
                                            cfg.probe.early_stop.micro_batch),
            "effective_batch": effective}
    return table


def refuse_unfit(plan, table: dict[str, dict[str, Any]]) -> None:
    """One line naming every model whose micro-batch of 1 does not fit the GPU."""
    unfit = {m: t for m, t in table.items() if "peak_gib" in t and t["micro_batch"] is None}
    if not unfit:
        return
    gib = plan.cfg.resources.gpu_memory_gib
    named = ", ".join(f"{m} (~{t['peak_gib']['1']:.1f} GiB at micro-batch 1, {t['input_size']} "
                      f"px, {t['precision']})" for m, t in unfit.items())
    raise ConfigError(f"{plan.path}: key 'resources.gpu_memory_gib': {len(unfit)} model(s) do not "
                      f"fit a {gib:g} GiB GPU even at micro-batch 1: {named}; give a larger GPU "
                      "(resources.gpu_memory_gib) or leave them out of 'models'")


def format_table(table: dict[str, dict[str, Any]]) -> list[str]:
    """One line per model: its input size, the estimated peak at micro-batch 1 and at the
    effective batch, and the micro-batch (with gradient accumulation) it gets."""
    lines = []
    width = max((len(m) for m in table), default=0)
    for name, t in table.items():
        if "peak_gib" not in t:
            lines.append(f"  {name:<{width}}  {t['estimate']}")
            continue
        eff, micro = t["effective_batch"], t["micro_batch"]
        steps = f"x{-(-eff // micro)} accumulated" if micro and micro < eff else "no accumulation"
        lines.append(f"  {name:<{width}}  {t['input_size']} px: ~{t['peak_gib']['1']:.1f} GiB at "
                     f"micro-batch 1, ~{t['peak_gib'][str(eff)]:.1f} GiB at {eff} -> micro-batch "
                     f"{micro} ({steps}); early stop {t['early_stop_micro_batch']}")
    return lines

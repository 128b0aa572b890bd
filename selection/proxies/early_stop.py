"""The early-stop proxy (Renggli et al., CVPR 2022, Appendix I): a few steps of fine-tuning.

A zero-initialised linear head is trained together with the whole network from the first step
(no head-only stage, no warm-up, constant learning rate) for a few steps; per repetition the best
learning rate's validation accuracy counts, and the proxy is the median over repetitions. Paper
protocol: 10 SGD steps of batch 512, the two fine-tune learning rates {0.01, 0.001}, 5
repetitions. The test split is never touched.

The protocol lives here; the training itself is the trial's ``finetune(lr, steps, batch_size,
seed) -> validation accuracy`` callable (``lightning_modules.training.short_finetune``), so this
module needs no Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from selection.proxies.inputs import check_int
from selection.proxies.registry import ProxyInputs, register_proxy

PAPER_LRS = (0.01, 0.001)
PAPER_STEPS = 10
PAPER_BATCH_SIZE = 512
PAPER_REPEATS = 5


@register_proxy("early_stop", needs=("finetune",),
                settings=("lrs", "steps", "repeats", "batch_size", "seed"))
def early_stop_proxy(inputs: ProxyInputs, lrs: Sequence[float] = PAPER_LRS,
                     steps: int = PAPER_STEPS, repeats: int = PAPER_REPEATS,
                     batch_size: int = PAPER_BATCH_SIZE, seed: int = 0) -> float:
    """A few fine-tune steps from a zero head: median of the best lr's val accuracy (App. I).

    Per repetition the best learning rate's validation accuracy; the median over repetitions."""
    if inputs.finetune is None:
        raise ValueError("early_stop needs a finetune callable (a short fine-tune of the backbone)")
    steps, repeats = check_int(steps, "steps", 1), check_int(repeats, "repeats", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    if not lrs:
        raise ValueError("early_stop: lrs must name at least one learning rate")
    best = [max(float(inputs.finetune(lr=float(lr), steps=steps, batch_size=batch_size,
                                      seed=seed + rep)) for lr in lrs)
            for rep in range(repeats)]
    return float(np.median(best))

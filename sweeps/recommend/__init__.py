"""``whichmodel recommend``: which model to fine-tune for my task, at my budget of B fine-tunes.

    whichmodel recommend --task faces --budget 2 --config sweeps/configs/quickstart.yaml
    whichmodel recommend --task faces --compute-budget 90s --config sweeps/configs/quickstart.yaml
    recommend("path/to/imagefolder", 2, config="sweeps/configs/quickstart.yaml")   # -> dict

1. The probe trials of every model of the pool on the task, on Ray Tune, logged to MLflow under a
   sweep's keys (``model|task|probe`` and the probe protocol's hash): a probe already there --
   from a sweep or an earlier recommend -- is reused, not run again.
2. The pool ranked by the strategy (default the paper's recommendation, ``hybrid:proxy/linear``;
   or the lowest mean regret at B of an experiment's latest report) from the task's probe
   results, the experiment's other tasks (``choicenet_records``, the leave-one-task-out oracle,
   ChoiceNet v1-v3 and the nearest task learn from them; :mod:`sweeps.learned`) and the
   models' metadata. The task's own fine-tune results are never read.
3. The top B fine-tuned with the sweep's fine-tune protocol (same keys: reused when there), and
   the winner: the pick with the best validation accuracy (the fine-tune protocol's own model
   selection; test accuracy is reported, not chosen by).
4. The decision, JSON and text, as a ``recommend:<task>`` run of the experiment.

A strategy that reads the task's fine-tune results (``per_task_best``, ``task_agnostic_oracle``)
is refused. ``--compute-budget 2h`` instead of ``--budget B`` chooses B: the largest whose
estimated probes and fine-tunes fit (:mod:`~sweeps.recommend.budget`), printed before running;
the decision then says what was spent.

The package: :mod:`~sweeps.recommend.decide` (the stages: check the call, probe and rank,
fine-tune the picks, log the decision), :mod:`~sweeps.recommend.rank` (which strategies a new
task can use, the ranking from the experiment's records), :mod:`~sweeps.recommend.budget` (B
from a compute budget), :mod:`~sweeps.recommend.text` (the decision as a person reads it) and
:mod:`~sweeps.recommend.cli` (the command line).
"""

from sweeps.recommend.decide import RecommendFailed, recommend

__all__ = ["RecommendFailed", "recommend"]

"""Keep library chatter (Lightning's tips, deprecation notices, MLflow's and alembic's info) off
the terminal, and nothing else.

Warnings are silenced by category and the module that raises them (:data:`NOISY_WARNINGS`),
never wholesale: a ``RuntimeWarning`` of a proxy's arithmetic (an overflow, a division by zero)
still reaches the log. Called by the CLI in the driver and by every trial in its Ray worker
(:func:`quiet_libraries`); ChoiceNet's tiny trainings use :func:`quiet_lightning` for their span.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric",
                     "pytorch_lightning.utilities.rank_zero")
LIBRARY_LOGGERS = (*LIGHTNING_LOGGERS, "mlflow", "alembic", "ray.tune")

_LIGHTNING = r"(pytorch_lightning|lightning_fabric|lightning)(\..*)?$"
#: (category, module pattern): warnings about a library's own use, never about our numbers.
NOISY_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (DeprecationWarning, ""),  # every library's deprecation notices (for their developers)
    (FutureWarning, r"(mlflow|ray|pydantic|torch|timm|pandas|sklearn)(\..*)?$"),
    (FutureWarning, _LIGHTNING),
    # Lightning's tips: few dataloader workers, batch-size inference, an unused GPU, no logger
    (UserWarning, _LIGHTNING),
    (UserWarning, r"torch\.(utils\.data|amp|autocast_mode|_dynamo)(\..*)?$"),
    (UserWarning, r"(mlflow|ray)(\..*)?$"),
)


def silence_noisy_warnings() -> None:
    """Add the :data:`NOISY_WARNINGS` filters to the current warnings filters."""
    for category, module in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", category=category, module=module)


def quiet_libraries() -> None:
    """For the whole process: library loggers at ERROR, noisy warnings off."""
    silence_noisy_warnings()
    # Child processes (Ray's workers before their trial calls this): deprecations only, which are
    # never about our numbers.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's loggers at ERROR and the noisy warnings off for the span of the block only."""
    loggers = [logging.getLogger(n) for n in LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            silence_noisy_warnings()
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)

"""Keep library chatter (Lightning tips, deprecation warnings, MLflow/alembic info) off the terminal.

Called by the CLI in the driver and by every trial in its Ray worker.
"""

from __future__ import annotations

import logging
import os
import warnings

_LOGGERS = ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric",
            "pytorch_lightning.utilities.rank_zero", "mlflow", "alembic", "ray.tune")


def quiet_libraries() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)

"""``python -m mlflow_server``: the tracking server launcher (see ``mlflow_server.launch``)."""

import sys

from mlflow_server.launch import main

sys.exit(main(sys.argv[1:]))

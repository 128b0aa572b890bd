"""The MLflow tracking server of cluster mode: PostgreSQL backend, S3 artifacts, basic auth.

    python -m mlflow_server                      launch.py: the server, set up by the environment
    python -m mlflow_server.health URL           health.py: /health and an authenticated REST call
    python -m mlflow_server.local [--dir DIR]    local.py: PostgreSQL + moto S3 + the server here

Settings are documented in ``mlflow_server/README.md`` (from ``settings.SETTINGS``).
"""

"""whichmodel sweeps: typed config, registries, Ray Tune driver, MLflow tracking and the CLI."""

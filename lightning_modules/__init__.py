"""What trains: backbones, task data and LightningModules. No Ray or MLflow imports."""

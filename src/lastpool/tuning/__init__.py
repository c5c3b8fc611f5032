"""``lastpool tune``: hyperparameter search with Optuna (space.py: what a trial draws; study.py: the study,
its trials and their pruning; report.py and plots.py: what it writes)."""

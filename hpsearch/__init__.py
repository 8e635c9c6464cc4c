"""hpsearch: hyperparameter search for fine-tuning transformer text classifiers, on Optuna."""

__version__ = "0.1.0"

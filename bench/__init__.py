"""Side-by-side benchmark: hpsearch against random search, plain TPE and ``Trainer.hyperparameter_search``.

Run ``make bench`` (or ``python -m bench.run --help``); results land in ``bench/results/*.json`` and
``BENCHMARKS.md`` explains them.
"""

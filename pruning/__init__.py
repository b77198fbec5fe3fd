"""prunetune's science: models, data, criteria, surgery, cost, training loops.

Knows nothing of Ray, Optuna, pandas or Parquet (those live in ``search``).
"""

__version__ = "0.1.0"

"""Where a search's results live and how they are read: the experiment directory (local or
object storage), the Parquet ledgers and their schema, Pareto fronts. Loads no Ray, Optuna or torch."""

"""One trial as plain Python (``search.trial.run.run_trial``): the base model, the trial modes,
the per-epoch rows and the result. Knows nothing of Ray and loads no Optuna (Ray workers import it)."""

"""Orchestration of pruning trials: config, search space, Ray Tune + Optuna, Parquet ledger, CLI."""

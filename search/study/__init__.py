"""The Optuna side of a search: the search space, the samplers and the study's journal."""

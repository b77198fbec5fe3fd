"""The Ray layer of a search: every module here imports Ray (and Optuna) at the top.

Only :mod:`search.tuner` imports this package, inside the function that runs a search,
so ``status``, ``pareto`` and ``pruning`` never load Ray. Modules:

- :mod:`.session`: Ray's environment knobs and ``ray_session`` (init / join / shutdown);
- :mod:`.trainable`: ``run_one`` (the Ray trainable around ``run_trial``), replay, the ASHA scheduler;
- :mod:`.searcher`: ``LedgerSearch``, an ``OptunaSearch`` reconciled with the ledger;
- :mod:`.recorder`: ``Recorder``, the ``tune.Callback`` that writes the ledger and prints progress;
- :mod:`.fit`: one Tuner session (fresh, restored or warm-started).

They talk through the result protocol :class:`search.result.TrialResult`.
"""

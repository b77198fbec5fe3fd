"""The Ray layer of a search: every module here imports Ray at the top.

Two fronts import it, each inside the function that runs on Ray: :mod:`search.tuner` (a
search) and :mod:`search.finalize` (a finalize), so ``status``, ``pareto`` and ``pruning``
never load Ray. Modules:

- :mod:`.session`: Ray's environment knobs and ``ray_session`` (init / join / shutdown);
- :mod:`.trainable`: ``run_one`` (the Ray trainable around ``run_trial``) and replay;
- :mod:`.searcher`: ``LedgerSearch``, an ``OptunaSearch`` reconciled with the ledger;
- :mod:`.recorder`: ``Recorder``, the ``tune.Callback`` that writes the ledger and prints progress;
- :mod:`.schedulers`: MO-ASHA (early stopping ranked on every objective);
- :mod:`.fit`: one Tuner session (fresh, restored or warm-started) and ``build_tuner``, the one
  Tuner builder (a search's and a finalize's);
- :mod:`.final`: a finalize's session, a fixed list of params through the search's trainable.

They talk through the result protocol :class:`search.trial.result.TrialResult` and take
:class:`search.options.SearchOptions`.
"""

"""`optuna-dashboard results/NAME/optuna.journal` (README) opens the journal a search writes."""

from __future__ import annotations

import json
import warnings
from io import BytesIO
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed (pip install 'prunetune[dashboard]')")
from optuna_dashboard import wsgi  # noqa: E402
from optuna_dashboard._storage_url import get_storage  # noqa: E402  (what the optuna-dashboard CLI calls on its argument)


def _write_journal(path: Path) -> str:
    """A two-objective study with live, warm-started, pruned and failed trials, as search.tuner writes it."""
    # search.tuner: JournalStorage(JournalFileBackend(str((exp_dir / JOURNAL_FILE).resolve()))).
    storage = JournalStorage(JournalFileBackend(str(path.resolve())))
    study = optuna.create_study(storage=storage, study_name="demo-0123456789abcdef", directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(3):  # sampler trials: OptunaSearch asks, the ledger callback tells
        trial = study.ask()
        ratio = trial.suggest_float("ratio.features.0", 0.2, 1.0)
        trial.set_user_attr("ray_trial_id", f"t{i}")
        trial.set_user_attr("macs", int(1e6 * ratio))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            trial.set_constraint("macs_budget", 1e6 * ratio - 5e5)
        study.tell(trial, [0.9 * ratio, 1e6 * ratio])
    study.tell(study.ask(), state=TrialState.PRUNED)  # stopped by ASHA
    study.tell(study.ask(), state=TrialState.FAIL)  # an ERROR trial
    dist = {"ratio.features.0": optuna.distributions.FloatDistribution(0.2, 1.0)}
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[0.8, 5e5], params={"ratio.features.0": 0.5},
                                 distributions=dist, constraints={"macs_budget": 0.0}))  # warm start from the ledger on resume
    return study.study_name


def _get(app: Any, url: str) -> dict[str, Any]:
    environ: dict[str, Any] = {"PATH_INFO": url, "REQUEST_METHOD": "GET", "wsgi.input": BytesIO()}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, _headers, _exc=None: status.append(s)))
    assert status[0].startswith("200"), (status, body[:300])
    return json.loads(body)


def test_optuna_dashboard_opens_the_search_journal(tmp_path: Path) -> None:
    path = tmp_path / "optuna.journal"
    name = _write_journal(path)

    storage = get_storage(str(path))  # the same call as `optuna-dashboard results/NAME/optuna.journal`
    assert isinstance(storage, JournalStorage)
    (study,) = storage.get_all_studies()
    assert study.study_name == name
    trials = storage.get_all_trials(study._study_id)
    assert len(trials) == 6
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 4 + ["FAIL", "PRUNED"]

    app = wsgi(str(path))  # the dashboard's own server app, called in-process (no socket)
    studies = _get(app, "/api/studies")["study_summaries"]
    assert [(s["study_name"], s["directions"]) for s in studies] == [(name, ["maximize", "minimize"])]
    detail = _get(app, f"/api/studies/{studies[0]['study_id']}")
    assert len(detail["trials"]) == 6 and len(detail["best_trials"]) >= 1

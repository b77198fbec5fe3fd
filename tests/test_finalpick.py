"""Issue 17, no winner's curse: the selection split of a search (``data.select_fraction``)
and finalize's fair pick (:mod:`search.finalpick`): candidates per target include the
uniform baseline, the pick is the argmax of select accuracy, ``--distill`` trains with a
teacher, bad values are one line (exit 2, nothing written).

Fast tests build the pieces in process; the slow one runs ``prunetune finalize`` on Ray
on the tiny experiment of ``test_finalize`` (tiny_vgg, digits limit 200, 1 epoch).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pruning.cost import count_macs
from search import finalpick
from search.config import config_from_dict, load_config
from search.results.final import FINAL_SCHEMA, FinalLedger, read_final
from search.finalpick import Candidate, Target, Variant
from search.results.ledger import read_trials
from search.trial.materialize import data_key, experiment_data
from test_cli_search import Cli, assert_usage_error, cli, main_in_process  # noqa: F401 (cli: the fixture)
from test_finalize import CONFIG, GROUPS, make_experiment

REPO = Path(__file__).resolve().parents[1]
#: The columns final.parquet gained with issue 17 (a file without them is an older finalize's).
NEW_COLUMNS = [f.name for f in finalpick.FINAL_EXTRA_FIELDS if f.name in FINAL_SCHEMA.names]


def _rows(split) -> set[bytes]:
    return {row.numpy().tobytes() for row in split.x}


# --------------------------------------------------------------------------- the selection split


def test_select_split_of_an_experiment_is_disjoint_from_train_val_test() -> None:
    cfg = config_from_dict(CONFIG)
    assert cfg.data.select_fraction == 0.1  # the default
    data = experiment_data(cfg)
    assert (len(data.train), len(data.select)) == (180, 20)  # the limit of 200 is split 90/10
    select = _rows(data.select)
    assert len(select) == len(data.select)
    assert not select & _rows(data.train) and not select & _rows(data.val) and not select & _rows(data.test)
    assert data_key(cfg)["select_fraction"] == 0.1  # the base model (trained on train minus select) is cached apart
    none = config_from_dict({**CONFIG, "data": {**CONFIG["data"], "select_fraction": None}})
    assert experiment_data(none).select is None and "select_fraction" not in data_key(none)
    assert len(experiment_data(none).train) == 200


def test_a_saved_config_from_before_the_split_reads_back_without_one(tmp_path: Path) -> None:
    raw = config_from_dict(CONFIG).model_dump(mode="json")
    del raw["data"]["select_fraction"], raw["finalize"]
    old = config_from_dict(raw, saved=True)
    assert old.data.select_fraction is None
    # Its search hash is that of the config before the key existed (resume and the study name keep working).
    d = old.model_dump(mode="json")  # the hash as computed before select_fraction and finalize existed
    del d["data"]["select_fraction"], d["finalize"], d["max_concurrent"], d["experiment"]["results_dir"]
    d["resources"] = None
    assert old.search_hash() == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    assert config_from_dict(raw).data.select_fraction == 0.1  # a new config gets the default
    # The finalize section changes no trial: not part of the hash.
    assert config_from_dict({**CONFIG, "finalize": {"top": 2}}).search_hash() == config_from_dict(CONFIG).search_hash()


@pytest.mark.parametrize("value", ["0", "0.6", "-0.1", "1"])
def test_bad_select_fraction_is_one_line_exit_2_nothing_written(tmp_path: Path, value: str) -> None:
    results = tmp_path / "results"
    proc = main_in_process("run", str(REPO / "configs" / "demo.yaml"), "--set", f"experiment.results_dir={results}",
                           "--set", f"data.select_fraction={value}")
    assert_usage_error(proc, "data.select_fraction", "must be in (0, 0.5]", f"got {float(value)}")
    assert not results.exists()


@pytest.mark.parametrize("key, value, fragment", [
    ("finalize.top", "0", "finalize.top"),
    ("finalize.epochs", "0", "finalize.epochs"),
    ("finalize.topp", "1", "unknown key 'finalize.topp'"),
    ("finalize.scratch_epochs", "0", "finalize.scratch_epochs"),
    ("finalize.with_scratch", "true", "set one of them"),  # with finalize.from_scratch=true, below
])
def test_bad_finalize_section_is_one_line_exit_2(tmp_path: Path, key: str, value: str, fragment: str) -> None:
    results = tmp_path / "results"
    both = ["--set", "finalize.from_scratch=true"] if key == "finalize.with_scratch" else []
    proc = main_in_process("run", str(REPO / "configs" / "demo.yaml"), "--set", f"experiment.results_dir={results}",
                           "--set", f"{key}={value}", *both)
    assert_usage_error(proc, fragment)
    assert not results.exists()


@pytest.mark.parametrize("flags, fragment", [
    (["--with-scratch", "--from-scratch"], "--with-scratch adds from-scratch runs beside the finetuned ones"),
    (["--with-scratch", "--scratch-epochs", "0"], "--scratch-epochs must be an integer >= 1, got 0"),
])
def test_bad_with_scratch_is_one_line_exit_2_nothing_written(tmp_path: Path, flags: list[str], fragment: str) -> None:
    exp = make_experiment(tmp_path)
    assert_usage_error(main_in_process("finalize", str(exp), "--top", "1", *flags), fragment)
    assert not (exp / "final.parquet").exists()


def test_finalize_without_top_anywhere_is_one_line_exit_2(tmp_path: Path) -> None:
    exp = make_experiment(tmp_path)
    assert_usage_error(main_in_process("finalize", str(exp), "--epochs", "1"), "--top is required")
    assert not (exp / "final.parquet").exists()


# --------------------------------------------------------------------------- candidates and the pick


def _trials_with_targets(tmp_path: Path) -> pd.DataFrame:
    trials = read_trials(make_experiment(tmp_path))
    # a, b at 50% of the base MACs, c, d at 25%; the errored trial has none
    return trials.assign(macs_target=trials["trial_id"].map({"a": 0.5, "b": 0.5, "c": 0.25, "d": 0.25}))


def test_candidates_per_target_include_the_uniform_baseline(tmp_path: Path) -> None:
    targets = finalpick.plan_targets(_trials_with_targets(tmp_path), 1)
    assert [(t.fraction, list(t.sources["trial_id"])) for t in targets] == [(0.25, ["c"]), (0.5, ["a"])]
    keys = [c.key for c in finalpick.candidates(targets, Variant(distill=True))]
    assert keys == ["c+distill", "uniform@0.25+distill", "a+distill", "uniform@0.5+distill"]
    # Without macs_target: one target at the best trial's MACs.
    (one,) = finalpick.plan_targets(read_trials(make_experiment(tmp_path / "plain")), 2)
    assert one.fraction is None and one.macs == 300_000 and list(one.sources["trial_id"]) == ["a", "b"]
    assert [c.key for c in finalpick.candidates([one], Variant())] == ["a", "b", "uniform@300000macs"]
    assert finalpick.compare_variants(Variant()) == [Variant(False, True), Variant(True, False)]
    assert finalpick.compare_variants(Variant(False, True)) == [Variant(False, False), Variant(True, True)]


def test_sources_of_a_target_are_distinct_cuts_other_than_the_uniform_baseline_trial() -> None:
    def trial(tid: str, val: float | None, widths: list[int], criterion: str = "l1", status: str = "TERMINATED",
              **params: object) -> dict:
        return {"trial_id": tid, "status": status, "val_acc": val, "macs": 1000 - len(tid), "widths": widths,
                "criterion": criterion, "params_json": json.dumps({"criterion": criterion, **params})}

    trials = pd.DataFrame([
        trial("uni", 0.90, [4, 8], baseline="uniform"),  # finalize retrains the uniform L1 cut anyway
        trial("uni_taylor", 0.70, [4, 8], "taylor_fo", baseline="uniform"),  # another criterion: another cut
        trial("a", 0.85, [3, 9]),
        trial("a_again", 0.84, [3, 9]),  # the same cut as a, lower on val
        trial("glob", 0.80, [5, 7], baseline="global"),
        trial("broken", None, [2, 2], status="ERROR"),
        trial("b", 0.60, [6, 6]),
    ])
    chosen = finalpick.choose_target_sources(trials, 3)
    assert list(chosen["trial_id"]) == ["a", "glob", "uni_taylor"]
    assert list(finalpick.choose_target_sources(trials, 10)["trial_id"]) == ["a", "glob", "uni_taylor", "b"]
    # Budget-exact trials differ in MACs by noise: the best on val compete, not the Pareto front.
    assert list(finalpick.plan_targets(trials.assign(macs_target=0.1), 2)[0].sources["trial_id"]) == ["a", "glob"]


def _final(rows: list[tuple[str, float | None, float, int]]) -> pd.DataFrame:
    led = FinalLedger("/nonexistent-final", "fin")
    for i, (key, select, val, macs) in enumerate(rows):
        led.add_trial({"trial_id": f"t{i}", "status": "TERMINATED", "val_acc": val, "select_acc": select,
                       "macs": macs, "candidate": key})
    return led.trials()


def test_the_pick_is_the_argmax_of_select_accuracy_not_val() -> None:
    final = _final([("a", 0.80, 0.95, 300), ("b", 0.85, 0.90, 200), ("uniform@x", 0.84, 0.99, 250),
                    ("other", 0.99, 0.99, 100)])
    assert list(finalpick.pick_rows(final, ["a", "b", "uniform@x"])["candidate"]) == ["b"]
    tie = _final([("a", 0.80, 0.90, 300), ("b", 0.80, 0.90, 200), ("c", 0.80, 0.91, 400)])
    assert list(finalpick.pick_rows(tie, ["a", "b", "c"])["candidate"]) == ["c"]  # tie on select: val, then MACs
    no_select = _final([("a", None, 0.90, 300), ("b", None, 0.92, 200)])
    assert list(finalpick.pick_rows(no_select, ["a", "b"])["candidate"]) == ["b"]  # no split: val decides


def _packed(bits: list[int]) -> bytes:
    return np.packbits(np.array(bits, dtype=bool)).tobytes()


def test_mcnemar_p_counts_only_the_examples_the_two_disagree_on() -> None:
    uniform = [1, 1, 0, 0, 0, 0, 0, 1, 1, 0]
    better = [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]  # right on 5 that uniform missed, wrong on none it got
    assert finalpick.mcnemar_p(_packed(better), _packed(uniform)) == pytest.approx(1 / 32)
    assert finalpick.mcnemar_p(_packed(uniform), _packed(better)) == 1.0  # 0 wins of 5: certain under the null
    split = [1, 1, 1, 1, 1, 0, 0, 1, 1, 0]  # 3 wins (examples 2-4), and 3 losses in the 3 appended
    assert finalpick.mcnemar_p(_packed(split + [0, 0, 0]), _packed(uniform + [1, 1, 1])) == pytest.approx(42 / 64)
    assert finalpick.mcnemar_p(_packed(uniform), _packed(uniform)) == 1.0  # never disagree
    with pytest.raises(ValueError, match="not the same split"):
        finalpick.mcnemar_p(_packed(uniform), _packed(uniform * 2))


def test_pick_alpha_keeps_the_uniform_baseline_without_evidence_on_select() -> None:
    led = FinalLedger("/nonexistent-final", "fin")
    uniform = [1] * 80 + [0] * 20
    lucky = [1] * 78 + [0, 0] + [1] * 4 + [0] * 16  # +2 pt on select: 4 wins, 2 losses
    strong = [1] * 80 + [1] * 12 + [0] * 8  # +12 pt: 12 wins, no loss
    for key, hits, val, is_uniform in (("uniform@x", uniform, 0.9, True), ("lucky", lucky, 0.95, False),
                                       ("strong", strong, 0.5, False)):
        led.add_trial({"trial_id": key, "status": "TERMINATED", "val_acc": val, "macs": 100, "candidate": key,
                       "is_uniform": is_uniform, "select_acc": sum(hits) / 100, "select_hits": _packed(hits)})
    p = finalpick.p_values(led.trials(), ["uniform@x", "lucky"])
    assert p == {"lucky": pytest.approx(22 / 64)}  # P(X >= 4 | n = 6)
    for key, value in p.items():
        led.update(key, select_p=value)
    final = led.trials()
    assert list(finalpick.pick_rows(final, ["uniform@x", "lucky"])["candidate"]) == ["lucky"]  # argmax of select
    assert list(finalpick.pick_rows(final, ["uniform@x", "lucky"], 0.1)["candidate"]) == ["uniform@x"]
    assert list(finalpick.pick_rows(final, ["uniform@x", "lucky"], 0.4)["candidate"]) == ["lucky"]
    led.update("strong", select_p=finalpick.p_values(led.trials(), ["uniform@x", "strong"])["strong"])
    assert list(finalpick.pick_rows(led.trials(), ["uniform@x", "lucky", "strong"], 0.01)["candidate"]) == ["strong"]
    # No hits (no selection split, or a finalize from before them): no p-value, the argmax stands.
    assert finalpick.p_values(_final([("uniform@x", 0.8, 0.9, 1), ("a", 0.9, 0.9, 1)]), ["uniform@x", "a"]) == {}


def test_with_scratch_the_from_scratch_runs_compete_against_the_finetuned_uniform() -> None:
    led = FinalLedger("/nonexistent-final", "fin")
    uniform = [1] * 80 + [0] * 20
    scratch = [1] * 80 + [1] * 12 + [0] * 8  # +12 pt on select: 12 wins, no loss
    lucky = [1] * 78 + [0, 0] + [1] * 4 + [0] * 16  # +2 pt: 4 wins, 2 losses
    rows = (("uniform@x+distill", uniform, True), ("uniform@x+scratch+distill", scratch, True),
            ("a+distill", lucky, False), ("a+scratch+distill", uniform, False))
    for key, hits, is_uniform in rows:
        led.add_trial({"trial_id": key, "status": "TERMINATED", "val_acc": 0.9, "macs": 100, "candidate": key,
                       "is_uniform": is_uniform, "select_acc": sum(hits) / 100, "select_hits": _packed(hits)})
    keys, ref = [r[0] for r in rows], "uniform@x+distill"
    p = finalpick.p_values(led.trials(), keys, ref)
    assert set(p) == set(keys) - {ref}  # the uniform baseline from scratch is a challenger like any other
    assert p["uniform@x+scratch+distill"] == pytest.approx(1 / 2 ** 12) and p["a+scratch+distill"] == 1.0
    for key, value in p.items():
        led.update(key, select_p=value)
    final = led.trials()
    assert list(finalpick.pick_rows(final, keys, None, ref)["candidate"]) == ["uniform@x+scratch+distill"]
    assert list(finalpick.pick_rows(final, keys, 0.01, ref)["candidate"]) == ["uniform@x+scratch+distill"]
    led.update("uniform@x+scratch+distill", select_acc=0.5)  # now the lucky finetuned one leads, p = 22/64
    assert list(finalpick.pick_rows(led.trials(), keys, 0.1, ref)["candidate"]) == [ref]
    assert list(finalpick.pick_rows(led.trials(), keys, None, ref)["candidate"]) == ["a+distill"]


def test_a_rerun_with_another_reference_leaves_no_stale_p_values(tmp_path: Path) -> None:
    """Finalize gives every candidate its p against the reference; the reference itself has none,
    also when a rerun (here: --with-scratch after a finalize without it) changes the reference."""
    from types import SimpleNamespace

    from search.finalize import _score_and_pick

    cfg = config_from_dict(CONFIG)
    target = Target("10% MACs", 0.1, None, pd.DataFrame([{"trial_id": "a"}]))
    main, scratch = Variant(False, True), Variant(True, True)
    uniform = [1] * 70 + [0] * 30
    led = FinalLedger(tmp_path, cfg.experiment.name)
    for cand, hits in ((Candidate(target, main, None), uniform), (Candidate(target, main, {"trial_id": "a"}),
                                                                  [1] * 75 + [0] * 25),
                       (Candidate(target, scratch, None), [1] * 85 + [0] * 15)):
        params = {"final_candidate": cand.key, "final_variant": cand.variant.name, "final_uniform": cand.uniform}
        led.add_trial({"trial_id": f"t-{cand.key}", "status": "TERMINATED", "val_acc": 0.9, "macs": 100,
                       "select_acc": sum(hits) / 100, "select_hits": _packed(hits), "params_json": json.dumps(params)})
    led.flush()
    _score_and_pick(cfg, tmp_path, [target], main, [scratch], main, SimpleNamespace(), 0.1)
    p = read_final(tmp_path).set_index("candidate")["select_p"]
    assert p.isna().tolist() == [True, False, False] and p["uniform@0.1+scratch+distill"] < 0.1
    picks = _score_and_pick(cfg, tmp_path, [target], main, [scratch], scratch, SimpleNamespace(), 0.1)
    p = read_final(tmp_path).set_index("candidate")["select_p"]
    assert p.isna().tolist() == [False, False, True]  # the new reference's old p is gone
    assert p["a+distill"] == 1.0 and picks["10% MACs"].key == "uniform@0.1+scratch+distill"


def test_uniform_widths_meet_the_target_macs(tmp_path: Path) -> None:
    from search.trial.base import BaseArtifacts
    from search.trial.materialize import untrained_model
    from pruning.surgery import GroupGraph

    cfg = config_from_dict({**CONFIG, "search": {**CONFIG["search"], "round_to": 4}})
    data = experiment_data(cfg)
    model = untrained_model(cfg, data)
    widths = GroupGraph(model, data.example_input()).widths()
    base_macs = count_macs(model, data.input_shape)
    base = BaseArtifacts(model=model, metrics={"macs": float(base_macs)}, group_names=list(widths),
                         widths=list(widths.values()), checkpoint=None)
    target = Target("30%", 0.3, None, pd.DataFrame())
    cand = Candidate(target, Variant(True, True), None)
    params = finalpick.candidate_params(cand, 2, cfg, base, data.input_shape)
    kept = [round(params[f"r_{g}"] * w) for g, w in widths.items()]
    assert all(k % 4 == 0 for k in kept) and kept != list(widths.values())
    pruned = GroupGraph(untrained_model(cfg, data), data.example_input())
    pruned.prune({g: list(range(k)) for g, k in zip(widths, kept)})
    macs = count_macs(pruned.model, data.input_shape)
    assert macs <= 0.3 * base_macs
    assert params["mode"] == "scratch" and params["scratch_epochs"] == 2 and params["distill"] is True
    # Without rounding the cut lands in the band of budget-exact trials, [0.99, 1] x the target,
    # each group within a channel or two of one common keep ratio.
    kept = finalpick.uniform_widths(base, int(0.3 * base_macs), data.input_shape, 1, 1)
    pruned = GroupGraph(untrained_model(cfg, data), data.example_input())
    pruned.prune({g: list(range(k)) for g, k in zip(widths, kept)})
    assert 0.99 * 0.3 * base_macs <= count_macs(pruned.model, data.input_shape) <= 0.3 * base_macs
    ratios = [k / w for k, w in zip(kept, widths.values())]
    assert max(ratios) - min(ratios) <= 2 / min(widths.values())
    assert params["distill_alpha"] == 0.5 and params["final_candidate"] == "uniform@0.3+scratch+distill"
    assert params["final_uniform"] is True and params["source_trial_id"] is None


def test_final_rows_carry_the_candidate_columns_and_old_files_still_read(tmp_path: Path) -> None:
    params = {"source_trial_id": None, "final_candidate": "uniform@0.5", "final_variant": "finetune",
              "final_macs_target": 0.5, "final_target_label": "50% MACs", "final_uniform": True}
    led = FinalLedger(tmp_path, "fin")
    led.add_trial({"trial_id": "x", "status": "TERMINATED", "val_acc": 0.5, "params_json": json.dumps(params)})
    led.update("uniform@0.5", select_acc=0.7, picked=True)
    led.flush()
    (row,) = read_final(tmp_path).to_dict("records")
    assert (row["candidate"], row["is_uniform"], row["picked"], row["macs_target"], row["select_acc"]) == \
        ("uniform@0.5", True, True, 0.5, 0.7)
    # A final.parquet written before these columns existed reads with nulls.
    old = read_final(tmp_path).drop(columns=NEW_COLUMNS)
    old.to_parquet(tmp_path / "final.parquet")
    (row,) = read_final(tmp_path).to_dict("records")
    assert pd.isna(row["select_acc"]) and pd.isna(row["candidate"])


# --------------------------------------------------------------------------- real runs (Ray)


@pytest.mark.slow
def test_finalize_distill_compare_picks_on_select_against_uniform(tmp_path: Path, cli: Cli) -> None:
    exp = make_experiment(tmp_path / "results")
    proc = cli("finalize", str(exp), "--top", "1", "--epochs", "1", "--distill", "--compare", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    final = read_final(exp).set_index("candidate")
    main = final[final["variant"] == "finetune+distill"]
    assert sorted(main.index) == ["a+distill", "uniform@300000macs+distill"]
    assert (main["teacher_macs"] > 0).all()  # distilled: the base model was the teacher
    assert main["select_acc"].notna().all() and set(final["status"]) == {"TERMINATED"}
    assert bool(main.loc["uniform@300000macs+distill", "is_uniform"]) and not bool(main.loc["a+distill", "is_uniform"])
    assert final["macs"].loc["uniform@300000macs+distill"] <= 300_000
    picked = final[final["picked"] == True]  # noqa: E712 (nullable)
    assert len(picked) == 1
    assert picked.index[0] == main.sort_values(["select_acc", "val_acc"], ascending=False).index[0]
    base_key = picked.index[0].removesuffix("+distill")
    # --compare: the pick's widths finetuned without distillation and from scratch (distilled), never picked
    assert sorted(set(final.index) - set(main.index)) == sorted([base_key, base_key + "+scratch+distill"])
    assert final.loc[base_key + "+scratch+distill", "mode"] == "scratch"
    assert list(final.loc[base_key, "widths"]) == list(picked["widths"].iloc[0])
    assert "search pick vs uniform at target 300,000 MACs (best trial): " in proc.stdout
    assert " pt on select (McNemar p = " in proc.stdout and " pt on test" in proc.stdout
    # each candidate's per-example hits on select; the search candidate's p-value against uniform
    assert main["select_hits"].map(len).eq(-(-20 // 8)).all()  # 20 select images, packed 8 per byte
    assert main["select_p"].isna().tolist() == list(main["is_uniform"].astype(bool))
    assert 0 < main.loc["a+distill", "select_p"] <= 1
    assert (exp / "export" / f"final-{picked.index[0]}" / "model.pt").is_file()


@pytest.mark.slow
def test_run_with_a_finalize_section_finalizes_at_its_end(tmp_path: Path, cli: Cli) -> None:
    from test_cli_search import write_config

    path = write_config(tmp_path, num_samples=2, **{"finalize.top": 1, "finalize.epochs": 1,
                                                    "finalize.with_scratch": True, "finalize.scratch_epochs": 2})
    proc = cli("run", str(path), timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exp = tmp_path / "results" / "tiny"
    final = read_final(exp).set_index("candidate")
    # with_scratch: the trial and the uniform baseline, finetuned 1 epoch and from scratch 2 epochs, all competing
    assert len(final) == 4 and final["is_uniform"].sum() == 2 and final["picked"].sum() == 1
    assert final["select_acc"].notna().all()
    scratch = final[final["variant"] == "scratch"]
    assert (scratch["mode"] == "scratch").all() and (scratch["epochs"] == 2).all() and len(scratch) == 2
    assert (final[final["variant"] == "finetune"]["epochs"] == 1).all()
    assert final["picked"].astype(bool).idxmax() == final.sort_values(["select_acc", "val_acc"], ascending=False).index[0]
    # The reference: the uniform baseline trained longest (from scratch, 2 epochs > 1).
    ref = [k for k in final.index if k.startswith("uniform@") and final.loc[k, "variant"] == "scratch"]
    assert final["select_p"].isna().tolist() == [k in ref for k in final.index]  # each challenger vs the reference
    assert "search pick vs uniform (scratch) at target" in proc.stdout
    assert "finetune and scratch, picked on select" in proc.stdout


def test_rows_of_an_older_finalize_are_candidates_by_their_source(tmp_path: Path) -> None:
    """A final.parquet from before the candidate column: its rows are keyed (skipped on rerun,
    picked) by their source trial, as the plain finetune of that trial."""
    led = FinalLedger(tmp_path, "fin")
    led.add_trial({"trial_id": "x", "status": "TERMINATED", "val_acc": 0.5,
                   "params_json": json.dumps({"source_trial_id": "a"})})
    led.flush()
    old = read_final(tmp_path).drop(columns=NEW_COLUMNS)
    old.to_parquet(tmp_path / "final.parquet")
    again = FinalLedger(tmp_path, "fin")
    assert again.keys() == ["a"] and list(again.trials()["candidate"]) == ["a"]
    assert list(finalpick.pick_rows(again.trials(), ["a", "uniform@x"])["trial_id"]) == ["x"]


def test_summary_has_a_table_per_target_and_the_line_against_uniform(tmp_path: Path) -> None:
    (target,) = finalpick.plan_targets(read_trials(make_experiment(tmp_path)), 1)
    led = FinalLedger(tmp_path, "fin")
    for cand, (select, test) in zip(finalpick.candidates([target], Variant()), [(0.85, 0.82), (0.80, 0.80)]):
        params = {"final_candidate": cand.key, "final_variant": "finetune", "final_uniform": cand.uniform}
        led.add_trial({"trial_id": f"t-{cand.key}", "status": "TERMINATED", "val_acc": 0.9, "test_acc": test,
                       "select_acc": select, "macs": 290_000, "widths": [12, 24, 24],
                       "params_json": json.dumps(params)})
    led.update("a", picked=True)
    led.update("uniform@300000macs", picked=False)
    text = finalpick.summary_text(led.trials(), [target], Variant(), [Variant()], 20)
    assert "target 300,000 MACs (best trial): 1 search trial + uniform L1, finetune, picked on select (20 samples)" in text
    (star,) = [ln for ln in text.splitlines() if ln.strip().startswith("*")]
    assert star.split()[1] == "a" and "85.00" in star and "82.00" in star
    assert ("search pick vs uniform at target 300,000 MACs (best trial): +5.00 pt on select, +2.00 pt on test "
            "(handed back: search trial a)") in text
    # with_scratch: the uniform baseline from scratch, picked, is named; the line compares the
    # best search candidate with the reference's uniform baseline (main's by default).
    scratch = Candidate(target, Variant(True, False), None)
    led.add_trial({"trial_id": "t-s", "status": "TERMINATED", "val_acc": 0.9, "test_acc": 0.83, "select_acc": 0.9,
                   "macs": 290_000, "widths": [12, 24, 24],
                   "params_json": json.dumps({"final_candidate": scratch.key, "final_variant": "scratch",
                                              "final_uniform": True})})
    led.update("a", picked=False)
    led.update(scratch.key, picked=True)
    text = finalpick.summary_text(led.trials(), [target], Variant(), [Variant(), Variant(True, False)], 20,
                                  [Variant(True, False)])
    assert "1 search trial + uniform L1, finetune and scratch, picked on select (20 samples)" in text
    assert f"+5.00 pt on select, +2.00 pt on test (handed back: {scratch.key})" in text
    text = finalpick.summary_text(led.trials(), [target], Variant(), [Variant(), Variant(True, False)], 20,
                                  [Variant(True, False)], Variant(True, False))
    assert (f"search pick vs uniform (scratch) at target 300,000 MACs (best trial): -5.00 pt on select, -1.00 pt on "
            "test (handed back: uniform (scratch))") in text


def test_the_reference_is_the_uniform_trained_longest() -> None:
    main, scratch = Variant(False, True), Variant(True, True)
    assert finalpick.reference_variant(main, [], {main: 5}) == main
    assert finalpick.reference_variant(main, [scratch], {main: 5, scratch: 35}) == scratch
    assert finalpick.reference_variant(main, [scratch], {main: 5, scratch: 5}) == main  # ties: main
    assert finalpick.reference_variant(main, [scratch], {main: 40, scratch: 35}) == main

"""The regime ladder (golf_core/regime.py) and its map (golf_core/regime_map.py): the pairs
match at the competition's constraints, the rungs span the asked range, and the findings
recover a known crossover from synthetic runs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from golf_core import regime, regime_map


@pytest.fixture(scope="module")
def rungs():
    return regime.rungs()


def test_every_pair_matches_in_stored_parameters_and_training_flops_within_2pct(rungs):
    for r in rungs:
        for arm in set(r.arms) - {"flat"}:
            mis = r.mismatch(arm)
            assert abs(mis["params"]) <= regime.TOLERANCE, (r.label, arm, mis)
            assert abs(mis["flops"]) <= regime.TOLERANCE, (r.label, arm, mis)
            assert r.flops[arm] <= r.flops["flat"]  # whole steps that fit the budget


def test_the_ladder_spans_the_asked_range_at_both_sizes(rungs):
    by = {}
    for r in rungs:
        by.setdefault((r.size, r.pair), []).append(r.achieved_ratio())
    assert set(by) == {("A", "records"), ("A", "pr363"), ("B", "records")}
    for (size, _), ratios in by.items():
        assert len(ratios) >= (5 if size == "A" else 3)
        assert min(ratios) <= 2.01 and max(ratios) >= 99.9
        steps = np.diff(np.log(sorted(ratios)))
        assert np.allclose(steps, steps[0], rtol=0.02)  # log-spaced
    a = regime.rung("A", "records", 2.0).facts["flat"]["non_embedding"]
    b = regime.rung("B", "records", 2.0).facts["flat"]["non_embedding"]
    assert 80_000 <= a <= 130_000 and 2.0 <= b / a <= 3.0


def test_the_records_pair_differs_only_in_the_loop_and_its_start(rungs):
    r = next(x for x in rungs if x.pair == "records")
    (p_loop, loop), (p_flat, flat) = r.arms["loop"], r.arms["flat"]
    assert p_loop == p_flat == "pr1204"
    assert loop["recur_layers"] == (4, 5) and flat["recur_layers"] == ()
    assert loop["recur_start_frac"] == regime.RECORD_START_FRAC
    assert loop["repeat_untie_mlp"] == flat["repeat_untie_mlp"] == "none"
    model_keys = {"model_dim", "num_heads", "bigram_vocab_size", "bigram_dim", "ve_dim"}
    assert {k: loop[k] for k in model_keys} == {k: flat[k] for k in model_keys}
    # the tables are scaled with the width, not the published 2816 x 160 and 128
    assert loop["bigram_vocab_size"] < 400 and loop["bigram_dim"] <= 16 and loop["ve_dim"] <= 16


def test_the_always_on_arm_asks_the_records_question_at_size_as_top_rung(rungs):
    withs = [r for r in rungs if "always" in r.arms]
    assert [(r.size, r.pair, r.ratio) for r in withs] == [("A", "records", max(regime.RUNGS["A"]))]
    r = withs[0]
    loop, always = r.arms["loop"][1], r.arms["always"][1]
    assert always["recur_start_frac"] == 0.0 and always["recur_start_step"] == 0
    assert {k: v for k, v in loop.items() if not k.startswith(("recur_start", "iterations",
            "warmdown", "val_loss_every", "train_log_every", "checkpoint_every"))} == {
        k: v for k, v in always.items() if not k.startswith(("recur_start", "iterations",
            "warmdown", "val_loss_every", "train_log_every", "checkpoint_every"))}
    # the always-on loop spends its FLOPs at the looped cost from step 0: fewer steps
    assert r.iterations["always"] < r.iterations["loop"] < r.iterations["flat"]


def test_the_ladders_runs_are_paired_by_seed_and_named_for_the_map(rungs):
    specs = regime.ladder()
    assert len(specs) == sum(len(r.arms) * len(regime.seeds_for(r.size, r.ratio, r.pair))
                             for r in rungs)
    assert all(len(regime.seeds_for(r.size, r.ratio, r.pair)) >= 5 for r in rungs)
    assert len({s.name for s in specs}) == len(specs)
    for spec in specs:
        m = regime_map.NAME.match(spec.name)
        assert m, spec.name
        assert int(m["seed"]) == spec.seed and m["arm"] in (*regime.ARMS, "always")
        assert "results/regime" in str(spec.run_dir)
    first = specs[: 2 * len(regime.SEEDS)]  # rung by rung: a rung's seeds come first
    assert len({regime_map.NAME.match(s.name)["rung"] for s in first}) == 1


def test_the_top_up_gives_the_records_long_rungs_ten_seeds_launched_after_size_b():
    specs = regime.ladder()
    last_b = max(i for i, s in enumerate(specs) if s.name.startswith("regime-B-"))
    tail = specs[last_b + 1:]
    top_ratios = [r for r in regime.RUNGS["A"] if r > regime.EXTRA_SEEDS_UP_TO]
    assert len(tail) == len(regime.EXTRA_SEEDS) * sum(
        len(regime.rung("A", "records", r).arms) for r in top_ratios)
    assert all(s.name.startswith("regime-A-records-") and s.seed in regime.EXTRA_SEEDS
               for s in tail)
    assert {s.label for s in tail} >= {"A-records-r100-always"}
    # PR #363's long rungs keep five seeds, every short rung ten, the records' long ones ten
    assert regime.seeds_for("A", 100.0, "pr363") == regime.SEEDS
    assert len(regime.seeds_for("A", 100.0, "records")) == 10
    assert len(regime.seeds_for("A", 2.0, "pr363")) == 10
    assert regime.seeds_for("B", 100.0, "records") == regime.SEEDS
    # no run twice, and the runs before the top-up are the ladder as it was launched
    assert len({s.name for s in specs}) == len(specs)
    launched = sum(len(r.arms) * len(regime.SEEDS if r.pair == "records" and r.size == "A"
                                     and r.ratio > regime.EXTRA_SEEDS_UP_TO
                                     else regime.seeds_for(r.size, r.ratio, r.pair))
                   for r in regime.rungs())
    assert last_b + 1 == launched


def _synthetic(root, a: float, b: float, noise: float, seeds=range(8)) -> None:
    """Finished-run folders whose paired gap is a + b ln(D/N) + noise."""
    rng = np.random.default_rng(0)
    facts = regime_map.plan_facts()[("A", "records", "flat")]
    for ratio in regime.RUNGS["A"]:
        tokens = ratio * facts["non_embedding"]
        for seed in seeds:
            base = 2.0 + rng.normal(0, 0.02)
            gap = a + b * math.log(ratio) + rng.normal(0, noise)
            for arm, bpb in (("flat", base), ("loop", base + gap)):
                run = root / f"regime-A-records-r{ratio:.3g}-{arm}-s{seed}-abcdef"
                run.mkdir(parents=True)
                (run / "config.json").write_text(json.dumps({"model": {"model_dim": 32}}))
                (run / "summary.json").write_text(json.dumps({
                    "val_bpb": bpb, "roundtrip_val_bpb": bpb + 0.001, "tokens_seen": tokens,
                    "steps": 1, "artifact_bytes": 1, "params": {"total": 1}}))


def test_the_map_recovers_a_known_crossover_with_an_interval_around_it(tmp_path):
    _synthetic(tmp_path, a=0.02, b=-0.01, noise=0.002)  # crosses zero at D/N = e^2 = 7.39
    runs = regime_map.runs_table(tmp_path)
    assert len(runs) == 2 * 8 * len(regime.RUNGS["A"])
    gaps = regime_map.gap_table(runs)
    bpb = gaps[gaps["metric"] == "val_bpb"].sort_values("rung")
    assert (bpb["n"] == 8).all()
    want = 0.02 - 0.01 * np.log(bpb["flat_tokens_per_param"])
    assert ((bpb["ci_low"] < want + 0.003) & (bpb["ci_high"] > want - 0.003)).all()
    cross = regime_map.crossover(runs, resamples=300).iloc[0]
    assert cross["ci_low"] < math.exp(2) < cross["ci_high"]
    assert cross["crossover"] == pytest.approx(math.exp(2), rel=0.15)
    assert "loop wins at the highest rung" in cross["statement"]
    said = regime_map.answer(gaps, regime_map.crossover(runs, resamples=300))
    # gaps 0.02 - 0.01 ln(D/N): a loss at D/N 2 and 5.3, a win from 14 on
    assert "the loop beat the flat model at 3 of the 5 rungs with an interval, lost at 2" in said
    assert "crosses zero within the rungs measured for size A's records' recipe at D/N 7." in said
    text = regime_map.headline(runs)
    assert text.startswith(said.split(" The fitted")[0])  # answer first
    first, rest = text.split("\n\n")  # then one bullet per series: Markdown for the writeup
    assert "loop - flat val_bpb" not in first and rest.startswith("- Size A, the records' recipe")


def test_every_panel_of_the_map_names_its_series_and_its_sizes_law_crossover(tmp_path):
    _synthetic(tmp_path, a=0.02, b=-0.01, noise=0.002)
    fig = regime_map.plot_map(regime_map.runs_table(tmp_path))
    law = regime_map.law_crossover(regime_map.plan_facts()[("A", "records", "flat")]
                                   ["non_embedding"])
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        if ax.get_title().startswith("size A"):
            assert "the records' recipe" in labels and f"law's crossover ({law:.0f})" in labels
        assert any(t.startswith("records' D/N") for t in labels)


def test_a_loop_that_never_catches_up_gets_a_bound_not_a_number(tmp_path):
    _synthetic(tmp_path, a=0.05, b=-0.002, noise=0.001)  # still +0.04 at D/N 100
    runs = regime_map.runs_table(tmp_path)
    cross = regime_map.crossover(runs, resamples=100).iloc[0]
    assert cross["statement"].startswith("no crossover below D/N 100")
    assert "Over ln(D/N): no crossover below D/N 100" in regime_map.headline(runs)
    said = regime_map.answer(regime_map.gap_table(runs), regime_map.crossover(runs, resamples=50))
    assert "beat the flat model at 0 of the 5 rungs with an interval, lost at 5 and tied at 0" in (
        said)
    assert "extrapolation" in said or "does not fall" in said


def test_a_top_rung_with_one_seed_is_said_to_have_no_interval_yet(tmp_path):
    _synthetic(tmp_path, a=0.05, b=-0.002, noise=0.001)
    top = max(regime.RUNGS["A"])
    for run in tmp_path.glob(f"regime-A-records-r{top:.3g}-*"):
        if "-s0-" not in run.name:  # keep seed 0's pair only
            shutil.rmtree(run)
    cross = regime_map.crossover(regime_map.runs_table(tmp_path), resamples=50).iloc[0]
    assert cross["statement"].startswith(f"at the highest rung (D/N {top:.0f}: +0.0")
    assert "1 seed, no interval yet" in cross["statement"] and "nan" not in cross["statement"]
    said = regime_map.answer(regime_map.gap_table(regime_map.runs_table(tmp_path)),
                             pd.DataFrame())
    assert "of the 4 rungs with an interval" in said  # the one-seed rung is not counted


def test_delayed_vs_always_pairs_the_two_loops_by_seed(tmp_path):
    _synthetic(tmp_path, a=0.0, b=0.0, noise=0.001)
    top = max(regime.RUNGS["A"])
    for seed in range(8):  # always-on arms 0.01 worse than the delayed loop of their seed
        loop = json.loads((tmp_path / f"regime-A-records-r{top:.3g}-loop-s{seed}-abcdef"
                           / "summary.json").read_text())
        run = tmp_path / f"regime-A-records-r{top:.3g}-always-s{seed}-abcdef"
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"model": {"model_dim": 32}}))
        (run / "summary.json").write_text(json.dumps(
            {**loop, "val_bpb": loop["val_bpb"] + 0.01}))
    runs = regime_map.runs_table(tmp_path)
    d = regime_map.delayed_vs_always(runs)
    row = d[d["metric"] == "val_bpb"].iloc[0]
    assert row["n"] == 8 and row["diff"] == pytest.approx(-0.01)
    assert "Delayed (48%) minus always-on loop at size A, D/N 100: -0.0100" in (
        regime_map.headline(runs))
    # the top rung's third arm leaves the fit over every rung (it once left only that rung)
    cross = regime_map.crossover(runs, resamples=20).iloc[0]
    assert cross["rungs"] == len(regime.RUNGS["A"]) and cross["points"] == 8 * cross["rungs"]
    assert "Over ln(D/N):" in regime_map.headline(runs)


def test_the_law_gives_the_crossovers_research_derived_from_it():
    # RESEARCH.md: ~100 at 0.1M parameters, ~160 at 1M and ~350 at 36M
    assert regime_map.law_crossover(1e5) == pytest.approx(100, rel=0.05)
    assert regime_map.law_crossover(1e6) == pytest.approx(160, rel=0.05)
    assert regime_map.law_crossover(36e6) == pytest.approx(350, rel=0.05)
    assert regime_map.records_ratio() == pytest.approx(109, rel=0.02)


def test_an_empty_results_folder_says_so_instead_of_failing(tmp_path):
    runs = regime_map.runs_table(tmp_path / "none")
    assert runs.empty and regime_map.gap_table(runs).empty
    assert "no finished runs" in regime_map.headline(runs)
    assert isinstance(regime_map.predictions(runs), pd.DataFrame)


def test_a_nearly_flat_bootstrap_line_is_a_far_crossover_not_an_overflow():
    assert regime_map._root(1.0, -1e-9) > 1e300  # -a/b = 1e9: math.exp would overflow
    assert regime_map._root(0.02, -0.01) == pytest.approx(math.exp(2))
    assert regime_map._root(0.02, 0.0) == math.inf and regime_map._root(-0.02, 0.01) == math.inf


def test_a_fitted_crossover_is_written_in_plain_numbers_and_called_an_extrapolation_past_the_top():
    said = regime_map._fitted(540.2, 270.4, 1160.4, top=100.0)
    assert said == ("fitted crossover D/N 540 [270, 1,160] "
                    "(beyond the highest rung: an extrapolation)")
    inside = regime_map._fitted(7.391, 5.02, 11.3, top=100.0)
    assert inside == "fitted crossover D/N 7.39 [5.02, 11.3]"


def test_status_and_pace_count_rungs_as_their_run_names_spell_them(tmp_path):
    """Run names spell a rung with three digits (D/N 14.14 -> r14.1): a rung is complete only
    with every seed of every arm, and what is left is priced at the plan's FLOPs."""
    top = regime.rung("A", "records", max(regime.RUNGS["A"]))
    mid = regime.rung("A", "records", regime.RUNGS["A"][2])  # 14.14: spelled r14.1
    for r, seeds in ((mid, (1337,)), (top, regime.seeds_for("A", top.ratio, "records"))):
        for seed in seeds:
            for arm in r.arms:
                run = tmp_path / f"regime-{r.label}-{arm}-s{seed}-abcdef"
                run.mkdir()
                (run / "config.json").write_text(json.dumps({"model": {"model_dim": 32}}))
                (run / "summary.json").write_text(json.dumps({
                    "val_bpb": 2.0, "tokens_seen": 1, "steps": 1, "params": {"total": 1},
                    "train_seconds": r.flops[arm] / 1e9}))  # 1 GFLOP/s a run
                (run / "env.json").write_text(json.dumps({
                    "started": f"2026-12-02T{seed % 24:02d}:00:00", "device_name": "CPU X"}))
    runs = regime_map.runs_table(tmp_path)
    st = regime_map.status(runs)
    assert st["complete_rungs"] == 1  # the top rung; one seed of D/N 14 is not the rung
    p = regime_map.pace(runs)
    done = sum(top.flops.values()) * len(regime.seeds_for("A", top.ratio, "records")) + sum(
        mid.flops.values())
    assert p["runs_done"] == st["runs"] == len(runs)
    assert p["flops_done"] == pytest.approx(done)
    assert p["flops_per_s_per_run"] == pytest.approx(1e9)
    assert p["hours_left"] == pytest.approx(p["flops_left"] / 2e9 / 3600)
    assert "~" in regime_map.pace_markdown(runs) and "CPU X" in regime_map.pace_markdown(runs)


def test_the_ladder_is_called_complete_only_with_every_seed_of_every_arm_of_every_rung(tmp_path):
    planned = [(r, arm, seed) for r in regime.rungs() for arm in r.arms
               for seed in regime.seeds_for(r.size, r.ratio, r.pair)]
    for r, arm, seed in planned:
        run = tmp_path / f"regime-{r.label}-{arm}-s{seed}-abcdef"
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"model": {"model_dim": 32}}))
        (run / "summary.json").write_text(json.dumps({
            "val_bpb": 2.0, "tokens_seen": 1, "steps": 1, "params": {"total": 1}}))
    st = regime_map.status(regime_map.runs_table(tmp_path))
    assert st["runs"] == st["of_runs"] == len(planned)
    assert regime_map.progress(st) == (f"The ladder is complete: all {len(planned)} runs, "
                                       f"{st['of_rungs']} rungs with every seed.")
    r, arm, seed = planned[-1]  # the top-up's last run
    shutil.rmtree(tmp_path / f"regime-{r.label}-{arm}-s{seed}-abcdef")
    st = regime_map.status(regime_map.runs_table(tmp_path))
    assert regime_map.progress(st) == (
        f"{len(planned) - 1} of the ladder's {len(planned)} runs are finished "
        f"({st['of_rungs'] - 1} of {st['of_rungs']} rungs with every seed).")


def test_a_runs_training_flops_come_from_its_own_files_and_equal_the_plans():
    # the committed top rung of the records' pair: each arm's FLOPs, read from its config.json
    # and summary.json (the delayed loop's steps before the switch at the loop-off cost), are
    # the plan's, and the pair's FLOPs mismatch in the gap table is read from them
    top = regime.rung("A", "records", max(regime.RUNGS["A"]))
    root = Path(__file__).resolve().parents[1] / "results" / "regime"
    runs = {}
    for arm in top.arms:
        found = sorted(root.glob(f"regime-{top.label}-{arm}-s1337-*/summary.json"))
        if not found:
            pytest.skip("the committed ladder runs are not in this checkout")
        run = found[0].parent
        cfg, summary = (json.loads((run / f).read_text()) for f in ("config.json", "summary.json"))
        runs[arm] = regime_map.run_train_flops(cfg, summary)
        assert runs[arm] == pytest.approx(top.flops[arm], rel=1e-9), arm
    assert runs["loop"] == pytest.approx(runs["flat"], rel=regime.TOLERANCE)
    assert math.isnan(regime_map.run_train_flops({"model": {"model_dim": 32}}, {"steps": 1}))
    table = regime_map.runs_table(root)
    gaps = regime_map.gap_table(table[table["rung"] == max(regime.RUNGS["A"])])
    assert (gaps["flops_mismatch"].abs() <= regime.TOLERANCE).all()

"""golf_core.stats and golf_core.flops: Student-t quantiles against table values, verdicts
recomputed from synthetic seed-paired tables with known answers, the equivalence test against
its 90%-interval reading, deterministic bootstrap, and equal-FLOPs step budgets."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from torch import nn

import benchmarks.flops as bench_flops
from golf_core import flops, stats
from golf_core.model import GPT, build_model, preset
from golf_core.stats import Claim, decide, findings_table, paired_differences

# the brief's worked example: mean -0.005, deviations (+1, -1, 0, +2, -2) x 1e-3
FIVE = [-0.004, -0.006, -0.005, -0.003, -0.007]
T_975_4 = 2.7764451


def claim(direction: int = -1, delta: float = 0.005, **kw) -> Claim:
    return Claim(kw.pop("name", "synthetic"), "Is a lower than b?", "a", "b",
                 direction=direction, delta=delta, **kw)


def tidy(diffs: list[float], base: float = 1.2, seeds: list[int] | None = None) -> pd.DataFrame:
    """A per-run table whose arm a minus arm b is `diffs`, seed by seed."""
    seeds = seeds or list(range(1, len(diffs) + 1))
    rows = [{"label": "b", "seed": s, "val_bpb": base + 0.01 * i} for i, s in enumerate(seeds)]
    rows += [{"label": "a", "seed": s, "val_bpb": base + 0.01 * i + d}
             for i, (s, d) in enumerate(zip(seeds, diffs))]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- Student t


@pytest.mark.parametrize("p, df, expected", [
    (0.975, 4, 2.7764451), (0.975, 2, 4.3026527), (0.975, 9, 2.2621572),
    (0.975, 1, 12.7062047), (0.95, 4, 2.1318468), (0.995, 30, 2.7499957),
    (0.975, 1000, 1.9623391),
])  # fmt: skip
def test_t_quantiles_match_the_printed_tables(p, df, expected):
    assert stats.t_ppf(p, df) == pytest.approx(expected, abs=5e-8)
    assert stats.t_ppf(1 - p, df) == pytest.approx(-expected, abs=5e-8)


def test_t_cdf_inverts_the_quantile_and_has_closed_forms_at_one_and_two_df():
    for df in (1, 2, 3.5, 7, 50):
        for p in (0.6, 0.9, 0.975, 0.999):
            assert stats.t_cdf(stats.t_ppf(p, df), df) == pytest.approx(p, abs=1e-12)
    for t in (-3.0, -0.5, 0.0, 1.0, 10.0):
        assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)
        assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)),
                                                  abs=1e-13)


def test_half_width_and_seeds_needed():
    sd = float(np.std(FIVE, ddof=1))
    assert stats.half_width(sd, 5) == pytest.approx(T_975_4 * sd / math.sqrt(5), rel=1e-7)
    assert math.isnan(stats.half_width(sd, 1))
    n = stats.seeds_needed(sd, 0.001)
    assert stats.half_width(sd, n) <= 0.001 < stats.half_width(sd, n - 1)


# ----------------------------------------------------------------------------- verdicts


def test_five_seed_example_matches_the_hand_computation():
    res = decide(FIVE, claim(-1))
    sd = math.sqrt(10e-6 / 4)  # sum of squared deviations / (n - 1)
    hw = T_975_4 * sd / math.sqrt(5)
    assert res["n"] == 5
    assert res["diff"] == pytest.approx(-0.005, abs=1e-15)
    assert res["sd"] == pytest.approx(sd, rel=1e-12)
    assert res["half_width"] == pytest.approx(hw, rel=1e-7)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((-0.005 - hw, -0.005 + hw), rel=1e-7)
    assert res["ci_high"] < 0
    assert res["verdict"] == "reproduced"
    assert decide(FIVE, claim(+1))["verdict"] == "opposite"
    assert math.isnan(res["boot_low"])  # n < 8: no bootstrap


def test_a_tight_zero_mean_set_is_equivalent_and_reproduces_a_published_no_difference():
    tight = [0.0005, -0.0005, 0.0003, -0.0003, 0.0]
    for direction in (-1, +1):
        res = decide(tight, claim(direction, delta=0.005))
        assert res["verdict"] == "equivalent" and res["p_tost"] < 0.05
        assert -0.005 < res["ci90_low"] and res["ci90_high"] < 0.005
    assert decide(tight, claim(0, delta=0.005))["verdict"] == "reproduced"
    # the same set against a margin it cannot resolve
    assert decide(tight, claim(-1, delta=0.0002))["verdict"] == "inconclusive"


def test_a_wide_set_is_inconclusive_and_one_seed_is_insufficient():
    wide = [0.02, -0.03, 0.01, -0.015, 0.018]
    for direction in (-1, 0, 1):
        assert decide(wide, claim(direction))["verdict"] == "inconclusive"
    one = decide([-0.01], claim(-1))
    assert one["verdict"] == "insufficient" and one["n"] == 1 and one["diff"] == -0.01
    assert math.isnan(one["ci_low"])
    assert decide([], claim(-1))["verdict"] == "insufficient"


def test_a_published_no_difference_is_opposite_when_a_clear_difference_shows():
    assert decide(FIVE, claim(0, delta=0.001))["verdict"] == "opposite"
    # a clear but tiny difference, inside the margin, still counts as no difference
    assert decide(FIVE, claim(0, delta=0.02))["verdict"] == "reproduced"


def test_identical_differences_give_a_zero_width_interval():
    assert decide([-0.002] * 3, claim(-1))["verdict"] == "reproduced"
    assert decide([0.0] * 3, claim(0))["verdict"] == "reproduced"


def test_tost_rejects_exactly_when_the_90_percent_interval_lies_inside_the_margin():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 12))
        d = rng.normal(rng.normal(0, 0.003), rng.uniform(0.0005, 0.006), n)
        res = decide(d, claim(-1, delta=0.004))
        inside = -0.004 < res["ci90_low"] and res["ci90_high"] < 0.004
        assert (res["p_tost"] < 0.05) == inside


def test_every_verdict_follows_the_stated_rule_from_the_interval_and_tost():
    rng = np.random.default_rng(1)
    for _ in range(200):
        d = rng.normal(rng.normal(0, 0.004), 0.004, int(rng.integers(2, 8)))
        for direction in (-1, 0, 1):
            res = decide(d, claim(direction, delta=0.003))
            lo, hi, eq = res["ci_low"], res["ci_high"], res["p_tost"] < 0.05
            if direction == 0:
                want = ("reproduced" if eq else "opposite" if lo > 0 or hi < 0
                        else "inconclusive")
            elif (hi < 0 and direction < 0) or (lo > 0 and direction > 0):
                want = "reproduced"
            else:
                want = ("opposite" if lo > 0 or hi < 0 else "equivalent" if eq
                        else "inconclusive")
            assert res["verdict"] == want


def test_bootstrap_is_deterministic_and_brackets_the_mean():
    d = np.random.default_rng(3).normal(-0.004, 0.002, 10)
    first, second = decide(d, claim(-1)), decide(d, claim(-1))
    assert (first["boot_low"], first["boot_high"]) == (second["boot_low"], second["boot_high"])
    assert first["boot_low"] < first["diff"] < first["boot_high"]
    assert stats.bootstrap_ci(d, seed=1) != stats.bootstrap_ci(d, seed=2)


# ----------------------------------------------------------------------------- pairing


def test_pairing_by_seed_drops_and_reports_unpaired_seeds():
    table = tidy(FIVE + [-0.001], seeds=[1, 2, 3, 4, 5, 6])
    table = table[~((table["label"] == "b") & (table["seed"] == 6))]  # 6: only in arm a
    table = pd.concat([table, pd.DataFrame([{"label": "b", "seed": 7, "val_bpb": 1.3}])])
    pairs = paired_differences(table, claim(-1))
    assert pairs["seed"].tolist() == [1, 2, 3, 4, 5]
    assert pairs["diff"].to_numpy() == pytest.approx(FIVE, abs=1e-12)
    assert pairs.attrs["dropped"] == {"only_a": [6], "only_b": [7], "missing_metric": []}
    res = decide(pairs, claim(-1))
    assert res["verdict"] == "reproduced" and res["seeds"] == [1, 2, 3, 4, 5]
    assert res["dropped"]["only_a"] == [6]


def test_pairing_is_by_seed_not_by_row_order():
    table = tidy(FIVE).sample(frac=1.0, random_state=0)
    assert paired_differences(table, claim(-1))["diff"].to_numpy() == pytest.approx(FIVE)


def test_pairing_keeps_the_claims_budget_and_seeds_and_drops_missing_metrics():
    steps, fl = tidy(FIVE).assign(budget="steps"), tidy([0.01] * 5).assign(budget="flops")
    table = pd.concat([steps, fl], ignore_index=True)
    table.loc[(table["label"] == "a") & (table["seed"] == 5) & (table["budget"] == "steps"),
              "val_bpb"] = float("nan")
    pairs = paired_differences(table, claim(-1))
    assert pairs["diff"].to_numpy() == pytest.approx(FIVE[:4])
    assert pairs.attrs["dropped"]["missing_metric"] == [("a", 5)]
    assert paired_differences(table, claim(-1, budget="flops"))["diff"].to_numpy() == \
        pytest.approx([0.01] * 5)
    assert paired_differences(table, claim(-1, seeds=(1, 2)))["seed"].tolist() == [1, 2]


def test_pairing_refuses_unknown_arms_duplicate_seeds_and_missing_columns():
    table = tidy(FIVE)
    with pytest.raises(ValueError, match="no run labelled nope"):
        paired_differences(table, Claim("x", "?", "nope", "b"))
    with pytest.raises(ValueError, match="ambiguous"):
        paired_differences(pd.concat([table, table.iloc[:1]]), claim(-1))
    with pytest.raises(ValueError, match="no 'bpb_gap' column"):
        paired_differences(table, claim(-1, metric="bpb_gap"))


def test_claims_refuse_bad_budgets_directions_margins_and_contradicting_numbers():
    with pytest.raises(ValueError, match="budget"):
        claim(budget="wallclock")
    with pytest.raises(ValueError, match="direction"):
        claim(direction=2)
    with pytest.raises(ValueError, match="delta"):
        claim(delta=0.0)
    with pytest.raises(ValueError, match="contradicts"):
        claim(-1, published={"a": 1.2, "b": 1.1})
    assert claim(+1, published={"a": 1.1894, "b": 1.1648}).published_value == \
        pytest.approx(0.0246)


# ----------------------------------------------------------------------------- findings


def test_findings_table_has_the_report_columns_and_the_rule_it_was_decided_by():
    table = pd.concat([tidy(FIVE), tidy([0.0005, -0.0005, 0.0003, -0.0003, 0.0], base=2.0)
                       .replace({"label": {"a": "c", "b": "d"}})], ignore_index=True)
    claims = [claim(-1, name="lower", published={"a": 1.0, "b": 1.1, "source": "PR #0"}),
              Claim("same", "Are c and d alike?", "c", "d", direction=0, delta=0.005)]
    out = findings_table(table, claims)
    assert tuple(out.columns) == stats.FINDINGS_COLUMNS
    assert out["verdict"].tolist() == ["reproduced", "reproduced"]
    assert out["n"].tolist() == [5, 5]
    assert out.loc[0, "diff"] == pytest.approx(-0.005)
    assert out.loc[0, "published_value"] == pytest.approx(-0.1)
    assert out.loc[0, "published_source"] == "PR #0"
    assert out.loc[0, "rule"] == claims[0].rule == stats.verdict_rule(claims[0])
    assert "lies below 0" in out.loc[0, "rule"] and "±δ = 0.005" in out.loc[0, "rule"]
    wide = findings_table(table, claims, details=True)
    assert wide.loc[0, "arm_a"] == "a" and wide.loc[0, "seeds"] == [1, 2, 3, 4, 5]
    assert wide.loc[0, "mean_a"] - wide.loc[0, "mean_b"] == pytest.approx(-0.005)


def test_the_published_claims_name_runs_of_the_matrix_and_their_sources():
    from golf_core.experiments import _MATRIX

    assert {c.name for c in stats.CLAIMS} and len({c.name for c in stats.CLAIMS}) == \
        len(stats.CLAIMS)
    for c in stats.CLAIMS:
        assert c.arm_a in _MATRIX and c.arm_b in _MATRIX
        assert c.published["source"] and c.question
    assert "excludes 0 on the published side" in stats.RULE


# ----------------------------------------------------------------------------- FLOPs budgets

TINY = dict(model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2, vocab_size=64)


def test_there_is_one_flop_count_and_the_benchmarks_use_it():
    assert bench_flops.matmul_flops_per_token is flops.flops_per_token
    assert bench_flops.matmul_params_per_token is flops.matmul_params_per_token
    assert stats.flops_per_token is flops.flops_per_token
    cfg = preset("flat", num_layers=2, **TINY)
    assert flops.flops_per_token(GPT(cfg), 16) == flops.flops_per_token(cfg, 16) == 110_592


class _Family(nn.Module):
    """What a published family offers the FLOP count (golf_core/model/families.py)."""

    def __init__(self, n_matmul: int, attn: int, d: int) -> None:
        super().__init__()
        self.cfg = type("Cfg", (), {"model_dim": d})()
        self._n, self._attn = n_matmul, attn

    def matmul_params_per_token(self) -> int:
        return self._n

    def attention_layers(self) -> int:
        return self._attn


def test_published_families_are_counted_by_their_own_methods():
    assert flops.flops_per_token(_Family(1000, 3, 8), 10) == 6 * 1000 + 12 * 3 * 8 * 10


def test_a_model_with_twice_the_flops_per_token_gets_half_the_steps():
    steps = flops.equal_flops_steps({"ref": 1.0e6, "double": 2.0e6, "third": 3.0e6}, 1000,
                                    seq_len=64, tokens_per_step=4096)
    assert steps == {"ref": 1000, "double": 500, "third": 333}
    assert flops.equal_flops_steps({"x": 2.0e6, "ref": 1.0e6}, 1000, seq_len=64,
                                   tokens_per_step=1, reference="ref")["x"] == 500
    budget = flops.training_flops(1.0e6, 64, 4096, 1000)
    assert flops.steps_for_flops(2.0e6, 64, 4096, budget) == 500
    with pytest.raises(ValueError, match="less than one step"):
        flops.steps_for_flops(2.0e6, 64, 4096, 1.0e6)
    with pytest.raises(ValueError, match="reference arm"):
        flops.equal_flops_steps({"a": 1.0}, 10, seq_len=1, tokens_per_step=1, reference="b")


def test_equal_flops_steps_of_real_models_never_exceed_the_reference_budget():
    models = {"flat": GPT(preset("flat", num_layers=2, **TINY)),
              "looped": build_model(preset("pr54", num_unique_layers=2, num_recurrent_passes=3,
                                           **TINY))}
    steps = flops.equal_flops_steps(models, 300, seq_len=16, tokens_per_step=256)
    assert steps["flat"] == 300
    budget = flops.training_flops(models["flat"], 16, 256, 300)
    spent = flops.training_flops(models["looped"], 16, 256, steps["looped"])
    assert spent <= budget < flops.training_flops(models["looped"], 16, 256, steps["looped"] + 1)
    assert steps["looped"] < 300  # five virtual layers cost more than two


def test_an_interaction_claim_decides_the_difference_of_two_paired_contrasts():
    # a - b = -0.010 and c - d = +0.004 per seed (+ seed noise shared within each pair):
    # the interaction (a - b) - (c - d) is -0.014 on every seed
    rows = []
    for i, seed in enumerate((1, 2, 3, 4, 5)):
        noise = 0.002 * (i - 2)
        rows += [{"label": "a", "seed": seed, "val_bpb": 2.0 + noise - 0.010},
                 {"label": "b", "seed": seed, "val_bpb": 2.0 + noise},
                 {"label": "c", "seed": seed, "val_bpb": 2.1 - noise + 0.004},
                 {"label": "d", "seed": seed, "val_bpb": 2.1 - noise}]
    rows.append({"label": "c", "seed": 9, "val_bpb": 2.0})  # unpaired: dropped
    x = Claim("x", "Does the interaction go negative?", "a", "b", direction=-1, delta=0.002,
              minus=("c", "d"))
    pairs = paired_differences(pd.DataFrame(rows), x)
    assert pairs["seed"].tolist() == [1, 2, 3, 4, 5]
    assert pairs["a"].to_numpy() == pytest.approx([-0.010] * 5)
    assert pairs["b"].to_numpy() == pytest.approx([0.004] * 5)
    res = decide(pairs, x)
    assert res["diff"] == pytest.approx(-0.014) and res["verdict"] == "reproduced"
    assert "(val_bpb[a] - val_bpb[b]) - (val_bpb[c] - val_bpb[d])" in x.rule
    with pytest.raises(ValueError, match="no run labelled e"):
        paired_differences(pd.DataFrame(rows), Claim("y", "?", "a", "b", minus=("c", "e")))

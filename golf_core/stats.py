"""The statistics behind the writeup: each published claim as data, tested on seed-paired runs.

A `Claim` names two arms (run labels of golf_core.experiments), the metric, the budget the
arms were trained under (equal steps, or equal training FLOPs: golf_core.flops, the
deterministic stand-in for PR #363's equal wallclock), the published sign of the difference,
an equivalence margin delta and the published numbers with their source. `CLAIMS` lists the
published claims the report checks.

From a tidy per-run table (one row per run: `label` (or `arm`), `seed`, metric columns,
optionally `budget`), `paired_differences` pairs the arms by seed (same init seed and data
order), `decide` computes the mean paired difference, its Student-t interval, the two
one-sided tests (TOST) at +-delta and the verdict of the stated rule (`RULE`,
`verdict_rule(claim)`), and `findings_table` gives one row per claim for the report.

No scipy: the Student-t distribution comes from the regularized incomplete beta function
(`t_cdf`, `t_ppf`; Numerical Recipes section 6.4's continued fraction).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from golf_core.flops import equal_flops_steps, flops_per_token, steps_for_flops, training_flops

__all__ = [
    "BUDGETS", "CLAIMS", "FINDINGS_COLUMNS", "RULE", "VERDICTS", "Claim", "bootstrap_ci",
    "decide", "equal_flops_steps", "findings_table", "flops_per_token", "half_width",
    "paired_differences", "rule_text", "seeds_needed", "steps_for_flops", "t_cdf", "t_ppf",
    "training_flops", "verdict_rule",
]  # fmt: skip

BUDGETS = ("steps", "flops")
VERDICTS = ("reproduced", "opposite", "equivalent", "inconclusive", "insufficient")
FINDINGS_COLUMNS = ("claim", "question", "metric", "budget", "n", "diff", "ci_low", "ci_high",
                    "half_width", "delta", "verdict", "published_value", "published_source",
                    "rule")
BOOTSTRAP_MIN_N = 8  # below this a resampled mean takes too few distinct values to trust
_BUDGET_TEXT = {"steps": "equal training steps", "flops": "equal training FLOPs"}


# ----------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class Claim:
    """One published claim: is `metric` of `arm_a` minus that of `arm_b` on the side
    `direction` says (-1: a lower, +1: a higher, 0: no difference)?

    `published`: what the source reports, keys `a`, `b` (the metric of each arm), `value`
    (a - b; derived from `a` and `b` when absent), `units`, `source` (where it is written,
    e.g. "PR #363 README table"), `text` (the claim in the source's words). `delta`: the
    equivalence margin in the metric's units. `seeds`: only these seeds (None: every seed
    both arms have)."""

    name: str
    question: str
    arm_a: str
    arm_b: str
    metric: str = "val_bpb"
    budget: str = "steps"
    direction: int = -1
    delta: float = 0.005
    published: Mapping[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] | None = None
    # an interaction: d = (a - b) - (c - d) per seed, with `minus` = (c, d) (a 2x2 design)
    minus: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise ValueError(f"claim {self.name!r}: budget {self.budget!r} is not one of "
                             f"{', '.join(BUDGETS)}")
        if self.direction not in (-1, 0, 1):
            raise ValueError(f"claim {self.name!r}: direction must be -1, 0 or +1, "
                             f"got {self.direction!r}")
        if not self.delta > 0:
            raise ValueError(f"claim {self.name!r}: delta must be > 0, got {self.delta!r}")
        if self.arm_a == self.arm_b:
            raise ValueError(f"claim {self.name!r}: both arms are {self.arm_a!r}")
        value = self.published_value
        if self.direction and value == value and value and np.sign(value) != self.direction:
            raise ValueError(f"claim {self.name!r}: published a - b = {value:+g} contradicts "
                             f"direction {self.direction:+d}")

    @property
    def published_value(self) -> float:
        """The published a - b (NaN when the source gives no numbers)."""
        p = self.published
        if p.get("value") is not None:
            return float(p["value"])
        if p.get("a") is not None and p.get("b") is not None:
            return float(p["a"]) - float(p["b"])
        return float("nan")

    @property
    def rule(self) -> str:
        """The verdict rule of this claim, as the report prints it (`verdict_rule`)."""
        return verdict_rule(self)


def _pr54(text: str) -> dict[str, Any]:
    return {"source": "PR #54 (its author's closing remark)", "units": "bpb", "text": text}


def _pr363(text: str) -> dict[str, Any]:
    return {"source": "PR #363", "units": "bpb", "text": text}


# The published claims, each under the budget it was made under and, for
# PR #363's architecture comparisons (made at equal wallclock), also at equal steps. Arms of
# the same architecture cost the same FLOPs per step, so equal steps is equal FLOPs for them.
CLAIMS: tuple[Claim, ...] = (
    Claim("3x3-vs-2x5/steps", "Does the 3x3 loop beat the 2x5 loop at equal steps?",
          "pr363-3x3", "pr363-2x5", budget="steps", direction=-1, delta=0.005,
          published=_pr363("3x3 better than 2x5 (PR #363's table; numbers not transcribed)")),
    Claim("3x3-vs-2x5/flops", "Does the 3x3 loop beat the 2x5 loop at equal training FLOPs?",
          "pr363-3x3", "pr363-2x5", budget="flops", direction=-1, delta=0.005,
          published=_pr363("3x3 better than 2x5 (PR #363's table; numbers not transcribed)")),
    Claim("looped-vs-flat/steps", "Does the 3x3 loop trail an 11-layer flat stack at equal "
          "steps?", "pr363-3x3", "pr363-flat", budget="steps", direction=+1, delta=0.005,
          published={**_pr363("looped trails flat by ~0.025 bpb at equal wallclock, 8xH100"),
                     "a": 1.1894, "b": 1.1648}),
    Claim("looped-vs-flat/flops", "Does the 3x3 loop trail an 11-layer flat stack at equal "
          "training FLOPs?", "pr363-3x3", "pr363-flat", budget="flops", direction=+1, delta=0.005,
          published={**_pr363("looped trails flat by ~0.025 bpb at equal wallclock, 8xH100"),
                     "a": 1.1894, "b": 1.1648}),
    # PR #363's quantization finding, in its metric: the post-export bpb gap, per precision
    # (every matrix quantized, uniform bits: golf_core.train's export_gap_bits). Its noise is
    # one int8 step and its export keeps the shared blocks at int8: the published numbers
    # belong to the int8 row; the int6 / int5 rows match the noise to their precision.
    *(Claim(f"looped-vs-flat-gap/int{b}", f"Is the int{b} post-export gap of the 3x3 loop "
            "larger than the flat stack's (equal training FLOPs)?", "pr363-3x3", "pr363-flat",
            metric=f"gap_int{b}", budget="flops", direction=+1, delta=0.001,
            published=_pr363("recurrence amplifies quantization error (~900x over 3 cycles; "
                             "its script: 'Recurrent models amplify quantization error')"))
      for b in (8, 6, 5)),
    Claim("noisy-qat-gap/int8", "Does noisy QAT (one int8 step) on the loop core cut its "
          "int8 post-export gap?", "pr363-3x3-qat-int8", "pr363-3x3", metric="gap_int8",
          budget="steps", direction=-1, delta=0.001,
          published={**_pr363("noisy QAT (one int8 step, loop core) cut the gap from 0.37 to "
                              "0.002 bpb"), "a": 0.002, "b": 0.37}),
    Claim("noisy-qat-gap/int6", "Does noisy QAT matched to int6 on the loop core cut its int6 "
          "post-export gap?", "pr363-3x3-noisy-qat", "pr363-3x3", metric="gap_int6",
          budget="steps", direction=-1, delta=0.001,
          published=_pr363("shown for one int8 step (0.37 -> 0.002 bpb); int6 not published")),
    Claim("noisy-qat-gap/int5", "Does noisy QAT matched to int5 on the loop core cut its int5 "
          "post-export gap?", "pr363-3x3-qat-int5", "pr363-3x3", metric="gap_int5",
          budget="steps", direction=-1, delta=0.001,
          published=_pr363("shown for one int8 step (0.37 -> 0.002 bpb); int5 not published")),
    # The stack question: PR #54's author closed it saying recurrence loses standalone but
    # wins inside a full stack (PR #1204's extras); a 2x2 at equal training FLOPs
    Claim("recurrence-in-stack", "With the record's extras, does mini recurrence beat the "
          "same stack without it at equal training FLOPs?", "pr1204-always-on",
          "pr1204-norecur", budget="flops", direction=-1, delta=0.002,
          published={**_pr54("recurrence wins inside a full stack")}),
    Claim("recurrence-standalone", "Without the extras, does mini recurrence lose to the "
          "same model without it at equal training FLOPs?", "pr1204-bare",
          "pr1204-bare-norecur", budget="flops", direction=+1, delta=0.002,
          published={**_pr54("recurrence loses standalone")}),
    Claim("recurrence-x-extras", "Do the extras make mini recurrence pay more (the 2x2's "
          "interaction)?", "pr1204-always-on", "pr1204-norecur", budget="flops",
          direction=-1, delta=0.002, minus=("pr1204-bare", "pr1204-bare-norecur"),
          published={**_pr54("loses standalone, wins in the stack: a negative interaction")}),
    # delta = the published effect: "equivalent" then says ours is smaller than PR #1204's
    Claim("delayed-vs-always-on", "Does delaying mini recurrence beat running it from step 0?",
          "pr1204", "pr1204-always-on", budget="steps", direction=-1,
          delta=0.001, published={"source": "PR #1204 (the record)",
                                  "units": "bpb", "text": "delayed 1.1153 vs always-on 1.1163",
                                  "a": 1.1153, "b": 1.1163}),
)


# ----------------------------------------------------------------------------- the rule


def _pct(level: float) -> str:
    return f"{100 * level:g}%"


def rule_text(alpha: float = 0.05) -> str:
    """The verdict rule every claim follows, as one paragraph for the report."""
    lvl, lvl2 = _pct(1 - alpha), _pct(1 - 2 * alpha)
    return (
        "Both arms of a claim train with the same seeds (same initialisation and data order). "
        "Per seed, d = metric(a) - metric(b); n counts the seeds both arms have. The "
        f"{lvl} confidence interval of the mean d is the Student-t interval mean ± "
        f"t(1-α/2, n-1)·sd/√n (α = {alpha:g}). Verdict, in this order: reproduced if the "
        "interval excludes 0 on the published side; opposite if it excludes 0 on the other "
        f"side; equivalent if both one-sided t-tests against ±δ reject at α (the {lvl2} "
        "interval lies inside ±δ; δ declared per claim); otherwise inconclusive. A published "
        "'no difference' is reproduced when equivalent and opposite when not equivalent but "
        f"the {lvl} interval excludes 0. Fewer than two paired seeds: insufficient."
    )


RULE = rule_text()


def verdict_rule(claim: Claim, alpha: float = 0.05) -> str:
    """The rule as it applies to `claim`: one sentence naming its arms, metric, budget and δ."""
    lvl, lvl2 = _pct(1 - alpha), _pct(1 - 2 * alpha)
    d = f"d = {claim.metric}[{claim.arm_a}] - {claim.metric}[{claim.arm_b}]"
    if claim.minus is not None:
        c, e = claim.minus
        d = f"d = ({d[4:]}) - ({claim.metric}[{c}] - {claim.metric}[{e}])"
    d += f" per seed at {_BUDGET_TEXT[claim.budget]}"
    tost = (f"both one-sided t-tests at ±δ = {claim.delta:g} reject at α = {alpha:g} "
            f"(the {lvl2} interval lies inside ±δ)")
    tail = "; fewer than 2 paired seeds: insufficient."
    if claim.direction == 0:
        return (f"{d}; published: no difference. Reproduced if {tost}; opposite if not and "
                f"the {lvl} t-interval excludes 0; otherwise inconclusive{tail}")
    side, other = ("below", "above") if claim.direction < 0 else ("above", "below")
    word = "lower" if claim.direction < 0 else "higher"
    return (f"{d}; reproduced if the {lvl} t-interval of the mean lies {side} 0 (published: "
            f"{claim.arm_a} {word}), opposite if it lies {other} 0, equivalent if {tost}, "
            f"otherwise inconclusive{tail}")


# ----------------------------------------------------------------------------- Student t


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                    -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_bt = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
              + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_bt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_bt) * _betacf(b, a, 1.0 - x) / b


def _t_tail(t: float, df: float) -> float:
    """P(T > t) for t >= 0."""
    return 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if t != t:
        return float("nan")
    return 1.0 - _t_tail(t, df) if t >= 0 else _t_tail(-t, df)


def t_ppf(p: float, df: float) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (bisection on the tail
    probability, to ~1e-12 relative)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    target = 1.0 - p  # solve P(T > t) = 1 - p: tail probabilities keep their precision
    if target == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while _t_tail(hi, df) > target:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_tail(mid, df) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return 0.5 * (lo + hi)


def half_width(sd: float, n: int, alpha: float = 0.05) -> float:
    """Half the width of the (1 - alpha) t-interval of a mean of `n` values with SD `sd`."""
    if n < 2:
        return float("nan")
    return t_ppf(1.0 - alpha / 2.0, n - 1) * sd / math.sqrt(n)


def seeds_needed(sd: float, target: float, alpha: float = 0.05, max_n: int = 1000) -> int:
    """The fewest seeds whose t-interval half-width is at most `target` for differences with
    SD `sd` (how many seeds a claim needs to resolve an effect of that size)."""
    for n in range(2, max_n + 1):
        if half_width(sd, n, alpha) <= target:
            return n
    raise ValueError(f"more than {max_n} seeds needed for half-width {target:g} at sd {sd:g}")


def bootstrap_ci(values: Sequence[float], alpha: float = 0.05, *, resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seeded: the same values give the same
    interval)."""
    x = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)  # (resamples,)
    lo, hi = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- pairing


def paired_differences(table: pd.DataFrame, claim: Claim) -> pd.DataFrame:
    """One row per seed both arms have: `seed`, `a`, `b`, `diff` (= a - b) of `claim.metric`,
    and `<col>_a` / `<col>_b` for `steps`, `train_seconds`, `flops` where the table has them.

    `table`: one row per run with `label` (or `arm`), `seed`, the metric and optionally
    `budget` ("steps" / "flops"; a table without it holds equal-steps runs). Seeds present in
    only one arm, or whose metric is NaN, are dropped and listed in
    `.attrs["dropped"]` ({"only_a", "only_b", "missing_metric"}). An arm the table never
    names raises ValueError (a typo); one that is only under another budget gives no rows.

    An interaction claim (`claim.minus` = (c, d)) pairs a - b and c - d by seed: `a` and `b`
    are then those two contrasts and `diff` their difference."""
    if claim.minus is not None:
        import dataclasses

        first = paired_differences(table, dataclasses.replace(claim, minus=None))
        second = paired_differences(table, dataclasses.replace(
            claim, arm_a=claim.minus[0], arm_b=claim.minus[1], minus=None))
        out = first[["seed", "diff"]].merge(second[["seed", "diff"]], on="seed",
                                             suffixes=("_ab", "_cd"))
        out = out.rename(columns={"diff_ab": "a", "diff_cd": "b"})
        out["diff"] = out["a"] - out["b"]
        out.attrs["claim"] = claim.name
        out.attrs["dropped"] = {"only_ab": sorted(set(first["seed"]) - set(out["seed"])),
                                "only_cd": sorted(set(second["seed"]) - set(out["seed"]))}
        return out
    arm_col = "arm" if "arm" in table.columns else "label"
    for col in (arm_col, "seed", claim.metric):
        if col not in table.columns:
            raise ValueError(f"claim {claim.name!r}: the run table has no {col!r} column "
                             f"(columns: {', '.join(map(str, table.columns))})")
    known = set(table[arm_col])
    unknown = [arm for arm in (claim.arm_a, claim.arm_b) if arm not in known]
    if unknown:
        raise ValueError(f"claim {claim.name!r}: no run labelled {', '.join(unknown)} in the "
                         f"table (labels: {', '.join(sorted(map(str, known)))})")
    budget = table["budget"] if "budget" in table.columns else pd.Series("steps", table.index)
    rows = table[budget == claim.budget]
    if claim.seeds is not None:
        rows = rows[rows["seed"].isin(claim.seeds)]
    extra = [c for c in ("steps", "train_seconds", "flops") if c in table.columns]
    arms, missing = {}, []
    for key, arm in (("a", claim.arm_a), ("b", claim.arm_b)):
        r = rows[rows[arm_col] == arm]
        dup = sorted(r.loc[r["seed"].duplicated(), "seed"].unique().tolist())
        if dup:
            raise ValueError(f"claim {claim.name!r}: arm {arm!r} has several runs with seed(s) "
                             f"{dup} under the {claim.budget} budget; pairing is ambiguous")
        missing += [(arm, int(s)) for s in r.loc[r[claim.metric].isna(), "seed"]]
        r = r[r[claim.metric].notna()]
        arms[key] = r.set_index("seed")[[claim.metric, *extra]].rename(
            columns={claim.metric: key, **{c: f"{c}_{key}" for c in extra}})
    a, b = arms["a"], arms["b"]
    out = a.join(b, how="inner").sort_index().reset_index()
    out["diff"] = out["a"] - out["b"]
    out = out[["seed", "a", "b", "diff", *[f"{c}_{k}" for c in extra for k in "ab"]]]
    out.attrs["claim"] = claim.name
    out.attrs["dropped"] = {
        "only_a": sorted(int(s) for s in a.index.difference(b.index)),
        "only_b": sorted(int(s) for s in b.index.difference(a.index)),
        "missing_metric": missing,
    }
    return out


# ----------------------------------------------------------------------------- the verdict


def decide(diffs: pd.DataFrame | Sequence[float], claim: Claim, alpha: float = 0.05, *,
           resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """The statistics and verdict of `claim` from its paired differences (`paired_differences`'
    frame or the differences themselves).

    Returns n, diff (mean), sd, se, ci_low / ci_high (the (1 - alpha) t-interval),
    half_width, ci90_low / ci90_high (the (1 - 2 alpha) interval the equivalence test uses),
    p_lower / p_upper (one-sided tests of H0: mean <= -delta and mean >= +delta), p_tost (the
    larger), boot_low / boot_high (seeded percentile bootstrap, n >= 8, else NaN), delta,
    verdict (`VERDICTS`, following `verdict_rule(claim, alpha)`), seeds and dropped."""
    frame = diffs if isinstance(diffs, pd.DataFrame) else None
    d = np.asarray(frame["diff"] if frame is not None else diffs, dtype=np.float64)
    n = len(d)
    nan = float("nan")
    out: dict[str, Any] = dict.fromkeys(
        ("diff", "sd", "se", "ci_low", "ci_high", "half_width", "ci90_low", "ci90_high",
         "p_lower", "p_upper", "p_tost", "boot_low", "boot_high"), nan)
    out.update(n=n, delta=claim.delta, verdict="insufficient",
               seeds=[int(s) for s in frame["seed"]] if frame is not None else [],
               dropped=dict(frame.attrs.get("dropped", {})) if frame is not None else {})
    if n:
        out["diff"] = float(d.mean())
    if n < 2:
        return out
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    se, df = sd / math.sqrt(n), n - 1
    hw, hw90 = t_ppf(1 - alpha / 2, df) * se, t_ppf(1 - alpha, df) * se
    p_lower = 1.0 - t_cdf(_ratio(mean + claim.delta, se), df)  # H0: mean <= -delta
    p_upper = t_cdf(_ratio(mean - claim.delta, se), df)  # H0: mean >= +delta
    out.update(sd=sd, se=se, ci_low=mean - hw, ci_high=mean + hw, half_width=hw,
               ci90_low=mean - hw90, ci90_high=mean + hw90, p_lower=p_lower,
               p_upper=p_upper, p_tost=max(p_lower, p_upper))
    if n >= BOOTSTRAP_MIN_N:
        out["boot_low"], out["boot_high"] = bootstrap_ci(d, alpha, resamples=resamples,
                                                         seed=seed)
    out["verdict"] = _verdict(out["ci_low"], out["ci_high"], out["p_tost"] < alpha,
                              claim.direction)
    return out


def _ratio(num: float, se: float) -> float:
    """num / se, with se = 0 (identical differences) giving +-inf, or 0 when num is 0 too."""
    if se > 0:
        return num / se
    return 0.0 if num == 0 else math.copysign(math.inf, num)


def _verdict(ci_low: float, ci_high: float, equivalent: bool, direction: int) -> str:
    """The stated rule (`verdict_rule`), in its order."""
    below, above = ci_high < 0, ci_low > 0
    if direction == 0:
        if equivalent:
            return "reproduced"
        return "opposite" if below or above else "inconclusive"
    if (below and direction < 0) or (above and direction > 0):
        return "reproduced"
    if below or above:
        return "opposite"
    return "equivalent" if equivalent else "inconclusive"


# ----------------------------------------------------------------------------- the table


def findings_table(table: pd.DataFrame, claims: Sequence[Claim] = CLAIMS, *,
                   alpha: float = 0.05, details: bool = False) -> pd.DataFrame:
    """One row per claim: `FINDINGS_COLUMNS` (claim, question, metric, budget, n, diff,
    ci_low, ci_high, half_width, delta, verdict, published_value (a - b), published_source,
    rule). `details` appends arm_a, arm_b, direction, mean_a, mean_b, sd, ci90_low, ci90_high,
    p_tost, boot_low, boot_high, seeds, dropped, published_a, published_b, published_text and
    the mean steps / train_seconds of each arm where the table has them."""
    rows = []
    for claim in claims:
        pairs = paired_differences(table, claim)
        res = decide(pairs, claim, alpha)
        pub = claim.published
        row = {"claim": claim.name, "question": claim.question, "metric": claim.metric,
               "budget": claim.budget, "n": res["n"], "diff": res["diff"],
               "ci_low": res["ci_low"], "ci_high": res["ci_high"],
               "half_width": res["half_width"], "delta": claim.delta,
               "verdict": res["verdict"], "published_value": claim.published_value,
               "published_source": str(pub.get("source", "")),
               "rule": verdict_rule(claim, alpha)}
        if details:
            row.update(
                arm_a=claim.arm_a, arm_b=claim.arm_b, minus=claim.minus,
                direction=claim.direction,
                mean_a=_mean(pairs["a"]), mean_b=_mean(pairs["b"]), sd=res["sd"],
                ci90_low=res["ci90_low"], ci90_high=res["ci90_high"], p_tost=res["p_tost"],
                boot_low=res["boot_low"], boot_high=res["boot_high"], seeds=res["seeds"],
                dropped=res["dropped"], published_a=_float(pub.get("a")),
                published_b=_float(pub.get("b")), published_text=str(pub.get("text", "")),
                **{f"{col}_{k}": _mean(pairs[f"{col}_{k}"]) for col in ("steps",
                   "train_seconds") for k in "ab" if f"{col}_{k}" in pairs})
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else list(FINDINGS_COLUMNS))


def _mean(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else float("nan")


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)

"""The regime map: what the ladder's finished runs say (golf_core/regime.py lays them out).

Reads every finished run under results/regime/ (its `config.json` and `summary.json`), pairs
the looped and flat arms of a rung by seed, and gives

* `runs_table`: one row per run (size, pair, rung, arm, seed, val_bpb, the int6 roundtrip,
  stored parameters, artifact bytes, tokens, tokens per non-embedding parameter, epochs);
* `gap_table`: per (size, pair, rung), the paired gap loop - flat in val_bpb and after the
  int6 roundtrip, with its 95% Student-t interval over seeds (golf_core.stats);
* `crossover`: per (size, pair), a least-squares line gap = a + b ln(D/N) through every seed's
  paired gap, the D/N where it crosses zero, and a bootstrap 95% interval (seeds resampled
  within each rung); where the line does not reach zero inside the measured range, a bound
  ("no crossover below X") instead of an extrapolated number;
* `law_crossover`: the D/N at which RESEARCH's inference from a looped scaling law (Chinchilla's
  constants with the looped-LM exponent phi) says one more loop starts to pay, for comparison.

A negative gap means the looped model is better (lower bits per byte).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from golf_core import paths, regime, stats
from golf_core.config import ModelConfig, TrainConfig, from_dict
from golf_core.data import read_shard
from golf_core.experiments import dataset_dir
from golf_core.trainer import recurrence_start

NAME = re.compile(r"^regime-(?P<size>[A-Z])-(?P<pair>[a-z0-9]+)-r(?P<rung>[0-9.]+)-"
                  r"(?P<arm>loop|flat|always)-s(?P<seed>\d+)-[0-9a-f]{6}$")
METRICS = {"val_bpb": "val_bpb", "roundtrip_val_bpb": "int6 roundtrip"}

# Chinchilla's fit (Hoffmann et al. 2022) and the looped-LM exponent phi (Schwethelm et al.
# 2026, arXiv 2604.21106): a parameter reused r times is worth r^phi unique ones.
LAW = {"A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28, "phi": 0.46}
# Where the records sit: PR #1394 (35.9M parameters, ~3.9B tokens, ~109 tokens per parameter);
# PR #1855 ~3.9B tokens as well (openai/parameter-golf READMEs and logs).
RECORDS = {"params": 35.9e6, "tokens": 3.9e9}


def results_root() -> Path:
    return paths.project_root() / "results" / "regime"


@functools.lru_cache(maxsize=64)
def _flops_per_token(model_json: str, seq_len: int) -> tuple[float, float]:
    """`regime.loop_flops_per_token` of a stored model config, cached: a ladder has a handful
    of distinct models over its ~200 runs."""
    mcfg = from_dict(ModelConfig, json.loads(model_json), source="model")
    return regime.loop_flops_per_token(mcfg, seq_len)


def run_train_flops(config: dict, summary: dict, source: str = "config.json") -> float:
    """The training FLOPs a finished run spent, from its own config.json and summary.json:
    its tokens a step times its steps, those before the loop switches on (the trainer's
    `recurrence_start`) at the loop-off cost. NaN where the config has no training section."""
    if not config.get("train") or not summary.get("steps"):
        return float("nan")
    mcfg = from_dict(ModelConfig, config.get("model", {}), source=source)
    tcfg = from_dict(TrainConfig, config["train"], source=source)
    on, off = _flops_per_token(json.dumps(config.get("model", {}), sort_keys=True),
                               tcfg.train_seq_len)
    steps = int(summary["steps"])
    start = min(steps, recurrence_start(mcfg, tcfg) or 0)
    return summary["tokens_seen"] / steps * (start * off + (steps - start) * on)


def runs_table(root: str | Path | None = None) -> pd.DataFrame:
    """One row per finished ladder run under `root` (default results/regime/)."""
    root = Path(root) if root is not None else results_root()
    rows = []
    for run in sorted(root.glob("regime-*")) if root.is_dir() else []:
        m = NAME.match(run.name)
        if not m or not (run / "summary.json").is_file():
            continue
        summary = json.loads((run / "summary.json").read_text())
        cfg = json.loads((run / "config.json").read_text())
        env = json.loads((run / "env.json").read_text()) if (run / "env.json").is_file() else {}
        params = summary.get("params", {})
        rows.append({
            "run": run.name, "size": m["size"], "pair": m["pair"], "rung": float(m["rung"]),
            "arm": m["arm"], "seed": int(m["seed"]),
            "width": cfg["model"]["model_dim"], "val_bpb": summary["val_bpb"],
            "roundtrip_val_bpb": summary.get("roundtrip_val_bpb", float("nan")),
            "params": params.get("total", float("nan")),
            "artifact_bytes": summary.get("artifact_bytes", float("nan")),
            "tokens": summary["tokens_seen"], "steps": summary["steps"],
            "train_flops": run_train_flops(cfg, summary, str(run / "config.json")),
            "train_seconds": summary.get("train_seconds", float("nan")),
            "started": env.get("started", ""), "cpu": env.get("device_name", ""),
        })  # fmt: skip
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    facts = plan_facts()
    table["non_embedding"] = [facts[(s, p, a)]["non_embedding"]
                              for s, p, a in zip(table["size"], table["pair"], table["arm"])]
    table["tokens_per_param"] = table["tokens"] / table["non_embedding"]
    corpus = corpus_train_tokens()
    table["epochs"] = table["tokens"] / corpus if corpus else float("nan")
    return table


def plan_facts() -> dict[tuple[str, str, str], dict[str, float]]:
    """(size, pair, arm) -> the plan's parameters and FLOPs per token (golf_core.regime)."""
    out = {}
    for size, ratios in regime.RUNGS.items():
        for pair, sizes in regime.PAIRS.items():
            if size in sizes:
                r = regime.rung(size, pair, ratios[-1])  # the top rung has every arm
                out.update({(size, pair, arm): r.facts[arm] for arm in r.arms})
    return out


def corpus_train_tokens() -> int:
    """Tokens in the prepared default corpus's train shards (0 where it is not prepared)."""
    shards = sorted(Path(dataset_dir(regime.SCALE)).glob("*_train_*.bin"))
    return sum(int(read_shard(p).numel()) for p in shards)


def _mean_and_half_width(diffs: pd.Series, alpha: float) -> tuple[int, float, float]:
    """Seeds, mean paired difference and its Student-t half-width (NaN below 2 seeds)."""
    n = len(diffs)
    mean = float(diffs.mean()) if n else float("nan")
    hw = stats.half_width(float(diffs.std(ddof=1)), n, alpha) if n > 1 else float("nan")
    return n, mean, hw


def gap_table(table: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per (size, pair, rung) and metric: the paired gap loop - flat over seeds, with its
    Student-t interval, the flat arm's achieved D / N and the loop arm's epochs."""
    cols = ["size", "pair", "rung", "metric", "n", "gap", "ci_low", "ci_high", "half_width",
            "flat_tokens_per_param", "max_epochs", "params_mismatch", "flops_mismatch"]
    if table.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (size, pair, rung), g in table.groupby(["size", "pair", "rung"], sort=True):
        wide = g.pivot_table(index="seed", columns="arm", values=list(METRICS))
        for metric, label in METRICS.items():
            if metric not in wide or not {"loop", "flat"} <= set(wide[metric].columns):
                continue
            diffs = (wide[metric]["loop"] - wide[metric]["flat"]).dropna()
            n, mean, hw = _mean_and_half_width(diffs, alpha)
            flat = g[g["arm"] == "flat"]
            loop = g[g["arm"] == "loop"]
            rows.append({
                "size": size, "pair": pair, "rung": rung, "metric": label, "n": n,
                "gap": mean, "ci_low": mean - hw, "ci_high": mean + hw, "half_width": hw,
                "flat_tokens_per_param": float(flat["tokens_per_param"].mean()),
                "max_epochs": float(g["epochs"].max()),
                "params_mismatch": float(loop["params"].mean() / flat["params"].mean() - 1),
                "flops_mismatch": float(loop["train_flops"].mean() / flat["train_flops"].mean()
                                        - 1),
            })  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def delayed_vs_always(table: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Where the ladder has an always-on arm: per (size, rung) and metric, the paired
    difference delayed loop - always-on loop over seeds with its Student-t interval (below
    zero: delaying the loop, as the records do, is better)."""
    cols = ["size", "pair", "rung", "metric", "n", "diff", "ci_low", "ci_high",
            "flat_tokens_per_param"]
    rows = []
    have = table[table["arm"] == "always"] if not table.empty else table
    for (size, pair, rung), _ in (have.groupby(["size", "pair", "rung"]) if len(have) else []):
        g = table[(table["size"] == size) & (table["pair"] == pair) & (table["rung"] == rung)]
        wide = g.pivot_table(index="seed", columns="arm", values=list(METRICS))
        for metric, label in METRICS.items():
            diffs = (wide[metric]["loop"] - wide[metric]["always"]).dropna() if {
                "loop", "always"} <= set(wide[metric].columns) else pd.Series(dtype=float)
            n, mean, hw = _mean_and_half_width(diffs, alpha)
            flat = g[g["arm"] == "flat"]["tokens_per_param"]
            rows.append({"size": size, "pair": pair, "rung": rung, "metric": label, "n": n,
                         "diff": mean, "ci_low": mean - hw, "ci_high": mean + hw,
                         "flat_tokens_per_param": float(flat.mean()) if len(flat) else rung})
    return pd.DataFrame(rows, columns=cols)


def _paired(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """(x = ln of the flat arm's D/N, gap, rung) per (rung, seed) of one size and pair."""
    arms = table[table["arm"].isin(("loop", "flat"))]  # not the always-on arm: it would
    wide = arms.pivot_table(index=["rung", "seed"], columns="arm",  # drop every rung without it
                            values=[metric, "tokens_per_param"])
    wide = wide.dropna()
    return pd.DataFrame({"rung": wide.index.get_level_values("rung"),
                         "x": np.log(wide["tokens_per_param"]["flat"].to_numpy()),
                         "gap": (wide[metric]["loop"] - wide[metric]["flat"]).to_numpy()})


def _fit(points: pd.DataFrame) -> tuple[float, float]:
    b, a = np.polyfit(points["x"], points["gap"], 1)
    return float(a), float(b)


def _root(a: float, b: float) -> float:
    """D/N where a + b ln(D/N) = 0 going from loss to gain (b < 0); inf where the line does
    not fall (b >= 0)."""
    if b >= 0:  # the gap does not fall with D/N: no crossover from loss to gain
        return math.inf
    return math.exp(min(-a / b, 700.0))  # beyond e^700 (a slope ~0): as good as never


def crossover(table: pd.DataFrame, metric: str = "val_bpb", *, resamples: int = 2000,
              seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Per (size, pair): the fitted line, the crossover D / N with its bootstrap interval, and
    what can be said inside the measured range (`statement`)."""
    cols = ["size", "pair", "metric", "rungs", "points", "intercept", "slope_per_e",
            "crossover", "ci_low", "ci_high", "measured_max", "statement"]
    if table.empty:
        return pd.DataFrame(columns=cols)
    rng = np.random.default_rng(seed)
    rows = []
    for (size, pair), g in table.groupby(["size", "pair"], sort=True):
        pts = _paired(g, metric)
        if pts["rung"].nunique() < 2:
            continue
        a, b = _fit(pts)
        est = _root(a, b)
        groups = [(p["x"].to_numpy(), p["gap"].to_numpy()) for _, p in pts.groupby("rung")]
        boots = []
        for _ in range(resamples):  # seeds resampled within each rung
            picks = [rng.integers(0, len(x), len(x)) for x, _ in groups]
            xs = np.concatenate([x[i] for (x, _), i in zip(groups, picks)])
            ys = np.concatenate([y[i] for (_, y), i in zip(groups, picks)])
            slope, intercept = np.polyfit(xs, ys, 1)
            boots.append(_root(float(intercept), float(slope)))
        # order statistics, no interpolation: a resample whose line never crosses is inf
        lo, hi = (float(np.quantile(boots, q, method="inverted_cdf"))
                  for q in (alpha / 2, 1 - alpha / 2))
        top = float(math.exp(pts["x"].max()))
        rows.append({"size": size, "pair": pair, "metric": METRICS[metric],
                     "rungs": int(pts["rung"].nunique()), "points": len(pts), "intercept": a,
                     "slope_per_e": b, "crossover": est, "ci_low": lo, "ci_high": hi,
                     "measured_max": top, "statement": _statement(est, lo, hi, top, g, metric)})
    return pd.DataFrame(rows, columns=cols)


def _fitted(est: float, lo: float, hi: float, top: float) -> str:
    """The fitted crossover in words: a number with its interval, said to be an
    extrapolation beyond the highest rung, or that the line never reaches zero."""
    if math.isinf(est):
        return "the fitted line does not fall with D/N (no crossover from loss to gain)"
    where = " (beyond the highest rung: an extrapolation)" if est > top else ""
    return f"fitted crossover D/N {_ratio(est)} [{_ratio(lo)}, {_ratio(hi)}]{where}"


def _statement(est: float, lo: float, hi: float, top: float, g: pd.DataFrame,
               metric: str) -> str:
    gaps = gap_table(g)
    gaps = gaps[gaps["metric"] == METRICS[metric]]
    last = gaps.sort_values("rung").iloc[-1]
    if math.isnan(last["ci_low"]):  # one seed so far: a gap without an interval
        return (f"at the highest rung (D/N {top:.0f}: {last['gap']:+.4f}, {last['n']} seed, "
                f"no interval yet); {_fitted(est, lo, hi, top)}")
    at = f"D/N {top:.0f}: {last['gap']:+.4f} [{last['ci_low']:+.4f}, {last['ci_high']:+.4f}]"
    if last["ci_low"] > 0:
        return (f"no crossover below D/N {top:.0f}: the loop still loses at the highest rung "
                f"measured ({at}); {_fitted(est, lo, hi, top)}")
    if last["ci_high"] < 0:
        return f"the loop wins at the highest rung ({at}); {_fitted(est, lo, hi, top)}"
    return (f"at the highest rung ({at}) the gap's interval spans zero; "
            f"{_fitted(est, lo, hi, top)}")


def law_crossover(non_embedding: float, law: dict[str, float] = LAW) -> float:
    """The D / N above which RESEARCH's inference says one more loop pays at N parameters:
    alpha phi A N^-alpha = beta B D^-beta (the marginal loss of effective parameters against
    that of tokens, Chinchilla's constants with phi = 0.46). A hypothesis, not a fit of ours."""
    lhs = law["alpha"] * law["phi"] * law["A"] * non_embedding ** (-law["alpha"])
    tokens = (lhs / (law["beta"] * law["B"])) ** (-1.0 / law["beta"])
    return tokens / non_embedding


def records_ratio() -> float:
    return RECORDS["tokens"] / RECORDS["params"]


def predictions(table: pd.DataFrame) -> pd.DataFrame:
    """Per size present: its non-embedding parameters and the law's crossover D / N, and the
    records' (N ~36M, D/N ~109) for comparison."""
    rows = []
    if not table.empty:
        for size, g in table.groupby("size"):
            n = float(g[g["arm"] == "flat"]["non_embedding"].iloc[0])
            rows.append({"where": f"size {size}", "non_embedding": n,
                         "law_crossover": law_crossover(n), "tokens_per_param": float("nan")})
    rows.append({"where": "records (PR #1394)", "non_embedding": RECORDS["params"],
                 "law_crossover": law_crossover(RECORDS["params"]),
                 "tokens_per_param": records_ratio()})
    return pd.DataFrame(rows)


def _rung_key(ratio: float) -> float:
    """A rung as its run names spell it (Rung.label: three significant digits, 14.14 -> 14.1)."""
    return float(f"{ratio:.3g}")


def _plan() -> tuple[dict[tuple, float], set[tuple]]:
    """The ladder's plan keyed as run names spell rungs: planned training FLOPs per (size,
    pair, rung, arm), and every (size, pair, rung, arm, seed) it trains."""
    planned, wanted = {}, set()
    for r in regime.rungs():
        key = (r.size, r.pair, _rung_key(r.ratio))
        for arm in r.arms:
            planned[(*key, arm)] = r.flops[arm]
            wanted |= {(*key, arm, seed) for seed in regime.seeds_for(r.size, r.ratio, r.pair)}
    return planned, wanted


def _finished(table: pd.DataFrame) -> set[tuple]:
    """(size, pair, rung, arm, seed) of every run in `table`."""
    if table.empty:
        return set()
    return {(s, p, _rung_key(r), a, int(sd)) for s, p, r, a, sd in
            zip(table["size"], table["pair"], table["rung"], table["arm"], table["seed"])}


def status(table: pd.DataFrame) -> dict[str, int]:
    """Runs finished of the ladder's total, and rungs with every seed of every arm."""
    _, wanted = _plan()
    want = Counter(k[:3] for k in wanted)  # runs a rung needs
    done = 0
    if not table.empty:
        per = table.groupby(["size", "pair", "rung"])["run"].count()
        done = sum(int(n >= want[(k[0], k[1], _rung_key(k[2]))]) for k, n in per.items()
                   if (k[0], k[1], _rung_key(k[2])) in want)
    return {"runs": len(table), "of_runs": sum(want.values()), "complete_rungs": done,
            "of_rungs": len(want)}


def progress(st: dict[str, int]) -> str:
    """`status` in a sentence: complete, or how much of the ladder has finished."""
    if st["complete_rungs"] >= st["of_rungs"]:
        return (f"The ladder is complete: all {st['of_runs']} runs, {st['of_rungs']} rungs with "
                "every seed.")
    return (f"{st['runs']} of the ladder's {st['of_runs']} runs are finished "
            f"({st['complete_rungs']} of {st['of_rungs']} rungs with every seed).")


def pace(table: pd.DataFrame, recent: int = 10, jobs: int = 2) -> dict[str, float]:
    """What is left of the ladder: runs and planned training FLOPs finished and left, and the
    hours left with `jobs` runs at a time at the pace of the `recent` last-started finished
    runs (planned FLOPs over train_seconds, median; as they ran, beside whatever else the
    machine did, so a planning figure, not a speed measurement)."""
    planned, wanted = _plan()
    done = _finished(table) & wanted
    left = wanted - done
    flops_left = sum(planned[k[:4]] for k in left)
    rate = float("nan")
    if not table.empty:
        last = table.sort_values("started").tail(recent)
        per_run = [planned[(s, p, _rung_key(r), a)] / t for s, p, r, a, t in
                   zip(last["size"], last["pair"], last["rung"], last["arm"],
                       last["train_seconds"]) if t and t > 0]
        rate = float(np.median(per_run)) if per_run else rate
    return {"runs_done": len(done), "runs_left": len(left),
            "flops_done": sum(planned[k[:4]] for k in done), "flops_left": flops_left,
            "flops_per_s_per_run": rate, "jobs": jobs,
            "hours_left": flops_left / (rate * jobs) / 3600}


def pace_markdown(table: pd.DataFrame) -> str:
    """`pace` in a sentence (notebook 09, `python -m golf_core.regime_map`)."""
    p = pace(table)
    text = (f"{p['runs_done']} runs finished, {p['runs_left']} left: {p['flops_left']:.3g} of "
            f"{p['flops_done'] + p['flops_left']:.3g} planned training FLOPs.")
    if p["runs_left"] and not math.isnan(p["hours_left"]):
        cpu = table.sort_values("started")["cpu"].iloc[-1] or "this machine"
        text += (f" At the pace of the last finished runs ({p['flops_per_s_per_run']:.3g} "
                 f"FLOP/s a run on {cpu}, as they ran) that is ~{p['hours_left']:.0f} h with "
                 f"{p['jobs']} runs at a time.")
    return text


def answer(gaps: pd.DataFrame, cross: pd.DataFrame) -> str:
    """The map's answer before its numbers: at how many rungs (with an interval) the loop
    won, lost or tied on val_bpb, up to which D/N, and whether a fitted line crosses zero
    within the rungs measured, beyond them (an extrapolation) or not at all."""
    bpb = gaps[(gaps["metric"] == METRICS["val_bpb"]) & (gaps["n"] > 1)]
    if bpb.empty:
        return "No rung has two seeds yet, so the map has no answer yet."
    won, lost = int((bpb["ci_high"] < 0).sum()), int((bpb["ci_low"] > 0).sum())
    top = float(gaps["flat_tokens_per_param"].max())
    text = (f"Up to D/N {top:.0f} (training tokens per non-embedding parameter), at equal "
            f"parameters and equal training FLOPs, the loop beat the flat model at {won} of "
            f"the {len(bpb)} rungs with an interval, lost at {lost} and tied at "
            f"{len(bpb) - won - lost} (95% intervals of the paired val_bpb gap).")
    lines = cross[cross["metric"] == METRICS["val_bpb"]] if len(cross) else cross
    within, beyond, never = [], [], []
    for r in lines.itertuples():
        name = f"size {r.size}'s {SHORT_PAIR_NAMES.get(r.pair, r.pair)}"
        if math.isinf(r.crossover):
            never.append(name)
        elif r.crossover > r.measured_max:
            beyond.append(f"{name} at D/N {_ratio(r.crossover)}")
        else:
            within.append(f"{name} at D/N {_ratio(r.crossover)} [{_ratio(r.ci_low)}, "
                          f"{_ratio(r.ci_high)}]")
    said = []
    if within:
        said.append("crosses zero within the rungs measured for " + "; ".join(within))
    if beyond:
        said.append("reaches zero only beyond the highest rung, an extrapolation, for "
                    + "; ".join(beyond))
    if never:
        said.append("does not fall with D/N for " + " and ".join(never))
    if said:
        text += " The fitted gap against ln(D/N) " + "; it ".join(said) + "."
    return text


SHORT_PAIR_NAMES = {"records": "records' recipe", "pr363": "PR #363 pair"}


def _ratio(x: float) -> str:
    """A D/N in words, three significant digits: 7.64, 660, 1,160, 6.1e+04."""
    return f"{x:.3g}" if x < 1000 else f"{float(f'{x:.3g}'):,.0f}" if x < 1e4 else f"{x:.2g}"


def headline(table: pd.DataFrame) -> str:
    """The regime map in Markdown, from the runs (what the writeup leads with): a paragraph
    with the answer and how much of the ladder it rests on, then one bullet per series with
    its numbers, and one for the delayed-vs-always-on arm."""
    st = status(table)
    if table.empty:
        return ("The regime ladder has no finished runs yet (`make regime` trains them into "
                "results/regime/).")
    gaps = gap_table(table)
    bpb = gaps[gaps["metric"] == "val_bpb"]
    cross = crossover(table, resamples=500)
    bullets = []
    for (size, pair), g in bpb.groupby(["size", "pair"]):
        desc = ", ".join(f"D/N {r.flat_tokens_per_param:.0f}: {r.gap:+.4f}"
                         + (f" [{r.ci_low:+.4f}, {r.ci_high:+.4f}]" if r.n > 1 else "")
                         for r in g.sort_values("rung").itertuples())
        name = PAIR_NAMES.get(pair, pair)
        line = f"Size {size}, {name}: loop - flat val_bpb {desc}."
        c = cross[(cross["size"] == size) & (cross["pair"] == pair)] if len(cross) else cross
        if len(c):
            line += f" Over ln(D/N): {c['statement'].iloc[0]}."
        bullets.append(line)
    always = delayed_vs_always(table)
    for r in always[always["metric"] == "val_bpb"].itertuples():
        if r.n:
            bullets.append(
                f"Delayed (48%) minus always-on loop at size {r.size}, D/N "
                f"{r.flat_tokens_per_param:.0f}: {r.diff:+.4f}"
                + (f" [{r.ci_low:+.4f}, {r.ci_high:+.4f}]" if r.n > 1 else "")
                + f" over {r.n} seed{'s' if r.n > 1 else ''}.")
    return f"{answer(gaps, cross)} {progress(st)}\n\n" + "\n".join(f"- {b}" for b in bullets)


PAIR_NAMES = {"records": "the records' recipe (PR #1204, layers 4,5 looped from 48%)",
              "pr363": "PR #363's pair (flat 11 layers vs the 3x3 loop at equal parameters)"}


def plot_map(table: pd.DataFrame, metric: str = "val_bpb"):
    """Gap (loop - flat) against the flat arm's D / N, one panel per size: each seed (dots),
    each rung's mean with its 95% interval (bars), the fitted line, the law's crossover
    (dashed) and the records' D / N (dotted)."""
    import matplotlib.pyplot as plt

    sizes = sorted(table["size"].unique()) if not table.empty else ["A"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 3.8), squeeze=False,
                             sharey=True)
    gaps = gap_table(table)
    gaps = gaps[gaps["metric"] == METRICS[metric]]
    fits = crossover(table, metric, resamples=200) if not table.empty else pd.DataFrame()
    colors = {"records": "#c0392b", "pr363": "#2c6fbb"}
    for ax, size in zip(axes[0], sizes):
        g = table[table["size"] == size]
        for pair in sorted(g["pair"].unique()) if not g.empty else []:
            pts = _paired(g[g["pair"] == pair], metric)
            c = colors.get(pair, "k")
            ax.scatter(np.exp(pts["x"]), pts["gap"], s=9, alpha=0.35, color=c)
            rg = gaps[(gaps["size"] == size) & (gaps["pair"] == pair)]
            ax.errorbar(rg["flat_tokens_per_param"], rg["gap"], yerr=rg["half_width"].fillna(0),
                        fmt="D", ms=5, capsize=3, color=c, label=PAIR_NAMES[pair].split(" (")[0])
            f = fits[(fits["size"] == size) & (fits["pair"] == pair)] if len(fits) else fits
            if len(f):
                xs = np.linspace(pts["x"].min(), pts["x"].max(), 50)
                ax.plot(np.exp(xs), f["intercept"].iloc[0] + f["slope_per_e"].iloc[0] * xs,
                        color=c, lw=1)
        if not g.empty:
            n = float(g[g["arm"] == "flat"]["non_embedding"].iloc[0])
            ax.axvline(law_crossover(n), ls="--", color="0.4", lw=1,
                       label=f"law's crossover ({law_crossover(n):.0f})")
        ax.axvline(records_ratio(), ls=":", color="0.2", lw=1,
                   label=f"records' D/N (~{records_ratio():.0f})")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens per non-embedding parameter (flat arm)")
        ax.set_title(f"size {size}" + (f" ({int(g['non_embedding'].iloc[0]):,} non-embedding "
                                       "params)" if not g.empty else ""), fontsize=10)
    axes[0][0].set_ylabel(f"{METRICS[metric]}: loop - flat (bpb)")
    for ax in axes[0]:  # each panel its own: its pairs and its size's law crossover
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def setup_markdown() -> str:
    """The ladder's setup in sentences, generated from golf_core.regime (cannot drift)."""
    r = regime
    sizes = "; ".join(
        f"size {s}: width {v['model_dim']}, {v['num_heads']} heads of "
        f"{v['model_dim'] // v['num_heads']}, {v['num_kv_heads']} KV head"
        for s, v in r.SIZES.items())
    rungs = "; ".join(f"size {s}: {', '.join(f'{x:.3g}' for x in xs)}"
                      for s, xs in r.RUNGS.items())
    pairs = "; ".join(f"{PAIR_NAMES[p]} at size{'s' if len(v) > 1 else ''} {', '.join(v)}"
                      for p, v in r.PAIRS.items())
    return (
        f"**Setup.** Pairs of a looped and a flat model: {pairs}. {sizes}. Each pair is matched "
        f"in stored parameters (what the artifact holds) and in training FLOPs "
        f"(golf_core.flops; a delayed loop's cheaper steps before the switch counted as such), "
        f"both within {r.TOLERANCE:.0%}. Rungs are the flat arm's training tokens per "
        f"non-embedding parameter (D/N): {rungs}. Every run trains {r.BATCH_TOKENS:,} tokens a "
        f"step in sequences of {r.SEQ_LEN} on the built-in corpus, fp32, Muon and Adam as the "
        f"scripts split them, a 25% warmdown, int6 export; {r.seeds_markdown()}; one seed "
        f"gives both arms the same initialisation seed and data order."
    )


def plan_markdown_rows(corpus_tokens: int | None = None) -> pd.DataFrame:
    """The plan per (size, pair, rung, arm) with epochs of the corpus (a rung above 4 epochs
    is marked: it repeats the data more than the records, which see each token once)."""
    plan = pd.DataFrame(regime.plan_table())
    corpus = corpus_train_tokens() if corpus_tokens is None else corpus_tokens
    plan["epochs"] = plan["tokens"] / corpus if corpus else float("nan")
    plan["over_4_epochs"] = plan["epochs"] > 4
    return plan


def main() -> int:
    """`python -m golf_core.regime_map`: the map in sentences and what is left to run."""
    table = runs_table()
    print(headline(table), pace_markdown(table), sep="\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

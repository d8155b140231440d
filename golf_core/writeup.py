"""The writeup's answer: sentences generated from the committed runs, so the prose at the top of
the report cannot drift from them.

* `study_regimes(specs)`: per arm of the study, the tokens it trained and its non-embedding
  parameters, so each verdict can say the regime (tokens per parameter) it holds in;
* `with_regime(findings, specs)`: the findings table with that regime as a column;
* `abstract_markdown()`: the answer first: the regime map's finding (golf_core.regime_map),
  then the study's decided verdicts with their intervals and the regime they hold in, beside
  where the records train.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import pandas as pd
import torch
from torch import nn

from golf_core import regime_map, stats
from golf_core.config import ModelConfig, from_dict
from golf_core.model import build_model


@lru_cache(maxsize=64)
def _non_embedding(model_json: str) -> int:
    cfg = from_dict(ModelConfig, json.loads(model_json), source="config.json")
    with torch.device("meta"):  # shapes only: no init, no memory
        model = build_model(cfg)
    stored = sum(p.numel() for p in model.parameters())
    embed = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return int(stored - embed)


def study_regimes(specs: Sequence[Any]) -> pd.DataFrame:
    """Per label: seeds, mean training tokens, non-embedding parameters and their ratio."""
    rows = []
    for spec in specs:
        run = spec.run_dir
        cfg = json.loads((run / "config.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
        rows.append({"label": spec.label, "seed": spec.seed,
                     "tokens": float(summary["tokens_seen"]),
                     "non_embedding": _non_embedding(json.dumps(cfg["model"], sort_keys=True))})
    if not rows:
        return pd.DataFrame(columns=["label", "seeds", "tokens", "non_embedding",
                                     "tokens_per_param"])
    table = pd.DataFrame(rows).groupby("label", sort=False).agg(
        seeds=("seed", "nunique"), tokens=("tokens", "mean"),
        non_embedding=("non_embedding", "mean")).reset_index()
    table["tokens_per_param"] = table["tokens"] / table["non_embedding"]
    return table


def _claim_name(text: str) -> str:
    """A findings row's claim name: "Question? [name]" -> "name" (descriptive rows: text)."""
    return text.rsplit("[", 1)[-1].rstrip("]") if text.endswith("]") else text


def _regime_text(row: pd.Series) -> str:
    return f"D/N {row['tokens_per_param']:.2g} (N {row['non_embedding'] / 1e6:.2f}M)"


def with_regime(findings: pd.DataFrame, specs: Sequence[Any]) -> pd.DataFrame:
    """`findings` plus `regime`: the tokens per non-embedding parameter the claim's
    reference arm (b) trained at, and its N, e.g. "D/N 1.5 (N 0.41M)"."""
    out = findings.copy()
    regimes = study_regimes(specs).set_index("label")
    claims = {c.name: c for c in stats.CLAIMS}
    texts = []
    for text in out["claim"] if len(out) else []:
        claim = claims.get(_claim_name(text))
        arm = claim.arm_b if claim is not None else None
        texts.append(_regime_text(regimes.loc[arm]) if arm in regimes.index else "")
    out["regime"] = texts
    return out


def _decided(findings: pd.DataFrame) -> pd.DataFrame:
    paired = findings[findings["n"] == findings["n"]]
    return paired[paired["verdict"].isin(["reproduced", "opposite", "equivalent"])]


def _verdict_line(r: dict[str, Any]) -> str:
    return (f"`{_claim_name(r['claim'])}`: **{r['verdict']}**, {r['diff']:+.4f} "
            f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] over {int(r['n'])} seeds, "
            f"{r['regime'] or 'study scale'}")


def claim_line(findings: pd.DataFrame, specs: Sequence[Any], name: str) -> str:
    """One claim's verdict as the answer lists it (`name`: **verdict**, a - b [95%] over n
    seeds, D/N (N)), for prose elsewhere that cites the study; says so where the claim
    is not decided in this checkout."""
    rows = findings[[_claim_name(c) == name for c in findings["claim"]]]
    if not len(rows) or rows["n"].iloc[0] != rows["n"].iloc[0]:  # absent, or not paired (NaN)
        return f"`{name}`: not decided in this checkout (`make study`)"
    return _verdict_line(with_regime(rows.head(1), specs).iloc[0].to_dict())


def abstract_markdown(findings: pd.DataFrame, specs: Sequence[Any],
                      regime_runs: pd.DataFrame | None = None) -> str:
    """The answer in sentences, with numbers and intervals read from the runs."""
    runs = regime_map.runs_table() if regime_runs is None else regime_runs
    parts = ["**Where recurrence pays (the regime map).** " + regime_map.headline(runs)]
    decided = _decided(with_regime(findings, specs)) if len(findings) else findings
    if len(decided):
        ratios = study_regimes(specs)["tokens_per_param"]
        parts.append(
            "**What the study decides, and in which regime.** Its runs train "
            f"{ratios.min():.2g}-{ratios.max():.2g} tokens per non-embedding parameter at "
            f"width 64; the records train ~{regime_map.records_ratio():.0f} at ~36M "
            "parameters. Its decided verdicts (loop arm a minus its pair b, val_bpb or the "
            "gap named, 95% interval) therefore hold at small D/N, not at the records' "
            "constraints:")
        parts.append("\n".join(f"- {_verdict_line(r)}" for r in decided.to_dict("records")))
    else:
        parts.append("**The study** has no decided verdict in this checkout (`make study`).")
    parts.append("Measured: the numbers above, on a 2-core CPU, at the parameters and tokens "
                 "they state. Extrapolated: any crossover beyond the highest rung measured, and "
                 "the scaling law's prediction, which is a hypothesis from published constants.")
    return "\n\n".join(parts)


def claim_sections(findings: pd.DataFrame, specs: Sequence[Any]) -> str:
    """One short section per claim of the study: the question, a one-sentence verdict with
    the interval and the regime it holds in, what was published and where, ours in numbers."""
    if not len(findings):
        return "No claim decided: the study has not run in this checkout."
    table = with_regime(findings, specs)
    out = []
    for r in table.to_dict("records"):
        question = r["claim"].rsplit(" [", 1)[0] if r["claim"].endswith("]") else r["claim"]
        if r["n"] == r["n"]:  # paired
            verdict = (f"**{r['verdict'].capitalize()}.** a - b = {r['diff']:+.4f} "
                       f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] over {int(r['n'])} paired "
                       f"seeds (margin {r['delta']:g})"
                       + (f", at {r['regime']}" if r["regime"] else "") + ".")
        else:
            verdict = f"**{r['verdict'].capitalize()}.** {r['ours']}."
        out.append(f"### {question}\n\n{verdict} Published: {r['published']} "
                   f"({r['source']}). Ours: {r['ours']}.")
    return "\n\n".join(out)

"""The writeup's generated answer (golf_core.writeup): each verdict with the regime it holds
in, read from the runs' own files."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from torch import nn

from golf_core import writeup
from golf_core.config import ModelConfig
from golf_core.model import build_model
from golf_core.verdicts import FINDINGS_COLUMNS

MODEL = {"num_layers": 2, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1, "vocab_size": 64}


def _spec(root: Path, label: str, seed: int, tokens: int) -> SimpleNamespace:
    run = root / f"{label}-s{seed}"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": MODEL, "train": {}}))
    (run / "summary.json").write_text(json.dumps({"tokens_seen": tokens}))
    return SimpleNamespace(label=label, seed=seed, run_dir=run)


def _non_embedding() -> int:
    model = build_model(ModelConfig(**MODEL))
    embed = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return sum(p.numel() for p in model.parameters()) - embed


def _finding(claim: str, n: float, diff: float, verdict: str) -> dict:
    row = dict.fromkeys(FINDINGS_COLUMNS, "")
    row.update(claim=claim, n=n, diff=diff, ci_low=diff - 0.002, ci_high=diff + 0.002,
               delta=0.001, verdict=verdict)
    return row


@pytest.fixture
def study(tmp_path):
    specs = [_spec(tmp_path, "pr1204-always-on", s, t) for s, t in ((1, 60_000), (2, 62_000))]
    specs.append(_spec(tmp_path, "pr1204", 1, 61_000))
    findings = pd.DataFrame([
        _finding("Does delaying mini recurrence beat running it from step 0? "
                 "[delayed-vs-always-on]", 2, 0.0095, "opposite"),
        _finding("Does the 3x3 loop beat the 2x5 loop at equal steps? [3x3-vs-2x5/steps]",
                 float("nan"), float("nan"), "not run"),
    ], columns=list(FINDINGS_COLUMNS))
    return specs, findings


def test_a_regime_is_the_mean_tokens_over_the_models_own_non_embedding_parameters(study):
    specs, _ = study
    table = writeup.study_regimes(specs).set_index("label")
    n = _non_embedding()
    assert table.loc["pr1204-always-on", "seeds"] == 2
    assert table.loc["pr1204-always-on", "non_embedding"] == n
    assert table.loc["pr1204-always-on", "tokens_per_param"] == pytest.approx(61_000 / n)


def test_a_claim_is_cited_with_its_interval_and_the_regime_of_its_reference_arm(study):
    specs, findings = study
    n = _non_embedding()
    line = writeup.claim_line(findings, specs, "delayed-vs-always-on")
    assert line == (f"`delayed-vs-always-on`: **opposite**, +0.0095 [+0.0075, +0.0115] over 2 "
                    f"seeds, D/N {61_000 / n:.2g} (N {n / 1e6:.2f}M)")
    # the same line the answer lists, so the two cannot say different things
    assert f"- {line}" in writeup.abstract_markdown(findings, specs, pd.DataFrame())


def test_an_undecided_or_unknown_claim_says_so_instead_of_printing_nan(study):
    specs, findings = study
    for name in ("3x3-vs-2x5/steps", "no-such-claim"):
        line = writeup.claim_line(findings, specs, name)
        assert line == f"`{name}`: not decided in this checkout (`make study`)"
    empty = pd.DataFrame(columns=list(FINDINGS_COLUMNS))
    assert "not decided" in writeup.claim_line(empty, [], "delayed-vs-always-on")

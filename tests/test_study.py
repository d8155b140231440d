"""The scales that decide (issue 12): seeds per verdict arm, run names that do not depend on
where the repo lives, committed results found again after a config field is added, runs
launched two at a time, the per-precision gaps and stored tables a run leaves, and the
record's extras switched off for the 2x2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from golf_core import experiments, launch, results, verdicts
from golf_core.config import ModelConfig
from golf_core.model import build_model, preset


def _verdict_arms(scale: str) -> dict[str, int]:
    """Seeds per arm label of every claim the scale can decide."""
    specs = experiments.run_matrix(scale)
    seeds: dict[str, set[int]] = {}
    for s in specs:
        seeds.setdefault(s.label, set()).add(s.seed)
    arms = {a for c in verdicts.scale_claims(seeds) for a in (c.arm_a, c.arm_b, *(c.minus or ()))}
    return {a: len(seeds[a]) for a in arms}


@pytest.mark.parametrize("scale, seeds", [("cpu", 3), ("study", 10)])
def test_every_arm_a_verdict_rests_on_has_enough_paired_seeds(scale, seeds):
    arms = _verdict_arms(scale)
    assert arms and min(arms.values()) >= seeds, arms


def test_the_study_runs_the_quantization_table_and_the_stack_question():
    names = {c.name for c in verdicts.scale_claims(
        {s.label for s in experiments.run_matrix("study")})}
    assert {"noisy-qat-gap/int8", "noisy-qat-gap/int6", "noisy-qat-gap/int5",
            "looped-vs-flat-gap/int5", "recurrence-in-stack", "recurrence-standalone",
            "recurrence-x-extras", "looped-vs-flat/flops", "3x3-vs-2x5/flops",
            "delayed-vs-always-on"} <= names
    specs = experiments.run_matrix("study")
    assert all(s.run_dir.parent == experiments.runs_root("study") for s in specs)
    assert experiments.runs_root("study").relative_to(Path(__file__).resolve().parent.parent)
    # seed-major: a study stopped part-way holds whole seeds of every arm
    seeds = experiments.scale_settings("study")["seeds"]
    first = [s.seed for s in specs[: len(specs) // len(seeds)]]
    assert set(first) == {seeds[0]}


def test_run_names_hash_what_is_computed_not_where_files_are(tmp_path):
    a = {s.label + str(s.seed): s.name for s in experiments.run_matrix("cpu")}
    b = {s.label + str(s.seed): s.name for s in experiments.run_matrix(
        "cpu", data_path=str(tmp_path / "elsewhere"))}
    assert a == b
    c = {s.label + str(s.seed): s.name for s in experiments.run_matrix(
        "cpu", extra={"iterations": 7})}
    assert not set(a.values()) & set(c.values())


def test_a_committed_run_is_found_again_when_its_settings_hash_moved(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments.paths, "project_root", lambda: tmp_path)
    spec = experiments.run_matrix("study")[0]
    old = tmp_path / "results" / "study" / (spec.name.rsplit("-", 1)[0] + "-abcdef")
    old.mkdir(parents=True)
    assert spec.run_dir == tmp_path / "results" / "study" / spec.name  # unfinished: no match
    (old / "summary.json").write_text("{}")
    assert spec.run_dir == old and spec.is_complete()


def test_launch_runs_jobs_at_a_time_with_the_cores_split(tmp_path, monkeypatch):
    """Two fake runs that each wait for the other to start: they finish only if launched
    together, each with cores / 2 threads (the 600 s bound only stops a hung test; nothing
    here is timed)."""
    monkeypatch.setattr(experiments.paths, "runs_dir", lambda: tmp_path)
    specs = experiments.run_matrix("ci", groups="lanes")[:2]
    script = (
        "import sys, time, pathlib, json; a = sys.argv[1:]; "
        "d = pathlib.Path(a[a.index('--dir') + 1]); d.mkdir(parents=True, exist_ok=True); "
        "(d / 'started').write_text(a[a.index('--threads') + 1]); "
        "others = [p for p in d.parent.iterdir() if p != d]; t = time.time() + 600\n"
        "while not all((p / 'started').exists() for p in others) or not others:\n"
        "    others = [p for p in d.parent.iterdir() if p != d]; time.sleep(0.05)\n"
        "    assert time.time() < t, 'the other run never started'\n"
        "(d / 'summary.json').write_text('{}')")

    def fake(spec, *, nproc=1, resume=False, threads=0, python=sys.executable):
        return [python, "-c", script, "--dir", str(spec.run_dir), "--threads", str(threads)]

    monkeypatch.setattr(launch, "train_command", fake)
    monkeypatch.setattr(launch.os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    lines: list[str] = []
    table = launch.launch(specs, jobs=2, echo=lines.append)
    assert table["status"].tolist() == ["trained", "trained"]
    assert [(s.run_dir / "started").read_text() for s in specs] == ["2", "2"]
    assert any(line.startswith(f"[{specs[1].label} s") for line in lines)
    again = launch.launch(specs, jobs=2, echo=lines.append)
    assert again["status"].tolist() == ["skipped: complete"] * 2
    with pytest.raises(ValueError, match="jobs=0"):
        launch.launch(specs, jobs=0)


def test_the_launch_cli_names_an_unknown_scale(capsys):
    assert launch.main(["--scale", "nope"]) == 2
    assert "unknown report scale 'nope'" in capsys.readouterr().err


def test_the_records_extras_switch_off_to_the_baselines_choices():
    base = dict(preset("pr1204").__dict__)
    base.update(num_layers=11, model_dim=64, num_heads=4, num_kv_heads=2, rope_dims=4,
                vocab_size=128)
    cfg = ModelConfig(**base)
    bare = ModelConfig(**{**base, **experiments._NO_EXTRAS})
    torch.manual_seed(0)
    full, plain = build_model(cfg), build_model(bare)
    keys_full, keys_plain = set(full.state_dict()), set(plain.state_dict())
    gone = {k.split(".")[0] for k in keys_full - keys_plain}
    assert {"skip_gates", "smear", "bigram", "ve_shared"} <= gone
    assert not keys_plain - keys_full
    assert not any(b.attn.use_xsa for b in plain.blocks)
    x = torch.randint(0, 128, (2, 16))
    loss = plain(x, x)
    loss.backward()
    assert torch.isfinite(loss)
    skips = plain.routing_tables()["skip_weights"]
    assert skips["gate_mean"].isna().all()  # ungated: x + w * skip
    assert skips["skip_coef_mean"].tolist() == pytest.approx(skips["mean"].tolist())


def test_a_run_leaves_its_per_precision_gaps_and_final_tables(tmp_path, monkeypatch):
    """export_gap_bits: the summary's gaps per precision and quant_error.json; routing.json
    with the final tables (what results/study/ keeps instead of checkpoints)."""
    from golf_core.train import main

    data = experiments.dataset_dir("ci")
    experiments.prepare_data("ci")
    summary = main(["--scale", "cpu", "--preset", "pr363-3x3",
                    *[a for k, v in dict(
                        model_dim=32, num_heads=2, num_kv_heads=1, rope_dims=4,
                        train_seq_len=64, train_batch_tokens=512, micro_batch_tokens=512,
                        iterations=3, warmdown_iters=1, val_loss_every=0, val_max_tokens=1024,
                        val_batch_size=1024, export_scheme="int6", export_gap_bits="8,5",
                        data_path=data, runs_dir=tmp_path, run_name="gaps").items()
                      for a in ("--set", f"{k}={v}")]], environ={})
    run = tmp_path / "gaps"
    gaps = json.loads((run / "summary.json").read_text())["gaps_by_bits"]
    assert set(gaps) == {"int8", "int5"} == set(summary["gaps_by_bits"])
    for g in gaps.values():
        assert g["bpb_gap"] == pytest.approx(g["roundtrip_val_bpb"] - summary["val_bpb"])
    rows = json.loads((run / "quant_error.json").read_text())["rows"]
    assert {r["bits"] for r in rows} == {8, 5}
    # 15 virtual layers of the 3x3 loop per precision; coarser bits, larger error
    assert len(rows) == 30
    err = {b: sum(r["rel_error"] for r in rows if r["bits"] == b) for b in (8, 5)}
    assert 0 < err[8] < err[5]
    tables = json.loads((run / "routing.json").read_text())["tables"]
    assert "skip_weights" in tables and tables["skip_weights"]
    spec = experiments.RunSpec(name="gaps", label="pr363-3x3", preset="pr363-3x3", seed=1337,
                               scale="ci", train_scale="cpu")
    monkeypatch.setattr(experiments.RunSpec, "run_dir", property(lambda self: run))
    growth = results.error_growth(results.stored_quant_error([spec]))
    assert set(growth["bits"]) == {8, 5} and (growth["growth"] > 0).all()

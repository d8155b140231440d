"""Checkpoints and --resume: a resumed run equals the uninterrupted one, rows exactly once.

The runs are step-based (no wallclock cap), so resume is exact: the tolerance on losses and
weights is 0 (same ops on the same values in the same order on one CPU thread pool).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import metric_rows, sets, small_dataset, strip_timing, tiny_config

from golf_core import checkpoint as ckpt
from golf_core.config import ConfigError
from golf_core.train import _resume_config, main


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return small_dataset(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir):
    """The reference: 20 steps in one go, a checkpoint every 5."""
    tmp = tmp_path_factory.mktemp("straight")
    cfg = tiny_config(tmp, data_dir, checkpoint_every=5, run_name="straight")
    summary = main(["--config", str(cfg)], environ={})
    return {"summary": summary, "dir": Path(summary["run_dir"]), "config": cfg}


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "final_model.pt", weights_only=True)


def _assert_same_run(run_dir: Path, reference: Path) -> None:
    assert strip_timing(metric_rows(run_dir)) == strip_timing(metric_rows(reference))
    a, b = _final_weights(run_dir), _final_weights(reference)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _assert_each_step_once(run_dir: Path, iterations: int, val_every: int) -> None:
    rows = metric_rows(run_dir)
    steps = {kind: [r["step"] for r in rows if r["kind"] == kind] for kind in ("train", "val")}
    assert steps["train"] == list(range(1, iterations + 1))
    assert steps["val"] == list(range(0, iterations + 1, val_every))
    assert [r["kind"] for r in rows].count("final_roundtrip") == 1


@pytest.mark.slow
def test_ten_steps_then_resume_to_twenty_equals_twenty_straight(tmp_path, data_dir, straight):
    cfg = tiny_config(tmp_path, data_dir, checkpoint_every=5, run_name="split")
    part = main(["--config", str(cfg), "--stop-at-step", "10"], environ={})
    run_dir = Path(part["run_dir"])
    assert part["complete"] is False and part["steps"] == 10
    assert not (run_dir / "summary.json").exists()
    resumed = main(["--config", str(cfg), "--resume"], environ={})
    assert resumed["val_bpb"] == straight["summary"]["val_bpb"]
    rows = metric_rows(run_dir)
    final_loss = [r["train_loss"] for r in rows if r["kind"] == "train"][-1]
    ref_loss = [r["train_loss"] for r in metric_rows(straight["dir"]) if r["kind"] == "train"][-1]
    assert final_loss == ref_loss  # tolerance 0: bit-exact
    _assert_same_run(run_dir, straight["dir"])
    _assert_each_step_once(run_dir, 20, 5)
    log = (run_dir / "train.log").read_text()
    assert log.count("step:10/20 train_loss") == 1 and "resume: from ckpt_000010.pt" in log


@pytest.mark.slow
def test_rows_written_after_the_checkpoint_by_a_killed_run_are_cut(tmp_path, data_dir, straight):
    cfg = tiny_config(tmp_path, data_dir, checkpoint_every=5, run_name="killed")
    main(["--config", str(cfg), "--stop-at-step", "10"], environ={})
    run_dir = tmp_path / "runs" / "killed"
    with open(run_dir / "metrics.jsonl", "a") as f:  # what a run killed at step 12 leaves
        f.write(json.dumps({"kind": "train", "step": 11, "train_loss": 0.0}) + "\n")
        f.write('{"kind": "train", "st')
    main(["--run-dir", str(run_dir), "--resume"], environ={})
    _assert_same_run(run_dir, straight["dir"])
    _assert_each_step_once(run_dir, 20, 5)


@pytest.mark.slow
def test_resume_skips_a_truncated_newest_checkpoint_and_a_partial_temp_file(
        tmp_path, data_dir, straight):
    cfg = tiny_config(tmp_path, data_dir, checkpoint_every=5, run_name="torn")
    main(["--config", str(cfg), "--stop-at-step", "15"], environ={})
    ckpt_dir = tmp_path / "runs" / "torn" / "checkpoints"
    assert [s for s, _ in ckpt.list_checkpoints(ckpt_dir)] == [10, 15]  # the last two kept
    newest = ckpt_dir / "ckpt_000015.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # killed mid-write (no atomic rename)
    (ckpt_dir / "ckpt_000020.pt.tmp").write_bytes(data[:1000])  # a temp file of a later write
    summary = main(["--config", str(cfg), "--resume"], environ={})
    log = (tmp_path / "runs" / "torn" / "train.log").read_text()
    assert "warning: skipping checkpoint" in log and "resume: from ckpt_000010.pt" in log
    assert summary["val_bpb"] == straight["summary"]["val_bpb"]
    _assert_same_run(tmp_path / "runs" / "torn", straight["dir"])
    assert not list(ckpt_dir.glob("*.tmp"))
    assert (ckpt_dir / "ckpt_000015.pt.corrupt").exists()


def test_resume_keeps_the_config_and_refuses_a_changed_model(tmp_path, data_dir, straight):
    with pytest.raises(ConfigError, match=r"--resume: 'num_layers' differ"):
        main(["--run-dir", str(straight["dir"]), "--resume", *sets(num_layers=3)], environ={})
    with pytest.raises(ConfigError, match="not a run directory"):
        main(["--run-dir", str(tmp_path / "none"), "--resume"], environ={})
    with pytest.raises(ConfigError, match="already exists; pass --resume"):
        main(["--config", str(straight["config"])], environ={})
    _, tcfg, notes = _resume_config(straight["dir"], {"ITERATIONS": "30"}, {"tag": ""})
    assert tcfg.iterations == 30
    assert notes == ["resume: iterations changed 20 -> 30 (the LR schedule now differs from an "
                     "uninterrupted run)"]


def test_resuming_a_finished_run_returns_its_summary(straight):
    again = main(["--run-dir", str(straight["dir"]), "--resume"], environ={})
    assert again == json.loads((straight["dir"] / "summary.json").read_text())
    assert len(metric_rows(straight["dir"])) == len(strip_timing(metric_rows(straight["dir"])))


@pytest.mark.slow
def test_mini_recurrence_and_noisy_qat_switch_on_once_and_survive_a_resume(tmp_path, data_dir):
    """PR #1204's delayed recurrence at step 6 and noisy QAT (random noise: the RNG state must
    come back) from step 10, interrupted at step 8: the same run as without interruption.
    An untied 1024 x 72 head is the one matrix above the export's 65,536-element passthrough
    size, so QAT has a weight to put noise on."""
    extra = dict(family="pr1204", num_layers=3, recur_layers=[1], recur_start_step=6,
                 repeat_untie_mlp="full", ve_layers=[2, 3], parallel_start_layer=-1,
                 qat_mode="noisy", qat_start_frac=0.5, qat_bits=6, tie_embeddings=False,
                 model_dim=72)
    ref = main(["--config", str(tiny_config(tmp_path, data_dir, run_name="m1", **extra))],
               environ={})
    cfg = tiny_config(tmp_path, data_dir, run_name="m2", **extra)
    main(["--config", str(cfg), "--stop-at-step", "8"], environ={})
    state = ckpt.load_checkpoint(tmp_path / "runs" / "m2" / "checkpoints" / "ckpt_000008.pt")
    assert state["recurrence_active"] and not state["qat_active"]
    out = main(["--config", str(cfg), "--resume"], environ={})
    _assert_same_run(tmp_path / "runs" / "m2", tmp_path / "runs" / "m1")
    assert out["recurrence_active"] and out["qat_active"] and ref["val_bpb"] == out["val_bpb"]
    log = (tmp_path / "runs" / "m2" / "train.log").read_text()
    assert log.count("recurrence:activated step:6") == 1
    assert log.count("qat:enabled step:10 mode:noisy bits:6 modules:all weights:1") == 1


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    ckpt.save_checkpoint(tmp_path, 7, {"step": 7, "model": {}, "rng": ckpt.rng_state()}, {})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path / "ckpt_000007.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
    assert json.loads((tmp_path / "ckpt_000007.json").read_text())["step"] == 7


def test_a_file_that_is_not_a_checkpoint_is_refused_by_name(tmp_path):
    bad = tmp_path / "ckpt_000001.pt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match=r"ckpt_000001.pt: not a training checkpoint"):
        ckpt.load_checkpoint(bad)
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="not a loadable checkpoint"):
        ckpt.load_checkpoint(bad)
    assert ckpt.load_latest(tmp_path, warn=lambda m: None) is None

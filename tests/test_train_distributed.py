"""torchrun on CPU (gloo): two processes train the same model as one, and resume across sizes.

One process with 2 grad-accumulation micro-steps and two processes with one micro-step each
see exactly the same micro-batches (world * accum = 2 in both), so the loss curves agree up
to float summation order (the all-reduce averages two halves that one process adds up).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import metric_rows, small_dataset, tiny_config

from conftest import REPO
from golf_core.train import main

pytestmark = pytest.mark.slow

STEPS = 10
# fp32 throughout; the only differences are summation order (all-reduce vs accumulation,
# one vs two threads), which bf16 Newton-Schulz in Muon could amplify over 10 steps. Measured
# on this machine: at most 5e-16 relative.
LOSS_RTOL = 1e-6


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return small_dataset(tmp_path_factory.getbasetemp())


def torchrun(nproc: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    path = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(PYTHONPATH=path, OMP_NUM_THREADS="1", GOLF_ROOT=str(cwd))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "golf_core.train", *args]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _train_losses(run_dir: Path) -> list[float]:
    return [r["train_loss"] for r in metric_rows(run_dir) if r["kind"] == "train"]


def _val_bpb(run_dir: Path) -> list[float]:
    return [r["val_bpb"] for r in metric_rows(run_dir) if r["kind"] == "val"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, data_dir):
    """The reference: one process, 2 micro-steps of 256 tokens per 512-token step."""
    tmp = tmp_path_factory.mktemp("one")
    cfg = tiny_config(tmp, data_dir, iterations=STEPS, micro_batch_tokens=256, run_name="one",
                      warmdown_iters=3, val_loss_every=5)
    summary = main(["--config", str(cfg)], environ={})
    return Path(summary["run_dir"])


def test_two_processes_follow_the_one_process_loss_curve(tmp_path, data_dir, one_process):
    cfg = tiny_config(tmp_path, data_dir, iterations=STEPS, micro_batch_tokens=256,
                      run_name="two", warmdown_iters=3, val_loss_every=5)
    out = torchrun(2, ["--config", str(cfg)], cwd=tmp_path)
    run_dir = tmp_path / "runs" / "two"
    assert "world_size:2 grad_accum_steps:1" in out.stdout
    assert "world_size:1 grad_accum_steps:2" in (one_process / "train.log").read_text()
    one, two = _train_losses(one_process), _train_losses(run_dir)
    assert len(one) == len(two) == STEPS
    assert two == pytest.approx(one, rel=LOSS_RTOL)
    assert _val_bpb(run_dir) == pytest.approx(_val_bpb(one_process), rel=LOSS_RTOL)
    env = json.loads((run_dir / "env.json").read_text())
    assert env["world_size"] == 2 and "gloo" in env["reasons"]["backend"]
    # rank 0 writes; nothing lands in the working directory
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["runs", *(p.name for p in tmp_path.glob("config_*.json"))])


def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path, data_dir, one_process):
    """Muon keeps each momentum buffer on one rank; the checkpoint gathers them, so a run
    stopped at step 5 by two processes continues in one as if it had never been split."""
    cfg = tiny_config(tmp_path, data_dir, iterations=STEPS, micro_batch_tokens=256,
                      run_name="split", warmdown_iters=3, val_loss_every=5)
    torchrun(2, ["--config", str(cfg), "--stop-at-step", "5"], cwd=tmp_path)
    run_dir = tmp_path / "runs" / "split"
    assert not (run_dir / "summary.json").exists()
    main(["--config", str(cfg), "--resume"], environ={})
    assert _train_losses(run_dir) == pytest.approx(_train_losses(one_process), rel=LOSS_RTOL)
    assert [r["step"] for r in metric_rows(run_dir) if r["kind"] == "train"] == list(
        range(1, STEPS + 1))

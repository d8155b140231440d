"""`make gpu-check` / `bash benchmarks/gpu_check.sh`: the whole GPU check on one H100/H200,
in about 8 minutes, as one prepared script (a lent GPU machine's budget is minutes).

Steps, each timed, its output kept under the results folder:

1. install: `make venv` with the machine's preinstalled CUDA torch (VENV_FLAGS=
   --system-site-packages TORCH_SPEC=), so nothing large is downloaded;
2. the CUDA-marked tests (`pytest -m cuda`: the baseline fixture on the GPU, bf16 autocast,
   torch.compile, the dtype choice on CUDA);
3. data: shards from the built-in corpus (`python -m golf_core.data prepare`);
4. training: the upstream baseline (9 x 512, seq 1024, 524,288 tokens a step) for
   `--steps` steps with `torchrun --nproc_per_node=1`, bf16 autocast and torch.compile,
   tokens/s and MFU read from its summary;
5. side by side: `benchmarks.versus --device cuda` (our step vs upstream's `GPT` + `Muon` on
   the same GPU, both compiled-free eager, and MFU against the datasheet peak);
6. notebooks through papermill on CUDA (00_prepare_data, then 01_train at the ci scale, one
   run group).

`--dry-run` runs the same steps on the CPU at toy sizes (no install, 2 training steps, one
small side-by-side config, the first notebook only), so CI checks the script without a GPU. Writes
benchmarks/results/gpu_check_<device>.json (a dry run: a temporary folder unless --out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from golf_core.runs import machine_slug

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def steps(args: argparse.Namespace, work: Path) -> list[tuple[str, list[str]]]:
    """(name, command) of every step; the dry run shrinks sizes and leaves out the install."""
    py = sys.executable
    runs = work / "runs"
    data = work / "data"
    train = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
             "-m", "golf_core.train", "--set", f"data_path={data}", "--set",
             f"runs_dir={runs}", "--set", "run_name=gpu-check-baseline", "--set",
             "max_wallclock_seconds=0", "--set", "val_loss_every=0"]
    if args.dry_run:
        train += ["--scale", "cpu", "--set", "iterations=2", "--set", "val_max_tokens=4096"]
        versus = [py, "-m", "benchmarks.versus", "--configs", "4x128-2k", "--repeat", "1",
                  "--warmup", "1", "--out", str(work / "versus.json")]
        notebook_scale = "ci"
    else:
        train += ["--scale", "upstream", "--set", f"iterations={args.steps}", "--set",
                  "warmdown_iters=50", "--set", "compile=1", "--set", "autocast=bf16",
                  "--set", "val_max_tokens=1048576", "--set", "warmup_steps=5"]
        versus = [py, "-m", "benchmarks.versus", "--device", "cuda", "--configs",
                  "gpu-9x512-64k", "--repeat", "10", "--out", str(work / "versus.json")]
        notebook_scale = "ci"
    out: list[tuple[str, list[str]]] = []
    if not args.dry_run:
        out.append(("install", ["make", "venv", "VENV_FLAGS=--system-site-packages",
                                "TORCH_SPEC="]))
    out += [
        ("cuda tests", [py, "-m", "pytest", "-q", "-m", "cuda", "tests"]),
        ("data", [py, "-m", "golf_core.data", "prepare", "--out", str(data)]),
        ("train", train),
        ("versus", versus),
    ]
    notebooks = [("00_prepare_data", []), ("01_train", ["-p", "groups", "routing"])]
    # the dry run stops at the first notebook: 01_train's ci-scale runs are what the report
    # tests already execute, and minutes of CPU here
    for nb, extra in notebooks[:1] if args.dry_run else notebooks:
        out.append((f"notebook {nb}", [
            py, "-m", "papermill", str(REPO / "notebooks" / f"{nb}.ipynb"),
            str(work / f"{nb}.out.ipynb"), "-p", "scale", notebook_scale, *extra,
            "--cwd", str(REPO / "notebooks")]))
    return out


def run_step(name: str, cmd: list[str], env: dict, log: Path) -> dict:
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    tail = log.read_text(errors="replace").splitlines()[-5:]
    print(f"[gpu-check] {name}: rc {proc.returncode} in {seconds:.1f} s", flush=True)
    return {"step": name, "rc": proc.returncode, "seconds": seconds, "log": str(log),
            "tail": tail}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, no install")
    p.add_argument("--steps", type=int, default=300, help="training steps on the GPU")
    p.add_argument("--out", default="", help="JSON path")
    args = p.parse_args(argv)
    if args.steps < 1:
        print(f"--steps must be >= 1 (got {args.steps})", file=sys.stderr)
        return 2
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu-check: no CUDA device is visible (use --dry-run to check the script on a "
              "CPU)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        x for x in (str(REPO), os.environ.get("PYTHONPATH")) if x), GOLF_ROOT=str(work))
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""
    results = [run_step(name, cmd, env, work / f"{i}_{name.replace(' ', '_')}.log")
               for i, (name, cmd) in enumerate(steps(args, work))]
    summary = _training_summary(work / "runs" / "gpu-check-baseline")
    versus = json.loads((work / "versus.json").read_text()) if (work / "versus.json").is_file() \
        else None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.dry_run \
        else "cpu-dry-run"
    report = {"device": device, "dry_run": args.dry_run, "steps": results,
              "train_summary": summary, "versus": versus, "work_dir": str(work)}
    out = Path(args.out) if args.out else (
        work / "gpu_check.json" if args.dry_run else
        RESULTS / f"gpu_check_{machine_slug(device)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, out)
    if summary:
        print(f"[gpu-check] baseline: {summary.get('tokens_per_s') or 0:,.0f} tok/s, MFU "
              f"{summary['mfu']:.1%}, val_bpb {summary.get('val_bpb')}")
    print(f"[gpu-check] wrote {out}")
    return 0 if all(r["rc"] == 0 for r in results) else 1


def _training_summary(run_dir: Path) -> dict | None:
    """The run's summary plus its MFU (FLOPs per token x tokens/s over the device's peak)."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    from benchmarks.flops import datasheet_peak, measured_matmul_peak
    from golf_core.flops import flops_per_token
    from golf_core.runs import load_run

    summary = json.loads(path.read_text())
    run = load_run(run_dir)
    seq = int(run.config["train"]["train_seq_len"])
    from golf_core.config import ModelConfig, from_dict

    mcfg = from_dict(ModelConfig, run.config["model"])
    flops = flops_per_token(mcfg, seq)
    cuda = torch.cuda.is_available() and str(run.env.get("device", "")).startswith("cuda")
    peak = (datasheet_peak(torch.cuda.get_device_name(0)) if cuda else None) or \
        measured_matmul_peak(torch.device("cpu"), torch.float32)
    tps = summary.get("tokens_per_s") or 0.0
    summary.update(flops_per_token=flops, peak_flops=peak, mfu=flops * tps / peak)
    return summary


if __name__ == "__main__":
    sys.exit(main())

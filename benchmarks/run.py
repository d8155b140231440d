"""`python -m benchmarks.run` (or `make bench`): throughput, cost split, eval speed, artifacts.

Prints a table and writes JSON (machine, torch version, device, configs, medians of N timed
repeats after warm-up) to benchmarks/results/<device>_<scale>.json. Sections:

* train: ms/step and tokens/s per variant at a scale (`cpu` default config, or `upstream` =
  9L/512d, seq 1024 for a GPU), model FLOPs per token and MFU (see benchmarks/flops.py for
  the FLOP count and which peak is used), and the cost split forward / backward / optimizer
  (with Muon's Newton-Schulz timed on its own: batched, as Muon runs it, and one matrix at a
  time). Every (variant, dtype) case is built first, then the timed steps run in rounds, one
  step of each case per round in a rotating order, so a burst of load from other processes
  hits all cases alike; the JSON keeps every sample, the table shows medians and the
  interquartile range of ms/step.
* eval: tokens/s of the non-overlapping and the sliding-window evaluation.
* artifact: bytes, encode and decode seconds per quantization scheme and compressor, plus
  upstream's int8+zlib, for the weights left by the train section (a few steps from init:
  byte counts of trained models are in the quantizer issue and the report).

Timings are wall-clock; CUDA work is synchronized before each clock read. The load average
(`os.getloadavg`) before and after is recorded: on a shared machine it says how far to trust
the numbers. benchmarks/README.md documents the conventions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.flops import (
    bf16_skip_reason,
    datasheet_peak,
    matmul_flops_per_token,
    measured_matmul_peak,
)
from golf_core import quant
from golf_core.config import ConfigError, TrainConfig, parse_set_args, to_dict
from golf_core.evaluate import ByteTables, evaluate_bpb
from golf_core.model import GPT, PRESETS, build_model, count_parameters
from golf_core.model.gpt import validate
from golf_core.optim import (
    Muon,
    apply_schedule,
    build_optimizers,
    newton_schulz5,
    newton_schulz5_batched,
)
from golf_core.runs import cpu_isa, cpu_name, machine_slug
from golf_core.settings import resolve

RESULTS = Path(__file__).resolve().parent / "results"
# what the report trains: the baseline and the published models of its claims
DEFAULT_PRESETS = ("unet", "flat", "pr54", "pr363-flat", "pr363-3x3", "pr363-2x5", "pr1204")


def machine_info(device: torch.device) -> dict:
    cpu = cpu_name()
    info = {
        "hostname": platform.node(), "python": platform.python_version(),
        "torch": torch.__version__, "cpu": cpu, "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cpu_isa": cpu_isa(),
    }
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        info["git_commit"] = subprocess.check_output(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, text=True,
            stderr=subprocess.DEVNULL).strip()
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _median_ms(xs: list[float]) -> float:
    return 1000.0 * statistics.median(xs)


def _quartiles_ms(name: str, xs: list[float]) -> dict[str, float]:
    """{name_p25, name_p75} in ms (both the single sample when there is one)."""
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else xs * 3
    return {f"{name}_p25": 1000.0 * q1, f"{name}_p75": 1000.0 * q3}


@dataclass
class TrainCase:
    """One (variant, dtype) being timed: its model, optimizers, batch and samples so far."""

    variant: str
    dtype_name: str
    model: GPT
    run_model: Callable
    optimizers: list
    tcfg: TrainConfig
    x: torch.Tensor  # (B, T)
    y: torch.Tensor  # (B, T)
    cast: Callable[[], contextlib.AbstractContextManager]
    times: dict[str, list[float]] = field(default_factory=dict)
    steps: int = 0
    first_step_s: float = 0.0
    loss: float = float("nan")


def build_case(preset: str, dtype: torch.dtype | None, args: argparse.Namespace,
               device: torch.device) -> TrainCase:
    mcfg, tcfg = resolve(scale=args.scale, preset=preset, environ={}, sets=args.sets)
    torch.manual_seed(0)
    model = build_model(mcfg).to(device)
    if mcfg.recur_layers:
        model.activate_recurrence()  # time the recurrent shape, as trained after activation
    seq = tcfg.train_seq_len
    batch = max(1, tcfg.train_batch_tokens // seq)
    x = torch.randint(0, mcfg.vocab_size, (batch, seq), device=device)
    y = torch.randint(0, mcfg.vocab_size, (batch, seq), device=device)

    def cast() -> contextlib.AbstractContextManager:
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    return TrainCase(
        variant=preset, dtype_name="fp32" if dtype is None else "bf16", model=model,
        run_model=torch.compile(model) if args.compile else model,
        optimizers=build_optimizers(model, tcfg), tcfg=tcfg, x=x, y=y, cast=cast,
        times={k: [] for k in ("forward", "backward", "optimizer", "step")},
    )


def run_step(case: TrainCase, device: torch.device, record: bool) -> None:
    """One training step of `case`, its three parts timed separately."""
    holder: dict[str, torch.Tensor] = {}

    def fwd() -> None:
        with case.cast():
            holder["loss"] = case.run_model(case.x, case.y)

    def opt() -> None:
        apply_schedule(case.optimizers, case.steps, 0.0, case.tcfg)
        for o in case.optimizers:
            o.step()
        case.model.zero_grad(set_to_none=True)

    parts = {"forward": timed(fwd, device),
             "backward": timed(lambda: holder["loss"].backward(), device),
             "optimizer": timed(opt, device)}
    if case.steps == 0:
        case.first_step_s = sum(parts.values())  # includes torch.compile when on
    case.steps += 1
    case.loss = float(holder["loss"].detach())
    if record:
        for k, v in parts.items():
            case.times[k].append(v)
        case.times["step"].append(sum(parts.values()))


def bench_train(cases: list[TrainCase], device: torch.device, warmup: int,
                repeat: int) -> None:
    """Warm every case up, then `repeat` rounds of one timed step per case; round r starts
    at case r (mod len), so no case always runs first or last after another's step."""
    for case in cases:
        for _ in range(warmup):
            run_step(case, device, record=False)
    for r in range(repeat):
        for k in range(len(cases)):
            run_step(cases[(r + k) % len(cases)], device, record=True)


def newton_schulz_ms(case: TrainCase, device: torch.device, repeat: int
                     ) -> dict[str, float | str]:
    """Median ms of Newton-Schulz over every Muon matrix of `case`, in the dtype its Muon runs
    it (`newton_schulz_dtype`, as muon_ns_dtype picked it): batched by shape as Muon runs it,
    and one matrix at a time (upstream's loop), interleaved."""
    muons = [o for o in case.optimizers if isinstance(o, Muon)]
    mats = [p for o in muons for g in o.param_groups for p in g["params"]]
    if not mats:
        return {"newton_schulz_ms": 0.0, "newton_schulz_loop_ms": 0.0, "newton_schulz_dtype": ""}
    steps, dtype = case.tcfg.muon_backend_steps, muons[0].ns_dtype
    # a 3-D bank (PR #1204's qo/kv/mlp banks) is orthogonalized slice by slice, as Muon does
    grads = [s for p in mats for s in (torch.randn_like(p).unbind(0) if p.dim() == 3
                                       else (torch.randn_like(p),))]
    runs: dict[str, list[float]] = {"newton_schulz_ms": [], "newton_schulz_loop_ms": []}
    for r in range(repeat + 1):  # the first round is a warm-up
        batched = timed(lambda: newton_schulz5_batched(grads, steps, dtype=dtype), device)
        loop = timed(lambda: [newton_schulz5(g, steps, dtype=dtype) for g in grads], device)
        if r:
            runs["newton_schulz_ms"].append(batched)
            runs["newton_schulz_loop_ms"].append(loop)
    return {**{k: _median_ms(v) for k, v in runs.items()},
            "newton_schulz_dtype": str(dtype).removeprefix("torch.")}


def train_row(case: TrainCase, device: torch.device, repeat: int, peak: float) -> dict:
    seq = case.tcfg.train_seq_len
    tokens = case.x.numel()
    step_ms = _median_ms(case.times["step"])
    tok_s = tokens / (step_ms / 1000.0)
    flops = matmul_flops_per_token(case.model, seq)
    counts = count_parameters(case.model)
    return {
        "variant": case.variant, "dtype": case.dtype_name,
        "unique_params": counts["unique"] + counts["shared"],
        "effective_depth": counts["effective_depth"], "tokens_per_step": tokens,
        **{f"{k}_ms": _median_ms(v) for k, v in case.times.items()},
        **_quartiles_ms("step_ms", case.times["step"]),
        **newton_schulz_ms(case, device, repeat),
        "tokens_per_s": tok_s, "flops_per_token": flops, "mfu": flops * tok_s / peak,
        "peak_flops": peak, "first_step_s": case.first_step_s, "loss_last": case.loss,
        "samples_ms": {k: [1000.0 * t for t in v] for k, v in case.times.items()},
    }


def bench_eval(model: GPT, seq_len: int, device: torch.device, n_seqs: int) -> list[dict]:
    vocab = model.cfg.vocab_size
    val = torch.randint(0, vocab, (n_seqs * seq_len + 1,))
    tables = ByteTables(torch.ones(vocab, dtype=torch.int16), torch.zeros(vocab, dtype=torch.bool),
                        torch.zeros(vocab, dtype=torch.bool))
    rows = []
    for stride in (None, seq_len // 4):
        evaluate_bpb(model, val[: 2 * seq_len + 1], seq_len, tables, batch_seqs=8,
                     stride=stride, device=device)  # warm-up
        out = evaluate_bpb(model, val, seq_len, tables, batch_seqs=8, stride=stride,
                           device=device)
        rows.append({"mode": "non-overlapping" if stride is None else f"sliding stride {stride}",
                     "tokens": out["tokens"], "seconds": out["seconds"],
                     "tokens_per_s": out["tokens_per_s"]})
    return rows


def bench_artifacts(state_dict: dict, score: Callable[[dict], float] | None = None,
                    thresholds: tuple[int, ...] = (quant.INT8_KEEP_FLOAT_MAX_NUMEL,)
                    ) -> list[dict]:
    """Bytes, encode/decode seconds (and, with `score`, the val_bpb of the dequantized
    weights) per scheme x compressor x small-tensor threshold, plus upstream's int8+zlib."""
    sd = {k: v.detach().cpu() for k, v in state_dict.items()}
    cases = [("upstream int8", "zlib-9", quant.INT8_KEEP_FLOAT_MAX_NUMEL,
              lambda: quant.upstream_int8_bytes(sd))]
    for keep in thresholds:
        for scheme in ("int8", "int6", "int5", "mixed"):
            policy = quant.resolve_policy(scheme, keep_float_max_numel=keep)
            for comp in ("brotli", "zlib", "lzma"):
                cases.append((scheme, comp, keep,
                              lambda p=policy, c=comp: quant.artifact_bytes(sd, p, c)))
    rows, scored = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for scheme, comp, keep, encode in cases:
            t0 = time.perf_counter()
            blob = encode()
            enc = time.perf_counter() - t0
            path = Path(tmp) / "a.bin"
            path.write_bytes(blob)
            t0 = time.perf_counter()
            loaded = quant.load_artifact(path)
            dec = time.perf_counter() - t0
            row = {"scheme": scheme, "compressor": comp, "keep_float_max_numel": keep,
                   "bytes": len(blob), "encode_s": enc, "decode_s": dec}
            if score is not None:  # same values whatever the compressor: score once
                key = (scheme, keep)
                scored[key] = scored[key] if key in scored else score(loaded)
                row["roundtrip_val_bpb"] = scored[key]
            rows.append(row)
    return rows


def trained_artifacts(run_dir: Path) -> tuple[dict, list[dict]]:
    """The artifact table for a finished run's weights, each row scored on its val set."""
    from golf_core.data import load_validation_tokens
    from golf_core.evaluate import evaluate_bpb, load_byte_tables
    from golf_core.loading import load_model
    from golf_core.runs import load_run

    run = load_run(run_dir)
    t = run.config["train"]
    seq = int(t["train_seq_len"])
    tokens = load_validation_tokens(t["data_path"], seq, int(t.get("val_max_tokens", 0)))
    tables = load_byte_tables(t["tokenizer_path"], int(run.config["model"]["vocab_size"]))
    model = load_model(run_dir)

    def score(sd: dict) -> float:
        return evaluate_bpb(quant.dequantized_copy(model, sd), tokens, seq, tables,
                            batch_seqs=32)["val_bpb"]

    float_bpb = evaluate_bpb(model, tokens, seq, tables, batch_seqs=32)["val_bpb"]
    rows = bench_artifacts(model.state_dict(), score, (quant.INT8_KEEP_FLOAT_MAX_NUMEL, 0))
    for row in rows:
        row["gap_bpb"] = row.get("roundtrip_val_bpb", float("nan")) - float_bpb
    return {"run": str(run_dir), "float_val_bpb": float_bpb}, rows


def _table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
        return f"{v:,}" if isinstance(v, int) else str(v)
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(x.rjust(w) for x, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", default="cpu", choices=["cpu", "upstream"])
    p.add_argument("--variants", default=",".join(DEFAULT_PRESETS),
                   help="comma-separated presets (default: the ones the report trains)")
    p.add_argument("--set", dest="set_items", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every variant after the scale and preset, "
                        "as golf_core.train's --set (e.g. num_layers=2); repeatable")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--autocast", default="auto", choices=["auto", "bf16", "none"],
                   help="auto = bf16 on CUDA; on CPU fp32 and bf16 rows, bf16 only where its "
                        "matmul peak shows bf16 instructions (benchmarks.flops."
                        "bf16_skip_reason)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--threads", type=int, default=0,
                   help="torch.set_num_threads for the run (0 = torch's default, one per core). "
                        "On a shared, oversubscribed CPU 1 is much faster: see README.md")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--eval-seqs", type=int, default=32)
    p.add_argument("--peak-size", type=int, default=1024,
                   help="n of the n x n matmul whose best FLOP/s is the CPU peak for MFU")
    p.add_argument("--out", default="", help="JSON path (default benchmarks/results/...)")
    p.add_argument("--artifacts-of", default="", metavar="RUN_DIR",
                   help="only the artifact table, for a finished run's trained weights: bytes "
                   "per scheme/compressor at upstream's small-tensor threshold and at 0, each "
                   "scored (roundtrip val_bpb) on the run's validation set")
    return p


def _check_args(args: argparse.Namespace) -> str | None:
    """The first problem with the arguments as a message, or None; sets `args.variants_list`
    and `args.sets` (the parsed --set overrides)."""
    args.variants_list = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(args.variants_list) - set(PRESETS))
    if unknown or not args.variants_list:
        return f"--variants: unknown preset(s) {unknown}; known: {', '.join(PRESETS)}"
    if args.threads < 0:
        return f"--threads must be >= 0 (got {args.threads})"
    if args.warmup < 0 or args.repeat < 1 or args.peak_size < 1:
        return (f"--warmup must be >= 0, --repeat and --peak-size >= 1 (got {args.warmup}, "
                f"{args.repeat}, {args.peak_size})")
    try:
        args.sets = parse_set_args(args.set_items)
    except ConfigError as e:
        return str(e)
    for v in args.variants_list:
        try:
            cfg = resolve(scale=args.scale, preset=v, environ={}, sets=args.sets)[0]
            if cfg.family == "golf":
                validate(cfg)
            else:  # a published family's model checks its own options
                with torch.device("meta"):
                    build_model(cfg)
        except ValueError as e:  # ConfigError is one
            return f"variant {v!r} at --scale {args.scale} with --set {args.sets}: {e}"
    if args.device == "cuda" and not torch.cuda.is_available():
        return "--device cuda: no CUDA device is available"
    return None


def _print_tables(result: dict) -> None:
    print(f"\ntrain (median of {result['repeat']} after {result['warmup']} warm-up steps; "
          "step_ms_p25/p75 = interquartile range)")
    print(_table(result["train"], [
        "variant", "dtype", "unique_params", "effective_depth", "step_ms", "step_ms_p25",
        "step_ms_p75", "forward_ms", "backward_ms", "optimizer_ms", "newton_schulz_ms",
        "newton_schulz_loop_ms", "newton_schulz_dtype", "tokens_per_s", "flops_per_token", "mfu"]))
    print("\neval (model of the last train row)")
    print(_table(result["eval"], ["mode", "tokens", "seconds", "tokens_per_s"]))
    print("\nartifact (weights of the last train row)")
    print(_table(result["artifact"], ["scheme", "compressor", "bytes", "encode_s", "decode_s"]))


def _run_artifacts(run_dir: Path, args: argparse.Namespace) -> int:
    """--artifacts-of: the artifact table of a trained run, printed and written as JSON."""
    if not (run_dir / "config.json").is_file():
        print(f"--artifacts-of: {run_dir} is not a run directory (no config.json)",
              file=sys.stderr)
        return 2
    head, rows = trained_artifacts(run_dir)
    print(f"# artifacts of {run_dir.name} (float val_bpb {head['float_val_bpb']:.4f})")
    print(_table(rows, ["scheme", "compressor", "keep_float_max_numel", "bytes", "encode_s",
                        "decode_s", "roundtrip_val_bpb", "gap_bpb"]))
    out = Path(args.out) if args.out else RESULTS / f"artifacts_{run_dir.name}.json"
    _write_json({"machine": machine_info(torch.device("cpu")), **head, "artifact": rows}, out)
    print(f"\nwrote {out}")
    return 0


def cpu_results_path(machine: dict, kind: str, out: str = "") -> Path:
    """Where a CPU benchmark of `kind` writes its JSON: `out` when given, else
    results/<machine>-<vector ISA>_<kind>.json. The ISA is in the name because one model name
    ("AMD EPYC") has come with AVX-512 on one machine and AVX2 on another, and their results
    must not overwrite each other."""
    if out:
        return Path(out)
    isa = torch.backends.cpu.get_cpu_capability()
    return RESULTS / f"{machine_slug(machine['device_name'])}-{isa}_{kind}.json"


def add_timing_args(p: argparse.ArgumentParser, warmup: int, repeat: int) -> None:
    """The options every interleaved CPU timing takes: threads, warm-ups, repeats, JSON path."""
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--repeat", type=int, default=repeat)
    p.add_argument("--out", default="", help="JSON path (default benchmarks/results/...)")


def _write_json(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = _check_args(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    threads = torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.artifacts_of:
            return _run_artifacts(Path(args.artifacts_of), args)
        return _run(args, device)
    finally:
        torch.set_num_threads(threads)  # main() may run in-process (tests)


def _run(args: argparse.Namespace, device: torch.device) -> int:
    cuda = device.type == "cuda"
    info = machine_info(device)
    load_before = os.getloadavg()
    peaks = {name: measured_matmul_peak(device, dt, n=args.peak_size)
             for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    dtypes = {"none": [None], "bf16": [torch.bfloat16],
              "auto": [torch.bfloat16] if cuda else [None, torch.bfloat16]}[args.autocast]
    # auto on a CPU: the bf16 rows only where this CPU has bf16 instructions
    skipped = bf16_skip_reason(device, peaks["fp32"], peaks["bf16"]) \
        if args.autocast == "auto" else ""
    if skipped:
        dtypes.remove(torch.bfloat16)
    sheet = datasheet_peak(info["device_name"]) if cuda else None
    print(f"# {info['device_name']} | torch {info['torch']} | {info['cores']} cores, "
          f"{info['torch_threads']} threads | load "
          f"{load_before[0]:.2f} | measured matmul peak fp32 {peaks['fp32'] / 1e9:.1f} / bf16 "
          f"{peaks['bf16'] / 1e9:.1f} GFLOP/s" + (f" | datasheet {sheet / 1e12:.0f} TFLOP/s"
                                                  if sheet else ""), flush=True)
    if skipped:
        print(f"# {skipped} (--autocast bf16 times them anyway)", flush=True)
    cases = [build_case(v, dt, args, device) for dt in dtypes for v in args.variants_list]
    bench_train(cases, device, args.warmup, args.repeat)
    # MFU against the datasheet on a GPU; on a CPU against the measured matmul peak of the
    # same dtype (no vendor figure applies to a shared cloud core).
    train_rows = [train_row(c, device, args.repeat, sheet or peaks[c.dtype_name]) for c in cases]
    for row in train_rows:
        print(f"  train {row['variant']:14s} {row['dtype']}: {row['step_ms']:.1f} ms/step "
              f"{row['tokens_per_s']:,.0f} tok/s", flush=True)
    model = cases[-1].model
    seq = cases[-1].tcfg.train_seq_len
    result = {"machine": info, "scale": args.scale, "sets": args.sets, "compile": args.compile,
              "warmup": args.warmup, "repeat": args.repeat, "peaks_flops": peaks,
              "peak_matmul_size": args.peak_size, "bf16_skipped": skipped,
              "datasheet_peak_flops": sheet,
              "configs": {v: to_dict(resolve(scale=args.scale, preset=v, environ={},
                                             sets=args.sets)[0]) for v in args.variants_list},
              "train": train_rows, "eval": bench_eval(model, seq, device, args.eval_seqs),
              "artifact": bench_artifacts(model.state_dict())}
    result["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    _print_tables(result)
    out = Path(args.out) if args.out else \
        RESULTS / f"{machine_slug(info['device_name'])}_{args.scale}.json"
    _write_json(result, out)
    print(f"\nload average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}\n"
          f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m benchmarks.families`: each published family's training step beside its PR's own
script, at the widths the studies train (32, 64) and 128.

The script's `GPT` comes from ../shared/reference/<script> (imported as a module, its
`flash_attn_interface` import stood in by `F.scaled_dot_product_attention` on the same (B, T,
H, D) tensors; its `main()` never runs); where that folder is absent the benchmark says so and
exits 0. Both sides build the same model (the family preset at the width, heads of 16 dims,
partial RoPE on 4 of them, recurrence on for PR #1204) from the same seed and train it the
same way: forward, backward and one `torch.optim.Adam` step over every parameter (the
issue's measure of the model's own speed: the Muon split is the optimizer's cost, timed by
benchmarks/run.py), fp32, on one random batch of `--tokens` tokens in sequences of 256.

Cases per (family, width): `script` (the PR's GPT, eager, as its code runs on a CPU), `eager`
(ours, the faithful path), `blocks` (ours, each block compiled: `compile=blocks`), `model`
(ours compiled whole: the fast path `compile=auto` picks for a long run). Every case is warmed
up (the compiles apart, reported as `compile_s`), then timed in rounds, one step of each case a
round, the order rotating, so load from other processes hits all alike. Ratios are the
script's median ms/step over ours. MFU is golf_core.flops' forward+backward matmul FLOPs per
token over the measured fp32 matmul peak of this CPU. Writes
benchmarks/results/<machine>_families.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.flops import measured_matmul_peak
from benchmarks.run import _table, _write_json, add_timing_args, cpu_results_path, machine_info
from golf_core.compile_policy import apply_compile
from golf_core.flops import flops_per_token
from golf_core.model import attention_kernel, build_model, preset

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
# family label -> (our preset, the PR's script)
FAMILIES: dict[str, tuple[str, str]] = {
    "pr1204": ("pr1204", "pr1204_parallel_resid_mini_recur_train_gpt.py"),
    "pr325-3x3": ("pr363-3x3", "pr325_looped_middle_cycle_train_gpt.py"),
}
WIDTHS = (32, 64, 128)
SEQ_LEN = 256
CASES = ("script", "eager", "blocks", "model")


def load_script(name: str, reference: Path = REFERENCE) -> types.ModuleType | None:
    """The PR's script as a module (flash attention stood in), or None where it is absent."""
    path = reference / name
    if not path.is_file():
        return None

    def flash_attn_func(q, k, v, causal=True):  # (B, T, H, D), as flash-attn 3 takes them
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), is_causal=causal,
                                           enable_gqa=k.size(2) != q.size(2))
        return y.transpose(1, 2)

    stand_in = types.ModuleType("flash_attn_interface")
    stand_in.flash_attn_func = flash_attn_func
    saved = sys.modules.get("flash_attn_interface")
    sys.modules["flash_attn_interface"] = stand_in
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop("flash_attn_interface", None)
        else:
            sys.modules["flash_attn_interface"] = saved
    return module


def config_at(preset_name: str, width: int):
    """The family preset at `width`: heads of 16 dims (KV heads half), RoPE on 4 of them."""
    heads = max(2, width // 16)
    return dataclasses.replace(preset(preset_name), model_dim=width, num_heads=heads,
                               num_kv_heads=heads // 2, rope_dims=4)


def script_model(module: types.ModuleType, cfg) -> torch.nn.Module:
    """The script's GPT for `cfg`: its constructor's arguments read off our config (PR #1204
    spells a few its own way), recurrence on."""
    kw = {}
    for name in inspect.signature(module.GPT).parameters:
        if name == "neg_slope":
            kw[name] = cfg.negative_slope
        elif name == "ve_layers":
            kw[name] = ",".join(map(str, cfg.ve_layers))
        elif name == "recurrence_active":
            kw[name] = True
        elif name in ("recur_layers", "repeat_untie_mlp_layers", "canon_ac_layers"):
            kw[name] = list(getattr(cfg, name))
        elif hasattr(cfg, name):
            kw[name] = getattr(cfg, name)
    return module.GPT(**kw)


class Case:
    def __init__(self, name: str, model: torch.nn.Module, fn, x, y) -> None:
        self.name, self.model, self.fn, self.x, self.y = name, model, fn, x, y
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        self.times: list[float] = []
        self.compile_s = 0.0

    def step(self) -> float:
        t0 = time.perf_counter()
        loss = self.fn(self.x, self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0


def build_cases(family: str, width: int, module, tokens: int, cases: tuple[str, ...]):
    preset_name, _ = FAMILIES[family]
    cfg = config_at(preset_name, width)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (tokens // SEQ_LEN, SEQ_LEN), generator=gen)
    y = torch.randint(0, cfg.vocab_size, (tokens // SEQ_LEN, SEQ_LEN), generator=gen)
    out, flops = [], 0.0
    for name in cases:
        torch.manual_seed(0)
        if name == "script":
            model = script_model(module, cfg)
            out.append(Case(name, model, model, x, y))
            continue
        model = build_model(cfg)
        if hasattr(model, "set_recurrence_active"):
            model.set_recurrence_active(True)
        flops = flops_per_token(model, SEQ_LEN)
        fn = apply_compile(model, {"eager": "none"}.get(name, name))
        out.append(Case(name, model, fn, x, y))
    return cfg, out, flops


def bench(family: str, width: int, module, args, peak: float) -> list[dict]:
    torch._dynamo.reset()
    cfg, cases, flops = build_cases(family, width, module, args.tokens, tuple(args.cases))
    for case in cases:  # warm-up; the first call of a compiled case is its compile
        t0 = time.perf_counter()
        case.step()
        case.compile_s = time.perf_counter() - t0 if case.name in ("blocks", "model") else 0.0
        for _ in range(args.warmup):
            case.step()
    for r in range(args.repeat):
        for case in cases[r % len(cases):] + cases[:r % len(cases)]:
            case.times.append(case.step())
    base = {c.name: statistics.median(c.times) for c in cases}
    rows = []
    for case in cases:
        ms = base[case.name]
        tps = args.tokens / ms
        rows.append({
            "family": family, "width": width, "heads": cfg.num_heads, "case": case.name,
            "ms_per_step": 1e3 * ms, "tokens_per_s": tps,
            "mfu": flops * tps / peak if flops else float("nan"),
            "vs_script": base["script"] / ms if "script" in base else float("nan"),
            "compile_s": case.compile_s, "samples_ms": [1e3 * t for t in case.times],
        })  # fmt: skip
    return rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.families", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default=",".join(FAMILIES),
                   help=f"comma-separated, of {', '.join(FAMILIES)}")
    p.add_argument("--widths", default=",".join(map(str, WIDTHS)))
    p.add_argument("--cases", default=",".join(CASES), help=f"of {', '.join(CASES)}")
    p.add_argument("--tokens", type=int, default=4096, help="tokens a step (sequences of 256)")
    add_timing_args(p, warmup=2, repeat=8)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    args.cases = [c for c in args.cases.split(",") if c]
    bad = sorted(set(families) - set(FAMILIES)) + sorted(set(args.cases) - set(CASES))
    if bad or args.tokens % SEQ_LEN or args.tokens <= 0:
        print(f"benchmarks.families: unknown {bad} or --tokens {args.tokens} not a positive "
              f"multiple of {SEQ_LEN}", file=sys.stderr)
        return 2
    try:
        widths = [int(w) for w in args.widths.split(",") if w]
    except ValueError:
        print(f"benchmarks.families: --widths {args.widths!r}: integers", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    modules = {f: load_script(FAMILIES[f][1]) for f in families}
    if "script" in args.cases and any(m is None for m in modules.values()):
        print(f"benchmarks.families: skipped: the PRs' scripts are not in {REFERENCE} "
              "(they live in ../shared/reference)")
        return 0
    peak = measured_matmul_peak(torch.device("cpu"), torch.float32)
    load0 = os.getloadavg()
    rows = []
    for family in families:
        for width in widths:
            rows += bench(family, width, modules[family], args, peak)
            print(_table([r for r in rows[-len(args.cases):]],
                         ["family", "width", "case", "ms_per_step", "tokens_per_s", "mfu",
                          "vs_script", "compile_s"]), flush=True)
    machine = machine_info(torch.device("cpu"))
    result = {"machine": machine, "threads": torch.get_num_threads(), "tokens": args.tokens,
              "seq_len": SEQ_LEN, "optimizer": "Adam (every parameter)", "dtype": "float32",
              "attention": attention_kernel.kernel_mode(), "peak_flops": peak,
              "loadavg_before": load0, "loadavg_after": os.getloadavg(),
              "rows": rows}  # fmt: skip
    out = cpu_results_path(machine, "families", args.out)
    _write_json(result, out)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

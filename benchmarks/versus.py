"""`python -m benchmarks.versus`: our training step side by side with upstream's own.

Upstream's `GPT` and `Muon` come from ../shared/reference/upstream_baseline_train_gpt.py (the
parameter-golf baseline script), imported as a module; where that file is absent the benchmark
says so and exits 0 (a user's clone has no ../shared). Both sides train the same baseline
shape (U-Net GPT, tied embedding) on the same random batch with upstream's optimizer split
(Adam for the embedding and the control tensors, Muon for the block matrices).

Cases, per config:

* `ours`: `golf_core.model.build_model` + `golf_core.optim.build_optimizers`, eager, dtypes as
  `autocast=auto` and `muon_ns_dtype=auto` pick them for an eager run on this machine
  (golf_core/precision.py: bf16 autocast only where a block measured faster in it, its
  attention in fp32 where the bf16 attention kernel measured slower);
* `ours blocks` (`--compile blocks`, the default of `make bench`): the same with each block
  torch.compile'd, as `compile=blocks` trains, its dtype picked by the compiled probe;
* `ours model` (`--compile blocks`): the whole model compiled, as `compile=model` trains;
* `upstream fp32` / `upstream bf16`: its `GPT` + `Muon` + `torch.optim.Adam` as its `main()`
  builds them, eager, in fp32 and under bf16 autocast;
* `upstream compiled fp32` / `upstream compiled bf16` (`--compile blocks`): the same as its
  `main()` runs them: `torch.compile(model, dynamic=False, fullgraph=True)` and its
  Newton-Schulz compiled (a second copy of the module, so the eager cases stay eager).
  Upstream's bf16 cases are left out, saying so, where a short matmul test shows this CPU
  emulating bf16 (`--bf16 auto`; an AVX2-only CPU or `CPU_ISA=avx2`): there its bf16 step is
  ~100x its fp32 one, so fp32 is its faster dtype.

Ratios (upstream's median ms/step over ours): `ratio` = upstream's faster eager dtype over our
eager step; `ratio_compiled` = upstream's faster compiled dtype over our compiled blocks;
`ratio_model` = the same over our compiled model; `ratio_best` = the fastest upstream case over
our fastest. Compile times (the first step) are
reported apart (`*_compile_s`, cold or warm as the inductor cache under
TORCHINDUCTOR_CACHE_DIR is).

Every case is warmed up, then timed in rounds (one step of each case per round, the order
rotating), so load from other processes hits all alike. MFU uses golf_core/flops.py's FLOPs per
token over the measured fp32 matmul peak of this CPU (on a GPU, `--device cuda`, its datasheet
bf16 peak). Writes benchmarks/results/<device-name>_versus.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from benchmarks.flops import (
    bf16_skip_reason,
    datasheet_peak,
    matmul_flops_per_token,
    measured_matmul_peak,
)
from benchmarks.run import RESULTS, _sync, _table, _write_json, machine_info
from golf_core import precision
from golf_core.compile_policy import apply_compile
from golf_core.config import ModelConfig, TrainConfig
from golf_core.distributed import pick_autocast
from golf_core.model import build_model, layers
from golf_core.optim import build_optimizers
from golf_core.runs import machine_slug

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
UPSTREAM_SCRIPT = "upstream_baseline_train_gpt.py"

# The report's configs: width 64-128, 4-13 layers, 2k-8k tokens a step (seq 256).
CONFIGS: dict[str, dict] = {
    "4x128-2k": dict(num_layers=4, model_dim=128, tokens=2048),
    "9x64-2k": dict(num_layers=9, model_dim=64, tokens=2048),
    "11x64-4k": dict(num_layers=11, model_dim=64, tokens=4096),
    "13x128-8k": dict(num_layers=13, model_dim=128, tokens=8192),
    # a GPU: upstream's baseline width and one micro-batch of its 8-way split (--device cuda)
    "gpu-9x512-64k": dict(num_layers=9, model_dim=512, tokens=65536, seq_len=1024,
                          num_heads=8, num_kv_heads=4),
}
CPU_CONFIGS = tuple(c for c in CONFIGS if not c.startswith("gpu"))
SEQ_LEN = 256


def load_upstream(reference: Path = REFERENCE) -> ModuleType | None:
    """The upstream baseline script as a module, or None where it is not on disk."""
    path = reference / UPSTREAM_SCRIPT
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("upstream_baseline_train_gpt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines classes; its main() runs only as __main__
    return module


def model_config(num_layers: int, model_dim: int, num_heads: int = 4,
                 num_kv_heads: int = 2) -> ModelConfig:
    return ModelConfig(num_layers=num_layers, model_dim=model_dim, num_heads=num_heads,
                       num_kv_heads=num_kv_heads, mlp_mult=2, vocab_size=1024)


class Case:
    """One side of the comparison: a model, its optimizers, a batch and its step times."""

    def __init__(self, name: str, model: torch.nn.Module, optimizers: list,
                 dtype: torch.dtype | None, x: torch.Tensor, y: torch.Tensor,
                 attention_fp32: bool = False, why: str = "") -> None:
        self.name, self.model, self.optimizers, self.dtype = name, model, optimizers, dtype
        self.x, self.y, self.attention_fp32, self.why = x, y, attention_fp32, why
        self.times: list[float] = []

    def step(self) -> float:
        device = self.x.device
        _sync(device)
        t0 = time.perf_counter()
        cast = (torch.autocast(device.type, dtype=self.dtype) if self.dtype is not None
                else contextlib.nullcontext())
        with cast, layers.attention_fp32(self.attention_fp32):
            loss = self.model(self.x, self.y)
        loss.backward()
        for opt in self.optimizers:
            opt.step()
        self.model.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - t0


def ours(cfg: ModelConfig, tcfg: TrainConfig, x, y) -> Case:
    """Our model and optimizers as golf_core.train builds them for `tcfg` (its `compile`
    decides whether the dtype probe runs compiled; the compiling itself is `compiled`)."""
    torch.manual_seed(0)
    model = build_model(cfg).to(x.device)
    shape = precision.ProbeShape.of(cfg, tcfg, x.numel())
    dtype, why = pick_autocast(x.device, tcfg.autocast, shape)
    return Case("ours", model, build_optimizers(model, tcfg), dtype, x, y,
                attention_fp32=layers.cpu_attention_fp32(), why=why)


def upstream_case(up: ModuleType, cfg: ModelConfig, tcfg: TrainConfig, dtype, x, y) -> Case:
    """Upstream's model and optimizers as its main() builds them (CPU: fp32 parameters)."""
    torch.manual_seed(0)
    model = up.GPT(vocab_size=cfg.vocab_size, num_layers=cfg.num_layers,
                   model_dim=cfg.model_dim, num_heads=cfg.num_heads,
                   num_kv_heads=cfg.num_kv_heads, mlp_mult=cfg.mlp_mult,
                   tie_embeddings=cfg.tie_embeddings, tied_embed_init_std=cfg.tied_embed_init_std,
                   logit_softcap=cfg.logit_softcap, rope_base=cfg.rope_base,
                   qk_gain_init=cfg.qk_gain_init).to(x.device)
    named = list(model.blocks.named_parameters())
    patterns = up.CONTROL_TENSOR_NAME_PATTERNS
    matrix = [p for n, p in named if p.ndim == 2 and not any(s in n for s in patterns)]
    scalar = [p for n, p in named if p.ndim < 2 or any(s in n for s in patterns)]
    scalar.append(model.skip_weights)

    def adam(params, lr):
        try:  # upstream asks for fused Adam; use it where this torch has it on CPU
            return torch.optim.Adam(params, lr=lr, betas=(tcfg.beta1, tcfg.beta2),
                                    eps=tcfg.adam_eps, fused=True)
        except RuntimeError:
            return torch.optim.Adam(params, lr=lr, betas=(tcfg.beta1, tcfg.beta2),
                                    eps=tcfg.adam_eps)

    opts = [adam([model.tok_emb.weight], tcfg.tied_embed_lr),
            up.Muon(matrix, lr=tcfg.matrix_lr, momentum=tcfg.muon_momentum,
                    backend_steps=tcfg.muon_backend_steps),
            adam(scalar, tcfg.scalar_lr)]
    name = "upstream " + ("bf16" if dtype is not None else "fp32")
    return Case(name, model, opts, dtype, x, y)


def upstream_compiled(up: ModuleType, cfg: ModelConfig, tcfg: TrainConfig, dtype, x, y
                      ) -> tuple[Case, float]:
    """`upstream_case` compiled as upstream's main() does it (`up` must be a module copy
    whose Newton-Schulz was compiled, see `compare`), and its first step's seconds."""
    case = upstream_case(up, cfg, tcfg, dtype, x, y)
    case.name = case.name.replace("upstream", "upstream compiled")
    case.model = torch.compile(case.model, dynamic=False, fullgraph=True)
    first = case.step()
    return case, first


def rounds(cases: list[Case], warmup: int, repeat: int) -> None:
    for case in cases:
        for _ in range(warmup):
            case.step()
    for r in range(repeat):
        for k in range(len(cases)):
            case = cases[(r + k) % len(cases)]
            case.times.append(case.step())


def compiled(case: Case, mode: str) -> tuple[Case, float]:
    """`case` compiled as golf_core.train's `compile=<mode>` (blocks | model) compiles it, and
    the seconds its first step took (the compile, on this inductor cache)."""
    case.name = f"ours {mode}"
    case.model = apply_compile(case.model, mode)
    first = case.step()
    return case, first


def compare(load: Callable[[], ModuleType], name: str, spec: dict, warmup: int, repeat: int,
            peak: float, device: torch.device, compile_blocks: bool = False,
            bf16: bool = True) -> dict:
    """One config's row. `load` returns the upstream module; with `compile_blocks` it must
    return a fresh copy each call (`load_upstream` does), so that the compiled cases' compiled
    Newton-Schulz does not reach the eager ones. `bf16=False` leaves out upstream's bf16
    cases (their `_ms` are None): on a CPU that emulates bf16, fp32 is upstream's faster
    dtype by two orders of magnitude (benchmarks.flops.bf16_skip_reason)."""
    seq = spec.get("seq_len", SEQ_LEN)
    cfg = model_config(spec["num_layers"], spec["model_dim"], spec.get("num_heads", 4),
                       spec.get("num_kv_heads", 2))
    tcfg = TrainConfig(micro_batch_tokens=spec["tokens"], train_batch_tokens=spec["tokens"],
                       train_seq_len=seq)
    gen = torch.Generator().manual_seed(0)
    shape = (spec["tokens"] // seq, seq)
    x = torch.randint(0, cfg.vocab_size, shape, generator=gen).to(device)
    y = torch.randint(0, cfg.vocab_size, shape, generator=gen).to(device)
    eager_up = load()
    up_dtypes = (None, torch.bfloat16) if bf16 else (None,)
    cases = [ours(cfg, tcfg, x, y),
             *(upstream_case(eager_up, cfg, tcfg, dt, x, y) for dt in up_dtypes)]
    first: dict[str, float] = {}
    if compile_blocks:
        for mode in ("blocks", "model"):
            case, first[f"ours {mode}"] = compiled(
                ours(cfg, dataclasses.replace(tcfg, compile=mode), x, y), mode)
            cases.append(case)
        compiled_up = load()
        compiled_up.zeropower_via_newtonschulz5 = torch.compile(
            compiled_up.zeropower_via_newtonschulz5)
        for dtype in up_dtypes:
            case, s = upstream_compiled(compiled_up, cfg, tcfg, dtype, x, y)
            cases.append(case)
            first[case.name] = s
    rounds(cases, warmup, repeat)
    med = {c.name: 1000.0 * statistics.median(c.times) for c in cases}
    by_name = {c.name: c for c in cases}
    ups = [n for n in med if n.startswith("upstream")]
    best_eager = min((n for n in ups if "compiled" not in n), key=med.get)
    flops = matmul_flops_per_token(cases[0].model, seq)

    def mfu(case: str) -> float:
        return flops * spec["tokens"] / (med[case] / 1000.0) / peak

    def dtype_of(case: Case) -> str:
        if case.dtype is None:
            return "fp32"
        return "bf16, fp32 attention" if case.attention_fp32 else "bf16"

    row = {
        "config": name, **spec, "seq_len": seq, "device": str(device),
        "ours_ms": med["ours"], "ours_dtype": dtype_of(cases[0]),
        "ours_dtype_why": cases[0].why,
        "ours_ns_dtype": str(cases[0].optimizers[-2].ns_dtype).removeprefix("torch."),
        "upstream_fp32_ms": med["upstream fp32"], "upstream_bf16_ms": med.get("upstream bf16"),
        "upstream_best": best_eager.split()[1], "ratio": med[best_eager] / med["ours"],
        "ours_tokens_per_s": spec["tokens"] / (med["ours"] / 1000.0),
        "upstream_tokens_per_s": spec["tokens"] / (med[best_eager] / 1000.0),
        "flops_per_token": flops, "ours_mfu": mfu("ours"),
    }
    if compile_blocks:
        b = by_name["ours blocks"]
        best_comp = min((n for n in ups if "compiled" in n), key=med.get)
        best_up = min(ups, key=med.get)
        best_ours = min(("ours", "ours blocks", "ours model"), key=med.get)
        m = by_name["ours model"]
        row.update({
            "ours_blocks_ms": med["ours blocks"], "ours_blocks_dtype": dtype_of(b),
            "ours_blocks_dtype_why": b.why,
            "ours_blocks_compile_s": first["ours blocks"],
            "ours_model_ms": med["ours model"], "ours_model_dtype": dtype_of(m),
            "ours_model_compile_s": first["ours model"],
            "ratio_model": med[best_comp] / med["ours model"],
            "upstream_compiled_fp32_ms": med["upstream compiled fp32"],
            "upstream_compiled_bf16_ms": med.get("upstream compiled bf16"),
            "upstream_compiled_compile_s": {n: first[n] for n in first if n.startswith("up")},
            "ratio_compiled": med[best_comp] / med["ours blocks"],
            "upstream_best_case": best_up, "ours_best_case": best_ours,
            "ratio_best": med[best_up] / med[best_ours],
            "ours_blocks_mfu": mfu("ours blocks"), "ours_best_mfu": mfu(best_ours),
        })
    row["samples_ms"] = {c.name: [1000.0 * t for t in c.times] for c in cases}
    return row


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.versus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(CPU_CONFIGS),
                   help=f"comma-separated, of {', '.join(CONFIGS)} (default: the CPU ones)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=8)
    p.add_argument("--reference", default=str(REFERENCE),
                   help="folder holding upstream_baseline_train_gpt.py")
    p.add_argument("--compile", default="none", choices=["none", "blocks"],
                   help="blocks: also time ours with each block torch.compile'd (golf_core.train's "
                   "compile=blocks) and upstream compiled as its main() compiles it; first steps "
                   "(the compiles) are reported apart")
    p.add_argument("--bf16", default="auto", choices=["auto", "on"],
                   help="auto: time upstream's bf16 cases only where this CPU has bf16 "
                   "instructions (benchmarks.flops.bf16_skip_reason; always on CUDA); on: always")
    p.add_argument("--out", default="", help="JSON path (default results/<cpu>_versus.json)")
    return p


def main(argv: list[str] | None = None, echo: Callable[[str], None] = print) -> int:
    args = _parser().parse_args(argv)
    names = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown or not names:
        echo(f"--configs: unknown {unknown}; known: {', '.join(CONFIGS)}")
        return 2
    if args.warmup < 0 or args.repeat < 1:
        echo(f"--warmup must be >= 0 and --repeat >= 1 (got {args.warmup}, {args.repeat})")
        return 2
    up = load_upstream(Path(args.reference))
    if up is None:
        echo(f"skipped: {Path(args.reference) / UPSTREAM_SCRIPT} not found (the side-by-side "
             "needs the upstream script from ../shared/reference)")
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        echo("--device cuda: no CUDA device is available")
        return 2
    info = machine_info(device)
    # MFU: on a GPU against its datasheet bf16 peak; on a CPU against the measured fp32 peak
    peak = (datasheet_peak(info["device_name"]) if device.type == "cuda" else None) or \
        measured_matmul_peak(device, torch.float32)
    skipped = ""
    if args.bf16 == "auto" and device.type == "cpu":  # a short test at n=512, not the peak
        skipped = bf16_skip_reason(device, measured_matmul_peak(device, torch.float32, 512, 3),
                                   measured_matmul_peak(device, torch.bfloat16, 512, 3))
    load_before = os.getloadavg()
    echo(f"# {info['cpu']} | torch {info['torch']} | {info['torch_threads']} threads | load "
         f"{load_before[0]:.2f} | MFU peak {peak / 1e9:.1f} GFLOP/s")
    if skipped:
        echo(f"# {skipped} (--bf16 on times them anyway)")
    rows = []
    compile_too = args.compile == "blocks"
    for name in names:
        # every config compiles the same block code again at its own shapes: start each with
        # dynamo's caches empty, or its recompile limit (8) sends later configs to eager
        torch._dynamo.reset()
        rows.append(compare(lambda: load_upstream(Path(args.reference)), name, CONFIGS[name],
                            args.warmup, args.repeat, peak, device, compile_blocks=compile_too,
                            bf16=not skipped))
        r = rows[-1]
        r["probes"] = precision.probes()
        echo(f"  {name}: ours {r['ours_ms']:.1f} ms ({r['ours_dtype']}, NS {r['ours_ns_dtype']})"
             f" | upstream fp32 {r['upstream_fp32_ms']:.1f} / bf16 {_ms(r['upstream_bf16_ms'])}"
             f" ms | ratio {r['ratio']:.2f}x" + (
                 f" | ours blocks {r['ours_blocks_ms']:.1f} ms ({r['ours_blocks_dtype']}) vs "
                 f"upstream compiled {r['upstream_compiled_fp32_ms']:.1f} / "
                 f"{_ms(r['upstream_compiled_bf16_ms'])} ms: {r['ratio_compiled']:.2f}x | ours "
                 f"model {r['ours_model_ms']:.1f} ms: {r['ratio_model']:.2f}x | best "
                 f"{r['ratio_best']:.2f}x" if compile_too else ""))
    blocks = ["ours_blocks_ms", "ours_blocks_dtype", "ours_model_ms",
              "upstream_compiled_fp32_ms", "upstream_compiled_bf16_ms", "ratio_compiled",
              "ratio_model", "ratio_best", "ours_best_mfu"]
    echo("\n" + _table(rows, ["config", "ours_ms", "ours_dtype", "ours_ns_dtype",
                              "upstream_fp32_ms", "upstream_bf16_ms", "ratio",
                              *(blocks if compile_too else []),
                              "ours_tokens_per_s", "ours_mfu"]))
    out = Path(args.out) if args.out else \
        RESULTS / f"{machine_slug(info['device_name'])}_versus.json"
    _write_json({"machine": info, "peak_flops": peak, "bf16_skipped": skipped,
                 "warmup": args.warmup, "repeat": args.repeat, "compile": args.compile,
                 "rows": rows,
                 "load_average": {"before": list(load_before),
                                  "after": list(os.getloadavg())}}, out)
    echo(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

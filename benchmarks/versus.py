"""`python -m benchmarks.versus`: our training step side by side with upstream's own.

Upstream's `GPT` and `Muon` come from ../shared/reference/upstream_baseline_train_gpt.py (the
parameter-golf baseline script), imported as a module; where that file is absent the benchmark
says so and exits 0 (a user's clone has no ../shared). Both sides train the same baseline
shape (U-Net GPT, tied embedding) on the same random batch with upstream's optimizer split
(Adam for the embedding and the control tensors, Muon for the block matrices):

* ours: `golf_core.model.build_model` + `golf_core.optim.build_optimizers`, dtypes as
  `autocast=auto` and `muon_ns_dtype=auto` pick them on this machine (golf_core/precision.py);
* upstream: its `GPT` + `Muon` + `torch.optim.Adam` as its `main()` builds them, timed both in
  fp32 and under bf16 autocast; the faster of the two is the reference ("upstream at its
  faster dtype on this CPU").

`--compile blocks` adds a fourth case, ours with each block torch.compile'd (the training
setting `compile=blocks`); its first step, the compile, is reported apart (`ours_blocks_compile_s`,
cold or warm as the inductor cache under TORCHINDUCTOR_CACHE_DIR is) and `ratio_blocks` is
upstream's best over it.

Every case is warmed up, then timed in rounds (one step of each case per round, the order
rotating), so load from other processes hits all alike. `ratio` = upstream's best median
ms/step / ours. MFU uses golf_core/flops.py's FLOPs per token over the measured fp32 matmul
peak of this CPU (on a GPU, `--device cuda`, its datasheet bf16 peak). Writes
benchmarks/results/<device-name>_versus.json.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from benchmarks.flops import datasheet_peak, matmul_flops_per_token, measured_matmul_peak
from benchmarks.run import RESULTS, _sync, _table, _write_json, machine_info
from golf_core import precision
from golf_core.config import ModelConfig, TrainConfig
from golf_core.distributed import pick_autocast
from golf_core.model import build_model
from golf_core.optim import build_optimizers

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
                 dtype: torch.dtype | None, x: torch.Tensor, y: torch.Tensor) -> None:
        self.name, self.model, self.optimizers, self.dtype = name, model, optimizers, dtype
        self.x, self.y = x, y
        self.times: list[float] = []

    def step(self) -> float:
        device = self.x.device
        _sync(device)
        t0 = time.perf_counter()
        cast = (torch.autocast(device.type, dtype=self.dtype) if self.dtype is not None
                else contextlib.nullcontext())
        with cast:
            loss = self.model(self.x, self.y)
        loss.backward()
        for opt in self.optimizers:
            opt.step()
        self.model.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - t0


def ours(cfg: ModelConfig, tcfg: TrainConfig, x, y) -> Case:
    torch.manual_seed(0)
    model = build_model(cfg).to(x.device)
    shape = precision.ProbeShape.of(cfg, tcfg, x.numel())
    dtype, _ = pick_autocast(x.device, tcfg.autocast, shape)
    return Case("ours", model, build_optimizers(model, tcfg), dtype, x, y)


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


def rounds(cases: list[Case], warmup: int, repeat: int) -> None:
    for case in cases:
        for _ in range(warmup):
            case.step()
    for r in range(repeat):
        for k in range(len(cases)):
            case = cases[(r + k) % len(cases)]
            case.times.append(case.step())


def compiled_blocks(case: Case) -> tuple[Case, float]:
    """`case` with each block compiled in place (`compile=blocks` of golf_core.train) and the
    seconds its first step took (the compile, on this inductor cache)."""
    case.name = "ours blocks"
    for block in case.model.blocks:
        block.compile()
    first = case.step()
    case.times.clear()
    return case, first


def compare(up: ModuleType, name: str, spec: dict, warmup: int, repeat: int,
            peak: float, device: torch.device, compile_blocks: bool = False) -> dict:
    seq = spec.get("seq_len", SEQ_LEN)
    cfg = model_config(spec["num_layers"], spec["model_dim"], spec.get("num_heads", 4),
                       spec.get("num_kv_heads", 2))
    tcfg = TrainConfig(micro_batch_tokens=spec["tokens"], train_batch_tokens=spec["tokens"],
                       train_seq_len=seq)
    gen = torch.Generator().manual_seed(0)
    shape = (spec["tokens"] // seq, seq)
    x = torch.randint(0, cfg.vocab_size, shape, generator=gen).to(device)
    y = torch.randint(0, cfg.vocab_size, shape, generator=gen).to(device)
    cases = [ours(cfg, tcfg, x, y),
             upstream_case(up, cfg, tcfg, None, x, y),
             upstream_case(up, cfg, tcfg, torch.bfloat16, x, y)]
    extra: dict = {}
    if compile_blocks:
        blocks, extra["ours_blocks_compile_s"] = compiled_blocks(ours(cfg, tcfg, x, y))
        cases.append(blocks)
    rounds(cases, warmup, repeat)
    med = {c.name: 1000.0 * statistics.median(c.times) for c in cases}
    best_up = min(("upstream fp32", "upstream bf16"), key=med.get)
    flops = matmul_flops_per_token(cases[0].model, seq)
    tok_s = spec["tokens"] / (med["ours"] / 1000.0)
    return {
        "config": name, **spec, "seq_len": seq, "device": str(device),
        "ours_ms": med["ours"], "ours_dtype": "bf16" if cases[0].dtype else "fp32",
        "ours_ns_dtype": str(cases[0].optimizers[-2].ns_dtype).removeprefix("torch."),
        "upstream_fp32_ms": med["upstream fp32"], "upstream_bf16_ms": med["upstream bf16"],
        "upstream_best": best_up.split()[1], "ratio": med[best_up] / med["ours"],
        "ours_tokens_per_s": tok_s,
        "upstream_tokens_per_s": spec["tokens"] / (med[best_up] / 1000.0),
        "flops_per_token": flops, "ours_mfu": flops * tok_s / peak,
        **({"ours_blocks_ms": med["ours blocks"], "ratio_blocks": med[best_up] / med["ours blocks"],
            **extra} if compile_blocks else {}),
        "samples_ms": {c.name: [1000.0 * t for t in c.times] for c in cases},
    }


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
                   "compile=blocks); its first step (the compile) is reported apart")
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
    load_before = os.getloadavg()
    echo(f"# {info['cpu']} | torch {info['torch']} | {info['torch_threads']} threads | load "
         f"{load_before[0]:.2f} | MFU peak {peak / 1e9:.1f} GFLOP/s")
    rows = []
    for name in names:
        rows.append(compare(up, name, CONFIGS[name], args.warmup, args.repeat, peak, device,
                            compile_blocks=args.compile == "blocks"))
        r = rows[-1]
        r["probes"] = precision.probes()
        echo(f"  {name}: ours {r['ours_ms']:.1f} ms ({r['ours_dtype']}, NS {r['ours_ns_dtype']})"
             f" | upstream fp32 {r['upstream_fp32_ms']:.1f} / bf16 {r['upstream_bf16_ms']:.1f}"
             f" ms | ratio {r['ratio']:.2f}x" + (
                 f" | ours blocks {r['ours_blocks_ms']:.1f} ms, ratio {r['ratio_blocks']:.2f}x"
                 f" (compile {r['ours_blocks_compile_s']:.1f} s)" if "ratio_blocks" in r else ""))
    blocks = ["ours_blocks_ms", "ratio_blocks", "ours_blocks_compile_s"]
    echo("\n" + _table(rows, ["config", "ours_ms", "ours_dtype", "ours_ns_dtype",
                              "upstream_fp32_ms", "upstream_bf16_ms", "ratio",
                              *(blocks if args.compile == "blocks" else []),
                              "ours_tokens_per_s", "ours_mfu"]))
    slug = "".join(c if c.isalnum() else "-" for c in info["device_name"]).strip("-")[:40]
    out = Path(args.out) if args.out else RESULTS / f"{slug}_versus.json"
    _write_json({"machine": info, "peak_flops": peak,
                 "warmup": args.warmup, "repeat": args.repeat, "compile": args.compile,
                 "rows": rows,
                 "load_average": {"before": list(load_before),
                                  "after": list(os.getloadavg())}}, out)
    echo(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m benchmarks.kernels`: each of our CPU kernels beside the path it replaces, forward +
backward, at the shapes the families train.

Cases (each a (kernel, reference) pair on the same inputs, fp32):
- `attention`: golf::causal_attention against `F.scaled_dot_product_attention` (causal, GQA),
  at (batch, heads, kv heads, T, head dim) = (16, 2, 1, 256, 8 / 16), (16, 4, 2, 256, 16),
  (8, 2, 1, 512, 32);
- `cross_entropy`: golf::softcap_cross_entropy against `F.cross_entropy(cap * tanh(x / cap), y)`
  on (4,096, 1,024) logits;
- `head`: the head fused into the loss (golf::softcap_head_cross_entropy) against `F.linear` +
  the cross-entropy kernel, at (4,096 x width) x 1,024, widths 32 and 64.

Kernel and reference are timed in alternating order, `--repeat` times each after `--warmup`,
so load from other processes hits both alike; the table gives the medians and the speed-up,
the JSON (benchmarks/results/<machine>_kernels.json) every sample. Where a kernel is not built
(no C++ compiler) its rows say so and the reference alone is timed.

Page faults are kept out (on glibc): glibc hands a freed buffer of a few MB back to the OS, so
a loop that allocates the same large tensors each call (the 16 MB logits and their gradient in
the cross-entropy reference) pays page faults that a compiled training step, whose buffers
stay mapped, does not (PR #1204's at width 32 takes none; one 4.5 MB tensor filled fresh took
1.5-1.9 ms here against ~0.2 ms reused). The benchmark asks glibc to keep freed memory
(`mallopt`: no mmap below 32 MiB, no trimming), for both sides alike; the JSON says whether it
could (`malloc`). Before session 14 it did not: the references' faults had
lifted the cross-entropy kernel's speed-up to 3.5-4.8x, against ~3.4x without them.

`--against REV` times our kernels against themselves as built from git revision REV (their
csrc sources and headers at REV) instead of PyTorch's paths, alternating the two builds in
one process, and says whether both gave the same bits. That is the A/B a kernel change needs
here: this VM's speed drifts up to 1.4x between processes minutes apart (session 11), so two
processes timed one after the other cannot show a 5-10% change. JSON:
benchmarks/results/<machine>_kernels-against-<REV>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from benchmarks.run import _table, _write_json, add_timing_args, cpu_results_path, machine_info
from golf_core.model import attention_kernel, cpu_build, softcap_ce_kernel

CAP = 30.0
ATTENTION_SHAPES = ((16, 2, 1, 256, 8), (16, 2, 1, 256, 16), (16, 4, 2, 256, 16),
                    (8, 2, 1, 512, 32))
HEAD_WIDTHS = (32, 64)
CASES = ("attention", "cross_entropy", "head")


def _fwd_bwd(fn: Callable[[], torch.Tensor], inputs: tuple[torch.Tensor, ...],
             grad: torch.Tensor | None = None) -> Callable[[], tuple[torch.Tensor, ...]]:
    def step() -> tuple[torch.Tensor, ...]:  # the output and its input gradients
        out = fn()
        return (out.detach(), *torch.autograd.grad(out, inputs, grad if out.dim() else None))
    return step


REPO = Path(__file__).resolve().parent.parent
MODULES = {"attention": attention_kernel, "cross_entropy": softcap_ce_kernel,
           "head": softcap_ce_kernel}


class AgainstError(Exception):
    """--against REV cannot be built: the message says why, in one line."""


def build_at(rev: str, module: ModuleType) -> ctypes.CDLL:
    """`module`'s kernel built from its source and csrc's headers as they are at git revision
    `rev` (copied to a temporary folder, removed after the build, which lands in the kernel
    cache like any other)."""
    csrc = module.SOURCE.parent.relative_to(REPO).as_posix()
    listed = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", f"{rev}:{csrc}"],
                            capture_output=True, text=True)
    if listed.returncode != 0:
        last = (listed.stderr.strip().splitlines() or ["no output"])[-1]
        raise AgainstError(f"--against {rev}: git cannot list {csrc} at it ({last})")
    names = [n for n in listed.stdout.split() if n == module.SOURCE.name or n.endswith(".h")]
    if module.SOURCE.name not in names:
        raise AgainstError(f"--against {rev}: {csrc}/{module.SOURCE.name} does not exist there")
    with tempfile.TemporaryDirectory(prefix="golf-kernel-") as tmp:  # the build is cached
        folder = Path(tmp)
        for name in names:
            text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{csrc}/{name}"],
                                  capture_output=True, text=True, check=True).stdout
            (folder / name).write_text(text)
        lib = cpu_build.load(folder / module.SOURCE.name, *module.BUILD)
    if lib is None:
        raise AgainstError(f"--against {rev}: {module.SOURCE.name} at it did not build")
    return lib


@contextlib.contextmanager
def _built(module: ModuleType, lib: ctypes.CDLL) -> Iterator[None]:
    """`module`'s ops call `lib` inside the block (they look up `_library()` on each call)."""
    saved = module._library
    module._library = lambda: lib
    try:
        yield
    finally:
        module._library = saved


def _at(module: ModuleType, lib: ctypes.CDLL, fn: Callable[[], tuple]) -> Callable[[], tuple]:
    def run() -> tuple:
        with _built(module, lib):
            return fn()
    return run


def _attention_pairs(shape):
    B, H, HK, T, D = shape
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, T, D, generator=g).requires_grad_() for h in (H, HK, HK))
    grad = torch.randn(B, H, T, D, generator=g)
    ins = (q, k, v)
    kernel = _fwd_bwd(lambda: attention_kernel.attention(q, k, v), ins, grad)
    sdpa = _fwd_bwd(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                           enable_gqa=H != HK), ins, grad)
    return f"({B}, {H}/{HK}, {T}, {D})", kernel, sdpa, attention_kernel.applies(q, k, v)


def _cross_entropy_pair(N=4096, V=1024):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(N, V, generator=g) * 3).requires_grad_()
    y = torch.randint(0, V, (N,), generator=g)
    kernel = _fwd_bwd(lambda: softcap_ce_kernel.softcap_cross_entropy(x, y, CAP), (x,))
    torch_ops = _fwd_bwd(lambda: F.cross_entropy(CAP * torch.tanh(x / CAP), y), (x,))
    return f"({N}, {V})", kernel, torch_ops, softcap_ce_kernel.applies(x, y)


def _head_pair(D, N=4096, V=1024):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g).requires_grad_()
    w = (torch.randn(V, D, generator=g) * D**-0.5 * 3).requires_grad_()
    y = torch.randint(0, V, (N,), generator=g)
    fused = _fwd_bwd(lambda: softcap_ce_kernel.softcap_head_cross_entropy(x, w, y, CAP), (x, w))
    # the unfused head as training ran it before the fusion: MKL's product, then the loss kernel
    # (or PyTorch's ops where that kernel is off)
    ce = (softcap_ce_kernel.softcap_cross_entropy if softcap_ce_kernel.applies(
        torch.empty(1, V), y[:1]) else lambda z, t, c: F.cross_entropy(c * torch.tanh(z / c), t))
    unfused = _fwd_bwd(lambda: ce(F.linear(x, w), y, CAP), (x, w))
    return f"({N} x {D}) x {V}", fused, unfused, softcap_ce_kernel.head_applies(x, w, y)


def _time(kernel, reference, ok: bool, warmup: int, repeat: int) -> dict:
    pairs = [("kernel", kernel), ("reference", reference)] if ok else [("reference", reference)]
    for _, fn in pairs:
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name, _ in pairs}
    for r in range(repeat):
        for name, fn in pairs if r % 2 == 0 else pairs[::-1]:
            t0 = time.perf_counter()
            fn()
            samples[name].append(1e3 * (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {"kernel_ms": med.get("kernel", float("nan")), "reference_ms": med["reference"],
            "speedup": med["reference"] / med["kernel"] if ok else float("nan"),
            "kernel_built": ok, "samples_ms": samples}


def rows_for(cases: tuple[str, ...], warmup: int, repeat: int,
             against: str = "") -> list[dict]:
    """Every (case, shape) row: medians, speed-up and samples; with `against` the reference is
    our kernel built at that git revision, and `identical` says whether both gave the same
    output and gradients bit for bit."""
    # one build per kernel module (cross_entropy and head share one)
    built = {m: build_at(against, m) for m in {MODULES[c] for c in cases}} if against else {}
    plan = []
    if "attention" in cases:
        plan += [("attention", "SDPA", *_attention_pairs(s)) for s in ATTENTION_SHAPES]
    if "cross_entropy" in cases:
        plan.append(("cross_entropy", "F.cross_entropy(softcap)", *_cross_entropy_pair()))
    if "head" in cases:
        plan += [("head", "F.linear + loss kernel", *_head_pair(d)) for d in HEAD_WIDTHS]
    rows = []
    for case, reference, shape, kernel, ref, ok in plan:
        if against:
            module = MODULES[case]
            reference, ref = f"ours at {against}", _at(module, built[module], kernel)
        row = {"case": case, "shape": shape, "reference": reference}
        if against and ok:
            row["identical"] = all(torch.equal(a, b) for a, b in zip(kernel(), ref()))
        row.update(_time(kernel, ref, ok, warmup, repeat))
        rows.append(row)
        print(_table([row], ["case", "shape", "reference", "kernel_ms", "reference_ms",
                             "speedup", *(["identical"] if against else [])]), flush=True)
    return rows


def keep_freed_memory() -> str:
    """Ask glibc to serve buffers below 32 MiB from its heap and never return freed memory to
    the OS, so timings carry no page faults; says what it did."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
        ok = (libc.mallopt(m_mmap_threshold, 32 << 20) == 1
              and libc.mallopt(m_trim_threshold, 1 << 30) == 1)
    except (OSError, AttributeError):
        ok = False
    return "glibc keeps freed memory" if ok else "default (no glibc mallopt, or it refused)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES),
                   help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--against", default="", metavar="REV",
                   help="time the kernels against their own build at git revision REV")
    add_timing_args(p, warmup=3, repeat=15)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cases = tuple(c for c in args.cases.split(",") if c)
    bad = sorted(set(cases) - set(CASES))
    if bad or not cases or args.repeat < 1 or args.warmup < 0:
        print(f"benchmarks.kernels: --cases {bad or '(none)'} not of {', '.join(CASES)}, or "
              f"--repeat {args.repeat} < 1 / --warmup {args.warmup} < 0", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    malloc = keep_freed_memory()
    load0 = os.getloadavg()
    try:
        rows = rows_for(cases, args.warmup, args.repeat, args.against)
    except AgainstError as e:
        print(f"benchmarks.kernels: {e}", file=sys.stderr)
        return 2
    machine = machine_info(torch.device("cpu"))
    result = {"machine": machine, "threads": torch.get_num_threads(), "dtype": "float32",
              "loadavg_before": load0, "loadavg_after": os.getloadavg(), "rows": rows,
              "against": args.against or None, "malloc": malloc}
    kind = f"kernels-against-{re.sub(r'[^A-Za-z0-9._-]', '_', args.against)}" if (
        args.against) else "kernels"
    out = cpu_results_path(machine, kind, args.out)
    _write_json(result, out)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Processes, devices and precision for training: one place picks them and says why.

Follows the distributed setup of upstream parameter-golf `train_gpt.py` (torchrun's RANK,
WORLD_SIZE and LOCAL_RANK; NCCL on CUDA; bf16 autocast; TF32 matmuls), with gloo on CPU so the
same entry point runs multi-process on a laptop or in CI. Unlike upstream, gradients are
averaged by one flat all-reduce after backward instead of DDP: mini recurrence (PR #1204) has
parameters that get no gradient before activation, which DDP rejects unless told to search
for unused parameters on every step.

Nothing happens at import; `setup_runtime` is called by `golf_core.train.main`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from golf_core import precision
from golf_core.config import ConfigError, TrainConfig
from golf_core.optim import Muon

# What autocast="auto" means on CPU is measured, not assumed (golf_core/precision.py): bf16
# autocast where a bf16 matmul beats fp32 on this machine (AVX-512 BF16 / AMX), fp32 where
# torch emulates bf16 (AVX2-only CPUs, where it was 77x slower). autocast=none gives fp32
# (the 1-vs-2-process and resume tests use it for exact comparisons).


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: rank, world, device, backend, autocast dtype, and why."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None = a single process without a process group
    autocast_dtype: torch.dtype | None
    reasons: Mapping[str, str]  # "device", "backend", "autocast" -> why this choice

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(environ.get(name, default))
    except ValueError:
        raise ConfigError(f"environment: {name}={environ[name]!r} is not an integer") from None


def world_size_from_env(environ: Mapping[str, str] | None = None) -> int:
    """torchrun's WORLD_SIZE (1 without torchrun)."""
    return _env_int(os.environ if environ is None else environ, "WORLD_SIZE", 1)


def pick_device(preference: str, local_rank: int = 0) -> tuple[torch.device, str]:
    """`auto` -> CUDA when available else CPU; `cuda` without a GPU is a ConfigError."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device: {preference!r} is not one of auto, cpu, cuda")
    has_cuda = torch.cuda.is_available()
    if preference == "cuda" and not has_cuda:
        raise ConfigError("device: 'cuda' requested but torch.cuda.is_available() is False")
    if preference == "cpu" or not has_cuda:
        why = "device=cpu requested" if preference == "cpu" else "no CUDA device visible"
        return torch.device("cpu"), why
    why = "device=cuda requested" if preference == "cuda" else "CUDA available"
    return torch.device("cuda", local_rank), f"{why} ({torch.cuda.get_device_name(local_rank)})"


def pick_backend(device: torch.device) -> tuple[str, str]:
    """NCCL for CUDA tensors, gloo for CPU tensors (NCCL cannot reduce CPU tensors)."""
    if device.type == "cuda":
        return "nccl", "CUDA tensors: NCCL"
    return "gloo", "CPU tensors: gloo"


def pick_autocast(device: torch.device, preference: str,
                  shape: precision.ProbeShape | None = None) -> tuple[torch.dtype | None, str]:
    """bf16 autocast on CUDA (upstream); on CPU `auto` is bf16 only where one step at this
    run's shape (its blocks and head) measured faster under bf16 autocast than in fp32
    (golf_core.precision)."""
    return precision.pick_autocast(device, preference, shape)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def pick_cpu_threads(requested: int, local_world: int) -> tuple[int, str]:
    """torch threads for one CPU process: `requested`, or the cores this process may run on
    (its affinity: taskset, a cgroup's cpuset, a pinned test worker) split among the node's
    processes (torch's default of one thread per core in every process oversubscribes the
    cores under torchrun, and an oversubscribed 2-core VM ran 3-17x slower: see
    benchmarks/results/optimizations.md)."""
    if requested < 0:
        raise ConfigError(f"threads: {requested} must be >= 0 (0 = automatic)")
    if requested:
        return requested, f"threads={requested} requested"
    cores = usable_cores()
    n = max(1, cores // max(local_world, 1))
    return n, f"auto: {cores} cores / {local_world} process(es) on this node"


def setup_runtime(
    device: str = "auto", autocast: str = "auto", environ: Mapping[str, str] | None = None,
    threads: int = 0, muon_ns_dtype: str = "auto", shape: precision.ProbeShape | None = None,
) -> Runtime:
    """Read torchrun's env, pick device/backend/CPU threads/autocast/Newton-Schulz dtype, init
    the process group if world > 1. On CPU the dtype choices read probes at `shape` (the
    run's width and micro-batch), taken after the thread count is set and, in a
    multi-process run, rank 0's for every rank (so all ranks compute in the same dtype)."""
    environ = os.environ if environ is None else environ
    world = world_size_from_env(environ)
    rank = _env_int(environ, "RANK", 0)
    local_rank = _env_int(environ, "LOCAL_RANK", 0)
    dev, dev_why = pick_device(device, local_rank)
    backend, backend_why = None, "one process: no process group"
    reasons = {"device": dev_why}
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        # TF32 matmuls for the fp32 parts (upstream sets both flags)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        local_world = _env_int(environ, "LOCAL_WORLD_SIZE", world)
        n, reasons["threads"] = pick_cpu_threads(threads, local_world)
        torch.set_num_threads(n)
    if world > 1:
        backend, backend_why = pick_backend(dev)
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        if dev.type == "cpu":
            _share_probes(rank, autocast, muon_ns_dtype, shape or precision.ProbeShape())
    reasons["backend"] = backend_why
    dtype, reasons["autocast"] = pick_autocast(dev, autocast, shape)
    _ns, reasons["muon_ns_dtype"] = precision.pick_ns_dtype(muon_ns_dtype, dev, shape)
    return Runtime(rank, world, local_rank, dev, backend, dtype, reasons)


def _share_probes(rank: int, autocast: str, ns_dtype: str, shape: precision.ProbeShape) -> None:
    """Every rank adopts rank 0's probes (timings differ between processes); only the probes
    an `auto` choice reads are taken."""
    wanted = [kind for kind, pref in (("attention", autocast), ("autocast", autocast),
                                      ("muon_ns_dtype", ns_dtype)) if pref == "auto"]
    measure = {"attention": precision.attention_probe,  # first: the step estimate reads it
               "autocast": precision.autocast_probe, "muon_ns_dtype": precision.ns_probe}
    for kind in wanted:
        mine = measure[kind](shape) if rank == 0 else None
        numbers = torch.tensor([mine.fp32_ms, mine.bf16_ms] if mine else [0.0, 0.0],
                               dtype=torch.float64)
        dist.broadcast(numbers, src=0)
        precision.adopt(kind, precision.Probe(precision.PROBE_WHAT[kind], float(numbers[0]),
                                              float(numbers[1]), torch.get_num_threads(), shape))


def teardown(rt: Runtime, *, finished: bool = False) -> None:
    """Destroy the process group this runtime created (no-op for one process).

    `finished` (every rank got here normally): wait at a barrier first. Rank 0 may still be
    writing a checkpoint or the summary; a rank that leaves the group meanwhile aborted in
    gloo ("terminate called without an active exception", about half the 2-process
    --stop-at-step runs). After an error a peer may never arrive, so no barrier then."""
    if rt.distributed and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def autocast_context(rt: Runtime) -> contextlib.AbstractContextManager:
    """`torch.autocast` for the runtime's dtype, or a no-op context for fp32."""
    if rt.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=rt.device.type, dtype=rt.autocast_dtype)


def synchronize(rt: Runtime) -> None:
    """Wait for queued CUDA work so wallclock timings mean something (no-op on CPU)."""
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)


def all_reduce_grads(
    rt: Runtime, params: Iterable[Tensor], extra: Tensor | None = None
) -> Tensor | None:
    """Average gradients over ranks with one flat all-reduce; returns `extra` averaged too.

    A parameter without a gradient counts as zeros in the buffer (every rank runs the same
    graph, so all agree on which ones are None) and keeps `grad = None`, so an optimizer
    skips it exactly as in a single process. `extra` (e.g. the step's loss) rides along in the
    same buffer, saving a second collective.
    """
    params = list(params)
    if not rt.distributed:
        return extra
    sizes = [p.numel() for p in params]
    pieces = [
        p.grad.reshape(-1) if p.grad is not None else torch.zeros(n, device=rt.device)
        for p, n in zip(params, sizes)
    ]
    if extra is not None:
        pieces.append(extra.detach().reshape(-1).float())
    flat = torch.cat([t.float() for t in pieces])  # (sum numel,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)  # gloo has no AVG
    flat /= rt.world_size
    offset = 0
    for p, n in zip(params, sizes):
        if p.grad is not None:
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n
    return flat[offset:].view_as(extra) if extra is not None else None


def any_rank(rt: Runtime, flag: bool) -> bool:
    """True on every rank when `flag` is True on any (upstream's wallclock-cap agreement)."""
    if not rt.distributed:
        return flag
    t = torch.tensor(int(flag), device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(rt: Runtime, obj: Any) -> Any:
    """Rank 0's `obj` on every rank (e.g. the run name, which contains a timestamp)."""
    if not rt.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=rt.device if rt.device.type == "cuda" else None)
    return box[0]


@contextlib.contextmanager
def rank_zero_first(rt: Runtime) -> Iterator[None]:
    """Let rank 0 run the block (e.g. creating the run directory) before the others."""
    if rt.distributed and not rt.is_main:
        dist.barrier()
    yield
    if rt.distributed and rt.is_main:
        dist.barrier()


def broadcast_module(rt: Runtime, module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (what DDP does at construction)."""
    if not rt.distributed:
        return
    with torch.no_grad():
        floats = [b for b in module.buffers() if b.is_floating_point()]  # gloo: no bool
        for t in list(module.parameters()) + floats:
            dist.broadcast(t.data, src=0)


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's `train_batch_tokens` splits over ranks and micro-steps."""

    grad_accum_steps: int
    local_tokens: int  # per rank per micro-step
    world_size: int


def plan_batches(tcfg: TrainConfig, world_size: int) -> BatchPlan:
    """grad_accum = ceil(train_batch_tokens / (world * micro_batch_tokens)); the batch must
    split into world * accum equal micro-batches of whole sequences."""
    batch, seq, micro = tcfg.train_batch_tokens, tcfg.train_seq_len, tcfg.micro_batch_tokens
    if batch <= 0 or seq <= 0 or micro <= 0:
        raise ConfigError(
            f"train_batch_tokens={batch}, train_seq_len={seq} and micro_batch_tokens={micro} "
            "must be positive"
        )
    accum = max(1, math.ceil(batch / (world_size * micro)))
    if batch % (world_size * accum * seq):
        raise ConfigError(
            f"train_batch_tokens={batch} does not split over world size {world_size} x "
            f"{accum} grad-accumulation step(s) into whole sequences of train_seq_len={seq} "
            f"(needs a multiple of {world_size * accum * seq})"
        )
    return BatchPlan(accum, batch // (world_size * accum), world_size)


def sync_round_robin_state(rt: Runtime, optimizers: Iterable[torch.optim.Optimizer]) -> None:
    """Muon (upstream) keeps parameter i's momentum buffer on rank i % world only; copy each
    buffer from its owner to every rank, so rank 0 can save it and any world size can load it.
    Optimizers without that ownership rule (Adam) hold the same state on every rank already."""
    if not rt.distributed:
        return
    for opt in (o for o in optimizers if isinstance(o, Muon)):
        for group in opt.param_groups:
            for i, p in enumerate(group["params"]):
                owner, st = i % rt.world_size, opt.state[p]
                has = torch.tensor(int("momentum_buffer" in st), device=rt.device)
                dist.broadcast(has, src=owner)
                if has.item():
                    st.setdefault("momentum_buffer", torch.zeros_like(p))
                    dist.broadcast(st["momentum_buffer"], src=owner)

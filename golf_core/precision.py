"""Which dtype is fast on this machine, for this model: decided by measuring, once per process.

On CPUs the answer differs by orders of magnitude and by shape. With native bf16 (AVX-512
BF16 / AMX) a large bf16 matmul beats fp32; without it (AVX2-only CPUs such as AMD Zen 3)
torch emulates bf16, and a 256 x 256 bf16 matmul was measured 77x slower than fp32, which made
bf16 autocast and bf16 Newton-Schulz most of a training step there (630 vs 84 ms/step). And
even with native bf16, at the report's small widths the casts autocast adds and the CPU flash
attention kernel (2.5x slower in bf16 at head_dim 16 here) can outweigh the faster matmuls. So
`auto` never assumes. It times what the run will do:

* attention: the causal attention kernel forward + backward at the run's batch, heads, length
  and head dim, in fp32 and bf16. Where bf16 is not faster, attention under CPU autocast runs in
  fp32 (`cpu_attention_fp32`, read by golf_core.model.layers.causal_attention): the matmuls
  keep bf16's speed, the attention kernel keeps fp32's;
* autocast: the forward + backward of one training step, estimated as the model's virtual
  depth (its blocks, a looped block once per use) times one transformer block
  (golf_core.model.layers.Block) plus the LM head and its softcapped loss
  (`layers.softcapped_head`, the call every family ends in), each timed at the run's width,
  heads, vocabulary and micro-batch, in fp32 and under bf16 autocast (the block's attention as
  the attention probe decided). The head counts because its fp32 path is our fused head +
  loss kernel and its bf16 path writes the (tokens x vocab) logits. Measured, 2-core Zen 4
  (AVX-512 BF16), 4,096 tokens, whole compiled step fwd + bwd + Adam: PR #1204 w32 fp32 149
  vs bf16 275 ms, where one block alone measured 10.9 vs 15.1 ms, so 13 blocks explain 54 of
  the 125 ms bf16 lost; PR #325's 3x3 w32 152 vs 279 ms (block 8.7 vs 12.6). A block alone
  undersold fp32, and under a competing load the block probe picked bf16 once in three. A
  run that compiles its blocks probes the block compiled, since compiling fuses the casts bf16
  adds into the neighbouring kernels and so changes the answer (measured: 4 x 128, 2,048
  tokens, eager 200 vs 200 ms/step, compiled 208 fp32 vs 171 bf16);
* Newton-Schulz: `newton_schulz5_batched` over one block's matrix shapes, in fp32 and bf16.

Each probe takes tens of milliseconds (it stops early once one side is clearly slower), is
cached per (shape, thread count), and in a multi-process run every rank adopts rank 0's
numbers (golf_core.distributed). CUDA keeps bf16 (upstream). The run header and env.json
record the numbers and what they decided.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch

from golf_core.compile_policy import AUTO_COMPILE_MIN_STEPS, compile_mode_name
from golf_core.config import ConfigError, ModelConfig, TrainConfig
from golf_core.model.families import virtual_depth
from golf_core.model.layers import (
    Block,
    attention_fp32,
    cpu_attention_fp32,
    set_cpu_attention_fp32,
    softcapped_head,
)
from golf_core.newton_schulz import newton_schulz5_batched

# bf16 must be at least this much faster to be picked: a near tie goes to fp32, which is
# exact, casts nothing and is what the tests compare against.
BF16_MIN_SPEEDUP = 1.10


@dataclass(frozen=True)
class ProbeShape:
    """What the probes run: one block at this width and micro-batch, its matrices, and the
    head at this vocabulary; `depth` blocks and the head make the step estimate."""

    model_dim: int = 128
    num_heads: int = 4
    num_kv_heads: int = 2
    mlp_mult: int = 2
    seq_len: int = 256
    tokens: int = 2048  # one forward's tokens (capped at MAX_PROBE_TOKENS)
    compiled: bool = False  # the run torch.compiles its blocks (or model): probe compiled
    vocab_size: int = 1024  # the head's rows
    depth: int = 9  # blocks one forward runs through (upstream's baseline: 9)

    @classmethod
    def of(cls, mcfg: ModelConfig, tcfg: TrainConfig, local_tokens: int | None = None
           ) -> ProbeShape:
        tokens = local_tokens or min(tcfg.train_batch_tokens, tcfg.micro_batch_tokens)
        seq = max(1, min(tcfg.train_seq_len, tokens))
        return cls(mcfg.model_dim, mcfg.num_heads, mcfg.num_kv_heads, int(mcfg.mlp_mult), seq,
                   min(MAX_PROBE_TOKENS, max(seq, tokens - tokens % seq)),
                   compiled=_compiles_on_cpu(tcfg), vocab_size=mcfg.vocab_size,
                   depth=_depth(mcfg))


MAX_PROBE_TOKENS = 8192


def _depth(mcfg: ModelConfig) -> int:
    """`mcfg`'s virtual depth; a config its family refuses to build gets its physical layer
    count here (building the model for training then reports what is wrong)."""
    try:
        return virtual_depth(mcfg)
    except (ValueError, ConfigError, RuntimeError):
        return mcfg.num_layers


def _compiles_on_cpu(tcfg: TrainConfig) -> bool:
    """Whether golf_core.train compiles this run's blocks (or model) on CPU: compile
    blocks/model, or auto with a run long enough (compile_policy.resolve_compile)."""
    mode = compile_mode_name(tcfg.compile)
    return mode in ("blocks", "model") or (
        mode == "auto" and tcfg.iterations >= AUTO_COMPILE_MIN_STEPS)




# What each kind of probe times (the kinds `adopt` and env.json's `precision_probes` use).
PROBE_WHAT = {"attention": "attention forward+backward", "block": "block forward+backward",
              "head": "head + loss forward+backward",
              "autocast": "step forward+backward (depth x block + head)",
              "muon_ns_dtype": "newton-schulz"}


@dataclass(frozen=True)
class Probe:
    """Best-of-N milliseconds of one operation in fp32 and in bf16, and the verdict."""

    what: str  # a value of PROBE_WHAT
    fp32_ms: float
    bf16_ms: float
    threads: int
    shape: ProbeShape
    setup_s: float = 0.0  # what the probe spent before timing (the compiles, when compiled)

    @property
    def bf16_speedup(self) -> float:
        return self.fp32_ms / self.bf16_ms if self.bf16_ms > 0 else 0.0

    @property
    def bf16_faster(self) -> bool:
        return self.bf16_speedup >= BF16_MIN_SPEEDUP

    def describe(self) -> str:
        s = self.shape
        where = f"d={s.model_dim}"
        if self.what == PROBE_WHAT["autocast"]:
            where += f" depth={s.depth}"
        if self.what in (PROBE_WHAT["autocast"], PROBE_WHAT["head"]):
            where += f" vocab={s.vocab_size}"
        return (f"measured {self.what}{' compiled' if s.compiled else ''} at {where} "
                f"tokens={s.tokens}: fp32 "
                f"{self.fp32_ms:.2f} ms, bf16 {self.bf16_ms:.2f} ms ({self.bf16_speedup:.2f}x; "
                f"bf16 needs >= {BF16_MIN_SPEEDUP}x), {self.threads} threads")

    def to_dict(self) -> dict:
        return {**asdict(self), "bf16_speedup": self.bf16_speedup,
                "bf16_faster": self.bf16_faster}


def _pair(fp32: Callable[[], object], bf16: Callable[[], object]) -> tuple[float, float]:
    """(fp32 ms, bf16 ms): the best of up to PROBE_ROUNDS interleaved calls each (one of each
    per round, so a burst of load from other processes hits both). An emulated bf16 shows
    itself at once: a first round with bf16 over EMULATED_RATIO x fp32 ends the probe."""
    fp32(), bf16()  # first calls: kernel selection, primitive creation, allocations
    best = [float("inf"), float("inf")]
    t_start = time.perf_counter()
    for r in range(PROBE_ROUNDS):
        for k, fn in enumerate((fp32, bf16)):
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
        emulated = best[1] > EMULATED_RATIO * best[0]
        if emulated or (r + 1 >= MIN_ROUNDS and time.perf_counter() - t_start > BUDGET_S):
            break
    return 1000.0 * best[0], 1000.0 * best[1]


PROBE_ROUNDS, MIN_ROUNDS, BUDGET_S, EMULATED_RATIO = 7, 3, 0.3, 4.0


@lru_cache(maxsize=16)
def _attention_probe(shape: ProbeShape, threads: int) -> Probe:
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    b, t, dh = shape.tokens // shape.seq_len, shape.seq_len, shape.model_dim // shape.num_heads
    q32, k32, v32 = (torch.randn(b, h, t, dh, generator=gen) for h in
                     (shape.num_heads, shape.num_kv_heads, shape.num_kv_heads))
    g32 = torch.randn(b, shape.num_heads, t, dh, generator=gen)
    gqa = shape.num_kv_heads != shape.num_heads

    def step(dtype: torch.dtype) -> Callable[[], None]:
        q, k, v = (a.to(dtype).requires_grad_() for a in (q32, k32, v32))
        g = g32.to(dtype)

        def run() -> None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
            torch.autograd.grad(y, (q, k, v), g)
        return run

    fp32, bf16 = _pair(step(torch.float32), step(torch.bfloat16))
    return Probe(PROBE_WHAT["attention"], fp32, bf16, threads,
                 dataclasses.replace(shape, compiled=False))


@lru_cache(maxsize=16)
def _block_probe(shape: ProbeShape, threads: int, attention_in_fp32: bool) -> Probe:
    cfg = ModelConfig(model_dim=shape.model_dim, num_heads=shape.num_heads,
                      num_kv_heads=shape.num_kv_heads, mlp_mult=shape.mlp_mult)
    gen = torch.Generator().manual_seed(0)
    block = Block(cfg)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.05, generator=gen)
    x = torch.randn(shape.tokens // shape.seq_len, shape.seq_len, shape.model_dim,
                    generator=gen, requires_grad=True)
    forward = torch.compile(block, dynamic=False) if shape.compiled else block

    def step(cast: contextlib.AbstractContextManager) -> None:
        with cast, attention_fp32(attention_in_fp32):
            y = forward(x, x)
        y.float().square().mean().backward()
        block.zero_grad(set_to_none=True)
        x.grad = None

    fp32 = lambda: step(contextlib.nullcontext())  # noqa: E731
    bf16 = lambda: step(torch.autocast("cpu", dtype=torch.bfloat16))  # noqa: E731
    setup = 0.0
    if shape.compiled:  # the two compiles (fp32, bf16) and a settling call, apart from timing
        t0 = time.perf_counter()
        fp32(), bf16(), fp32(), bf16()
        setup = time.perf_counter() - t0
    fp32_ms, bf16_ms = _pair(fp32, bf16)
    return Probe(PROBE_WHAT["block"], fp32_ms, bf16_ms, threads, shape, setup)


@lru_cache(maxsize=16)
def _head_probe(shape: ProbeShape, threads: int) -> Probe:
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.Embedding(shape.vocab_size, shape.model_dim)  # the tied head
    with torch.no_grad():
        emb.weight.normal_(0.0, 0.05, generator=gen)
    x = torch.randn(shape.tokens, shape.model_dim, generator=gen, requires_grad=True)
    target = torch.randint(0, shape.vocab_size, (shape.tokens,), generator=gen)

    def step(cast: contextlib.AbstractContextManager) -> None:
        with cast:
            loss = softcapped_head(x, emb, None, HEAD_PROBE_SOFTCAP, target)
        loss.backward()
        emb.zero_grad(set_to_none=True)
        x.grad = None

    fp32_ms, bf16_ms = _pair(lambda: step(contextlib.nullcontext()),
                             lambda: step(torch.autocast("cpu", dtype=torch.bfloat16)))
    return Probe(PROBE_WHAT["head"], fp32_ms, bf16_ms, threads,
                 dataclasses.replace(shape, compiled=False))


HEAD_PROBE_SOFTCAP = 30.0  # upstream's logit_softcap; the cap does not change the work


@lru_cache(maxsize=16)
def _ns_probe(shape: ProbeShape, threads: int) -> Probe:
    d, kv = shape.model_dim, shape.num_kv_heads * (shape.model_dim // shape.num_heads)
    gen = torch.Generator().manual_seed(0)
    mats = [torch.randn(r, c, generator=gen)
            for r, c in ((d, d), (kv, d), (kv, d), (d, d), (shape.mlp_mult * d, d),
                         (d, shape.mlp_mult * d))]
    fp32, bf16 = _pair(lambda: newton_schulz5_batched(mats, dtype=torch.float32),
                       lambda: newton_schulz5_batched(mats, dtype=torch.bfloat16))
    return Probe(PROBE_WHAT["muon_ns_dtype"], fp32, bf16, threads, shape)


_adopted: dict[str, Probe] = {}  # kind -> rank 0's probe, in a multi-process run
_measured: dict[str, Probe] = {}  # kind -> the probe this process used last


def attention_probe(shape: ProbeShape) -> Probe:
    """fp32 vs bf16 time of the attention kernel at `shape` (cached; or rank 0's, adopted)."""
    p = _adopted.get("attention") or _attention_probe(
        dataclasses.replace(shape, compiled=False), torch.get_num_threads())
    _measured["attention"] = p
    return p


def block_probe(shape: ProbeShape, attention_in_fp32: bool = False) -> Probe:
    """fp32 vs bf16-autocast time of one block at `shape`, its attention under autocast in
    fp32 if `attention_in_fp32` (cached)."""
    p = _block_probe(shape, torch.get_num_threads(), attention_in_fp32)
    _measured["block"] = p
    return p


def head_probe(shape: ProbeShape) -> Probe:
    """fp32 vs bf16-autocast time of the tied LM head and its softcapped loss at `shape`'s
    tokens, width and vocabulary, forward + backward (cached), eager whether or not the run
    compiles: our fused kernel is one op either way."""
    p = _head_probe(dataclasses.replace(shape, compiled=False), torch.get_num_threads())
    _measured["head"] = p
    return p


def autocast_probe(shape: ProbeShape) -> Probe:
    """What `auto` reads: one step's forward + backward estimated as `shape.depth` blocks
    (their attention in fp32 where the attention probe did not measure bf16 faster) plus the
    head and loss (cached parts; or rank 0's estimate, adopted)."""
    p = _adopted.get("autocast")
    if p is None:
        block = block_probe(shape, attention_in_fp32=not attention_probe(shape).bf16_faster)
        head = head_probe(shape)
        p = Probe(PROBE_WHAT["autocast"], shape.depth * block.fp32_ms + head.fp32_ms,
                  shape.depth * block.bf16_ms + head.bf16_ms, block.threads, shape,
                  block.setup_s)
    _measured["autocast"] = p
    return p


def ns_probe(shape: ProbeShape) -> Probe:
    """fp32 vs bf16 time of Newton-Schulz over one block's matrices (cached or adopted); only
    the widths matter, not the micro-batch."""
    widths = dataclasses.replace(shape, seq_len=0, tokens=0)
    p = _adopted.get("muon_ns_dtype") or _ns_probe(widths, torch.get_num_threads())
    _measured["muon_ns_dtype"] = p
    return p


def adopt(kind: str, result: Probe | None) -> None:
    """Make `result` what the `kind` ("attention" | "autocast" | "muon_ns_dtype") probe
    returns in this process (None: measure again)."""
    if result is None:
        _adopted.pop(kind, None)
    else:
        _adopted[kind] = result


def probes() -> dict[str, dict]:
    """The probes this process's dtype choices read (and the block and head probes the step
    estimate adds up), for env.json."""
    return {kind: p.to_dict() for kind, p in _measured.items()}


AUTOCAST_CHOICES = ("auto", "bf16", "none")
NS_DTYPES = ("auto", "bf16", "fp32")


def pick_autocast(device: torch.device, preference: str, shape: ProbeShape | None = None
                  ) -> tuple[torch.dtype | None, str]:
    """bf16 autocast on CUDA (upstream); on CPU `auto` is bf16 only where the step estimate
    (`autocast_probe`: depth x block + head) measured bf16 faster than fp32 at this run's
    shape, and then with its attention in fp32 where the attention probe measured the bf16
    kernel no faster. Sets `cpu_attention_fp32` for this process accordingly (False for every
    other choice: autocast=bf16 is upstream's all-bf16 autocast)."""
    if preference not in AUTOCAST_CHOICES:
        raise ConfigError(f"autocast: {preference!r} is not one of {', '.join(AUTOCAST_CHOICES)}")
    set_cpu_attention_fp32(False)
    if preference == "none":
        return None, "autocast=none requested: fp32"
    if preference == "bf16":
        return torch.bfloat16, "autocast=bf16 requested"
    if device.type == "cuda":
        return torch.bfloat16, "auto on CUDA: bf16 autocast (upstream)"
    shape = shape or ProbeShape()
    a, p = attention_probe(shape), autocast_probe(shape)
    if not p.bf16_faster:
        return None, f"auto on CPU: fp32 ({p.describe()}; {a.describe()})"
    set_cpu_attention_fp32(not a.bf16_faster)
    return torch.bfloat16, (f"auto on CPU: bf16 autocast, attention in "
                            f"{'fp32' if cpu_attention_fp32() else 'bf16'} ({p.describe()}; "
                            f"{a.describe()})")


def pick_ns_dtype(preference: str, device: torch.device, shape: ProbeShape | None = None
                  ) -> tuple[torch.dtype, str]:
    """Muon's Newton-Schulz dtype: bf16 (upstream, what the Muon fixture checks) or fp32;
    `auto` = bf16 on CUDA, and on CPU whichever the probe measured faster at this width."""
    if preference not in NS_DTYPES:
        raise ConfigError(f"muon_ns_dtype: {preference!r} is not one of {', '.join(NS_DTYPES)}")
    if preference == "bf16":
        return torch.bfloat16, "muon_ns_dtype=bf16 requested (upstream)"
    if preference == "fp32":
        return torch.float32, "muon_ns_dtype=fp32 requested"
    if device.type == "cuda":
        return torch.bfloat16, "auto on CUDA: bf16 (upstream)"
    p = ns_probe(shape or ProbeShape())
    return (torch.bfloat16, f"auto on CPU: bf16 ({p.describe()})") if p.bf16_faster else (
        torch.float32, f"auto on CPU: fp32 ({p.describe()})")

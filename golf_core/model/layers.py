"""The layers of upstream parameter-golf `train_gpt.py` that every GPT here is built from.

Bottom-up, as nanoGPT reads: RMSNorm, CastedLinear, Rotary, CausalSelfAttention, MLP, Block.
The baseline (golf_core/model/gpt.py) is built from these alone; the PR families
(golf_core/model/pr*.py) reuse them where their scripts compute the same thing and add their
own extras beside them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from golf_core.config import ModelConfig
from golf_core.model import attention_kernel, softcap_ce_kernel

# Name substrings of control tensors: Adam (never Muon), fp32 passthrough in the int8 export.
# Upstream's CONTROL_TENSOR_NAME_PATTERNS; each family adds its own (families.control_patterns).
CONTROL_PATTERNS: tuple[str, ...] = (
    "attn_scale",
    "attn_scales",
    "mlp_scale",
    "mlp_scales",
    "resid_mix",
    "resid_mixes",
    "q_gain",
    "skip_weight",
    "skip_weights",
)


# Where the bf16 CPU attention kernel is the slower one (golf_core.precision's attention
# probe), attention under CPU autocast computes in fp32. A module global (one process trains
# one run; dynamo guards on it, so a compiled block recompiles if it flips), set by
# `golf_core.precision.pick_autocast`.
_CPU_ATTENTION_FP32 = False


def cpu_attention_fp32() -> bool:
    """Whether attention under CPU autocast runs in fp32 (see precision.pick_autocast)."""
    return _CPU_ATTENTION_FP32


def set_cpu_attention_fp32(enabled: bool) -> None:
    global _CPU_ATTENTION_FP32
    _CPU_ATTENTION_FP32 = bool(enabled)


@contextlib.contextmanager
def attention_fp32(enabled: bool):
    """`cpu_attention_fp32()` is `enabled` inside the block (the probes; tests)."""
    before = _CPU_ATTENTION_FP32
    set_cpu_attention_fp32(enabled)
    try:
        yield
    finally:
        set_cpu_attention_fp32(before)


# ----------------------------------------------------------------------------- building blocks


def rms_norm(x: Tensor) -> Tensor:
    """Parameter-free RMSNorm over the last dim (upstream: eps=None, torch's default)."""
    return F.rms_norm(x, (x.size(-1),))


class _FastRMSNorm(torch.autograd.Function):
    """fp32 parameter-free RMSNorm in two passes forward and four backward.

    torch's CPU `F.rms_norm` is a composite (pow, mean, add, rsqrt, mul forward; seven
    elementwise passes backward); this computes the same function with the same eps
    (float32's), equal to rounding: y = x * rstd, rstd = rsqrt(mean(x^2) + eps);
    dx = rstd * (g - y * mean(g * y)).
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        n = x.size(-1)
        ss = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        rstd = ss.square_().div_(n).add_(torch.finfo(torch.float32).eps).rsqrt_()
        y = x * rstd
        ctx.save_for_backward(y, rstd)
        return y

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        y, rstd = ctx.saved_tensors
        m = (g * y).sum(-1, keepdim=True)
        return torch.addcmul(g, y, m, value=-1.0 / y.size(-1)).mul_(rstd)


def fast_rms_norm(x: Tensor) -> Tensor:
    """`rms_norm`, through `_FastRMSNorm` for fp32 CPU input (elsewhere `F.rms_norm`)."""
    if x.dtype == torch.float32 and x.device.type == "cpu":
        return _FastRMSNorm.apply(x)
    return rms_norm(x)


class RMSNorm(nn.Module):
    """Upstream `RMSNorm`: no learnable scale (so nothing of it lands in the state dict)."""

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x)


class CastedLinear(nn.Linear):
    """nn.Linear whose fp32 weight is cast to the activation dtype at use (upstream).

    `qat`, when set (by golf_core.quant), maps the weight to its fake-quantized / noisy version
    before the cast, for quantization-aware training.
    """

    qat: Callable[[Tensor], Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight if self.qat is None else self.qat(self.weight)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, weight.to(x.dtype), bias)


@torch.library.custom_op("golf::embedding_backward", mutates_args=())
def _embedding_backward(grad: Tensor, ids: Tensor, rows: int) -> Tensor:
    """The gradient of an embedding table: grad's rows summed into `rows` table rows by id."""
    d = grad.size(-1)
    return grad.new_zeros((rows, d)).index_add_(0, ids.reshape(-1), grad.reshape(-1, d))


@_embedding_backward.register_fake
def _(grad, ids, rows):
    return grad.new_empty((rows, grad.size(-1)))


class _CompiledEmbedding(torch.autograd.Function):
    """F.embedding whose backward is `index_add_`, opaque to inductor. Compiled, torch's
    decomposition of the embedding backward becomes one atomic add per element (a
    compare-and-swap loop each): 0.4-1.2 ms where index_add_ takes 0.08-0.14 at 4,096 tokens
    (2 threads, Zen 4; benchmarks/README.md). Same sums, in token order."""

    @staticmethod
    def forward(ctx, weight: Tensor, ids: Tensor) -> Tensor:
        ctx.save_for_backward(ids)
        ctx.rows = weight.size(0)
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (ids,) = ctx.saved_tensors
        return _embedding_backward(grad.contiguous(), ids, ctx.rows), None


class Embedding(nn.Embedding):
    """nn.Embedding (same state dict) whose backward, compiled on the CPU, is `index_add_`
    (`_CompiledEmbedding`); eager, and everywhere else, it is nn.Embedding's own."""

    def forward(self, ids: Tensor) -> Tensor:
        if (torch.compiler.is_compiling() and self.weight.device.type == "cpu"
                and self.padding_idx is None and self.max_norm is None
                and not self.scale_grad_by_freq and not self.sparse):
            return _CompiledEmbedding.apply(self.weight, ids)
        return super().forward(ids)


def zero_init(linear: CastedLinear) -> CastedLinear:
    """Flag an output projection for zero init (upstream `_zero_init`): each block starts as
    the identity on the residual stream."""
    linear._zero_init = True
    return linear


class Rotary(nn.Module):
    """RoPE tables over the full head dim; cos/sin cached per (seq_len, device). Under
    torch.compile the tables are computed in the graph instead (no cache to guard on)."""

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: tuple[int, torch.device, Tensor, Tensor] | None = None
        self._full: tuple[Tensor, torch.dtype, Tensor, Tensor] | None = None

    def _tables(self, seq_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
        t = torch.arange(seq_len, device=device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(t, self.inv_freq.to(device))  # (T, dim/2)
        return freqs.cos(), freqs.sin()

    def forward(
        self, seq_len: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        if torch.compiler.is_compiling():
            cos, sin = self._tables(seq_len, device)
            return cos[None, None].to(dtype), sin[None, None].to(dtype)
        # A table built under torch.inference_mode (evaluation) is an inference tensor that
        # autograd refuses to save, so training after an eval must not reuse it.
        stale = self._cache is not None and (
            self._cache[2].is_inference() and not torch.is_inference_mode_enabled()
        )
        if stale or self._cache is None or self._cache[0] != seq_len or self._cache[1] != device:
            cos, sin = self._tables(seq_len, device)
            self._cache = (seq_len, device, cos[None, None], sin[None, None])
        _, _, cos, sin = self._cache
        return cos.to(dtype), sin.to(dtype)  # (1, 1, T, dim/2) each

    def full_tables(
        self, seq_len: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """Full-width tables for `apply_rotary_full` on (B, T, heads, dim): cos = [cos, cos],
        sin = [sin, -sin], each (T, 1, dim), cached with `forward`'s tables per dtype."""
        cos, sin = self(seq_len, device, torch.float32)
        if torch.compiler.is_compiling():
            return _full_width(cos[0, 0], sin[0, 0], dtype)
        full = self._full
        stale = full is not None and (  # see `forward`
            full[2].is_inference() and not torch.is_inference_mode_enabled()
        )
        if stale or full is None or full[0] is not cos or full[1] != dtype:
            self._full = full = (cos, dtype, *_full_width(cos[0, 0], sin[0, 0], dtype))
        return full[2], full[3]



def init_upstream_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """Upstream `GPT._init_weights`: a tied embedding ~ N(0, tied_embed_init_std), then every
    Linear flagged by `zero_init` set to zero (the other Linears keep torch's default)."""
    if cfg.tie_embeddings:
        nn.init.normal_(model.tok_emb.weight, mean=0.0, std=cfg.tied_embed_init_std)
    for module in model.modules():
        if isinstance(module, nn.Linear) and getattr(module, "_zero_init", False):
            nn.init.zeros_(module.weight)

def _full_width(cos: Tensor, sin: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(T, dim/2) tables -> [cos, cos] and [sin, -sin], (T, 1, dim) in `dtype`."""
    return (torch.cat((cos, cos), -1).to(dtype)[:, None, :],
            torch.cat((sin, -sin), -1).to(dtype)[:, None, :])


def apply_rotary_emb(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (x1, x2) = the two halves of the head dim (upstream's split-halves convention)."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos), dim=-1)


def apply_rotary_full(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """`apply_rotary_emb` with `Rotary.full_tables`: x*[cos,cos] + [x2,x1]*[sin,-sin], the same
    products and sums (equal to rounding: addcmul may fuse the add) in three passes, not seven."""
    half = x.size(-1) // 2
    return torch.addcmul(x * cos, torch.cat((x[..., half:], x[..., :half]), -1), sin)


def _linear_weight(linear: CastedLinear) -> Tensor:
    return linear.weight if linear.qat is None else linear.qat(linear.weight)


class _SoftcapCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of z = cap * tanh(logits / cap) over fp32 logits (N, V), with the
    gradient computed from log_softmax(z) and t = tanh(logits / cap) saved in the forward:
    dlogits = (softmax(z) - onehot(target)) * (1 - t^2) * g / N. Same formulas as autograd
    through tanh, mul, log_softmax and nll_loss, in fewer passes over the logits (every target
    counts: no ignore_index, which nothing here uses)."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, cap: float) -> Tensor:
        t = torch.div(logits, cap).tanh_()
        logp = torch.log_softmax(t * cap, dim=-1)
        loss = F.nll_loss(logp, target, reduction="mean")
        ctx.save_for_backward(t, logp, target)
        return loss

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None]:
        t, logp, target = ctx.saved_tensors
        grad = logp.exp()  # softmax(z)
        rows = torch.arange(grad.size(0), device=grad.device)
        grad[rows, target] -= 1.0
        dtanh = torch.addcmul(torch.ones((), dtype=t.dtype, device=t.device), t, t, value=-1.0)
        return grad.mul_(dtanh).mul_(g / grad.size(0)), None, None


def softcap_cross_entropy(logits: Tensor, target: Tensor, cap: float) -> Tensor:
    """F.cross_entropy(cap * tanh(logits / cap), target) for (N, V) logits: on the CPU in fp32
    our one-pass kernel (`golf_core.model.softcap_ce_kernel`, same values to fp32 rounding),
    else `_SoftcapCrossEntropy` when they are fp32 (other dtypes: the autograd ops)."""
    if softcap_ce_kernel.applies(logits, target):
        return softcap_ce_kernel.softcap_cross_entropy(logits, target, cap)
    if logits.dtype == torch.float32:
        return _SoftcapCrossEntropy.apply(logits, target, cap)
    return F.cross_entropy((cap * torch.tanh(logits / cap)).float(), target, reduction="mean")


def _plain_linear(head: nn.Module) -> bool:
    """A head that is only its weight: a CastedLinear without bias or QAT."""
    return type(head) is CastedLinear and head.bias is None and head.qat is None


def softcapped_head(x: Tensor, tok_emb: nn.Embedding, lm_head: nn.Module | None, cap: float,
                    target_ids: Tensor | None = None) -> Tensor:
    """Upstream's output: the tied embedding (or an untied `lm_head`) as the head, tanh
    softcap `cap`; softcapped logits (B, T, V), or with `target_ids` the mean cross-entropy in
    nats (fp32; fused on fp32 logits; for training on the CPU in fp32 the head's matmul fused
    in too, `softcap_ce_kernel.softcap_head_cross_entropy`). Every family's GPT ends here."""
    if target_ids is not None and (lm_head is None or _plain_linear(lm_head)):
        weight = tok_emb.weight if lm_head is None else lm_head.weight
        rows, targets = x.reshape(-1, x.size(-1)), target_ids.reshape(-1)
        if softcap_ce_kernel.head_applies(rows, weight, targets):
            return softcap_ce_kernel.softcap_head_cross_entropy(rows, weight, targets, cap)
    logits = F.linear(x, tok_emb.weight.to(x.dtype)) if lm_head is None else lm_head(x)
    if target_ids is not None:
        return softcap_cross_entropy(logits.reshape(-1, logits.size(-1)),
                                     target_ids.reshape(-1), cap)
    return cap * torch.tanh(logits / cap)  # (B, T, V)


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal GQA `F.scaled_dot_product_attention` over (B, heads, T, Dh) q and (B, kv_heads,
    T, Dh) k, v, as every family's attention calls it. Under CPU autocast it runs in fp32
    where `golf_core.precision` measured the bf16 CPU kernel slower on this machine
    (`cpu_attention_fp32`); the result comes back in q's dtype, so what follows sees the same
    types either way. On the CPU in fp32 with small heads it is our kernel
    (`golf_core.model.attention_kernel`, same values to fp32 rounding); elsewhere (CUDA, other
    shapes, GOLF_ATTENTION=sdpa) the plain call."""
    gqa = k.size(1) != q.size(1)
    if cpu_attention_fp32() and q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                               is_causal=True, enable_gqa=gqa)
        return y.to(q.dtype)
    if attention_kernel.applies(q, k, v):
        return attention_kernel.attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)


class CausalSelfAttention(nn.Module):
    """GQA attention with per-head RMS-normed q/k, RoPE and a learned per-head query gain."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim, self.num_heads, self.num_kv_heads = cfg.model_dim, cfg.num_heads, cfg.num_kv_heads
        self.head_dim = dim // cfg.num_heads
        kv_dim = self.num_kv_heads * self.head_dim
        self.c_q = CastedLinear(dim, dim, bias=False)
        self.c_k = CastedLinear(dim, kv_dim, bias=False)
        self.c_v = CastedLinear(dim, kv_dim, bias=False)
        self.proj = zero_init(CastedLinear(dim, dim, bias=False))
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init))
        self.rotary = Rotary(self.head_dim, base=cfg.rope_base)

    def forward(self, x: Tensor, q_gain: Tensor | None = None) -> Tensor:
        """Upstream's attention with one QKV matmul (the three weights concatenated at use, so
        the state dict keeps c_q/c_k/c_v), one RMSNorm and one rotary over q and k side by side
        in (B, T, heads, Dh) and the query gain after it: equal to upstream's to rounding."""
        B, T, D = x.shape
        H, Hkv, Dh = self.num_heads, self.num_kv_heads, self.head_dim
        w = torch.cat([_linear_weight(m) for m in (self.c_q, self.c_k, self.c_v)])
        qkv = F.linear(x, w.to(x.dtype)).view(B, T, H + 2 * Hkv, Dh)
        qk, v = qkv.split((H + Hkv, Hkv), dim=2)
        qk = fast_rms_norm(qk)
        cos, sin = self.rotary.full_tables(T, x.device, qk.dtype)
        qk = apply_rotary_full(qk, cos, sin)
        gain = self.q_gain if q_gain is None else q_gain
        q, k = qk.split((H, Hkv), dim=2)
        q = q * gain.to(q.dtype)[None, None, :, None]
        y = causal_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # B,H,T,Dh
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    """relu^2 MLP (upstream): proj(relu(fc(x))^2) through `hidden` units (upstream's scripts:
    mlp_mult * dim; PR #325's float multiple: max(1, int(mult * dim)))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc = CastedLinear(dim, hidden, bias=False)
        self.proj = zero_init(CastedLinear(hidden, dim, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.relu(self.fc(x)).square())


class Block(nn.Module):
    """Upstream block: x = mix0*x + mix1*x0; x += attn_scale*attn(norm x); x += mlp_scale*mlp."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.model_dim
        self.attn_norm = RMSNorm()
        self.mlp_norm = RMSNorm()
        self.attn = CausalSelfAttention(cfg)
        self.mlp = MLP(d, cfg.mlp_mult * d)
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = torch.addcmul(mix[1] * x0, mix[0], x)  # mix0*x + mix1*x0, (B, T, D)
        x = torch.addcmul(x, self.attn_scale.to(x.dtype), self.attn(fast_rms_norm(x)))
        return torch.addcmul(x, self.mlp_scale.to(x.dtype), self.mlp(fast_rms_norm(x)))

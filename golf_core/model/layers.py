"""The layers of upstream parameter-golf `train_gpt.py` that every GPT here is built from.

Bottom-up, as nanoGPT reads: RMSNorm, CastedLinear, Rotary, CausalSelfAttention, MLP, Block,
then the per-virtual-layer controls and low-rank adapters our looped variants add. The
faithful PR families (golf_core/model/pr*.py) reuse these where their scripts compute the same
thing and add their own extras beside them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from golf_core.config import ModelConfig

# Name substrings of control tensors: Adam (never Muon), fp32 passthrough in the int8 export.
# The first nine are upstream's CONTROL_TENSOR_NAME_PATTERNS; the lane lambdas keep PR #1204's
# names; the rest are ours (repeat/iteration embeddings of looped/rqz).
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
    "parallel_post_lambdas",
    "parallel_resid_lambdas",
    "repeat_embed",
    "iter_embed",
)


# ----------------------------------------------------------------------------- building blocks


def rms_norm(x: Tensor) -> Tensor:
    """Parameter-free RMSNorm over the last dim (upstream: eps=None, torch's default)."""
    return F.rms_norm(x, (x.size(-1),))


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


def zero_init(linear: CastedLinear) -> CastedLinear:
    """Flag an output projection for zero init (upstream `_zero_init`): each block starts as
    the identity on the residual stream."""
    linear._zero_init = True
    return linear


class Rotary(nn.Module):
    """RoPE tables over the full head dim; cos/sin cached per (seq_len, device)."""

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: tuple[int, torch.device, Tensor, Tensor] | None = None

    def forward(
        self, seq_len: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        # A table built under torch.inference_mode (evaluation) is an inference tensor that
        # autograd refuses to save, so training after an eval must not reuse it.
        stale = self._cache is not None and (
            self._cache[2].is_inference() and not torch.is_inference_mode_enabled()
        )
        if stale or self._cache is None or self._cache[0] != seq_len or self._cache[1] != device:
            t = torch.arange(seq_len, device=device, dtype=self.inv_freq.dtype)
            freqs = torch.outer(t, self.inv_freq.to(device))  # (T, dim/2)
            self._cache = (seq_len, device, freqs.cos()[None, None], freqs.sin()[None, None])
        _, _, cos, sin = self._cache
        return cos.to(dtype), sin.to(dtype)  # (1, 1, T, dim/2) each


def apply_rotary_emb(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (x1, x2) = the two halves of the head dim (upstream's split-halves convention)."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos), dim=-1)


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
        B, T, D = x.shape
        q = self.c_q(x).reshape(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).reshape(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x).reshape(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rms_norm(q), rms_norm(k)  # (B, H, T, Dh), (B, Hkv, T, Dh)
        cos, sin = self.rotary(T, x.device, q.dtype)
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        gain = self.q_gain if q_gain is None else q_gain
        q = q * gain.to(q.dtype)[None, :, None, None]
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.num_kv_heads != self.num_heads
        )  # (B, H, T, Dh)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    """relu^2 MLP (upstream): proj(relu(fc(x))^2), hidden = mlp_mult * dim."""

    def __init__(self, dim: int, mlp_mult: int) -> None:
        super().__init__()
        self.fc = CastedLinear(dim, mlp_mult * dim, bias=False)
        self.proj = zero_init(CastedLinear(mlp_mult * dim, dim, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.relu(self.fc(x)).square())


class Controls(nn.Module):
    """The control tensors of one use of a block: what `untie_controls` gives each later use
    of a shared block (same names and inits as the block's own)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.model_dim
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init))

    def copy_from(self, block: Block) -> None:
        with torch.no_grad():
            self.attn_scale.copy_(block.attn_scale)
            self.mlp_scale.copy_(block.mlp_scale)
            self.resid_mix.copy_(block.resid_mix)
            self.q_gain.copy_(block.attn.q_gain)


class Block(nn.Module):
    """Upstream block: x = mix0*x + mix1*x0; x += attn_scale*attn(norm x); x += mlp_scale*mlp."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.model_dim
        self.attn_norm = RMSNorm()
        self.mlp_norm = RMSNorm()
        self.attn = CausalSelfAttention(cfg)
        self.mlp = MLP(d, cfg.mlp_mult)
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))

    def _controls(self, ctl: Controls | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        if ctl is None:
            return self.attn_scale, self.mlp_scale, self.resid_mix, None
        return ctl.attn_scale, ctl.mlp_scale, ctl.resid_mix, ctl.q_gain

    def forward(
        self,
        x: Tensor,
        x0: Tensor,
        ctl: Controls | None = None,
        mlp: MLP | None = None,
        attn: bool = True,
    ) -> Tensor:
        attn_scale, mlp_scale, mix, q_gain = self._controls(ctl)
        mix = mix.to(x.dtype)
        x = mix[0][None, None, :] * x + mix[1][None, None, :] * x0  # (B, T, D)
        if attn:
            x = x + attn_scale.to(x.dtype)[None, None, :] * self.attn(self.attn_norm(x), q_gain)
        mlp_out = (mlp or self.mlp)(self.mlp_norm(x))
        return x + mlp_scale.to(x.dtype)[None, None, :] * mlp_out

    def forward_lanes(
        self,
        lanes: tuple[Tensor, Tensor],
        x0: Tensor,
        resid: Tensor,
        post: Tensor,
        ctl: Controls | None = None,
        mlp: MLP | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Two-lane parallel residual (PR #1204). Attention reads lane 0, the MLP lane 1; each
        output is written to both lanes: lane = resid[s]*lane + post[s, lane]*out, s = 0 for
        attention, 1 for the MLP. resid (2,), post (2, 2)."""
        attn_scale, mlp_scale, mix, q_gain = self._controls(ctl)
        lane0, lane1 = lanes
        mix, resid, post = mix.to(lane0.dtype), resid.to(lane0.dtype), post.to(lane0.dtype)
        read = mix[0][None, None, :] * lane0 + mix[1][None, None, :] * x0
        out = attn_scale.to(lane0.dtype)[None, None, :] * self.attn(self.attn_norm(read), q_gain)
        lane0, lane1 = resid[0] * lane0 + post[0, 0] * out, resid[0] * lane1 + post[0, 1] * out
        read = mix[0][None, None, :] * lane1 + mix[1][None, None, :] * x0
        out = mlp_scale.to(lane0.dtype)[None, None, :] * (mlp or self.mlp)(self.mlp_norm(read))
        return resid[1] * lane0 + post[1, 0] * out, resid[1] * lane1 + post[1, 1] * out


class LowRankAdapter(nn.Module):
    """Per-(repeat, block) low-rank residual branch of a looped core: up(down(norm x)).
    Up-projection zero-init, so every repeat starts as the shared block."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.down = CastedLinear(dim, rank, bias=False)
        self.up = zero_init(CastedLinear(rank, dim, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(rms_norm(x)))

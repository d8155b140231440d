"""The extras that two or more published PR models add to upstream's layers, with the same math,
parameter names, shapes and init in each (so every family's state dict and output stay its
script's). Each names the PRs that use it and the option, if any, that tells their uses apart.

| extra | used by |
|---|---|
| `rope_inv_freq`, `ntk_rope_angles` (NTK-aware partial RoPE tables) | PR #325, #1204 |
| `apply_partial_rotary` (rotate the first rope_dims dims of a head) | PR #325, #1204 |
| `xsa` (exclusive self attention, from PR #287) | PR #325, #363, #1204 |
| `shift_right`, `SmearGate` (blend each position with the previous one) | PR #325, #1204 |
| `BigramHash` (xor-hashed token-pair embedding, `bigram.*`) | PR #325, #1204 |
| `ln_scale_factor` (LN scale: norm outputs x 1/sqrt(layer + 1)) | PR #325, #1204 |

Extras only one family has stay in its module: PR #363's multiplicative bigram hash and its
top-level `bigram_emb` / `bigram_proj` (N(0, 0.02) table, no scale), DepthLoRA and q/v-delta
attention; PR #325's LoopAdapter, RefinementBlock and float-multiple relu^2 MLP; PR #1204's
value embedding, LeakyReLU^2 bank MLP, canon layers, repeat MLPs and parallel lanes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from golf_core.model.layers import CastedLinear, Embedding

# Both scripts build every Rotary with train_seq_len=1024: the base is NTK-scaled beyond it.
ROPE_TRAIN_SEQ_LEN = 1024
BIGRAM_SCALE_INIT = 0.05  # both scripts' BigramHashEmbedding.scale init


# ----------------------------------------------------------------------------- partial RoPE


def rope_inv_freq(base: float, rope_dims: int, device: torch.device | None = None) -> Tensor:
    """PR #325, #1204: RoPE inverse frequencies 1 / base^(2i / rd) over the first `rope_dims`
    dims of a head, float32 (rope_dims / 2,)."""
    arange = torch.arange(0, rope_dims, 2, dtype=torch.float32, device=device)
    return 1.0 / base ** (arange / rope_dims)


def ntk_rope_angles(
    seq_len: int,
    base: float,
    rope_dims: int,
    device: torch.device,
    inv_freq: Tensor | None = None,
) -> Tensor:
    """PR #325, #1204 (their scripts' NTK-aware `Rotary`): the angles t * f_i, float32
    (seq_len, rope_dims / 2); beyond 1024 tokens the base is scaled by
    (seq_len / 1024)^(rd / (rd - 2)) and the frequencies recomputed on `device`.

    `inv_freq`: the unscaled frequencies, precomputed (PR #1204 keeps them as a buffer built at
    init, as both scripts do); None computes them on `device` at each call (PR #325's port,
    which holds no state).
    """
    rd = rope_dims
    if seq_len > ROPE_TRAIN_SEQ_LEN:
        base = base * (seq_len / ROPE_TRAIN_SEQ_LEN) ** (rd / (rd - 2))
        inv_freq = None
    inv_freq = rope_inv_freq(base, rd, device) if inv_freq is None else inv_freq.to(device)
    return torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)


@torch.library.custom_op("golf::ntk_rope_tables", mutates_args=())
def _ntk_rope_tables(
    seq_len: int, base: float, rope_dims: int, device: torch.device, inv_freq: Tensor | None
) -> tuple[Tensor, Tensor]:
    freqs = ntk_rope_angles(seq_len, base, rope_dims, device, inv_freq)
    return freqs.cos(), freqs.sin()


@_ntk_rope_tables.register_fake
def _(seq_len, base, rope_dims, device, inv_freq):
    shape = (seq_len, rope_dims // 2)
    return (torch.empty(shape, dtype=torch.float32, device=device),
            torch.empty(shape, dtype=torch.float32, device=device))


def ntk_rope_tables(
    seq_len: int, base: float, rope_dims: int, device: torch.device,
    inv_freq: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """cos and sin of `ntk_rope_angles`, float32 (seq_len, rope_dims / 2). Under torch.compile
    an opaque op, so the tables are computed once a forward: traced as ops, inductor inlined
    the cos / sin into every layer's rotary kernel (per element of q and k, forward and
    backward: ~25 ms of a 157 ms PR #325 step at width 32). Same values either way."""
    if torch.compiler.is_compiling():
        return _ntk_rope_tables(seq_len, float(base), rope_dims, device, inv_freq)
    freqs = ntk_rope_angles(seq_len, base, rope_dims, device, inv_freq)
    return freqs.cos(), freqs.sin()


def apply_partial_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """PR #325, #1204: rotate the two halves of the first 2 * cos.size(-1) dims of x, pass the
    rest. Only the last dim is read, so any layout works ((B, H, T, Dh) in PR #325's port,
    (B, T, H, Dh) in PR #1204's) with cos / sin broadcast to it."""
    half = cos.size(-1)
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos, rest), dim=-1)


# ----------------------------------------------------------------------------- blocks


def xsa(y: Tensor, v: Tensor) -> Tensor:
    """Exclusive self attention (PR #287; used by PR #325, #363, #1204): each head's output
    minus its component along its own token's unit value vector.

    y (B, T, H, Dh) attention output, v (B, T, Hkv, Dh) values; query head h reads value head
    h // (H / Hkv), as GQA does. Which layers run it is each family's choice (PR #363: per
    physical block; PR #325: the last XSA_LAST_N attention blocks; PR #1204: the last
    XSA_LAST_N virtual layers). PR #325's port keeps its heads (B, H, T, Dh) and transposes
    y and v to this layout for the call.
    """
    B, T, H, D = y.shape
    y = y.reshape(B, T, v.size(-2), H // v.size(-2), D)  # (B, T, Hkv, group, Dh)
    vn = F.normalize(v, dim=-1).unsqueeze(-2)  # (B, T, Hkv, 1, Dh)
    return (y - (y * vn).sum(dim=-1, keepdim=True) * vn).reshape(B, T, H, D)


def ln_scale_factor(layer: int, enabled: bool = True) -> float:
    """LN scale (PR #325, #1204): the factor 1/sqrt(layer + 1) on a block's norm outputs, layer
    = its virtual depth; 1.0 when not `enabled` (LN_SCALE=0, and PR #325's refinement steps)."""
    return 1.0 / math.sqrt(layer + 1) if enabled else 1.0


# ----------------------------------------------------------------------------- embeddings


def shift_right(x: Tensor) -> Tensor:
    """x one position later along T, zeros at t = 0: (B, T, D) (PR #325's `shift_right`; the
    shift of SmearGate, and of PR #325's refinement-block local mix)."""
    return F.pad(x[:, :-1], (0, 0, 1, 0))


class SmearGate(nn.Module):
    """SmearGate (PR #325; PR #1204, via #1179): x <- (1 - g) x + g x[t-1] per channel,
    g = sigmoid(gate), `gate` zero-init (so it starts as an even blend)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate.to(x.dtype))[None, None, :]
        return (1 - g) * x + g * shift_right(x)


class BigramHash(nn.Module):
    """BigramHashEmbedding (PR #325, #1204): the (previous, current) token pair hashed to row
    (36313 cur XOR 27191 prev) mod (rows - 1) in int32, row rows - 1 at t = 0; a zero-init
    `embed` [rows, dim], projected to the width by `proj` (zero-init; none when dim equals
    the width), times a learned `scale` (0.05).

    The families differ only outside it: PR #325's orthogonal init (which also reaches `proj`
    when it is at least 64 x 64) scales `.proj` weights by 1/sqrt(2 * depth); PR #1204's does
    not. PR #363's bigram embedding is another one (multiplicative hash, its own names).
    """

    def __init__(self, rows: int, dim: int, model_dim: int) -> None:
        super().__init__()
        self.rows = rows
        self.embed = Embedding(rows, dim)
        nn.init.zeros_(self.embed.weight)
        self.proj = CastedLinear(dim, model_dim, bias=False) if dim != model_dim else None
        if self.proj is not None:
            nn.init.zeros_(self.proj.weight)
        self.scale = nn.Parameter(torch.tensor(BIGRAM_SCALE_INIT))

    def forward(self, ids: Tensor) -> Tensor:
        t, mod = ids.to(torch.int32), self.rows - 1
        idx = torch.full_like(t, mod)
        idx[..., 1:] = torch.bitwise_xor(36313 * t[..., 1:], 27191 * t[..., :-1]) % mod
        h = self.embed(idx.long())
        h = self.proj(h) if self.proj is not None else h
        return h * self.scale.to(h.dtype)

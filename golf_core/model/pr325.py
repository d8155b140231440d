"""PR #325's looped middle-cycle GPT (family "pr325"), with the script's state-dict names.

Source: openai/parameter-golf PR #325, `records/track_non_record_16mb/
2026-03-21_LoopedTransformerDesign_1.1462/train_gpt.py` (SOURCE), class
`GPT`: the model PR #363's 3x3 / 2x5 loop experiments and their flat control ran on. Looped
(LOOP_CORE_LAYERS > 0 and LOOP_REPEATS > 1, the script's `loop_enabled`), its forward:

- input: `tok_emb` (+ `bigram`, BigramHash: the (previous, current) token pair hashed into
  BIGRAM_VOCAB_SIZE rows, embedded at BIGRAM_DIM, projected to the width, times a learned
  scale), RMSNorm, then `smear` (SmearGate: a per-dim sigmoid gate blends each position with
  the previous one). That is x0, which every block mixes back in through its `resid_mix`.
- stem: the first (NUM_LAYERS - LOOP_CORE_LAYERS) // 2 blocks (`stem_blocks`); each output
  is pushed for the U-Net skips.
- core: LOOP_CORE_LAYERS blocks (`loop_blocks`) run LOOP_REPEATS times. Repeat r first adds
  `loop_repeat_embed[r]`; it runs the attention blocks when r % LOOP_ATTN_EVERY == 0 or r is
  the last repeat, else as many attention-free `refine_blocks` (RefinementBlock: resid_mix, a
  gated mix with the RMS-normed previous position, a relu^2 MLP of REFINE_MLP_MULT). After
  every block use, that use's own `LoopAdapter` adds a relu^2 low-rank branch times a per-dim
  `adapter_scale` (repeat r, block b: `loop_adapters[r * C + b]`).
- tail: the other blocks (`tail_blocks`); tail j first adds `skip_weights[j] * pop()`.
- optional backout (subtract `backout_lambda` x the stream after virtual layer
  BACKOUT_LAYER), final RMSNorm, tied or untied head, tanh softcap; in training, MTP heads
  (head k predicts token t + k + 2) add MTP_LOSS_WEIGHT x their mean loss.

Flat (LOOP_CORE_LAYERS=0 or LOOP_REPEATS=1): upstream's U-Net on NUM_LAYERS `blocks`, the
same input, extras, backout and head. The first NUM_LAYERS // 2 blocks (the script's
`num_encoder_layers`) are the schedule's stem steps, the rest its tail steps, with the same
skips (tail j adds `skip_weights[j] * pop()`); no loop parameters exist (repeat embeddings,
adapters, refinement blocks are the loop's only), whatever the loop options say.

Blocks are upstream's with the script's extras: partial RoPE (first ROPE_DIMS dims of a head,
base NTK-scaled past 1024 tokens), XSA on the last XSA_LAST_N attention blocks (stem, core,
tail order; flat: `blocks` order), LN scale (norm outputs x 1/sqrt(v + 1), v = virtual depth;
refinement steps unscaled); orthogonal init of every >= 64 x 64 linear, out-projections x
1/sqrt(2 * depth).
The extras it shares with PR #1204 (#363: XSA) come from golf_core/model/extras.py: BigramHash,
SmearGate, the NTK-scaled partial RoPE tables and rotation, XSA, the LN-scale factor.
The script's MLP_MULT is a float; ModelConfig.mlp_mult (int) holds the published 3.0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from golf_core.config import BASELINE_FIELDS, ModelConfig
from golf_core.model.extras import (
    BigramHash,
    SmearGate,
    apply_partial_rotary,
    ln_scale_factor,
    ntk_rope_tables,
    shift_right,
    xsa,
)
from golf_core.model.layers import (
    MLP,
    CastedLinear,
    Embedding,
    causal_attention,
    rms_norm,
    softcapped_head,
    zero_init,
)
from golf_core.model.pr325_tables import RoutingTables

FAMILY = "pr325"
PR = 325
SOURCE = "pr325_looped_middle_cycle_train_gpt.py"
# The ModelConfig fields this model reads (its script's Hyperparameters, env var = upper case)
CONFIG_FIELDS: tuple[str, ...] = (
    *BASELINE_FIELDS, "xsa_last_n", "bigram_vocab_size", "bigram_dim", "rope_dims", "ln_scale",
    "loop_core_layers", "loop_repeats", "loop_repeat_embed", "loop_attn_every",
    "refine_mlp_mult", "refine_local_mix", "loop_adapter_dim", "backout_layer", "backout_init",
    "mtp_num_heads", "mtp_loss_weight",
)
# the looped model's module lists; a flat one (LOOP_CORE_LAYERS=0) has only `blocks.*`, which
# SmearGate's gate tells from ours (families.py asks PR #1204, which has one too, first)
IDENTIFYING_KEYS = ("stem_blocks.", "loop_blocks.", "refine_blocks.", "tail_blocks.",
                    "smear.gate")
# the script's CONTROL_TENSOR_NAME_PATTERNS, plus the BigramHash table it trains with Adam
CONTROL_PATTERNS: tuple[str, ...] = (
    "attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes",
    "q_gain", "skip_weight", "skip_weights", "smear", "backout_lambda", "adapter_scale",
    "loop_repeat_embed",
)  # fmt: skip
# trained with Adam at the token LR beside tok_emb, as the script does
TOKEN_PATTERNS: tuple[str, ...] = ("bigram.embed",)

_RECORD = dict(
    family=FAMILY, num_layers=6, model_dim=640, num_heads=10, num_kv_heads=5, mlp_mult=3,
    loop_core_layers=2, loop_repeats=5, loop_attn_every=2, refine_mlp_mult=1.0,
    refine_local_mix=True, loop_adapter_dim=64, loop_repeat_embed=True,
    bigram_vocab_size=2048, bigram_dim=128, xsa_last_n=4, rope_dims=16, ln_scale=True,
)  # fmt: skip
PRESETS: dict[str, dict] = {
    # PR #325's README command (stem 2, core 2 x 5 attending on repeats 0, 2, 4, tail 2: 14
    # virtual layers); 25,607,485 parameters (its train.log: model_params)
    "pr325": _RECORD,
    # PR #363's 3x3 vs 2x5 on this model ("both configs used 640d, 8 attention heads with 4
    # KV heads, 3x MLP ... from the PR #325 base", its writeup): 3 / 3 x 3 / 3 (9 blocks, 15
    # virtual) and 2 / 2 x 5 / 2 (6 blocks, 14 virtual); the rest as the record
    "pr363-3x3": {**_RECORD, "num_heads": 8, "num_kv_heads": 4, "num_layers": 9,
                  "loop_core_layers": 3, "loop_repeats": 3},
    "pr363-2x5": {**_RECORD, "num_heads": 8, "num_kv_heads": 4, "num_layers": 6,
                  "loop_core_layers": 2, "loop_repeats": 5},
    # PR #363's flat control on the same base: "pr363-3x3" without the loop (LOOP_CORE_LAYERS=0:
    # the script's U-Net over `blocks`; the loop options left are inert). 11 layers: neither
    # PR #363's script nor its README gives its depth; the issue's "3x3 vs flat 11L" does
    "pr363-flat": {**_RECORD, "num_heads": 8, "num_kv_heads": 4, "num_layers": 11,
                   "loop_core_layers": 0, "loop_repeats": 3},
}  # fmt: skip


def looped(cfg: ModelConfig) -> bool:
    """The script's `loop_enabled`: LOOP_CORE_LAYERS > 0 and LOOP_REPEATS > 1; else flat."""
    return cfg.loop_core_layers > 0 and cfg.loop_repeats > 1


def validate(cfg: ModelConfig) -> None:
    """The script's constructor checks (ValueError)."""
    hd = cfg.model_dim // cfg.num_heads
    checks = {
        f"0 <= loop_core_layers={cfg.loop_core_layers} <= num_layers={cfg.num_layers}":
            0 <= cfg.loop_core_layers <= cfg.num_layers,
        "loop_repeats >= 1": cfg.loop_repeats >= 1,
        "num_heads divides model_dim, num_kv_heads divides num_heads":
            cfg.model_dim % cfg.num_heads == 0 and cfg.num_heads % cfg.num_kv_heads == 0,
        f"even head_dim={hd} and rope_dims={cfg.rope_dims} <= head_dim":
            hd % 2 == 0 and cfg.rope_dims % 2 == 0 and 0 <= cfg.rope_dims <= hd,
        "loop_attn_every >= 1": cfg.loop_attn_every >= 1,
        "refine_mlp_mult, loop_adapter_dim, mtp_num_heads >= 0":
            min(cfg.refine_mlp_mult, cfg.loop_adapter_dim, cfg.mtp_num_heads) >= 0,
        f"0 <= backout_layer <= num_layers={cfg.num_layers}":
            0 <= cfg.backout_layer <= cfg.num_layers,
        "logit_softcap > 0": cfg.logit_softcap > 0,
    }  # fmt: skip
    failed = [what for what, ok in checks.items() if not ok]
    if failed:
        raise ValueError(f"family 'pr325' needs {'; '.join(failed)}")


# ----------------------------------------------------------------------------- layers


class NTKPartialRotary(nn.Module):
    """PR #325's RoPE tables over the first `rope_dims` dims of a head (0 = all), the base
    NTK-scaled by (T / 1024)^(rd / (rd - 2)) when T > 1024. No cache, no state: unlike PR
    #1204's (and both scripts') cached `Rotary`, the frequencies are recomputed on `device`
    at each call, and the tables are laid out (1, 1, T, rd/2) for (B, H, T, Dh) heads."""

    def __init__(self, head_dim: int, base: float, rope_dims: int) -> None:
        super().__init__()
        self.rd, self.base = rope_dims or head_dim, base

    def forward(self, seq_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
        cos, sin = ntk_rope_tables(seq_len, self.base, self.rd, device)  # made on `device`
        return cos[None, None], sin[None, None]  # (1, 1, T, rd/2) each


def _vec(p: Tensor, like: Tensor) -> Tensor:
    return p.to(like.dtype)[None, None, :]


def _mix(resid_mix: Tensor, x: Tensor, x0: Tensor) -> Tensor:
    mix = resid_mix.to(x.dtype)
    return mix[0][None, None, :] * x + mix[1][None, None, :] * x0


class Attention(nn.Module):
    """PR #325's GQA attention: RMS-normed q/k, partial RoPE, per-head q_gain, and XSA (each
    head's output minus its component along its own unit value) where `use_xsa`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim, self.num_heads, self.num_kv_heads = cfg.model_dim, cfg.num_heads, cfg.num_kv_heads
        self.head_dim = dim // cfg.num_heads
        self.c_q = CastedLinear(dim, dim, bias=False)
        self.c_k = CastedLinear(dim, self.num_kv_heads * self.head_dim, bias=False)
        self.c_v = CastedLinear(dim, self.num_kv_heads * self.head_dim, bias=False)
        self.proj = zero_init(CastedLinear(dim, dim, bias=False))
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init))
        self.use_xsa = False

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        B, T, D = x.shape
        H, Hkv, Dh = self.num_heads, self.num_kv_heads, self.head_dim
        q = rms_norm(self.c_q(x).reshape(B, T, H, Dh).transpose(1, 2))  # (B, H, T, Dh)
        k = rms_norm(self.c_k(x).reshape(B, T, Hkv, Dh).transpose(1, 2))  # (B, Hkv, T, Dh)
        v = self.c_v(x).reshape(B, T, Hkv, Dh).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q, k = apply_partial_rotary(q, cos, sin), apply_partial_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        y = causal_attention(q, k, v)
        y = y.transpose(1, 2)  # (B, T, H, Dh)
        if self.use_xsa:
            y = xsa(y, v.transpose(1, 2))
        return self.proj(y.reshape(B, T, D))


def _mlp(dim: int, mult: float) -> MLP:
    """Upstream's relu^2 MLP at PR #325's float multiple: hidden = max(1, int(mult * dim))."""
    return MLP(dim, max(1, int(mult * dim)))


class Block(nn.Module):
    """Upstream's block with PR #325's LN scale `s` on both norm outputs."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.model_dim
        self.attn, self.mlp = Attention(cfg), _mlp(d, cfg.mlp_mult)
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))

    def forward(self, x: Tensor, x0: Tensor, rope: tuple[Tensor, Tensor], s: float) -> Tensor:
        x = _mix(self.resid_mix, x, x0)  # (B, T, D)
        x = x + _vec(self.attn_scale, x) * self.attn(rms_norm(x) * s, *rope)
        return x + _vec(self.mlp_scale, x) * self.mlp(rms_norm(x) * s)


class RefinementBlock(nn.Module):
    """PR #325's attention-free core step: resid_mix; x = (1-g) x + g shift(norm x) with
    g = sigmoid(local_mix_gate) (REFINE_LOCAL_MIX); + mlp_scale * MLP (REFINE_MLP_MULT > 0)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, has_mlp = cfg.model_dim, cfg.refine_mlp_mult > 0
        self.mlp = _mlp(d, cfg.refine_mlp_mult) if has_mlp else None
        self.local_mix_gate = nn.Parameter(torch.zeros(d))  # there even when the mix is off
        self.enable_local_mix = cfg.refine_local_mix
        self.mlp_scale = nn.Parameter(torch.ones(d)) if has_mlp else None
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        x = _mix(self.resid_mix, x, x0)
        if self.enable_local_mix:
            g = torch.sigmoid(_vec(self.local_mix_gate, x))
            x = (1 - g) * x + g * shift_right(rms_norm(x))
        if self.mlp is not None:
            x = x + _vec(self.mlp_scale, x) * self.mlp(rms_norm(x))
        return x


class LoopAdapter(nn.Module):
    """PR #325: adapter_scale * up(relu(down(norm x))^2), up zero-init; one per core use."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.down = CastedLinear(dim, rank, bias=False)
        self.up = zero_init(CastedLinear(rank, dim, bias=False))
        self.adapter_scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return _vec(self.adapter_scale, x) * self.up(torch.relu(self.down(rms_norm(x))).square())


# ----------------------------------------------------------------------------- schedule

_LISTS = {"stem": "stem_blocks", "core": "loop_blocks", "refine": "refine_blocks",
          "tail": "tail_blocks"}  # fmt: skip


@dataclass(frozen=True)
class Step:
    """One virtual layer: `kind` (stem/core/refine/tail) `index` (within its kind: a tail
    step's is its skip), loop `repeat` (-1 outside the core), `physical` (stem, loop, tail
    blocks in order, then refinement blocks; flat: the `blocks` index), `ln_scale` (the
    norm-output factor; 1.0 on refinement steps), `module` (its block's state-dict name)."""

    kind: str
    index: int
    repeat: int
    physical: int
    ln_scale: float
    module: str


@dataclass(frozen=True)
class LoopSchedule:
    """The virtual layers of PR #325's forward, in order."""

    steps: tuple[Step, ...]

    @property
    def depth(self) -> int:
        return len(self.steps)

    @property
    def virtual_to_physical(self) -> list[int]:
        return [s.physical for s in self.steps]

    @property
    def cycle(self) -> list[int]:
        """The loop repeat of each core step, 0 for stem and tail."""
        return [max(s.repeat, 0) for s in self.steps]


def split(cfg: ModelConfig) -> tuple[int, int, int]:
    """(stem, core, tail) block counts; flat: the U-Net halves (NUM_LAYERS // 2, 0, rest)."""
    C = cfg.loop_core_layers if looped(cfg) else 0
    S = (cfg.num_layers - C) // 2
    return S, C, cfg.num_layers - C - S


def build_schedule(cfg: ModelConfig) -> LoopSchedule:
    """Stem, then per repeat the C attention or refinement blocks, then tail; flat: the
    stem and tail steps alone, run by `blocks` in order."""
    (S, C, T), R, flat = split(cfg), cfg.loop_repeats, not looped(cfg)
    raw = [("stem", i, -1, i) for i in range(S)]
    for r in range(R):
        attn = r % cfg.loop_attn_every == 0 or r == R - 1
        raw += [("core", b, r, S + b) if attn else ("refine", b, r, S + C + T + b)
                for b in range(C)]  # fmt: skip
    raw += [("tail", j, -1, S + C + j) for j in range(T)]
    return LoopSchedule(tuple(
        Step(kind, i, r, p, ln_scale_factor(v, cfg.ln_scale and kind != "refine"),
             f"blocks.{p}" if flat else f"{_LISTS[kind]}.{i}")
        for v, (kind, i, r, p) in enumerate(raw)
    ))  # fmt: skip


# ----------------------------------------------------------------------------- the model


class Model(RoutingTables, nn.Module):
    """PR #325's `GPT`, looped or flat. forward(input_ids, target_ids=None, *, num_iters=None):
    logits (B, T, V), or the mean cross-entropy (+ the MTP term in training). `num_iters`
    must be None or LOOP_REPEATS (flat: 1): repeat embeddings and adapters exist for the
    trained repeats only."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        validate(cfg)
        self.cfg, self.schedule, self.looped = cfg, build_schedule(cfg), looped(cfg)
        d, (S, C, T) = cfg.model_dim, split(cfg)
        self.num_skips = min(S, T)
        # modules in the script's order: same RNG draws, so the same init under a seed
        self.tok_emb = Embedding(cfg.vocab_size, d)
        self.bigram = None
        if cfg.bigram_vocab_size > 0:
            self.bigram = BigramHash(cfg.bigram_vocab_size, cfg.bigram_dim, d)
        self.smear = SmearGate(d)
        if not self.looped:  # flat: every block in `blocks`, where the script registers it
            self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        stem, tail = (S, T) if self.looped else (0, 0)  # the loop's lists: empty when flat
        self.stem_blocks = nn.ModuleList(Block(cfg) for _ in range(stem))
        self.loop_blocks = nn.ModuleList(Block(cfg) for _ in range(C))
        self.refine_blocks = nn.ModuleList(RefinementBlock(cfg) for _ in range(C))
        n_adapters = C * cfg.loop_repeats if cfg.loop_adapter_dim else 0
        self.loop_adapters = nn.ModuleList(
            LoopAdapter(d, cfg.loop_adapter_dim) for _ in range(n_adapters))
        self.tail_blocks = nn.ModuleList(Block(cfg) for _ in range(tail))
        self.loop_repeat_embed = None
        if cfg.loop_repeat_embed and self.looped:
            self.loop_repeat_embed = nn.Parameter(torch.zeros(cfg.loop_repeats, d))
        self.backout_lambda = None
        if cfg.backout_layer > 0:
            self.backout_lambda = nn.Parameter(torch.tensor(float(cfg.backout_init)))
        # (0, d) and frozen without skips: the script keeps the key (its flat path, at
        # NUM_LAYERS=1, leaves that empty tensor trainable; nothing reaches it either way)
        self.skip_weights = nn.Parameter(torch.ones(self.num_skips, d), self.num_skips > 0)
        self.rotary = NTKPartialRotary(d // cfg.num_heads, cfg.rope_base, cfg.rope_dims)
        self.lm_head = None
        if not cfg.tie_embeddings:
            self.lm_head = zero_init(CastedLinear(d, cfg.vocab_size, bias=False))
        self.mtp_heads = nn.ModuleList(zero_init(CastedLinear(d, cfg.vocab_size, bias=False))
                                       for _ in range(cfg.mtp_num_heads))  # fmt: skip
        attn_blocks = ([*self.stem_blocks, *self.loop_blocks, *self.tail_blocks] if self.looped
                       else list(self.blocks))
        for block in attn_blocks[max(0, len(attn_blocks) - cfg.xsa_last_n):]:
            block.attn.use_xsa = cfg.xsa_last_n > 0
        self._init_weights()

    def _init_weights(self) -> None:
        if self.cfg.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.cfg.tied_embed_init_std)
        for name, m in self.named_modules():
            if not isinstance(m, nn.Linear):
                continue
            if getattr(m, "_zero_init", False):
                nn.init.zeros_(m.weight)
            elif min(m.weight.shape) >= 64:
                nn.init.orthogonal_(m.weight, gain=1.0)
                if name.endswith(".proj") or ".proj." in name:
                    with torch.no_grad():
                        m.weight.mul_(1.0 / math.sqrt(2 * self.schedule.depth))

    def _module(self, step: Step) -> nn.Module:
        name, index = step.module.rsplit(".", 1)  # e.g. "loop_blocks", "1"
        return getattr(self, name)[int(index)]

    def _uses(self, m: nn.Module) -> int:
        return sum(self._module(s) is m for s in self.schedule.steps)

    def core_modules(self) -> list[nn.Module]:
        """The loop blocks and the refinement blocks the schedule runs (QAT "core")."""
        return [m for m in [*self.loop_blocks, *self.refine_blocks] if self._uses(m)]

    # --- forward ---------------------------------------------------------------------------

    def _backbone(self, input_ids: Tensor, num_iters: int | None, collect: bool) -> list[Tensor]:
        """The stream after each virtual layer if `collect`, then the one the final norm
        reads (after backout)."""
        if not self.looped and num_iters not in (None, 1):
            raise ValueError(f"num_iters={num_iters}: this PR #325 model is flat (no loop)")
        if self.looped and num_iters not in (None, self.cfg.loop_repeats):
            raise ValueError(f"num_iters={num_iters}: PR #325's loop has repeat embeddings and "
                             f"adapters for LOOP_REPEATS={self.cfg.loop_repeats} repeats only")
        x = self.tok_emb(input_ids)
        if self.bigram is not None:
            x = x + self.bigram(input_ids)
        x = x0 = self.smear(rms_norm(x))  # (B, T, D)
        rope = self.rotary(input_ids.size(1), input_ids.device)
        skips, hidden, backout = [], [], None
        for v, s in enumerate(self.schedule.steps):
            if s.kind == "tail" and s.index < self.num_skips and skips:
                x = x + _vec(self.skip_weights[s.index], x) * skips.pop()
            if s.repeat >= 0 and s.index == 0 and self.loop_repeat_embed is not None:
                x = x + _vec(self.loop_repeat_embed[s.repeat], x)
            block = self._module(s)
            x = block(x, x0) if s.kind == "refine" else block(x, x0, rope, s.ln_scale)
            if s.repeat >= 0 and len(self.loop_adapters):
                x = x + self.loop_adapters[s.repeat * self.cfg.loop_core_layers + s.index](x)
            if s.kind == "stem" and len(skips) < self.num_skips:
                skips.append(x)
            if self.backout_lambda is not None and v + 1 == self.cfg.backout_layer:
                backout = x
            if collect:
                hidden.append(x)
        if backout is not None:
            x = x - self.backout_lambda.to(x.dtype) * backout
        return hidden + [x]

    def forward_hidden(self, input_ids: Tensor, *, num_iters: int | None = None) -> list[Tensor]:
        """The stream (B, T, D) after each virtual layer (stem, every core step, tail), before
        the final norm (and the backout, if on). Length = effective depth."""
        return self._backbone(input_ids, num_iters, collect=True)[:-1]

    def forward(
        self, input_ids: Tensor, target_ids: Tensor | None = None, *, num_iters: int | None = None
    ) -> Tensor:
        x = rms_norm(self._backbone(input_ids, num_iters, collect=False)[-1])  # final norm
        cap = self.cfg.logit_softcap  # the script's softcapped head and float32 cross-entropy
        if target_ids is None:  # softcapped logits (B, T, V)
            return softcapped_head(x, self.tok_emb, self.lm_head, cap)
        loss = softcapped_head(x, self.tok_emb, self.lm_head, cap, target_ids)
        if not (self.training and len(self.mtp_heads) and self.cfg.mtp_loss_weight > 0):
            return loss
        terms = [  # MTP head k: target k + 1 steps further on, from the same position
            softcapped_head(x[:, : x.size(1) - k - 1], self.tok_emb, h, cap, target_ids[:, k + 1 :])
            for k, h in enumerate(self.mtp_heads) if x.size(1) > k + 1
        ]  # fmt: skip
        return loss + self.cfg.mtp_loss_weight * torch.stack(terms).mean() if terms else loss

    # --- accounting ------------------------------------------------------------------------

    def parameter_counts(self) -> dict[str, int]:
        """Stored parameters; `shared` = those of the modules run more than once (loop and
        refinement blocks), `unrolled` counts each use; `physical_layers` = NUM_LAYERS."""
        total = sum(p.numel() for p in self.parameters())
        shared = extra = 0
        for m in [*self.loop_blocks, *self.refine_blocks]:
            n, k = sum(p.numel() for p in m.parameters()), self._uses(m)
            shared, extra = shared + n * (k > 1), extra + n * max(k - 1, 0)
        return {"total": total, "unique": total - shared, "shared": shared,
                "unrolled": total + extra, "physical_layers": self.cfg.num_layers,
                "effective_depth": self.schedule.depth}  # fmt: skip

    def matmul_params_per_token(self) -> int:
        """Weights of every matmul per token: each virtual layer's linears, the adapters, the
        bigram projection, the LM head and the (training) MTP heads (benchmarks/flops.py)."""
        def n(m: nn.Module | None) -> int:
            mods = m.modules() if m is not None else []
            return sum(x.weight.numel() for x in mods if isinstance(x, nn.Linear))

        per_layer = sum(n(self._module(s)) for s in self.schedule.steps)
        extras = n(self.loop_adapters) + n(self.bigram) + n(self.mtp_heads)
        return per_layer + extras + self.cfg.vocab_size * self.cfg.model_dim

    def attention_layers(self) -> int:
        """Virtual layers that run attention (refinement steps do not)."""
        return sum(s.kind != "refine" for s in self.schedule.steps)

    # --- routing ---------------------------------------------------------------------------


def _f(t: Tensor) -> Tensor:
    return t.detach().float()


# ----------------------------------------------------------------------------- state dicts


def _count(sd: Mapping[str, Tensor], prefix: str) -> int:
    idx = {int(k[len(prefix) :].split(".")[0]) for k in sd if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def config_from_state_dict(
    state_dict: Mapping[str, Tensor], base: ModelConfig | None = None
) -> ModelConfig:
    """`base` as family "pr325" with what the shapes fix: vocab, width, heads, KV heads,
    mlp_mult, tie, num_layers and loop_core_layers (stem/core/tail counts; flat, i.e. `blocks`
    and no `loop_blocks`: their count and 0), bigram_vocab_size, bigram_dim, mtp_num_heads;
    looped also loop_repeats (loop_repeat_embed rows, else adapters / core),
    loop_repeat_embed, loop_adapter_dim, refine_mlp_mult.

    From `base` (default: the "pr325" preset, i.e. PR #325's record command), since no shape
    tells them: loop_attn_every, refine_local_mix, xsa_last_n, rope_dims, ln_scale, rope_base,
    logit_softcap, mtp_loss_weight, backout_layer (needed when there is a backout_lambda),
    loop_repeats without repeat embeddings or adapters, every loop option when flat (and the
    init-only qk_gain_init, tied_embed_init_std, backout_init)."""
    sd = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}  # torch.compile'd
    flat = "loop_blocks.0.attn.q_gain" not in sd and "blocks.0.attn.q_gain" in sd
    first = "blocks.0" if flat else "loop_blocks.0"  # a block every such model has
    if "tok_emb.weight" not in sd or f"{first}.attn.q_gain" not in sd:
        raise ValueError("state dict lacks tok_emb.weight / loop_blocks.0.attn.q_gain (flat: "
                         "blocks.0.attn.q_gain): not PR #325's GPT")
    base = base if base is not None else replace(ModelConfig(), **PRESETS["pr325"])
    vocab, dim = (int(n) for n in sd["tok_emb.weight"].shape)
    heads = sd[f"{first}.attn.q_gain"].numel()
    hidden = sd[f"{first}.mlp.fc.weight"].shape[0]
    if hidden % dim:
        raise ValueError(f"MLP hidden {hidden} is not a multiple of {dim}: a non-integer "
                         f"MLP_MULT, which ModelConfig.mlp_mult (int) cannot hold")
    S, C, T = (_count(sd, p) for p in ("stem_blocks.", "loop_blocks.", "tail_blocks."))
    if not flat and S != (S + T) // 2:
        raise ValueError(f"stem {S} / tail {T} blocks: the script makes stem = (stem+tail) // 2")
    sizes: dict[str, object] = dict(
        family=FAMILY, vocab_size=vocab, model_dim=dim, num_heads=heads,
        num_kv_heads=int(sd[f"{first}.attn.c_k.weight"].shape[0] // (dim // heads)),
        mlp_mult=hidden // dim, tie_embeddings="lm_head.weight" not in sd,
        num_layers=_count(sd, "blocks.") if flat else S + C + T, loop_core_layers=C,
        mtp_num_heads=_count(sd, "mtp_heads."),
        bigram_vocab_size=0, backout_layer=base.backout_layer if "backout_lambda" in sd else 0,
    )  # fmt: skip
    adapter = sd.get("loop_adapters.0.down.weight")
    refine = sd.get("refine_blocks.0.mlp.fc.weight")
    if not flat:
        sizes.update(
            loop_repeat_embed="loop_repeat_embed" in sd,
            loop_adapter_dim=int(adapter.shape[0]) if adapter is not None else 0,
            refine_mlp_mult=refine.shape[0] / dim if refine is not None else 0.0)
    if "loop_repeat_embed" in sd:
        sizes["loop_repeats"] = int(sd["loop_repeat_embed"].shape[0])
    elif adapter is not None:
        sizes["loop_repeats"] = _count(sd, "loop_adapters.") // C
    if "bigram.embed.weight" in sd:
        sizes["bigram_vocab_size"], sizes["bigram_dim"] = sd["bigram.embed.weight"].shape
    if "backout_lambda" in sd and base.backout_layer == 0:
        raise ValueError("state dict has backout_lambda: pass BACKOUT_LAYER in `base`")
    return replace(base, **sizes)

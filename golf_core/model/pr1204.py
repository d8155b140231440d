"""PR #1204 (parallel residuals + mini depth recurrence, the record; family "pr1204").

Follows `GPT` of pr1204_parallel_resid_mini_recur_train_gpt.py
(openai/parameter-golf PR #1204, records/track_10min_16mb/
2026-03-31_ParallelResiduals_MiniDepthRecurrence), state-dict names kept so its
`final_model.pt` loads with `strict=True` (checked against tests/golden/upstream_pr1204).

- Weights in banks, one slice per *physical* layer p of L: `qo_bank` [2L, d, d] (q = [p],
  out = [L + p]), `kv_bank` [2L, kv, d] (k = [p], v = [L + p]), `mlp_up_bank` [L, m, d],
  `mlp_down_bank` [L, d, m]. Controls live in one `Block` per *virtual* layer: `resid_mix`,
  `attn_scale`, `mlp_scale`, `attn.q_gain`, and a norm scale 1/sqrt(i + 1) (LN_SCALE, i the
  virtual index).
- Mini recurrence (RECUR_LAYERS, e.g. 4,5): virtual -> physical is 0..5, 4, 5, 6..10 once
  active, 0..10 before. The script switches it on at RECUR_START_STEP (`activate_recurrence`),
  copying each repeat's MLP from its bank slice into `repeat_mlp` (REPEAT_UNTIE_MLP = full:
  fc and proj, down: proj only). Which virtual layers use `repeat_mlp[j]` is the script's
  rule: j = i - V // 2 for V // 2 <= i < V // 2 + len(RECUR_LAYERS) (the second pass when
  the repeated layers sit at the hinge, as in the record).
- Embedding: tok_emb + BigramHash (hash of the token pair, zero-init table, projected, scaled)
  -> RMSNorm -> SmearGate (x mixes with the previous token's x through sigmoid(gate)) = x0.
- U-Net over virtual layers: the first V // 2 push, the rest pop LIFO while pushes remain;
  a pop is `lerp(w * skip, x, sigmoid(g))` with `skip_weights` w and `skip_gates` g
  [min(V//2, V - V//2), d] sized for the recurrent V (before activation the last rows idle).
- Block: x = mix0 * x + mix1 * x0; x += attn_scale * attn(norm(x) * ln); x += mlp_scale *
  mlp(norm(x) * ln). Attention: GQA, RMS-normed q/k, partial RoPE on the first ROPE_DIMS of
  each head (base scaled NTK-style beyond 1024 tokens), q_gain, XSA on the last XSA_LAST_N
  virtual layers (the output minus its projection on the normalized value), value embedding
  (one shared table, a scale per layer) added to v on VE_LAYERS (virtual indices). MLP:
  LeakyReLU(NEGATIVE_SLOPE)(x W_up^T)^2 W_down^T. DISABLE_LAYER0_ATTN: virtual layer 0 runs
  its MLP only (its bank slices and block.0's attn_scale / q_gain stay, unused).
- Parallel residual (PARALLEL_RESIDUAL, from PARALLEL_START_LAYER, compared with the physical
  index by default): two lanes start as copies of x; attention reads mix(lane0, x0), the MLP
  mix(lane1, x0); each writes both lanes, lane = resid[p, s] * lane + post[p, s, lane] * out
  (`parallel_resid_lambdas` [L, 2], `parallel_post_lambdas` [L, 2, 2], s = 0 attn, 1 MLP).
  The final norm reads (lane0 + lane1) / 2 (its log line says `final_lane=mlp`; its code
  averages).
- final RMSNorm, tied head (or `lm_head`), tanh softcap 30, float32 cross-entropy.

The extras it shares with PR #325 (and XSA with PR #363) come from golf_core/model/extras.py:
BigramHash, SmearGate, the NTK-scaled partial RoPE tables and rotation, XSA, the LN-scale
factor. Its own (value embedding, LeakyReLU^2 MLP, canon layers, repeat MLPs, banks, lanes)
are below.

Whether recurrence is on is not in the script's state dict: it is `recurrence_active` here (a
plain attribute). To load a `final_model.pt` of a run that reached RECUR_START_STEP, call
`set_recurrence_active(True)` first (that copies the bank MLPs into `repeat_mlp`), then
`load_state_dict`, as the script's own eval path does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from golf_core.config import BASELINE_FIELDS, ModelConfig
from golf_core.model.extras import (
    BigramHash,
    SmearGate,
    apply_partial_rotary,
    ln_scale_factor,
    ntk_rope_angles,
    ntk_rope_tables,
    rope_inv_freq,
    xsa,
)
from golf_core.model.layers import (
    CastedLinear,
    Embedding,
    RMSNorm,
    causal_attention,
    rms_norm,
    softcapped_head,
    zero_init,
)
from golf_core.model.pr1204_tables import RoutingTables

FAMILY = "pr1204"
PR = 1204
SOURCE = "pr1204_parallel_resid_mini_recur_train_gpt.py"
# The ModelConfig fields this model and its training read (its script's Hyperparameters, env
# var = upper case; skip_gated / smear_gate are our ablation switches, on as the script has them)
CONFIG_FIELDS: tuple[str, ...] = (
    *BASELINE_FIELDS, "recur_layers", "recur_start_step", "recur_start_frac",
    "parallel_start_layer", "xsa_last_n", "bigram_vocab_size", "bigram_dim", "rope_dims",
    "ln_scale", "ve_enabled", "ve_dim", "ve_layers", "negative_slope", "disable_layer0_attn",
    "repeat_untie_mlp", "repeat_untie_mlp_layers", "parallel_residual",
    "parallel_start_layer_is_physical", "canon_ac_layers", "skip_gated", "smear_gate",
)

BANKS = ("qo_bank", "kv_bank", "mlp_up_bank", "mlp_down_bank")
IDENTIFYING_KEYS: tuple[str, ...] = BANKS

# The script's CONTROL_TENSOR_NAME_PATTERNS, then tensors its optimizer gives Adam that no
# pattern of it names: skip_gates, the value-embedding projection, the bigram / value
# embedding tables (token lr there). `bigram.proj` (Adam there too) is left out: PR #325
# names its Muon-trained projection the same.
CONTROL_PATTERNS: tuple[str, ...] = (
    "attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes",
    "q_gain", "skip_weight", "skip_weights", "smear", "dtg_gate", "ve_layer_scales",
    "ve_shared.scale", "attn_gate", "vr_lambda", "parallel_post_lambdas",
    "parallel_resid_lambdas", "skip_gates", "ve_shared.proj", "bigram.proj",
)  # fmt: skip
# trained with Adam at the token LR beside tok_emb, as the script does
TOKEN_PATTERNS: tuple[str, ...] = ("bigram.embed", "ve_shared.embed")

PRESETS: dict[str, dict] = {
    # The record as its logs (seeds 1337, 42; tests/golden/upstream_logs) ran it: 11 x
    # 512, 8 heads / 4 KV, 3x MLP, XSA on the last 11 of 13 virtual layers, layers 4,5 repeated
    # from step 3000 with untied MLPs, lanes from physical 7, layer-0 attention off, script
    # defaults elsewhere (VE 128 on 9,10, partial RoPE 16, LN scale, slope 0.5). BigramHash
    # 2816 x 160: its README command says BIGRAM_DIM=112, but the logged model_params
    # 30,352,046 and mixed_quant's 67 matrices (bigram.proj 512 x 160 is over 65,536) are
    # 2816 x 160's (x 112 gives 30,192,302 and 66).
    "pr1204": dict(
        family=FAMILY, vocab_size=1024, num_layers=11, model_dim=512, num_heads=8,
        num_kv_heads=4, mlp_mult=3, tie_embeddings=True, tied_embed_init_std=0.005,
        logit_softcap=30.0, rope_base=10000.0, qk_gain_init=1.5, bigram_vocab_size=2816,
        bigram_dim=160, xsa_last_n=11, rope_dims=16, ln_scale=True, ve_enabled=True,
        ve_dim=128, ve_layers=(9, 10), negative_slope=0.5, disable_layer0_attn=True,
        recur_layers=(4, 5), recur_start_step=3000, repeat_untie_mlp="full",
        repeat_untie_mlp_layers=(4, 5), parallel_residual=True, parallel_start_layer=7,
        parallel_start_layer_is_physical=True, canon_ac_layers=(),
    ),
}  # fmt: skip

# ----------------------------------------------------------------------------- extras (its own)


class PartialRotary(nn.Module):
    """PR #1204's RoPE (the script's `Rotary`): the first `rope_dims` of each head, base scaled
    beyond 1024 tokens; the unscaled frequencies a buffer built at init, the tables cached per
    (seq_len, device) and laid out (1, T, 1, rd/2) for (B, T, H, Dh) heads."""

    def __init__(self, rope_dims: int, base: float) -> None:
        super().__init__()
        self.rope_dims, self.base = rope_dims, base
        self.register_buffer("inv_freq", rope_inv_freq(base, rope_dims), persistent=False)
        self._cache: tuple[int, torch.device, Tensor, Tensor] | None = None

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple:
        if torch.compiler.is_compiling():  # no cache (a graph break): one opaque op a forward
            cos, sin = ntk_rope_tables(seq_len, self.base, self.rope_dims, device, self.inv_freq)
            return cos[None, :, None].to(dtype), sin[None, :, None].to(dtype)
        c = self._cache  # a table made under inference_mode cannot be saved for backward
        stale = c is not None and c[2].is_inference() and not torch.is_inference_mode_enabled()
        if c is None or stale or c[0] != seq_len or c[1] != device:
            freqs = ntk_rope_angles(seq_len, self.base, self.rope_dims, device, self.inv_freq)
            c = (seq_len, device, freqs.cos()[None, :, None], freqs.sin()[None, :, None])
            self._cache = c
        return c[2].to(dtype), c[3].to(dtype)  # (1, T, 1, rd/2) each


def canon_residual(x: Tensor, w: Tensor) -> Tensor:
    """PR #1204's canon layer: x + sum_k w[k] * x shifted k tokens back, k = 0..3."""
    w = w.to(x.dtype)
    y = x * w[0]
    for k in range(1, 4):
        y = y + F.pad(x[:, :-k], (0, 0, k, 0)) * w[k]
    return x + y


class ValueEmbedding(nn.Module):
    """PR #1204: token -> ve_dim table (std 0.01), projected to the kv width, times `scale`."""

    def __init__(self, vocab: int, dim: int, kv_dim: int) -> None:
        super().__init__()
        self.embed = Embedding(vocab, dim)
        nn.init.normal_(self.embed.weight, std=0.01)
        self.proj = CastedLinear(dim, kv_dim, bias=False) if dim != kv_dim else None
        if self.proj is not None:
            nn.init.zeros_(self.proj.weight)
        self.scale = nn.Parameter(torch.tensor(0.1))

    def forward(self, ids: Tensor) -> Tensor:
        h = self.embed(ids)
        h = self.proj(h) if self.proj is not None else h
        return h * self.scale.to(h.dtype)


class RepeatMLP(nn.Module):
    """PR #1204's RepeatMLPWeights: the repeated pass's own fc (mode full) and proj (full,
    down); copied from the bank slices at activation."""

    def __init__(self, dim: int, mlp_dim: int, mode: str) -> None:
        super().__init__()
        self.fc = CastedLinear(dim, mlp_dim, bias=False) if mode == "full" else None
        self.proj = CastedLinear(mlp_dim, dim, bias=False) if mode in ("full", "down") else None


class Attention(nn.Module):
    """PR #1204's attention: weights passed in (bank slices); holds only q_gain."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = cfg.num_heads, cfg.num_kv_heads
        self.head_dim = cfg.model_dim // cfg.num_heads
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init))
        self.use_xsa = False

    def forward(self, x: Tensor, w: tuple, rope: tuple, v_embed: Tensor | None) -> Tensor:
        B, T, D = x.shape
        q_w, k_w, v_w, o_w = (t.to(x.dtype) for t in w)
        q = F.linear(x, q_w).reshape(B, T, self.num_heads, self.head_dim)
        k = F.linear(x, k_w).reshape(B, T, self.num_kv_heads, self.head_dim)
        v = F.linear(x, v_w)
        if v_embed is not None:
            v = v + v_embed
        v = v.reshape(B, T, self.num_kv_heads, self.head_dim)  # (B, T, Hkv, Dh)
        cos, sin = (t.to(q.dtype) for t in rope)
        q = apply_partial_rotary(rms_norm(q), cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, None, :, None]
        k = apply_partial_rotary(rms_norm(k), cos, sin)
        y = causal_attention(q.transpose(1, 2), k.transpose(1, 2),
                             v.transpose(1, 2)).transpose(1, 2)  # (B, T, H, Dh)
        if self.use_xsa:
            y = xsa(y, v)
        return F.linear(y.reshape(B, T, D), o_w)


def _mlp(x: Tensor, up: Tensor, down: Tensor, slope: float) -> Tensor:
    """PR #1204's MLP: LeakyReLU(slope)(x up^T)^2 down^T."""
    return F.linear(F.leaky_relu(F.linear(x, up.to(x.dtype)), slope).square(), down.to(x.dtype))


class Block(nn.Module):
    """PR #1204's per-virtual-layer Block: the controls and norms; weights passed in."""

    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()
        d = cfg.model_dim
        self.attn_norm, self.mlp_norm = RMSNorm(), RMSNorm()
        self.attn = Attention(cfg)
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))
        self.ln_scale = ln_scale_factor(index, cfg.ln_scale)
        self.disable_attn = cfg.disable_layer0_attn and index == 0
        self.slope = cfg.negative_slope

    def _read(self, lane: Tensor, x0: Tensor) -> Tensor:
        mix = self.resid_mix.to(lane.dtype)
        return mix[0][None, None, :] * lane + mix[1][None, None, :] * x0

    def _attn(self, x: Tensor, w: tuple, rope: tuple, ve: Tensor | None, canon: Tensor | None):
        h = self.attn_norm(x) * self.ln_scale
        h = canon_residual(h, canon) if canon is not None else h
        return self.attn(h, w[:4], rope, ve)

    def _mlp(self, x: Tensor, w: tuple, canon: Tensor | None) -> Tensor:
        h = self.mlp_norm(x) * self.ln_scale
        h = canon_residual(h, canon) if canon is not None else h
        return self.mlp_scale.to(x.dtype)[None, None, :] * _mlp(h, w[4], w[5], self.slope)

    def forward(self, x, x0, w, rope, ve=None, canon=(None, None)) -> Tensor:
        x = self._read(x, x0)  # (B, T, D)
        if not self.disable_attn:
            out = self._attn(x, w, rope, ve, canon[0])
            x = x + self.attn_scale.to(x.dtype)[None, None, :] * out
        return x + self._mlp(x, w, canon[1])

    def forward_lanes(self, lanes, x0, resid, post, w, rope, ve=None, canon=(None, None)):
        """Attention reads lane 0, the MLP lane 1; lane k = resid[s] * lane k + post[s, k] * out."""
        lane0, lane1 = lanes
        resid, post = resid.to(lane0.dtype), post.to(lane0.dtype)
        if not self.disable_attn:
            out = self._attn(self._read(lane0, x0), w, rope, ve, canon[0])
            out = self.attn_scale.to(out.dtype)[None, None, :] * out  # the script's dtype order
            lane0, lane1 = resid[0] * lane0 + post[0, 0] * out, resid[0] * lane1 + post[0, 1] * out
        out = self._mlp(self._read(lane1, x0), w, canon[1])
        return resid[1] * lane0 + post[1, 0] * out, resid[1] * lane1 + post[1, 1] * out


# ----------------------------------------------------------------------------- the model


def _check(cfg: ModelConfig) -> None:
    """The script's constructor checks, and the ones it leaves to a crash or a silent no-op."""
    L, d, h, kv = cfg.num_layers, cfg.model_dim, cfg.num_heads, cfg.num_kv_heads
    if d % h or h % kv or (d // h) % 2:
        raise ValueError(f"pr1204: model_dim={d}, num_heads={h}, num_kv_heads={kv}: heads must "
                         "divide the width, KV heads the heads, and head_dim be even")
    if cfg.logit_softcap <= 0:
        raise ValueError(f"pr1204: logit_softcap must be positive, got {cfg.logit_softcap}")
    if cfg.repeat_untie_mlp not in ("none", "down", "full"):
        raise ValueError(f"pr1204: repeat_untie_mlp must be none/down/full, got "
                         f"{cfg.repeat_untie_mlp!r}")
    for name in ("recur_layers", "canon_ac_layers"):
        if any(not 0 <= p < L for p in getattr(cfg, name)):
            raise ValueError(f"pr1204: {name}={getattr(cfg, name)} out of range [0, {L})")
    stray = sorted(set(cfg.repeat_untie_mlp_layers) - set(cfg.recur_layers))
    if stray:
        raise ValueError(f"pr1204: repeat_untie_mlp_layers must be a subset of recur_layers, "
                         f"got {stray}")
    if cfg.parallel_residual and cfg.parallel_start_layer < 0:
        raise ValueError("pr1204: parallel_residual needs parallel_start_layer >= 0 (the "
                         "script's default is 7)")
    if not 0 <= cfg.rope_dims <= d // h or cfg.rope_dims % 2:
        raise ValueError(f"pr1204: rope_dims={cfg.rope_dims} must be even and <= head_dim")
    virtual = L + len(set(cfg.recur_layers))
    if cfg.ve_enabled and any(not 0 <= i < virtual for i in cfg.ve_layers):
        raise ValueError(f"pr1204: ve_layers={cfg.ve_layers} are virtual layers, of which "
                         f"there are {virtual}")


def _pop(skip: Tensor, x: Tensor, gate: Tensor | None) -> Tensor:
    """A U-Net skip joining the stream: the record's gated lerp, or the baseline's add."""
    return x + skip if gate is None else torch.lerp(skip, x, gate)


class Model(RoutingTables, nn.Module):
    """PR #1204's `GPT`. forward(input_ids, target_ids=None, *, num_iters=None): softcapped
    logits (B, T, V), or the mean cross-entropy in nats. `num_iters` = 1 runs each layer once,
    2 the recurrent layers twice; None as `recurrence_active` says."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        _check(cfg)
        self.cfg = cfg
        L, d = cfg.num_layers, cfg.model_dim
        kv_dim, mlp_dim = cfg.num_kv_heads * (d // cfg.num_heads), cfg.mlp_mult * d
        self.recur_layers = sorted(set(cfg.recur_layers))
        untied = sorted(set(cfg.repeat_untie_mlp_layers)) or self.recur_layers
        cut = max(self.recur_layers, default=-1) + 1
        self.v2p_recur = list(range(cut)) + self.recur_layers + list(range(cut, L))
        self.virtual_layers = len(self.v2p_recur)
        self._recurrence_active = False

        self.tok_emb = Embedding(cfg.vocab_size, d)
        self.bigram = None
        if cfg.bigram_vocab_size > 0:
            self.bigram = BigramHash(cfg.bigram_vocab_size, cfg.bigram_dim, d)
        self.smear = SmearGate(d) if cfg.smear_gate else None
        n_skip = min(self.virtual_layers // 2, self.virtual_layers - self.virtual_layers // 2)
        self.skip_weights = nn.Parameter(torch.ones(n_skip, d))
        self.skip_gates = nn.Parameter(torch.zeros(n_skip, d)) if cfg.skip_gated else None
        self.qo_bank = nn.Parameter(torch.empty(2 * L, d, d))
        self.kv_bank = nn.Parameter(torch.empty(2 * L, kv_dim, d))
        self.mlp_up_bank = nn.Parameter(torch.empty(L, mlp_dim, d))
        self.mlp_down_bank = nn.Parameter(torch.empty(L, d, mlp_dim))
        self.canon_a = self.canon_c = None
        if cfg.canon_ac_layers:
            self.canon_a = nn.Parameter(torch.zeros(L, 4, d))
            self.canon_c = nn.Parameter(torch.zeros(L, 4, d))
        self.parallel_post_lambdas = self.parallel_resid_lambdas = None
        if cfg.parallel_residual:
            self.parallel_post_lambdas = nn.Parameter(torch.ones(L, 2, 2))
            self.parallel_resid_lambdas = nn.Parameter(torch.full((L, 2), 1.1**0.5))
        self.repeat_mlp = nn.ModuleList()
        if cfg.repeat_untie_mlp != "none":
            for p in self.recur_layers:
                mode = cfg.repeat_untie_mlp if p in untied else "none"
                self.repeat_mlp.append(RepeatMLP(d, mlp_dim, mode))
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(self.virtual_layers))
        for block in self.blocks[max(0, self.virtual_layers - cfg.xsa_last_n):]:
            block.attn.use_xsa = True
        self.rotary = PartialRotary(cfg.rope_dims or d // cfg.num_heads, cfg.rope_base)
        self.ve_layers = list(cfg.ve_layers) if cfg.ve_enabled else []
        self.ve_shared = None
        if self.ve_layers:
            self.ve_shared = ValueEmbedding(cfg.vocab_size, cfg.ve_dim, kv_dim)
        self.ve_layer_scales = nn.ParameterList(nn.Parameter(torch.ones(1)) for _ in self.ve_layers)
        self.final_norm = RMSNorm()
        self.lm_head = None
        if not cfg.tie_embeddings:
            self.lm_head = zero_init(CastedLinear(d, cfg.vocab_size, bias=False))
        self._init_weights()

    def _init_weights(self) -> None:
        """The script's: orthogonal q/k/v/up slices, zero out/down (times 1/sqrt(2L) anyway);
        then every Linear at least 64 x 64 not flagged zero-init is made orthogonal (so the
        zero-init bigram / value projections and repeat MLPs of the record start orthogonal)."""
        if self.qo_bank.is_meta:  # built to be loaded (assign=True): nothing to initialize
            return
        L = self.cfg.num_layers
        if self.cfg.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.cfg.tied_embed_init_std)
        with torch.no_grad():
            for i in range(L):
                for t in (self.qo_bank[i], self.kv_bank[i], self.kv_bank[L + i],
                          self.mlp_up_bank[i]):
                    nn.init.orthogonal_(t, gain=1.0)
                self.qo_bank[L + i].zero_()
                self.mlp_down_bank[i].zero_()
            for m in self.repeat_mlp:
                for lin in (m.fc, m.proj):
                    if lin is not None:
                        lin.weight.zero_()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                if getattr(module, "_zero_init", False):  # only lm_head, as in the script
                    nn.init.zeros_(module.weight)
                elif module.weight.shape[0] >= 64 and module.weight.shape[1] >= 64:
                    nn.init.orthogonal_(module.weight, gain=1.0)

    # --- mini recurrence -------------------------------------------------------------------

    @property
    def recurrence_active(self) -> bool:
        return self._recurrence_active

    def set_recurrence_active(self, active: bool) -> None:
        """The script's `set_recurrence_active`: switching on copies each untied repeat MLP
        from its bank slice (only on the off -> on transition); no-op without recur_layers."""
        was = self._recurrence_active
        self._recurrence_active = bool(active) and bool(self.recur_layers)
        if self._recurrence_active and not was:
            with torch.no_grad():
                for m, p in zip(self.repeat_mlp, self.recur_layers):
                    if m.fc is not None:
                        m.fc.weight.copy_(self.mlp_up_bank[p])
                    if m.proj is not None:
                        m.proj.weight.copy_(self.mlp_down_bank[p])

    def activate_recurrence(self) -> None:
        """What the script does at RECUR_START_STEP; idempotent."""
        self.set_recurrence_active(True)

    def _recur(self, num_iters: int | None) -> bool:
        if num_iters is None:
            return self._recurrence_active
        if num_iters not in (1, 2) or (num_iters == 2 and not self.recur_layers):
            raise ValueError(f"pr1204: num_iters={num_iters}: 1, or 2 with recur_layers")
        return num_iters == 2

    def v2p(self, recur: bool | None = None) -> list[int]:
        """Virtual -> physical layer map (recurrence on / off; None: as now)."""
        recur = self._recurrence_active if recur is None else recur
        return self.v2p_recur if recur and self.recur_layers else list(range(self.cfg.num_layers))

    def _repeat_index(self, i: int, recur: bool) -> int | None:
        """The repeat_mlp slot virtual layer i uses (the script's hinge rule), or None."""
        j = i - self.virtual_layers // 2
        return j if recur and self.repeat_mlp and 0 <= j < len(self.recur_layers) else None

    def _lanes_at(self, i: int, v2p: list[int]) -> bool:
        if self.parallel_post_lambdas is None:
            return False
        index = v2p[i] if self.cfg.parallel_start_layer_is_physical else i
        return index >= self.cfg.parallel_start_layer

    def _weights(self, i: int, v2p: list[int], recur: bool) -> tuple[Tensor, ...]:
        L, p = self.cfg.num_layers, v2p[i]
        up, down = self.mlp_up_bank[p], self.mlp_down_bank[p]
        j = self._repeat_index(i, recur)
        if j is not None:
            m = self.repeat_mlp[j]
            up = m.fc.weight if m.fc is not None else up
            down = m.proj.weight if m.proj is not None else down
        return self.qo_bank[p], self.kv_bank[p], self.kv_bank[L + p], self.qo_bank[L + p], up, down

    def _canon(self, p: int) -> tuple[Tensor | None, Tensor | None]:
        if self.canon_a is None or p not in self.cfg.canon_ac_layers:
            return None, None
        return self.canon_a[p], self.canon_c[p]

    # --- forward ---------------------------------------------------------------------------

    def _backbone(self, input_ids: Tensor, recur: bool) -> list[Tensor]:
        """The stream after each virtual layer (the lane mean once lanes run)."""
        x = self.tok_emb(input_ids)
        if self.bigram is not None:
            x = x + self.bigram(input_ids)
        x = rms_norm(x)
        if self.smear is not None:
            x = self.smear(x)  # (B, T, D)
        x0, lanes, skips, hidden = x, None, [], []
        v2p = self.v2p(recur)
        enc = len(v2p) // 2
        rope = self.rotary(x.size(1), x.device, torch.float32)  # cast to q's dtype at use
        ve_base = self.ve_shared(input_ids) if self.ve_shared is not None else None
        for i, p in enumerate(v2p):
            block, w = self.blocks[i], self._weights(i, v2p, recur)
            ve = None
            if ve_base is not None and i in self.ve_layers:
                ve = ve_base * self.ve_layer_scales[self.ve_layers.index(i)].to(ve_base.dtype)
            parallel = self._lanes_at(i, v2p)
            if parallel and lanes is None:
                lanes = (x, x)
            if i >= enc and skips:
                skip, j = skips.pop(), i - enc
                sw = self.skip_weights[j].to(x.dtype)[None, None, :]
                g = (None if self.skip_gates is None else
                     torch.sigmoid(self.skip_gates[j].to(x.dtype))[None, None, :])
                if parallel:
                    s0, s1 = skip if isinstance(skip, tuple) else (skip, skip)
                    lanes = (_pop(sw * s0, lanes[0], g), _pop(sw * s1, lanes[1], g))
                else:
                    x = _pop(sw * (skip[1] if isinstance(skip, tuple) else skip), x, g)
            if parallel:
                resid, post = self.parallel_resid_lambdas[p], self.parallel_post_lambdas[p]
                lanes = block.forward_lanes(lanes, x0, resid, post, w, rope, ve, self._canon(p))
            else:
                x = block(x, x0, w, rope, ve, self._canon(p))
            if i < enc:
                skips.append(lanes if parallel else x)
            hidden.append((lanes[0] + lanes[1]) * 0.5 if lanes is not None else x)
        return hidden

    def forward_hidden(self, input_ids: Tensor, *, num_iters: int | None = None) -> list[Tensor]:
        """Stream (B, T, D) after each virtual layer, before the final norm; once lanes run,
        their mean (what the final norm reads). Length = the virtual depth run."""
        return self._backbone(input_ids, self._recur(num_iters))

    def forward(
        self, input_ids: Tensor, target_ids: Tensor | None = None, *, num_iters: int | None = None
    ) -> Tensor:
        x = self.final_norm(self._backbone(input_ids, self._recur(num_iters))[-1])
        return softcapped_head(x, self.tok_emb, self.lm_head, self.cfg.logit_softcap, target_ids)

    # --- accounting ------------------------------------------------------------------------

    def core_modules(self) -> list[nn.Module]:
        """None: what runs twice are bank slices (the repeated layers' attention, their MLPs
        unless untied), not modules; `parameter_counts` counts them as shared."""
        return []


# ----------------------------------------------------------------------------- state dicts


def config_from_state_dict(
    state_dict: Mapping[str, Tensor], base: ModelConfig | None = None
) -> ModelConfig:
    """`base` (default `ModelConfig()`) as family "pr1204" with what the shapes fix: vocab,
    width, heads / KV heads, num_layers (bank slices), mlp_mult, tie_embeddings, bigram
    sizes, ve_enabled / ve_dim, parallel_residual, repeat_untie_mlp (+ which repeats have one).

    From `base`, since no shape tells them: recur_layers (the shapes give only how many),
    ve_layers (how many), canon_ac_layers, parallel_start_layer(_is_physical), xsa_last_n,
    rope_dims, ln_scale, negative_slope, disable_layer0_attn, rope_base, logit_softcap,
    recur_start_step (and the init-only qk_gain_init, tied_embed_init_std). A count that does
    not match `base` raises ValueError naming the field.
    """
    sd = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
    missing = [k for k in (*BANKS, "tok_emb.weight", "blocks.0.attn.q_gain") if k not in sd]
    if missing:
        raise ValueError(f"state dict lacks {', '.join(missing)}: not a PR #1204 GPT")
    base = base if base is not None else ModelConfig()
    vocab, dim = sd["tok_emb.weight"].shape
    heads = sd["blocks.0.attn.q_gain"].numel()
    L, mlp_dim = sd["mlp_up_bank"].shape[:2]
    if mlp_dim % dim:
        raise ValueError(f"mlp_up_bank rows {mlp_dim} are not a multiple of the width {dim}")
    sizes: dict = dict(
        family=FAMILY, vocab_size=int(vocab), model_dim=int(dim), num_heads=int(heads),
        num_kv_heads=int(sd["kv_bank"].shape[1] // (dim // heads)), num_layers=int(L),
        mlp_mult=int(mlp_dim // dim), tie_embeddings="lm_head.weight" not in sd,
        parallel_residual="parallel_post_lambdas" in sd, ve_enabled="ve_shared.embed.weight" in sd,
    )  # fmt: skip
    if "bigram.embed.weight" in sd:
        sizes.update(bigram_vocab_size=int(sd["bigram.embed.weight"].shape[0]),
                     bigram_dim=int(sd["bigram.embed.weight"].shape[1]))
    else:
        sizes.update(bigram_vocab_size=0)
    if sizes["ve_enabled"]:
        sizes["ve_dim"] = int(sd["ve_shared.embed.weight"].shape[1])
    counts = {"recur_layers": 1 + max(int(k.split(".")[1]) for k in sd
                                      if k.startswith("blocks.")) - L}
    if sizes["ve_enabled"]:
        counts["ve_layers"] = sum(k.startswith("ve_layer_scales.") for k in sd)
    else:
        sizes["ve_layers"] = ()
    for name, n in counts.items():
        given = getattr(base, name)
        if len(set(given) if name == "recur_layers" else given) != n:
            raise ValueError(f"state dict has {n} {name}, base.{name}={given}: "
                             f"pass {name} (the shapes give only how many)")
    if "canon_a" in sd and not base.canon_ac_layers:
        raise ValueError("state dict has canon_a / canon_c: pass canon_ac_layers")
    recur = sorted(set(base.recur_layers))
    slots = sorted({int(k.split(".")[1]) for k in sd if k.startswith("repeat_mlp.")})
    fc = any(k.startswith("repeat_mlp.") and ".fc." in k for k in sd)
    sizes["repeat_untie_mlp"] = ("full" if fc else "down") if slots else "none"
    sizes["repeat_untie_mlp_layers"] = tuple(recur[j] for j in slots)
    return replace(base, **sizes)

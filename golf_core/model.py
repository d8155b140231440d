"""The GPT of upstream parameter-golf `train_gpt.py`, with every depth-recurrence variant as a
configuration of it.

Bottom-up, as nanoGPT reads: RMSNorm, CastedLinear, Rotary, CausalSelfAttention, MLP, Block,
then the extras the variants add (per-virtual-layer controls, low-rank adapters) and `GPT`.
The baseline path is upstream's exactly (verified against ../shared/fixtures/upstream_baseline:
same state-dict names and shapes, same loss): embedding -> RMSNorm = x0; U-Net encoder half
pushes, decoder half pops LIFO through `skip_weights`; each block mixes x with x0 through
`resid_mix`, then adds scaled attention and relu^2 MLP outputs; tied head; tanh softcap.

Which block runs at each virtual depth, and with what extras, is a `LayerSchedule`
(golf_core/schedule.py, which also documents the variants and their PRs: looped #325/#363,
rqz #54, mini recurrence and parallel lanes #1204). `preset(name)` gives the named shapes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from golf_core.config import ModelConfig, apply_overrides
from golf_core.schedule import (
    LayerSchedule,
    VirtualLayer,
    build_schedule,
    control_slots,
    validate_config,
)

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


# ----------------------------------------------------------------------------- the model

# sqrt(1.1): PR #1204's init of parallel_resid_lambdas (a slight residual amplification)
PARALLEL_RESID_INIT = math.sqrt(1.1)


class GPT(nn.Module):
    """Upstream GPT; the variant (flat/unet/looped/rqz, mini, parallel) comes from `cfg`.

    forward(input_ids, target_ids=None, *, num_iters=None): softcapped logits (B, T, V), or the
    mean cross-entropy in nats when `target_ids` is given. `num_iters` applies the rqz shared
    layer K' times instead of `rqz_k` (test-time depth).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        validate_config(cfg)
        self.cfg = cfg
        self._recurrence_active = False
        self._schedules: dict[tuple[bool, int | None], LayerSchedule] = {}
        full = self.full_schedule
        d = cfg.model_dim
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        if full.num_skips:
            init = torch.ones if cfg.skip_init == "ones" else torch.zeros
            self.skip_weights = nn.Parameter(init(full.num_skips, d))
        else:
            self.skip_weights = None  # flat: no U-Net skips at all
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self._build_variant_modules(cfg, full)
        self.final_norm = RMSNorm()
        self.lm_head = None
        if not cfg.tie_embeddings:
            self.lm_head = zero_init(CastedLinear(d, cfg.vocab_size, bias=False))
        self._init_weights()
        self.register_load_state_dict_post_hook(GPT._sync_recurrence_flag)

    def _build_variant_modules(self, cfg: ModelConfig, full: LayerSchedule) -> None:
        """Tensors only some variants have; each attribute is None (absent) otherwise, so a
        baseline config keeps upstream's state dict exactly."""
        d = cfg.model_dim
        slots = control_slots(cfg)
        self.virtual_controls = nn.ModuleList(Controls(cfg) for _ in slots) if slots else None
        self.repeat_mlp = None
        if cfg.recur_untie_mlp:
            self.repeat_mlp = nn.ModuleList(MLP(d, cfg.mlp_mult) for _ in cfg.recur_layers)
        if cfg.recur_layers:
            # persistent so a resumed run keeps the switch; only mini models have it
            self.register_buffer("recurrence_flag", torch.zeros((), dtype=torch.bool))
        self.loop_repeat_embed = None
        if cfg.variant == "looped" and cfg.loop_repeat_embed:
            self.loop_repeat_embed = nn.Parameter(torch.zeros(cfg.loop_repeats, d))
        self.loop_adapters = None
        if cfg.variant == "looped" and cfg.loop_adapter_rank > 0:
            count = cfg.loop_repeats * cfg.loop_core
            adapters = (LowRankAdapter(d, cfg.loop_adapter_rank) for _ in range(count))
            self.loop_adapters = nn.ModuleList(adapters)
        self.rqz_iter_embed = None
        if cfg.variant == "rqz":
            self.rqz_iter_embed = nn.Parameter(torch.zeros(cfg.rqz_k, d))  # psi_k, zero-init
        self.parallel_post_lambdas = self.parallel_resid_lambdas = None
        if full.lanes_from is not None:
            # indexed by physical block, [num_layers, ...] as in PR #1204 (its log: params=66
            # for 11 layers); rows of blocks before the lane start stay unused
            L = cfg.num_layers
            self.parallel_post_lambdas = nn.Parameter(torch.ones(L, 2, 2))
            self.parallel_resid_lambdas = nn.Parameter(torch.full((L, 2), PARALLEL_RESID_INIT))

    def _init_weights(self) -> None:
        if self.cfg.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.cfg.tied_embed_init_std)
        for module in self.modules():
            if isinstance(module, nn.Linear) and getattr(module, "_zero_init", False):
                nn.init.zeros_(module.weight)

    # --- schedules and mini recurrence ---------------------------------------------------

    def schedule_for(self, num_iters: int | None = None) -> LayerSchedule:
        key = (self._recurrence_active, num_iters)
        if key not in self._schedules:
            self._schedules[key] = build_schedule(
                self.cfg, recurrence_active=self._recurrence_active, num_iters=num_iters
            )
        return self._schedules[key]

    @property
    def schedule(self) -> LayerSchedule:
        """The schedule the forward pass runs now (mini: depends on `recurrence_active`)."""
        return self.schedule_for()

    @property
    def full_schedule(self) -> LayerSchedule:
        """The training-time schedule with mini recurrence on: what the parameters serve."""
        return build_schedule(self.cfg, recurrence_active=True)

    @property
    def recurrence_active(self) -> bool:
        return self._recurrence_active

    def activate_recurrence(self) -> None:
        """Switch mini recurrence on (PR #1204's delayed start). The untied repeat MLPs and the
        untied controls of the repeated pass start as copies of their base block's, so the
        function the model computes changes only by the extra depth. Idempotent."""
        if not self.cfg.recur_layers:
            raise ValueError("activate_recurrence: recur_layers is empty (mini recurrence is off)")
        if self._recurrence_active:
            return
        with torch.no_grad():
            for j, p in enumerate(self.cfg.recur_layers):
                if self.repeat_mlp is not None:
                    self.repeat_mlp[j].load_state_dict(self.blocks[p].mlp.state_dict())
            for (p, _cycle), k in control_slots(self.cfg).items():
                self.virtual_controls[k].copy_from(self.blocks[p])
            self.recurrence_flag.fill_(True)
        self._recurrence_active = True

    def _sync_recurrence_flag(self, _incompatible: object) -> None:
        if self.cfg.recur_layers:
            self._recurrence_active = bool(self.recurrence_flag.item())

    def core_modules(self) -> list[nn.Module]:
        """Blocks that run more than once (looped core, rqz shared layer, mini repeats) and
        the untied repeat MLPs: what QAT "core" targets."""
        mods: list[nn.Module] = [self.blocks[p] for p in self.full_schedule.shared_blocks()]
        return mods + (list(self.repeat_mlp) if self.repeat_mlp is not None else [])

    def layer_parameters(self, layer: VirtualLayer) -> list[nn.Parameter]:
        """The parameters one virtual layer uses (for counting unique vs shared)."""
        block = self.blocks[layer.physical]
        params = list(block.attn.parameters()) if layer.attn else []
        mlp = block.mlp if layer.repeat_mlp < 0 else self.repeat_mlp[layer.repeat_mlp]
        params += list(mlp.parameters())
        if layer.controls < 0:
            params += [block.attn_scale, block.mlp_scale, block.resid_mix]
        else:
            params += list(self.virtual_controls[layer.controls].parameters())
            if layer.attn:
                params.remove(block.attn.q_gain)
        if layer.adapter >= 0:
            params += list(self.loop_adapters[layer.adapter].parameters())
        return params

    # --- forward ---------------------------------------------------------------------------

    def _embedding_row(self, layer: VirtualLayer) -> Tensor | None:
        if layer.embed < 0:
            return None
        table = self.loop_repeat_embed if self.cfg.variant == "looped" else self.rqz_iter_embed
        return None if table is None else table[layer.embed]

    def _run_layer(self, layer: VirtualLayer, state: Tensor, x0: Tensor) -> Tensor:
        """One sequential virtual layer, with its embedding, adapter and residual scale."""
        row = self._embedding_row(layer)
        if row is not None:
            state = state + row.to(state.dtype)[None, None, :]
        ctl = self.virtual_controls[layer.controls] if layer.controls >= 0 else None
        mlp = self.repeat_mlp[layer.repeat_mlp] if layer.repeat_mlp >= 0 else None
        out = self.blocks[layer.physical](state, x0, ctl, mlp, layer.attn)
        if layer.adapter >= 0:
            out = out + self.loop_adapters[layer.adapter](state)
        if layer.residual_scale != 1.0:
            out = state + (out - state) * layer.residual_scale
        return out

    def _run_lanes(
        self, layer: VirtualLayer, lanes: tuple[Tensor, Tensor], x0: Tensor
    ) -> tuple[Tensor, Tensor]:
        p = layer.physical
        ctl = self.virtual_controls[layer.controls] if layer.controls >= 0 else None
        mlp = self.repeat_mlp[layer.repeat_mlp] if layer.repeat_mlp >= 0 else None
        resid, post = self.parallel_resid_lambdas[p], self.parallel_post_lambdas[p]
        return self.blocks[p].forward_lanes(lanes, x0, resid, post, ctl, mlp)

    def _readout(self, state: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        """The residual stream as one tensor; for lanes, per `parallel_final_lane`."""
        if isinstance(state, Tensor):
            return state
        lane = self.cfg.parallel_final_lane
        if lane == "mean":
            return 0.5 * (state[0] + state[1])
        return state[0] if lane == "attn" else state[1]

    def _add_skip(self, state: Tensor | tuple, skip: Tensor | tuple, w: Tensor) -> Tensor | tuple:
        """x += w * skip; into both lanes once lanes run (a lane-pair skip lane by lane)."""
        w = w.to(skip[0].dtype if isinstance(skip, tuple) else skip.dtype)[None, None, :]
        if isinstance(state, Tensor):
            return state + w * skip
        s0, s1 = skip if isinstance(skip, tuple) else (skip, skip)
        return state[0] + w * s0, state[1] + w * s1

    def _backbone(self, input_ids: Tensor, num_iters: int | None, collect: bool) -> list[Tensor]:
        """Hidden states after each virtual layer if `collect`, else only the last."""
        sched = self.schedule_for(num_iters)
        x = rms_norm(self.tok_emb(input_ids))  # (B, T, D)
        x0, state = x, x
        skips: list[Tensor | tuple[Tensor, Tensor]] = []
        hidden: list[Tensor] = []
        for i, layer in enumerate(sched.layers):
            j = i - sched.decoder_start
            if 0 <= j < sched.num_skips:
                state = self._add_skip(state, skips.pop(), self.skip_weights[j])
            if layer.lanes:
                lanes = (state, state) if isinstance(state, Tensor) else state
                state = self._run_lanes(layer, lanes, x0)
            else:
                state = self._run_layer(layer, state, x0)
            if i < sched.num_encoder:
                skips.append(state)
            if collect or i == sched.depth - 1:
                hidden.append(self._readout(state))
        return hidden

    def forward_hidden(self, input_ids: Tensor, *, num_iters: int | None = None) -> list[Tensor]:
        """Hidden state (B, T, D) after each virtual layer, before the final norm; for parallel
        lanes the readout of `parallel_final_lane`. Length = virtual depth."""
        return self._backbone(input_ids, num_iters, collect=True)

    def forward(
        self, input_ids: Tensor, target_ids: Tensor | None = None, *, num_iters: int | None = None
    ) -> Tensor:
        x = self.final_norm(self._backbone(input_ids, num_iters, collect=False)[-1])
        if self.lm_head is None:
            logits = F.linear(x, self.tok_emb.weight.to(x.dtype))
        else:
            logits = self.lm_head(x)
        cap = self.cfg.logit_softcap
        logits = cap * torch.tanh(logits / cap)  # (B, T, V)
        if target_ids is None:
            return logits
        return F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), target_ids.reshape(-1), reduction="mean"
        )


# ----------------------------------------------------------------------------- accounting


def count_parameters(model: GPT) -> dict[str, int]:
    """Stored parameters split into unique (used by one virtual layer, or outside the layers)
    and shared (used by several), over the training-time schedule; `unrolled` counts each use,
    i.e. the size of the equivalent model without sharing; `effective_depth` = virtual depth."""
    sched = model.full_schedule
    uses: dict[int, int] = {}
    for layer in sched.layers:
        for p in layer_params_unique(model, layer):
            uses[id(p)] = uses.get(id(p), 0) + 1
    total = unique = shared = unrolled = 0
    for p in model.parameters():
        n, k = p.numel(), uses.get(id(p), 1)
        total += n
        unrolled += n * k
        if k > 1:
            shared += n
        else:
            unique += n
    return {
        "total": total,
        "unique": unique,
        "shared": shared,
        "unrolled": unrolled,
        "physical_layers": model.cfg.num_layers,
        "effective_depth": sched.depth,
    }


def layer_params_unique(model: GPT, layer: VirtualLayer) -> list[nn.Parameter]:
    """`model.layer_parameters(layer)` without duplicates (by identity)."""
    seen: dict[int, nn.Parameter] = {}
    for p in model.layer_parameters(layer):
        seen.setdefault(id(p), p)
    return list(seen.values())


# ----------------------------------------------------------------------------- presets

_PARALLEL_1204 = dict(num_layers=11, mlp_mult=3, parallel_start_layer=7, parallel_final_lane="mlp")
_MINI_1204 = dict(
    num_layers=11,
    mlp_mult=3,
    recur_layers=(4, 5),
    # PR #1204's log: activated at step 3000 of 6242 (wallclock-capped); as a fraction it
    # carries over to runs of any length
    recur_start_frac=0.48,
    recur_untie_mlp=True,  # its log: repeat_untie_mlp:mode=full
    untie_controls=False,  # the repeated pass reuses the block's controls there
)

_PRESETS: dict[str, dict] = {
    # control: upstream's 9x512 baseline shape with the U-Net skips removed
    "flat": dict(variant="flat"),
    # upstream parameter-golf baseline (train_gpt.py defaults)
    "unet": dict(variant="unet"),
    # PR #363: 3 shared blocks x 3 repeats at 640d, one unique stem and tail block:
    # 5 physical, 11 virtual (the depth of its flat 11L comparison)
    "looped-3x3": dict(
        variant="looped", model_dim=640, loop_stem=1, loop_core=3, loop_repeats=3, loop_tail=1,
        untie_controls=False,
    ),
    # PR #363's 2x5: same 5 physical blocks (matched unique parameters), 2 shared x 5: 13 virtual
    "looped-2x5": dict(
        variant="looped", model_dim=640, loop_stem=1, loop_core=2, loop_repeats=5, loop_tail=2,
        untie_controls=False,
    ),
    # PR #54 (RQZ-Golf): 7 unique layers + 1 shared layer x K=3: 8 physical, 10 virtual
    "rqz": dict(variant="rqz", rqz_unique=7, rqz_k=3, untie_controls=False),
    # PR #1204: mini depth recurrence (layers 4, 5 twice: 11 physical, 13 virtual)
    "mini": dict(variant="unet", **_MINI_1204),
    # PR #1204: parallel residual lanes from physical block 7, output the MLP lane
    "parallel": dict(variant="unet", **_PARALLEL_1204),
    # PR #1204's record shape: both
    "mini+parallel": dict(variant="unet", **{**_MINI_1204, **_PARALLEL_1204}),
}  # fmt: skip
PRESETS: tuple[str, ...] = tuple(_PRESETS)


def preset(name: str, **overrides: object) -> ModelConfig:
    """A named model shape (upstream scale) with `overrides` applied, validated.

    For `looped` and `rqz`, `num_layers` follows from the loop/rqz sizes unless overridden.
    A tiny CPU version: `preset("mini", num_layers=5, recur_layers=(1, 2), model_dim=64)`.
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    cfg = apply_overrides(ModelConfig(), {**_PRESETS[name], **overrides}, source=f"preset {name!r}")
    if "num_layers" not in overrides:
        if cfg.variant == "looped":
            cfg = dataclasses.replace(cfg, num_layers=cfg.loop_stem + cfg.loop_core + cfg.loop_tail)
        elif cfg.variant == "rqz":
            cfg = dataclasses.replace(cfg, num_layers=cfg.rqz_unique + 1)
    try:
        validate_config(cfg)
    except ValueError as e:
        raise ValueError(f"preset {name!r}: {e}") from None
    return cfg

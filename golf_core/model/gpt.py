"""Our GPT: the upstream baseline with every depth-recurrence variant of this project as a
configuration of it (`family="golf"`).

The baseline path is upstream's exactly (verified against tests/golden/upstream_baseline:
same state-dict names and shapes, same loss): embedding -> RMSNorm = x0; U-Net encoder half
pushes, decoder half pops LIFO through `skip_weights`; each block mixes x with x0 through
`resid_mix`, then adds scaled attention and relu^2 MLP outputs; tied head; tanh softcap.

Which block runs at each virtual depth, and with what extras, is a `LayerSchedule`
(golf_core/schedule.py). These are our own simplified shapes (flat, unet, looped, rqz, mini,
parallel); the models the PRs published are the families in golf_core/model/pr*.py.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from golf_core.config import ModelConfig
from golf_core.model.layers import (
    MLP,
    Block,
    CastedLinear,
    Controls,
    LowRankAdapter,
    RMSNorm,
    fast_rms_norm,
    init_upstream_weights,
    softcapped_head,
    zero_init,
)
from golf_core.schedule import (
    LayerSchedule,
    VirtualLayer,
    build_schedule,
    control_slots,
    validate_config,
)

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
        init_upstream_weights(self, self.cfg)

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
            return torch.addcmul(state, w, skip)
        s0, s1 = skip if isinstance(skip, tuple) else (skip, skip)
        return state[0] + w * s0, state[1] + w * s1

    def _backbone(self, input_ids: Tensor, num_iters: int | None, collect: bool) -> list[Tensor]:
        """Hidden states after each virtual layer if `collect`, else only the last."""
        sched = self.schedule_for(num_iters)
        x = fast_rms_norm(self.tok_emb(input_ids))  # (B, T, D)
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
        x = self._backbone(input_ids, num_iters, collect=False)[-1]
        x = fast_rms_norm(x)  # = self.final_norm(x)
        return softcapped_head(x, self.tok_emb, self.lm_head, self.cfg.logit_softcap, target_ids)


# ----------------------------------------------------------------------------- accounting


def count_parameters(model: GPT) -> dict[str, int]:
    """Stored parameters split into unique (used by one virtual layer, or outside the layers)
    and shared (used by several), over the training-time schedule; `unrolled` counts each use,
    i.e. the size of the equivalent model without sharing; `effective_depth` = virtual depth."""
    if not isinstance(model, GPT):  # a published family counts its own schedule
        return model.parameter_counts()
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

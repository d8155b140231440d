"""Layer schedules: which physical block runs at each virtual depth, and with what extras.

Every depth-recurrence variant of `golf_core.model.GPT` is a schedule over the same blocks
(the published PRs):

- `flat`   plain residual stack, no U-Net skips (control).
- `unet`   upstream parameter-golf baseline: first `depth // 2` virtual layers push their
           output, the rest pop it LIFO through `skip_weights`.
- `looped` PR #325 / #363: stem (unique) -> `loop_core` shared blocks x `loop_repeats` ->
           tail (unique); U-Net skips stem -> tail; optional per-repeat embeddings,
           per-(repeat, block) low-rank adapters, MLP-only repeats.
- `rqz`    PR #54 (RQZ-Golf): `rqz_unique` unique layers split into encoder/decoder halves
           with one shared layer between them, applied K times with iteration embeddings
           psi_k and its residual update scaled by 1/sqrt(K); K may change at eval.
- `mini`   (`recur_layers`, PR #1204) composes with flat/unet: the listed blocks run a second
           time right after the last of them, `[0..c) + recur + [c..L)` with c = max+1, so
           11 blocks with (4, 5) give [0,1,2,3,4,5,4,5,6,7,8,9,10]; the hinge is recomputed
           on virtual depth.
- `parallel` (`parallel_start_layer`, PR #1204 from modded-nanogpt) composes with flat/unet:
           from the first virtual layer whose *physical* block is >= the start (PR #1204's
           start_mode=physical) to the end, the block runs as two residual lanes.

Physical blocks are numbered in order of first use. Where a block runs more than once,
`untie_controls` gives each later use its own control tensors (attn/mlp scale, resid_mix,
q_gain), keyed by (block, cycle). A schedule is plain data: the model interprets it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from golf_core.config import ModelConfig

VARIANTS = ("flat", "unet", "looped", "rqz")
SKIP_INITS = ("ones", "zeros")
FINAL_LANES = ("mean", "attn", "mlp")
_DEFAULTS = ModelConfig()


@dataclass(frozen=True)
class VirtualLayer:
    """One step of the forward pass. Indices are -1 where the extra is absent."""

    physical: int  # which block's matrices run
    cycle: int  # repeat index of this block: 0 on first use
    controls: int  # index into GPT.virtual_controls; -1 = the block's own controls
    repeat_mlp: int  # index into GPT.repeat_mlp (mini untied MLPs); -1 = the block's MLP
    embed: int  # row of the repeat/iteration embedding added to x before the layer
    adapter: int  # index into GPT.loop_adapters (looped low-rank adapters)
    attn: bool  # False: an MLP-only repeat (loop_mlp_only)
    residual_scale: float  # rqz: 1/sqrt(K) on the shared layer's update, else 1.0
    lanes: bool  # runs as a two-lane parallel block (PR #1204)


@dataclass(frozen=True)
class LayerSchedule:
    """Virtual depth -> physical block, the encoder/decoder hinge and per-layer extras.

    The first `num_encoder` virtual layers push their output; the last `num_decoder` pop
    LIFO (decoder j adds `skip_weights[j] * pop()` while skips remain, as upstream does);
    layers between them (looped core, rqz shared layer) do neither.
    """

    layers: tuple[VirtualLayer, ...]
    num_encoder: int
    num_decoder: int

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def virtual_to_physical(self) -> list[int]:
        return [layer.physical for layer in self.layers]

    @property
    def cycle(self) -> list[int]:
        return [layer.cycle for layer in self.layers]

    @property
    def num_skips(self) -> int:
        return min(self.num_encoder, self.num_decoder)

    @property
    def decoder_start(self) -> int:
        return self.depth - self.num_decoder

    @property
    def lanes_from(self) -> int | None:
        """First virtual layer that runs as two lanes, or None."""
        return next((i for i, layer in enumerate(self.layers) if layer.lanes), None)

    def uses(self) -> dict[int, int]:
        """How many virtual layers run each physical block."""
        out: dict[int, int] = {}
        for layer in self.layers:
            out[layer.physical] = out.get(layer.physical, 0) + 1
        return out

    def shared_blocks(self) -> list[int]:
        """Physical blocks that run more than once (the looped/recurrent core)."""
        return sorted(p for p, n in self.uses().items() if n > 1)


# ----------------------------------------------------------------------------- validation


def _changed(cfg: ModelConfig, names: tuple[str, ...]) -> list[str]:
    """`name=value` for each field of `names` that differs from its default."""
    return [f"{n}={getattr(cfg, n)!r}" for n in names if getattr(cfg, n) != getattr(_DEFAULTS, n)]


_LOOP_FIELDS = (
    "loop_stem", "loop_core", "loop_repeats", "loop_tail",
    "loop_repeat_embed", "loop_adapter_rank", "loop_mlp_only",
)  # fmt: skip
_RQZ_FIELDS = ("rqz_unique", "rqz_k")
_RECUR_FIELDS = ("recur_start_step", "recur_start_frac", "recur_untie_mlp")


def _check_shapes(cfg: ModelConfig) -> None:
    for name in ("vocab_size", "num_layers", "model_dim", "num_heads", "num_kv_heads", "mlp_mult"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}={getattr(cfg, name)} must be >= 1")
    if cfg.model_dim % cfg.num_heads:
        raise ValueError(f"model_dim={cfg.model_dim} is not divisible by num_heads={cfg.num_heads}")
    if (cfg.model_dim // cfg.num_heads) % 2:
        raise ValueError(f"head_dim={cfg.model_dim // cfg.num_heads} must be even for RoPE")
    if cfg.num_heads % cfg.num_kv_heads:
        raise ValueError(
            f"num_heads={cfg.num_heads} is not divisible by num_kv_heads={cfg.num_kv_heads}"
        )
    if cfg.logit_softcap <= 0:
        raise ValueError(f"logit_softcap={cfg.logit_softcap} must be positive")
    if cfg.skip_init not in SKIP_INITS:
        raise ValueError(f"skip_init={cfg.skip_init!r} is not one of {', '.join(SKIP_INITS)}")


def _check_looped(cfg: ModelConfig) -> None:
    if cfg.loop_core < 1 or cfg.loop_repeats < 1 or cfg.loop_stem < 0 or cfg.loop_tail < 0:
        raise ValueError(
            f"variant='looped' needs loop_core >= 1, loop_repeats >= 1, loop_stem/tail >= 0 "
            f"(got loop_stem={cfg.loop_stem}, loop_core={cfg.loop_core}, "
            f"loop_repeats={cfg.loop_repeats}, loop_tail={cfg.loop_tail})"
        )
    physical = cfg.loop_stem + cfg.loop_core + cfg.loop_tail
    if cfg.num_layers != physical:
        raise ValueError(
            f"num_layers={cfg.num_layers} does not match loop_stem+loop_core+loop_tail="
            f"{physical} (variant='looped'; num_layers counts physical blocks)"
        )
    if cfg.loop_adapter_rank < 0:
        raise ValueError(f"loop_adapter_rank={cfg.loop_adapter_rank} must be >= 0")


def _check_rqz(cfg: ModelConfig) -> None:
    if cfg.rqz_unique < 0 or cfg.rqz_k < 1:
        raise ValueError(
            f"variant='rqz' needs rqz_unique >= 0 and rqz_k >= 1 "
            f"(got rqz_unique={cfg.rqz_unique}, rqz_k={cfg.rqz_k})"
        )
    if cfg.num_layers != cfg.rqz_unique + 1:
        raise ValueError(
            f"num_layers={cfg.num_layers} does not match rqz_unique+1={cfg.rqz_unique + 1} "
            f"(variant='rqz': the unique layers plus the one shared layer)"
        )


def _check_recur(cfg: ModelConfig) -> None:
    recur = cfg.recur_layers
    if not recur:
        stray = _changed(cfg, _RECUR_FIELDS)
        if stray:
            raise ValueError(f"{', '.join(stray)} needs recur_layers (mini recurrence is off)")
        return
    if cfg.variant not in ("flat", "unet"):
        raise ValueError(
            f"recur_layers={recur} clashes with variant={cfg.variant!r}: mini recurrence "
            f"composes with variant 'flat' or 'unet' only"
        )
    if list(recur) != sorted(set(recur)):
        raise ValueError(f"recur_layers={recur} must be strictly increasing, without repeats")
    if recur[0] < 0 or recur[-1] >= cfg.num_layers:
        raise ValueError(
            f"recur_layers={recur} is out of range for num_layers={cfg.num_layers} "
            f"(physical blocks 0..{cfg.num_layers - 1})"
        )
    if cfg.recur_start_step < 0 or not 0.0 <= cfg.recur_start_frac < 1.0:
        raise ValueError(
            f"recur_start_step={cfg.recur_start_step} must be >= 0 and "
            f"recur_start_frac={cfg.recur_start_frac} in [0, 1)"
        )


def _check_parallel(cfg: ModelConfig) -> None:
    start = cfg.parallel_start_layer
    if cfg.parallel_final_lane not in FINAL_LANES:
        raise ValueError(
            f"parallel_final_lane={cfg.parallel_final_lane!r} is not one of "
            f"{', '.join(FINAL_LANES)}"
        )
    if start == -1:
        if cfg.parallel_final_lane != _DEFAULTS.parallel_final_lane:
            raise ValueError(
                f"parallel_final_lane={cfg.parallel_final_lane!r} needs parallel_start_layer "
                f"(parallel lanes are off)"
            )
        return
    if cfg.variant not in ("flat", "unet"):
        raise ValueError(
            f"parallel_start_layer={start} clashes with variant={cfg.variant!r}: parallel "
            f"lanes compose with variant 'flat' or 'unet' only"
        )
    if not 0 <= start < cfg.num_layers:
        raise ValueError(
            f"parallel_start_layer={start} is out of range for num_layers={cfg.num_layers} "
            f"(a physical block 0..{cfg.num_layers - 1}, or -1 for off)"
        )
    if cfg.recur_layers and min(cfg.recur_layers) < start <= max(cfg.recur_layers):
        raise ValueError(
            f"recur_layers={cfg.recur_layers} clashes with parallel_start_layer={start}: the "
            f"repeated pass would re-enter blocks below the lane start after lanes began"
        )


def validate_config(cfg: ModelConfig) -> None:
    """Raise ValueError naming the option(s) at fault for an unknown or contradictory config."""
    if cfg.variant not in VARIANTS:
        raise ValueError(f"variant={cfg.variant!r} is not one of {', '.join(VARIANTS)}")
    _check_shapes(cfg)
    for variant, names, check in (("looped", _LOOP_FIELDS, _check_looped),
                                  ("rqz", _RQZ_FIELDS, _check_rqz)):
        if cfg.variant == variant:
            check(cfg)
        elif _changed(cfg, names):
            raise ValueError(
                f"{', '.join(_changed(cfg, names))} needs variant={variant!r} "
                f"(got variant={cfg.variant!r})"
            )
    _check_recur(cfg)
    _check_parallel(cfg)


# ----------------------------------------------------------------------------- building


def _raw_layers(
    cfg: ModelConfig, recurrence_active: bool, num_iters: int
) -> tuple[list[tuple[int, int]], int, int]:
    """(physical, cycle) per virtual layer, and the encoder/decoder sizes."""
    L = cfg.num_layers
    if cfg.variant == "looped":
        S, C, T = cfg.loop_stem, cfg.loop_core, cfg.loop_tail
        core = [(S + c, r) for r in range(cfg.loop_repeats) for c in range(C)]
        raw = [(p, 0) for p in range(S)] + core + [(S + C + t, 0) for t in range(T)]
        return raw, S, T
    if cfg.variant == "rqz":
        enc = cfg.rqz_unique // 2  # the shared layer sits at the hinge (PR #54)
        raw = [(p, 0) for p in range(enc)] + [(enc, k) for k in range(num_iters)]
        raw += [(p, 0) for p in range(enc + 1, L)]
        return raw, enc, cfg.rqz_unique - enc
    order = list(range(L))
    if cfg.recur_layers and recurrence_active:
        cut = max(cfg.recur_layers) + 1
        order = order[:cut] + list(cfg.recur_layers) + order[cut:]
    seen: dict[int, int] = {}
    raw = []
    for p in order:
        raw.append((p, seen.get(p, 0)))
        seen[p] = seen.get(p, 0) + 1
    enc = 0 if cfg.variant == "flat" else len(raw) // 2
    return raw, enc, len(raw) - enc


def control_slots(cfg: ModelConfig) -> dict[tuple[int, int], int]:
    """(block, cycle) -> index into GPT.virtual_controls, for every later use of a block in the
    training-time schedule (empty unless `untie_controls`)."""
    if not cfg.untie_controls:
        return {}
    raw, _, _ = _raw_layers(cfg, True, cfg.rqz_k)
    keys = [key for key in raw if key[1] > 0]
    return {key: i for i, key in enumerate(keys)}


def _layer_extras(cfg: ModelConfig, physical: int, cycle: int, num_iters: int) -> dict:
    """embed / adapter / attn / residual_scale / repeat_mlp for one virtual layer."""
    extras = dict(embed=-1, adapter=-1, attn=True, residual_scale=1.0, repeat_mlp=-1)
    if cfg.variant == "looped" and cfg.loop_stem <= physical < cfg.loop_stem + cfg.loop_core:
        c = physical - cfg.loop_stem
        if cfg.loop_repeat_embed and c == 0:
            extras["embed"] = cycle  # added at the start of each repeat
        if cfg.loop_adapter_rank > 0:
            extras["adapter"] = cycle * cfg.loop_core + c
        extras["attn"] = not (cfg.loop_mlp_only and cycle > 0)
    if cfg.variant == "rqz" and physical == cfg.rqz_unique // 2:
        extras["embed"] = min(cycle, cfg.rqz_k - 1)  # K' > K reuses the last psi
        # 1/sqrt(K): K applications of one update keep the residual stream's growth ~ that of
        # one unscaled layer when the updates are uncorrelated (PR #54 "for stability")
        extras["residual_scale"] = 1.0 / math.sqrt(num_iters)
    if cfg.recur_untie_mlp and cycle > 0:
        extras["repeat_mlp"] = cfg.recur_layers.index(physical)
    return extras


def build_schedule(
    cfg: ModelConfig, *, recurrence_active: bool = True, num_iters: int | None = None
) -> LayerSchedule:
    """The schedule for `cfg`: mini recurrence on or off, rqz applied `num_iters` times
    (default `rqz_k`). Validates `cfg` first."""
    validate_config(cfg)
    if num_iters is None:
        num_iters = cfg.rqz_k
    elif cfg.variant != "rqz":
        raise ValueError(f"num_iters={num_iters} is only for variant='rqz' (got {cfg.variant!r})")
    elif num_iters < 1:
        raise ValueError(f"num_iters={num_iters} must be >= 1")
    raw, enc, dec = _raw_layers(cfg, recurrence_active, num_iters)
    slots = control_slots(cfg)
    max_cycle: dict[int, int] = {}  # highest trained cycle per block: K' > K reuses its slot
    for p, c in slots:
        max_cycle[p] = max(max_cycle.get(p, 0), c)
    start = cfg.parallel_start_layer
    layers, lanes = [], False
    for p, c in raw:
        lanes = lanes or (start >= 0 and p >= start)
        key = (p, min(c, max_cycle.get(p, 0)))
        layers.append(
            VirtualLayer(
                physical=p,
                cycle=c,
                controls=slots.get(key, -1),
                lanes=lanes,
                **_layer_extras(cfg, p, c, num_iters),
            )
        )
    return LayerSchedule(layers=tuple(layers), num_encoder=enc, num_decoder=dec)

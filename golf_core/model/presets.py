"""Named model shapes: `preset(name, **overrides) -> ModelConfig`.

Our own simplified shapes carry names that claim no PR; a preset named after a PR builds that
PR's published model (its family module registers it in `FAMILY_PRESETS`).
"""

from __future__ import annotations

import dataclasses

from golf_core.config import ModelConfig, apply_overrides
from golf_core.model.families import family_presets
from golf_core.schedule import validate_config

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
# ours, then the published families' (golf_core/model/pr*.py)
OUR_PRESETS: tuple[str, ...] = tuple(_PRESETS)
PRESETS: tuple[str, ...] = OUR_PRESETS + tuple(family_presets())


def preset(name: str, **overrides: object) -> ModelConfig:
    """A named model shape (upstream scale) with `overrides` applied, validated.

    For `looped` and `rqz`, `num_layers` follows from the loop/rqz sizes unless overridden.
    A tiny CPU version: `preset("mini", num_layers=5, recur_layers=(1, 2), model_dim=64)`.
    """
    table = {**_PRESETS, **family_presets()}
    if name not in table:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(table)}")
    cfg = apply_overrides(ModelConfig(), {**table[name], **overrides}, source=f"preset {name!r}")
    if cfg.family != "golf":  # a published family's Model validates its own options
        return cfg
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


def preset_overrides(name: str) -> dict:
    """The keys preset `name` sets itself (its table entry), whatever their values: what a
    scale must not override (a preset's num_layers=9 is its own even where 9 is the default)."""
    table = {**_PRESETS, **family_presets()}
    if name not in table:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(table)}")
    return dict(table[name])

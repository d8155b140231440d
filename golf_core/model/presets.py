"""Named model shapes: `preset(name, **overrides) -> ModelConfig`.

Every preset is a family's (golf_core/model/families.py): `unet` and `flat` are upstream's
baseline GPT with and without its U-Net skips; a preset named after a PR builds that PR's
published model.
"""

from __future__ import annotations

from golf_core.config import ModelConfig, apply_overrides
from golf_core.model import gpt
from golf_core.model.families import family_presets

PRESETS: tuple[str, ...] = tuple(family_presets())


def preset(name: str, **overrides: object) -> ModelConfig:
    """A named model shape (upstream scale) with `overrides` applied, validated.

    A tiny CPU version: `preset("pr1204", num_layers=5, recur_layers=(1, 2), model_dim=64)`.
    """
    table = family_presets()
    if name not in table:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(table)}")
    cfg = apply_overrides(ModelConfig(), {**table[name], **overrides}, source=f"preset {name!r}")
    if cfg.family != gpt.FAMILY:  # a published family's Model validates its own options
        return cfg
    try:
        gpt.validate(cfg)
    except ValueError as e:
        raise ValueError(f"preset {name!r}: {e}") from None
    return cfg


def preset_overrides(name: str) -> dict:
    """The keys preset `name` sets itself (its table entry), whatever their values: what a
    scale must not override (a preset's num_layers=9 is its own even where 9 is the default)."""
    table = family_presets()
    if name not in table:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(table)}")
    return dict(table[name])

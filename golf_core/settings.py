"""Resolving a run's settings: `resolve(scale=, preset=, config=, environ=, sets=)` gives the
(ModelConfig, TrainConfig) a run trains with, from every layer of settings, later layers
winning: dataclass defaults < a scale (config.SCALES) and a preset (golf_core.model.preset; a
preset's own keys win over the scale's) < a config file < upstream env vars < --set.

It sits above the model package (a preset is a model's), while golf_core.config below it
holds the settings as data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from golf_core.config import (
    SCALES,
    ConfigError,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    env_name,
    env_overrides,
    split_overrides,
)
from golf_core.model.families import config_fields, refuse_unread
from golf_core.model.presets import preset as make_preset
from golf_core.model.presets import preset_overrides


def _layered(config: Mapping[str, Any], source: str) -> tuple[dict, dict]:
    """(model, train) keys of a config mapping: flat keys, or {"model": {...}, "train": {...}}."""
    if "model" in config or "train" in config:
        extra = sorted(set(config) - {"model", "train"})
        if extra:
            raise ConfigError(
                f"{source}: unknown section(s) {', '.join(map(repr, extra))} "
                "(expected 'model' and 'train', or flat keys)"
            )
        m, t = dict(config.get("model", {})), dict(config.get("train", {}))
        apply_overrides(ModelConfig(), m, source=f"{source} [model]")
        apply_overrides(TrainConfig(), t, source=f"{source} [train]")
        return m, t
    try:
        return split_overrides(config)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


# A scale always sets the width; a preset's other keys (variant, depth, loops, recurrence,
# lanes, mlp_mult) win over the scale's: `--scale cpu --preset pr1204` is PR #1204's 11-layer
# shape at the cpu width, not a 4-layer model that could not hold recur_layers (4, 5).
SCALE_WIDTH_KEYS = ("model_dim", "num_heads", "num_kv_heads", "vocab_size")


def _base_model(preset: str | None, scale_model: Mapping[str, Any]) -> ModelConfig:
    """The preset's ModelConfig, with the scale's width and the scale's other model keys
    where the preset leaves them at their defaults."""
    if preset is None:
        return apply_overrides(ModelConfig(), scale_model, source="--scale")
    try:
        # the keys the preset sets, even to a default value (PR #363's 3x3 has num_layers=9),
        # and those it derives (a looped preset's num_layers)
        base, default = make_preset(preset), ModelConfig()
        derived = {f.name for f in fields(ModelConfig)
                   if getattr(base, f.name) != getattr(default, f.name)}
        own = (set(preset_overrides(preset)) | derived) - set(SCALE_WIDTH_KEYS)
        return make_preset(preset, **{k: v for k, v in scale_model.items() if k not in own})
    except ValueError as e:
        raise ConfigError(f"--preset: {e}") from None


def resolve(
    *,
    scale: str | None = None,
    preset: str | None = None,
    config: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    sets: Mapping[str, Any] | None = None,
    config_source: str = "config",
) -> tuple[ModelConfig, TrainConfig]:
    """Resolve (ModelConfig, TrainConfig) from every layer, later layers winning:

    dataclass defaults < `scale` (SCALES) and `preset` (golf_core.model.preset; a preset's own
    keys win over the scale's) < `config` (flat or {"model", "train"} sections) < upstream env
    vars in `environ` (os.environ when None) < `sets` (CLI --set, papermill). Unknown keys,
    scales and bad values raise ConfigError naming them and their source; so does a --set
    value for a model field the family does not read (its CONFIG_FIELDS; a config file may
    carry every field, as a run's config.json does).
    Env vars of fields the family does not read are ignored, as its script ignores them.
    """
    if scale is not None and scale not in SCALES:
        raise ConfigError(f"--scale: unknown scale {scale!r} (known: {', '.join(SCALES)})")
    scale_model, scale_train = split_overrides(SCALES[scale] if scale else {})
    mcfg = _base_model(preset, scale_model)
    tcfg = apply_overrides(TrainConfig(), scale_train, source="--scale")
    if config:
        m, t = _layered(config, config_source)
        mcfg = apply_overrides(mcfg, m, source=config_source)  # a run's config.json has all
        tcfg = apply_overrides(tcfg, t, source=config_source)
    env = env_overrides(ModelConfig, environ)
    if "family" in env:
        mcfg = apply_overrides(mcfg, {"family": env.pop("family")}, source="environment FAMILY")
    reads = _family_fields(mcfg.family, "family")  # from the config file or FAMILY
    for k, v in env.items():  # one by one: errors name the var
        if k in reads:  # like the family's script, which never looks at the others' variables
            mcfg = apply_overrides(mcfg, {k: v}, source=f"environment {env_name(k)}")
    for k, v in env_overrides(TrainConfig, environ).items():
        tcfg = apply_overrides(tcfg, {k: v}, source=f"environment {env_name(k)}")
    if sets:
        try:
            m, t = split_overrides(sets)
        except ConfigError as e:
            raise ConfigError(f"--set: {e}") from None
        mcfg = _apply_model(mcfg, m, "--set")
        tcfg = apply_overrides(tcfg, t, source="--set")
    return mcfg, tcfg


def _apply_model(mcfg: ModelConfig, overrides: Mapping[str, Any], source: str) -> ModelConfig:
    """`mcfg` with `overrides` applied; a value for a field the resulting family does not
    read is refused (it would rename the run and change nothing it trains)."""
    out = apply_overrides(mcfg, overrides, source=source)
    _family_fields(out.family, source)  # an unknown family, before the fields are compared
    refuse_unread(mcfg, out, source)
    return out


def _family_fields(family: str, source: str) -> set[str]:
    """The fields `family` reads; an unknown family is a ConfigError naming `source`."""
    try:
        return set(config_fields(family))
    except ValueError as e:  # the model package's message, listing the known families
        raise ConfigError(f"{source}: {e}") from None

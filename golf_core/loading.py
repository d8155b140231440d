"""Loading any checkpoint or artifact as a model.

`load_model(path, config=None, device="cpu")` takes a run directory (its final_model.pt, else
its newest checkpoint), one of our checkpoints, an upstream `final_model.pt` or a compressed
artifact (ours, upstream's `.int8.ptz`, PR #363's int8 file, PR #1204's `.int6.ptz`), reads
the model family off the state-dict keys and returns that family's model in eval mode on
`device`. `config` is a ModelConfig or a dict of field names or of the family script's env var
names (a run directory's own config.json is used when it is None); `parse_env_config(text)`
turns the text of a training command's `KEY=VALUE` items into such a dict. Bad input raises
FileNotFoundError or ValueError (ConfigError) in one line naming the file and what was
expected. Nothing is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from golf_core.checkpoint import list_checkpoints, load_checkpoint
from golf_core.config import ConfigError, ModelConfig, apply_overrides, env_name, from_dict
from golf_core.model import build_model, detect_family, preset
from golf_core.model.families import PUBLISHED, family_module
from golf_core.paths import CONFIG, FINAL_MODEL, SUMMARY
from golf_core.quant import load_artifact


def _env_keys(config: dict, source: str) -> dict[str, Any]:
    """Field names from a dict of field names or upstream env names (`NUM_LAYERS`)."""
    by_env = {env_name(f): f for f in ModelConfig.__dataclass_fields__}
    keys = {by_env.get(k, k): v for k, v in config.items()}
    unknown = sorted(set(keys) - set(ModelConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"{source}: unknown config key(s) {', '.join(map(repr, unknown))}")
    return keys


def _config_for(config: ModelConfig | dict | None, sd: dict, source: str,
                family: str) -> ModelConfig:
    """A ModelConfig from an explicit config, or: the family's published preset (ours: the
    upstream baseline), the user's env-style overrides, then the sizes the shapes fix."""
    if isinstance(config, ModelConfig):
        return config
    keys = _env_keys(config or {}, f"load_model config for {source}")
    published = preset(family) if family != "golf" else ModelConfig()
    base = apply_overrides(published, keys, source="load_model config")
    try:
        return family_module(family).config_from_state_dict(sd, base)
    except ValueError as e:
        raise ConfigError(f"load_model: {source}: {e}") from None


def _weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, run config or None) of a run directory or a weights file."""
    if path.is_dir():
        run_cfg = _read_json(path / CONFIG)
        if (path / FINAL_MODEL).is_file():
            return torch.load(path / FINAL_MODEL, map_location="cpu", weights_only=True), run_cfg
        ckpts = list_checkpoints(path / "checkpoints")
        if not ckpts:
            raise FileNotFoundError(f"{path}: no {FINAL_MODEL} and no checkpoints")
        return load_checkpoint(ckpts[-1][1])["model"], run_cfg
    if path.suffix == ".ptz":
        return load_artifact(path), None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code in it, a truncated or foreign file
        raise ValueError(f"{path}: not a weights file torch.load(weights_only=True) can read "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if isinstance(sd, dict) and "model" in sd and "step" in sd:  # one of our checkpoints
        return sd["model"], None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
    return sd, None


def _recurrence_flag(path: Path, mcfg: ModelConfig) -> bool:
    """PR #1204's recurrence switch, which no tensor holds: as the run saved it, else on (the
    script exports and evaluates with recurrence on)."""
    summary = _read_json(path / SUMMARY) if path.is_dir() else None
    if summary and "recurrence_active" in summary:
        return bool(summary["recurrence_active"])
    return bool(mcfg.recur_layers)


def _expected_keys() -> str:
    keys = ["blocks.0.attn.c_q.weight (baseline / ours)"]
    keys += [f"{', '.join(family_module(f).IDENTIFYING_KEYS)} (PR #{family_module(f).PR})"
             for f in PUBLISHED]
    return "; ".join(keys)


def load_model(
    path: str | Path, config: ModelConfig | dict | None = None, device: str = "cpu"
) -> torch.nn.Module:
    """A model in eval mode from a run directory (final_model.pt, else its newest checkpoint),
    one of our checkpoints, an upstream `final_model.pt` or an artifact: ours, upstream's
    `.int8.ptz`, PR #363's `ZLIB`/`ZSTD` int8 file, PR #1204's `final_model.int6.ptz`.

    The family (baseline/ours, PR #54, #325, #363, #1204) is read off the state-dict keys.
    `config`: a ModelConfig, or a dict of field names or *that family's script's* env var
    names (`{"RECUR_LAYERS": "4,5", "PARALLEL_START_LAYER": "7"}`: paste the command you
    trained with) applied over the family's published preset, then the sizes the weights'
    shapes fix; a run directory's own config.json is used when `config` is None. A
    mini-recurrence model comes back switched on or off as it was saved (PR #1204's upstream
    files: on, as at export). Errors name the file and what was expected, in one line.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"load_model: {path}: no such file or directory")
    sd, run_cfg = _weights(path)
    sd = {k.removeprefix("_orig_mod."): v for k, v in sd.items()}  # torch.compile'd
    family = detect_family(sd)
    if family == "golf" and not any(k.startswith("blocks.") for k in sd):
        raise ValueError(f"{path}: no model family recognised in its {len(sd)} keys (first: "
                         f"{', '.join(list(sd)[:3]) or 'none'}); expected {_expected_keys()}")
    if config is None and run_cfg is not None:
        mcfg = from_dict(ModelConfig, run_cfg["model"], source=str(path / CONFIG))
    else:
        mcfg = _config_for(config, sd, str(path), family)
    model = build_model(mcfg)
    if hasattr(model, "set_recurrence_active"):
        model.set_recurrence_active(_recurrence_flag(path, mcfg))
    try:
        model.load_state_dict(sd)
        model.load_state_dict(sd)  # ours: the first load's hook switched mini recurrence
    except RuntimeError as e:
        first = str(e).splitlines()
        detail = " ".join(line.strip() for line in first[1:3])[:300]
        raise ValueError(f"{path}: weights do not fit the {family} model of this config "
                         f"({detail}); pass config= with the env vars you trained with") from None
    return model.to(device).eval()


def parse_env_config(text: str) -> dict[str, str]:
    """`"RECUR_LAYERS=4,5 PARALLEL_START_LAYER=7"` (space- or newline-separated, as in a
    training command) -> {"RECUR_LAYERS": "4,5", ...}; a malformed item raises ValueError."""
    out = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"upstream_config: expected KEY=VALUE items, got {item!r}")
        out[key] = value
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None

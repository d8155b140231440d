"""Tidy tables of what a model learned about routing: U-Net skip weights, resid_mix (x vs x0),
parallel-lane lambdas, repeat/iteration embeddings, the unique/shared parameter split, and
each family's own (gates, adapters, LoRA, ...).

Works on any family's model, or on a state dict (ours, an upstream baseline `final_model.pt`,
or a published family's: recognised by its keys, its sizes read off the tensor shapes). The
lane columns use the names of PR #1204's log lines (golf_core/model/tables.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import torch
from torch import Tensor

from golf_core.config import ModelConfig
from golf_core.model import build_model, detect_family, preset
from golf_core.model.families import family_module
from golf_core.model.tables import LANE_COLUMNS

__all__ = ["LANE_COLUMNS", "config_from_state_dict", "routing_tables"]


def config_from_state_dict(state_dict: Mapping[str, Tensor],
                           config: ModelConfig | None = None) -> ModelConfig:
    """The ModelConfig of a state dict of any family: `config` (default: the family's
    published preset; the baseline's `unet`) with the sizes its tensor shapes fix."""
    state = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}  # torch.compile'd
    family = detect_family(state)
    base = config if config is not None else (
        preset(family) if family != "golf" else ModelConfig())
    return family_module(family).config_from_state_dict(state, base)


def _as_model(source: torch.nn.Module | Mapping[str, Tensor],
              config: ModelConfig | None) -> torch.nn.Module:
    """The model itself, or one built from a state dict."""
    if isinstance(source, torch.nn.Module):
        return source
    state = {k.removeprefix("_orig_mod."): v for k, v in source.items()}
    if config is not None and config.family == "golf" == detect_family(state):
        cfg = config  # the baseline's own config says everything
    else:
        cfg = config_from_state_dict(state, config)
    with torch.device("meta"):  # no memory, no init: the tensors come from `state`
        model = build_model(cfg)
    if hasattr(model, "set_recurrence_active"):  # PR #1204: exported with recurrence on
        model.set_recurrence_active(bool(cfg.recur_layers))
    model.load_state_dict(state, strict=True, assign=True)
    return model


def routing_tables(
    source: torch.nn.Module | Mapping[str, Tensor], config: ModelConfig | None = None
) -> dict[str, pd.DataFrame]:
    """Tables keyed `skip_weights`, `resid_mix`, `lanes`, `embeddings`, `params` (a published
    family adds its own: gates, adapters, LoRA, ...), for any family's model or a state dict
    of one (its family recognised by its keys).

    Layer indices are virtual depth under the model's current schedule (for PR #1204, whether
    the repeat had started)."""
    return _as_model(source, config).routing_tables()

"""Training FLOPs per token, and step budgets that give every arm the same training FLOPs.

The one FLOP count of the project: benchmarks/flops.py (MFU) and golf_core.stats (equal-FLOPs
budgets for the claims) both use `flops_per_token`. Matrix multiplies of one training step
(forward + backward = 3x forward), in the convention of the PaLM paper (appendix B), which
nanoGPT's `estimate_mfu` and modded-nanogpt use:

    6 * N_matmul                      N_matmul = weights of every matmul touched per token:
                                      each CastedLinear of each *virtual* layer (a shared,
                                      looped block counts once per use), plus the LM head
                                      (vocab x d, tied or not)
  + 12 * sum over attention layers of (d * T)
                                      QK^T and AV: 2 products x 2 FLOPs x T keys x d per
                                      token forward, x3 for forward + backward, no discount
                                      for the causal mask (PaLM's convention)

Not counted: the embedding lookup (not a matmul), norms, rotary, softcap, softmax and every
elementwise op, and control tensors (vectors). Virtual layers that skip attention add no
attention term. So a looped model has more FLOPs per token than its stored parameters suggest.

Every family (golf_core/model/families.py) counts itself over its training-time schedule
(recurrence active) with `matmul_params_per_token()` and `attention_layers()`. A
delayed-recurrence run spends fewer FLOPs per token before activation than this count says;
the budgets below do not discount it.

Equal FLOPs stand in for PR #363's equal wallclock: deterministic, and the same on any
machine (measured seconds are recorded beside them, not used to set budgets).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from golf_core.config import ModelConfig
from golf_core.model import build_model


def matmul_params_per_token(model: nn.Module) -> int:
    """N_matmul of the module docstring: the family's own `matmul_params_per_token()`."""
    return int(model.matmul_params_per_token())


def attention_layers(model: nn.Module) -> int:
    """Virtual layers of the training-time schedule that run attention."""
    return int(model.attention_layers())


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Forward+backward matmul FLOPs per trained token (see the module docstring).

    `model`: our GPT, a published family's model, or a ModelConfig (built on the CPU)."""
    model = _as_model(model)
    return (6.0 * matmul_params_per_token(model)
            + 12.0 * attention_layers(model) * model.cfg.model_dim * seq_len)


matmul_flops_per_token = flops_per_token  # the name benchmarks/flops.py has always used


def _as_model(model: Any) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, ModelConfig):
        return build_model(model)
    raise TypeError(f"expected a model or a ModelConfig, got {type(model).__name__}")


# ----------------------------------------------------------------------------- budgets


def training_flops(model: nn.Module | float, seq_len: int, tokens_per_step: int,
                   steps: int) -> float:
    """FLOPs of `steps` training steps of `tokens_per_step` tokens (sequences of `seq_len`).

    `model` may be a number: its FLOPs per token, already counted."""
    return _per_token(model, seq_len) * tokens_per_step * steps


def steps_for_flops(model: nn.Module | float, seq_len: int, tokens_per_step: int,
                    flops_budget: float) -> int:
    """The most whole training steps that fit in `flops_budget` (so an arm never gets more
    compute than the budget; a model with twice the FLOPs per token gets half the steps).

    `model` may be a number: its FLOPs per token. Less than one step raises ValueError."""
    per_step = _per_token(model, seq_len) * tokens_per_step
    if per_step <= 0 or tokens_per_step <= 0:
        raise ValueError(f"FLOPs per step must be positive, got {per_step} "
                         f"({tokens_per_step} tokens per step)")
    # the relative slack absorbs float rounding, so the reference arm gets its own steps back
    steps = math.floor(flops_budget / per_step * (1 + 1e-12))
    if steps < 1:
        raise ValueError(f"a budget of {flops_budget:.4g} FLOPs is less than one step "
                         f"({per_step:.4g} FLOPs)")
    return steps


def equal_flops_steps(models: Mapping[str, nn.Module | float], reference_steps: int, *,
                      seq_len: int, tokens_per_step: int,
                      reference: str | None = None) -> dict[str, int]:
    """Per arm, the steps that spend the training FLOPs of `reference` (default: the first
    arm) trained for `reference_steps` steps. Every arm trains `tokens_per_step` tokens of
    sequences of `seq_len` per step; values of `models` are models, ModelConfigs or FLOPs per
    token. The reference arm gets exactly `reference_steps`."""
    if not models:
        raise ValueError("equal_flops_steps needs at least one arm")
    ref = next(iter(models)) if reference is None else reference
    if ref not in models:
        raise ValueError(f"reference arm {ref!r} is not among the arms {list(models)}")
    per_token = {name: _per_token(m, seq_len) for name, m in models.items()}
    budget = per_token[ref] * tokens_per_step * reference_steps
    return {name: steps_for_flops(fpt, seq_len, tokens_per_step, budget)
            for name, fpt in per_token.items()}


def _per_token(model: Any, seq_len: int) -> float:
    if isinstance(model, (int, float)) and not isinstance(model, bool):
        return float(model)
    return flops_per_token(model, seq_len)

"""Bookkeeping every model family shares: the columns of the routing tables, the rows of a
U-Net skip table and of an upstream block's control tensors, and the sizes an upstream-shaped
state dict fixes.

Column names follow PR #1204's log lines for the lanes (`parallel_residual layer:9 physical:7
attn_resid:... attn_to_attn:... attn_to_mlp:... mlp_resid:... mlp_to_attn:... mlp_to_mlp:...`),
so its published values sit beside ours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from torch import Tensor, nn

LANE_COLUMNS = (
    "layer", "physical", "attn_resid", "attn_to_attn", "attn_to_mlp",
    "mlp_resid", "mlp_to_attn", "mlp_to_mlp",
)  # fmt: skip
EMBEDDING_COLUMNS = ("name", "index", "norm", "rms")
SKIP_COLUMNS = ("skip", "encoder_layer", "decoder_layer", "mean", "abs_mean", "std")


def summary(t: Tensor) -> dict[str, float]:
    """mean, abs_mean and std of a tensor (as float32)."""
    t = t.detach().float()
    return {"mean": t.mean().item(), "abs_mean": t.abs().mean().item(), "std": t.std().item()}


def skip_table(weights: Tensor | Sequence[Tensor], num_encoder: int, decoder_start: int,
               extra: Sequence[Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """One row per skip weight j: it carries encoder layer `num_encoder - 1 - j` (LIFO) into
    decoder layer `decoder_start + j`; `extra[j]` adds columns (a gated skip's gate)."""
    rows = []
    for j, w in enumerate(weights):
        used = j < num_encoder
        rows.append({"skip": j, "encoder_layer": num_encoder - 1 - j if used else pd.NA,
                     "decoder_layer": decoder_start + j if used else pd.NA, **summary(w),
                     **(extra[j] if extra else {})})
    cols = list(SKIP_COLUMNS) + (list(extra[0]) if extra else [])
    return pd.DataFrame(rows, columns=cols).astype(
        {"encoder_layer": "Int64", "decoder_layer": "Int64"})


def block_controls_row(layer: int, physical: int, cycle: int, block: nn.Module,
                       **extra: Any) -> dict[str, Any]:
    """The `resid_mix` table's row for a virtual layer run by an upstream-shaped block (its
    resid_mix, attn_scale, mlp_scale and attn.q_gain)."""
    mix = block.resid_mix.detach().float()
    return {
        "layer": layer,
        "physical": physical,
        "cycle": cycle,
        "controls": "own",
        "x_coef_mean": mix[0].mean().item(),
        "x0_coef_mean": mix[1].mean().item(),
        "x_coef_abs_mean": mix[0].abs().mean().item(),
        "x0_coef_abs_mean": mix[1].abs().mean().item(),
        "attn_scale_abs_mean": block.attn_scale.detach().abs().mean().item(),
        "mlp_scale_abs_mean": block.mlp_scale.detach().abs().mean().item(),
        "q_gain_mean": block.attn.q_gain.detach().float().mean().item(),
        **extra,
    }


def upstream_sizes(sd: Mapping[str, Tensor], prefix: str = "blocks") -> dict[str, Any]:
    """vocab_size, model_dim, num_heads, num_kv_heads, mlp_mult, tie_embeddings and `blocks`
    (how many `{prefix}.N.` blocks) of a state dict with upstream's names; ValueError when
    the tensors that fix them are missing."""
    first = f"{prefix}.0"
    needed = ("tok_emb.weight", f"{first}.attn.q_gain", f"{first}.attn.c_k.weight",
              f"{first}.mlp.fc.weight")
    missing = [k for k in needed if k not in sd]
    if missing:
        raise ValueError(f"state dict lacks {', '.join(missing)}: not an upstream-shaped GPT")
    vocab, dim = sd["tok_emb.weight"].shape
    heads = sd[f"{first}.attn.q_gain"].numel()
    return {
        "vocab_size": int(vocab),
        "model_dim": int(dim),
        "num_heads": int(heads),
        "num_kv_heads": int(sd[f"{first}.attn.c_k.weight"].shape[0] // (dim // heads)),
        "mlp_mult": int(sd[f"{first}.mlp.fc.weight"].shape[0] // dim),
        "tie_embeddings": "lm_head.weight" not in sd,
        "blocks": 1 + max(int(k.split(".")[1]) for k in sd if k.startswith(prefix + ".")),
    }

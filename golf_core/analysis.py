"""Tidy tables of what a model learned about routing: U-Net skip weights, resid_mix (x vs x0),
parallel-lane lambdas, repeat/iteration embeddings, and the unique/shared parameter split.

Works on a `golf_core.model.GPT`, or on a state dict (ours or an upstream baseline
`final_model.pt`; a baseline's config is read off the tensor shapes, other variants need
`config`). The lane columns use the names of PR #1204's log lines (`parallel_residual layer:9
physical:7 attn_resid:... attn_to_attn:... attn_to_mlp:... mlp_resid:... mlp_to_attn:...
mlp_to_mlp:...`), so its published values sit beside ours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import pandas as pd
import torch
from torch import Tensor

from golf_core.config import ModelConfig
from golf_core.model import GPT, build_model, count_parameters, detect_family
from golf_core.model.families import family_module

LANE_COLUMNS = (
    "layer", "physical", "attn_resid", "attn_to_attn", "attn_to_mlp",
    "mlp_resid", "mlp_to_attn", "mlp_to_mlp",
)  # fmt: skip
# tensors a baseline (flat/unet, tied or not) state dict never has
_VARIANT_KEYS = re.compile(
    r"^(virtual_controls|repeat_mlp|recurrence_flag|loop_|rqz_|parallel_)"
)


def config_from_state_dict(state_dict: Mapping[str, Tensor]) -> ModelConfig:
    """The ModelConfig of an upstream-baseline-shaped state dict, read off tensor shapes."""
    extra = sorted(k for k in state_dict if _VARIANT_KEYS.match(k))
    if extra:
        raise ValueError(
            f"state dict has variant tensors ({', '.join(extra[:3])}, ...); pass config="
        )
    if "tok_emb.weight" not in state_dict or "blocks.0.attn.q_gain" not in state_dict:
        raise ValueError("state dict lacks tok_emb.weight / blocks.0.attn.q_gain: not a GPT")
    vocab, dim = state_dict["tok_emb.weight"].shape
    heads = state_dict["blocks.0.attn.q_gain"].numel()
    layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    return ModelConfig(
        vocab_size=vocab,
        num_layers=layers,
        model_dim=dim,
        num_heads=heads,
        num_kv_heads=state_dict["blocks.0.attn.c_k.weight"].shape[0] // (dim // heads),
        mlp_mult=state_dict["blocks.0.mlp.fc.weight"].shape[0] // dim,
        tie_embeddings="lm_head.weight" not in state_dict,
        variant="unet" if "skip_weights" in state_dict else "flat",
    )


def _as_model(source: torch.nn.Module | Mapping[str, Tensor],
              config: ModelConfig | None) -> torch.nn.Module:
    """The model itself, or one built from a state dict (ours, the upstream baseline, or a
    published family's: recognised by its keys, sizes read off its shapes)."""
    if isinstance(source, torch.nn.Module):
        return source
    state = {k.removeprefix("_orig_mod."): v for k, v in source.items()}  # torch.compile'd
    family = detect_family(state)
    if family != "golf":
        from golf_core.model import preset

        base = config if config is not None else preset(family)
        cfg = family_module(family).config_from_state_dict(state, base)
    else:
        cfg = config if config is not None else config_from_state_dict(state)
    with torch.device("meta"):  # no memory, no init: the tensors come from `state`
        model = build_model(cfg)
    if hasattr(model, "set_recurrence_active"):  # PR #1204: exported with recurrence on
        model.set_recurrence_active(bool(cfg.recur_layers))
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _summary(t: Tensor) -> dict[str, float]:
    t = t.detach().float()
    return {"mean": t.mean().item(), "abs_mean": t.abs().mean().item(), "std": t.std().item()}


def _skip_table(model: GPT) -> pd.DataFrame:
    sched = model.schedule
    rows = []
    weights = model.skip_weights if model.skip_weights is not None else torch.empty(0)
    for j, w in enumerate(weights):
        used = j < sched.num_skips
        dec = sched.decoder_start + j if used else pd.NA
        enc = sched.num_encoder - 1 - j if used else pd.NA  # LIFO: the j-th pop
        rows.append({"skip": j, "encoder_layer": enc, "decoder_layer": dec, **_summary(w)})
    cols = ["skip", "encoder_layer", "decoder_layer", "mean", "abs_mean", "std"]
    df = pd.DataFrame(rows, columns=cols)
    return df.astype({"encoder_layer": "Int64", "decoder_layer": "Int64"})


def _controls_table(model: GPT) -> pd.DataFrame:
    rows = []
    for i, layer in enumerate(model.schedule.layers):
        block = model.blocks[layer.physical]
        ctl = model.virtual_controls[layer.controls] if layer.controls >= 0 else None
        mix = (ctl or block).resid_mix.detach().float()
        q_gain = (ctl.q_gain if ctl is not None else block.attn.q_gain).detach().float()
        rows.append(
            {
                "layer": i,
                "physical": layer.physical,
                "cycle": layer.cycle,
                "controls": "own" if ctl is None else f"virtual_controls.{layer.controls}",
                "x_coef_mean": mix[0].mean().item(),
                "x0_coef_mean": mix[1].mean().item(),
                "x_coef_abs_mean": mix[0].abs().mean().item(),
                "x0_coef_abs_mean": mix[1].abs().mean().item(),
                "attn_scale_abs_mean": (ctl or block).attn_scale.detach().abs().mean().item(),
                "mlp_scale_abs_mean": (ctl or block).mlp_scale.detach().abs().mean().item(),
                "q_gain_mean": q_gain.mean().item(),
            }
        )
    return pd.DataFrame(rows)


def _lanes_table(model: GPT) -> pd.DataFrame:
    rows = []
    for i, layer in enumerate(model.schedule.layers):
        if not layer.lanes:
            continue
        post = model.parallel_post_lambdas[layer.physical].detach().float()
        resid = model.parallel_resid_lambdas[layer.physical].detach().float()
        rows.append(
            dict(zip(LANE_COLUMNS, (i, layer.physical, resid[0].item(), post[0, 0].item(),
                 post[0, 1].item(), resid[1].item(), post[1, 0].item(), post[1, 1].item())))
        )  # fmt: skip
    return pd.DataFrame(rows, columns=list(LANE_COLUMNS))


def _embeddings_table(model: GPT) -> pd.DataFrame:
    rows = []
    for name in ("loop_repeat_embed", "rqz_iter_embed"):
        table = getattr(model, name)
        for index, row in enumerate(table if table is not None else []):
            row = row.detach().float()
            norm = row.norm().item()
            rms = norm / row.numel() ** 0.5
            rows.append({"name": name, "index": index, "norm": norm, "rms": rms})
    return pd.DataFrame(rows, columns=["name", "index", "norm", "rms"])


def routing_tables(
    source: torch.nn.Module | Mapping[str, Tensor], config: ModelConfig | None = None
) -> dict[str, pd.DataFrame]:
    """Tables keyed `skip_weights`, `resid_mix`, `lanes`, `embeddings`, `params` (a published
    family adds its own: gates, adapters, LoRA, ...), for our GPT, any family's model, or a
    state dict of either (a family's is recognised by its keys).

    Layer indices are virtual depth under the model's current schedule (for a mini model, the
    state dict's `recurrence_flag` says whether the repeat had started).
    """
    model = _as_model(source, config)
    if not isinstance(model, GPT):  # a published family tabulates its own routing
        return model.routing_tables()
    counts = count_parameters(model)
    return {
        "skip_weights": _skip_table(model),
        "resid_mix": _controls_table(model),
        "lanes": _lanes_table(model),
        "embeddings": _embeddings_table(model),
        "params": pd.DataFrame([{"variant": model.cfg.variant, **counts}]),
    }

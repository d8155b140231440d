"""The baseline: upstream parameter-golf's GPT (`family="golf"`, presets `unet` and `flat`).

What upstream's `train_gpt.py` computes, with its state-dict names and shapes (checked against
tests/golden/upstream_baseline): embedding -> RMSNorm = x0; the first `L // 2` blocks push their
output, the rest pop it LIFO through `skip_weights`; each block mixes x with x0 through
`resid_mix`, then adds scaled attention and relu^2 MLP outputs; tied head; tanh softcap.
`variant="flat"` drops the U-Net skips (the control every looped model is compared with).

No layer runs twice here: depth recurrence lives in the published families
(golf_core/model/pr54.py, pr325.py, pr363.py, pr1204.py). The model offers the same interface
as they do (golf_core/model/families.py), so training, FLOP counts, routing tables and the
quantization diagnostics treat it as one more family.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import pandas as pd
import torch
from torch import Tensor, nn

from golf_core.config import BASELINE_FIELDS, ModelConfig
from golf_core.model.depth import LayerSchedule
from golf_core.model.layers import (
    CONTROL_PATTERNS,
    Block,
    CastedLinear,
    Embedding,
    RMSNorm,
    fast_rms_norm,
    init_upstream_weights,
    softcapped_head,
    zero_init,
)
from golf_core.model.tables import (
    EMBEDDING_COLUMNS,
    LANE_COLUMNS,
    block_controls_row,
    skip_table,
    upstream_sizes,
)

FAMILY = "golf"
PR = 0  # upstream's baseline, no PR
SOURCE = "train_gpt.py"
# The ModelConfig fields this model reads: upstream's Hyperparameters, plus our two options
CONFIG_FIELDS: tuple[str, ...] = (*BASELINE_FIELDS, "variant", "skip_init")
VARIANTS = ("flat", "unet")
SKIP_INITS = ("ones", "zeros")
IDENTIFYING_KEYS: tuple[str, ...] = ()  # the baseline is what no published family's keys say
PRESETS: dict[str, dict] = {
    # control: upstream's baseline shape with the U-Net skips removed
    "flat": dict(variant="flat"),
    # upstream parameter-golf baseline (train_gpt.py defaults)
    "unet": dict(variant="unet"),
}

# options of the published families: a baseline config that sets one is a mistake
_FAMILY_ONLY = ("recur_layers", "recur_start_step", "recur_start_frac")


def validate(cfg: ModelConfig) -> None:
    """Raise ValueError naming the option at fault for a config this model cannot run."""
    if cfg.variant not in VARIANTS:
        raise ValueError(f"variant={cfg.variant!r} is not one of {', '.join(VARIANTS)}")
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
    defaults = ModelConfig()
    for name in (*_FAMILY_ONLY, "parallel_start_layer"):
        if getattr(cfg, name) != getattr(defaults, name):
            raise ValueError(f"{name}={getattr(cfg, name)!r} is PR #1204's option; the baseline "
                             "GPT has no recurrence or lanes (use --preset pr1204)")


class GPT(nn.Module):
    """Upstream's GPT. forward(input_ids, target_ids=None): softcapped logits (B, T, V), or the
    mean cross-entropy in nats when `target_ids` is given."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        validate(cfg)
        self.cfg = cfg
        L, d = cfg.num_layers, cfg.model_dim
        self.num_encoder_layers = L // 2 if cfg.variant == "unet" else 0
        self.num_decoder_layers = L - L // 2 if cfg.variant == "unet" else 0
        self.num_skips = min(self.num_encoder_layers, self.num_decoder_layers)
        self.tok_emb = Embedding(cfg.vocab_size, d)
        self.skip_weights = None  # flat: no U-Net skips at all
        if self.num_skips:
            init = torch.ones if cfg.skip_init == "ones" else torch.zeros
            self.skip_weights = nn.Parameter(init(self.num_skips, d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(L))
        self.final_norm = RMSNorm()
        self.lm_head = None
        if not cfg.tie_embeddings:
            self.lm_head = zero_init(CastedLinear(d, cfg.vocab_size, bias=False))
        init_upstream_weights(self, cfg)

    @property
    def schedule(self) -> LayerSchedule:
        """Virtual layer i runs block i, once."""
        return LayerSchedule.straight(len(self.blocks), self.num_encoder_layers,
                                      self.num_decoder_layers)

    def core_modules(self) -> list[nn.Module]:
        """What runs more than once (QAT "core"): nothing."""
        return []

    # --- forward ---------------------------------------------------------------------------

    def _backbone(self, input_ids: Tensor, collect: bool) -> list[Tensor]:
        """Hidden states after each layer if `collect`, else only the last."""
        x = fast_rms_norm(self.tok_emb(input_ids))  # (B, T, D)
        x0 = x
        skips: list[Tensor] = []
        hidden: list[Tensor] = []
        decoder_start = len(self.blocks) - self.num_decoder_layers
        for i, block in enumerate(self.blocks):
            j = i - decoder_start
            if 0 <= j < self.num_skips:
                w = self.skip_weights[j].to(x.dtype)[None, None, :]
                x = torch.addcmul(x, w, skips.pop())
            x = block(x, x0)
            if i < self.num_encoder_layers:
                skips.append(x)
            if collect or i == len(self.blocks) - 1:
                hidden.append(x)
        return hidden

    def forward_hidden(self, input_ids: Tensor, *, num_iters: int | None = None) -> list[Tensor]:
        """The stream (B, T, D) after each layer, before the final norm (`num_iters`: the
        families' test-time depth; the baseline has none and must get None)."""
        _no_iters(num_iters)
        return self._backbone(input_ids, collect=True)

    def forward(
        self, input_ids: Tensor, target_ids: Tensor | None = None, *, num_iters: int | None = None
    ) -> Tensor:
        _no_iters(num_iters)
        x = fast_rms_norm(self._backbone(input_ids, collect=False)[-1])  # = self.final_norm(x)
        return softcapped_head(x, self.tok_emb, self.lm_head, self.cfg.logit_softcap, target_ids)

    # --- accounting ------------------------------------------------------------------------

    def parameter_counts(self) -> dict[str, int]:
        """Stored parameters; nothing is shared, so unique = unrolled = total."""
        total = sum(p.numel() for p in self.parameters())
        return {"total": total, "unique": total, "shared": 0, "unrolled": total,
                "physical_layers": len(self.blocks), "effective_depth": len(self.blocks)}

    def matmul_params_per_token(self) -> int:
        """Weights of every matmul per token, plus the LM head (tied or not)."""
        n = sum(m.weight.numel() for b in self.blocks for m in b.modules()
                if isinstance(m, nn.Linear))
        return n + self.cfg.vocab_size * self.cfg.model_dim

    def attention_layers(self) -> int:
        """Layers that run attention: all of them."""
        return len(self.blocks)

    # --- routing ---------------------------------------------------------------------------

    def routing_tables(self) -> dict[str, pd.DataFrame]:
        """`skip_weights`, `resid_mix` (one row per layer), `lanes` and `embeddings` (none),
        `params`."""
        weights = self.skip_weights if self.skip_weights is not None else torch.empty(0)
        rows = [block_controls_row(i, i, 0, b) for i, b in enumerate(self.blocks)]
        return {
            "skip_weights": skip_table(weights, self.num_encoder_layers,
                                       len(self.blocks) - self.num_decoder_layers),
            "resid_mix": pd.DataFrame(rows),
            "lanes": pd.DataFrame(columns=list(LANE_COLUMNS)),
            "embeddings": pd.DataFrame(columns=list(EMBEDDING_COLUMNS)),
            "params": pd.DataFrame([{"variant": self.cfg.variant, **self.parameter_counts()}]),
        }


Model = GPT  # the name every family module gives its model (golf_core/model/families.py)


def _no_iters(num_iters: int | None) -> None:
    if num_iters is not None:
        raise ValueError(f"num_iters={num_iters}: the baseline GPT has no recurrent layer")


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Stored parameters split into unique (used once) and shared (run more than once),
    `unrolled` counting each use, `effective_depth` = virtual depth: any family's model."""
    return model.parameter_counts()


def config_from_state_dict(
    state_dict: Mapping[str, Tensor], base: ModelConfig | None = None
) -> ModelConfig:
    """`base` (default `ModelConfig()`) with the sizes an upstream-baseline state dict fixes
    (vocab, width, heads, KV heads, MLP multiple, depth, tied head, U-Net skips or flat)."""
    sd = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
    sizes = upstream_sizes(sd)
    return replace(base if base is not None else ModelConfig(), family=FAMILY,
                   num_layers=sizes.pop("blocks"), **sizes,
                   variant="unet" if "skip_weights" in sd else "flat")


__all__ = ["CONTROL_PATTERNS", "FAMILY", "GPT", "Model", "PRESETS", "config_from_state_dict",
           "count_parameters", "validate"]

"""PR #54 (RQZ-Golf v1, family "pr54"): a U-Net of unique blocks, then one block run K times.

Follows `GPT` of pr54_rqz_golf_train_gpt.py (openai/parameter-golf PR #54,
records/track_non_record_16mb/rqz_golf_v1), state-dict names kept so its `final_model.pt`
loads with `strict=True` (checked against tests/golden/upstream_pr54):

- `tok_emb` -> RMSNorm = x0, as upstream's baseline.
- `blocks[0 .. U)`: the U = NUM_UNIQUE_LAYERS unique blocks as upstream's whole U-Net: the
  first U // 2 push their output, the rest pop it LIFO through `skip_weights`
  [min(enc, dec), d] (so with U = 7 the last decoder block gets no skip).
- `blocks[U]`: the recurrent block, run K = NUM_RECURRENT_PASSES times *after* the U-Net:
  `x = x + (1/sqrt K) * block(x + iter_embeds[k], x0)`. The scale multiplies the block's whole
  output (the block's own residual included), not its update, and stays 1/sqrt(K_train) at
  any K'. `iter_embeds` [K, d] starts `randn * 0.02`; a pass k >= K (test-time K' > K)
  reuses the last row.
- final RMSNorm, tied head (or `lm_head`), tanh softcap, float32 cross-entropy.

Two things the script does that a reader might not expect, both kept here:

- `iter_embeds` is in none of its optimizers (they take `tok_emb`, the parameters of
  `blocks`, `skip_weights` and `lm_head`), so it never leaves its random init. Here it is a
  frozen parameter (`requires_grad=False`): `golf_core.optim` then builds the same groups.
- EVAL_RECURRENT_PASSES is parsed but never passed to `forward`, so its evaluation runs the
  trained K; `forward(None)` does the same, and K' is `forward(..., num_iters=K')`.

With NUM_UNIQUE_LAYERS or NUM_RECURRENT_PASSES at 0 the script builds the plain NUM_LAYERS
baseline (no `iter_embeds`); so does this module.

The blocks, attention, MLP and norms are upstream's and come from golf_core/model/layers.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import pandas as pd
import torch
from torch import Tensor, nn

from golf_core.config import BASELINE_FIELDS, ModelConfig
from golf_core.model.layers import (
    Block,
    CastedLinear,
    Embedding,
    RMSNorm,
    init_upstream_weights,
    rms_norm,
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

FAMILY = "pr54"
PR = 54
SOURCE = "pr54_rqz_golf_train_gpt.py"
# The ModelConfig fields this model reads (its script's Hyperparameters; num_layers is the
# plain baseline's depth when either recurrence field is 0)
CONFIG_FIELDS: tuple[str, ...] = (
    *BASELINE_FIELDS, "num_unique_layers", "num_recurrent_passes", "eval_recurrent_passes",
)

# only PR #54's state dict has the iteration embeddings
IDENTIFYING_KEYS: tuple[str, ...] = ("iter_embeds",)

# the script's CONTROL_TENSOR_NAME_PATTERNS (upstream's nine); `iter_embeds` is not one of
# them (its int8 export keeps it as a small fp16 passthrough tensor)
CONTROL_PATTERNS: tuple[str, ...] = (
    "attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes",
    "q_gain", "skip_weight", "skip_weights",
)  # fmt: skip

PRESETS: dict[str, dict] = {
    # PR #54's published shape = its script's defaults (the PR text: "7 unique layers
    # (encoder/decoder with U-Net skip connections), 1 recurrent layer applied K=3 times",
    # effective depth 10): width 512, 8 heads / 4 KV heads, relu^2 MLP x2, vocab 1024, tied.
    # 8 physical blocks, 10 virtual layers, 15,223,872 parameters (1,837,064 of them shared).
    "pr54": dict(
        family="pr54", num_unique_layers=7, num_recurrent_passes=3, model_dim=512,
        num_heads=8, num_kv_heads=4, mlp_mult=2, vocab_size=1024, tie_embeddings=True,
    ),
}  # fmt: skip

def validate(cfg: ModelConfig) -> None:
    """ValueError naming the field where `cfg` is not a model PR #54's script can build."""
    if cfg.family != FAMILY:
        raise ValueError(f"pr54.Model needs family='pr54', got {cfg.family!r}")
    if cfg.logit_softcap <= 0.0:
        raise ValueError(f"logit_softcap must be positive, got {cfg.logit_softcap}")
    if cfg.model_dim % cfg.num_heads or cfg.num_heads % cfg.num_kv_heads:
        raise ValueError(
            f"model_dim={cfg.model_dim} must divide by num_heads={cfg.num_heads}, and "
            f"num_heads by num_kv_heads={cfg.num_kv_heads}"
        )
    if (cfg.model_dim // cfg.num_heads) % 2:
        raise ValueError("head_dim (model_dim / num_heads) must be even for RoPE")
    for name in ("num_unique_layers", "num_recurrent_passes", "eval_recurrent_passes"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if not uses_recurrence(cfg) and cfg.num_layers < 1:
        raise ValueError(f"num_layers must be >= 1 without recurrence, got {cfg.num_layers}")


def uses_recurrence(cfg: ModelConfig) -> bool:
    """The script's switch: both NUM_UNIQUE_LAYERS and NUM_RECURRENT_PASSES > 0."""
    return cfg.num_unique_layers > 0 and cfg.num_recurrent_passes > 0


@dataclass(frozen=True)
class Pr54Schedule:
    """Virtual depth -> physical block: the U unique blocks once each, then block U K' times."""

    virtual_to_physical: tuple[int, ...]
    cycle: tuple[int, ...]  # pass index of the recurrent block, 0 for the unique blocks
    num_encoder: int
    num_decoder: int

    @property
    def depth(self) -> int:
        return len(self.virtual_to_physical)


# ----------------------------------------------------------------------------- the model


class Model(nn.Module):
    """PR #54's `GPT`. forward(input_ids, target_ids=None, *, num_iters=None): softcapped
    logits (B, T, V), or the mean cross-entropy in nats; `num_iters` = K' recurrent passes
    (the script's `eval_recurrent_passes`), None = the trained K."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        validate(cfg)
        self.cfg = cfg
        d = cfg.model_dim
        self.use_recurrence = uses_recurrence(cfg)
        unique = cfg.num_unique_layers if self.use_recurrence else cfg.num_layers
        self.num_encoder_layers = unique // 2
        self.num_decoder_layers = unique - self.num_encoder_layers
        # construction order = the script's, so one seed gives the script's init exactly
        self.tok_emb = Embedding(cfg.vocab_size, d)
        self.iter_embeds = None
        if self.use_recurrence:
            # psi_k, randn * 0.02 as PR #54; frozen: the script optimizes it in no group
            table = torch.randn(cfg.num_recurrent_passes, d) * 0.02
            self.iter_embeds = nn.Parameter(table, requires_grad=False)
        num_skips = min(self.num_encoder_layers, self.num_decoder_layers)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, d))
        physical = unique + 1 if self.use_recurrence else unique  # + the recurrent block
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(physical))
        self.final_norm = RMSNorm()
        self.lm_head = None
        if not cfg.tie_embeddings:
            self.lm_head = zero_init(CastedLinear(d, cfg.vocab_size, bias=False))
        self._init_weights()

    def _init_weights(self) -> None:
        init_upstream_weights(self, self.cfg)

    @property
    def recurrent_scale(self) -> float:
        """1/sqrt(K_train) on the recurrent block's output (PR #54: "for stability"); the
        same at every K'."""
        return 1.0 / math.sqrt(self.cfg.num_recurrent_passes)

    def _passes(self, num_iters: int | None) -> int:
        if not self.use_recurrence:
            if num_iters is not None:
                raise ValueError("num_iters needs recurrence (num_unique_layers and "
                                 "num_recurrent_passes > 0)")
            return 0
        if num_iters is None:
            return self.cfg.num_recurrent_passes
        if num_iters < 1:
            raise ValueError(f"num_iters={num_iters} must be >= 1")
        return int(num_iters)

    def schedule_for(self, num_iters: int | None = None) -> Pr54Schedule:
        """The virtual layers `forward(..., num_iters=num_iters)` runs."""
        k, unique = self._passes(num_iters), self.num_encoder_layers + self.num_decoder_layers
        return Pr54Schedule(
            virtual_to_physical=tuple(range(unique)) + (unique,) * k,
            cycle=(0,) * unique + tuple(range(k)),
            num_encoder=self.num_encoder_layers,
            num_decoder=self.num_decoder_layers,
        )

    @property
    def schedule(self) -> Pr54Schedule:
        return self.schedule_for()

    def core_modules(self) -> list[nn.Module]:
        """The recurrent block (the only one that runs more than once)."""
        return [self.blocks[-1]] if self.use_recurrence else []

    # --- forward ---------------------------------------------------------------------------

    def _backbone(self, input_ids: Tensor, num_iters: int | None, collect: bool) -> list[Tensor]:
        """The stream after each virtual layer if `collect`, else only the last."""
        passes = self._passes(num_iters)
        x = rms_norm(self.tok_emb(input_ids))  # (B, T, D)
        x0 = x
        hidden: list[Tensor] = []
        skips: list[Tensor] = []
        for i in range(self.num_encoder_layers):
            x = self.blocks[i](x, x0)
            skips.append(x)
            hidden.append(x)
        for i in range(self.num_decoder_layers):
            if skips:
                x = x + self.skip_weights[i].to(x.dtype)[None, None, :] * skips.pop()
            x = self.blocks[self.num_encoder_layers + i](x, x0)
            hidden.append(x)
        if passes:
            block, table = self.blocks[-1], self.iter_embeds
            for k in range(passes):
                psi = table[min(k, table.size(0) - 1)].to(x.dtype)[None, None, :]  # (1, 1, D)
                x = x + self.recurrent_scale * block(x + psi, x0)
                hidden.append(x)
        return hidden if collect else hidden[-1:]

    def forward_hidden(self, input_ids: Tensor, *, num_iters: int | None = None) -> list[Tensor]:
        """The stream (B, T, D) after each virtual layer (the unique blocks, then each
        recurrent pass), before the final norm. Length = U + K'."""
        return self._backbone(input_ids, num_iters, collect=True)

    def forward(
        self, input_ids: Tensor, target_ids: Tensor | None = None, *, num_iters: int | None = None
    ) -> Tensor:
        x = self.final_norm(self._backbone(input_ids, num_iters, collect=False)[-1])
        return softcapped_head(x, self.tok_emb, self.lm_head, self.cfg.logit_softcap, target_ids)

    # --- accounting ------------------------------------------------------------------------

    def parameter_counts(self) -> dict[str, int]:
        """Stored parameters; `shared` = the recurrent block's (run K times), `unrolled`
        counts each of its uses, `effective_depth` = U + K."""
        total = sum(p.numel() for p in self.parameters())
        shared = sum(p.numel() for m in self.core_modules() for p in m.parameters())
        passes = self._passes(None)
        return {
            "total": total,
            "unique": total - shared,
            "shared": shared,
            "unrolled": total + shared * max(passes - 1, 0),
            "physical_layers": len(self.blocks),
            "effective_depth": self.schedule.depth,
        }

    def matmul_params_per_token(self) -> int:
        """Weights of every matmul per token over the trained schedule (each recurrent pass
        counts), plus the LM head (benchmarks/flops.py's N_matmul)."""
        per_block = [
            sum(m.weight.numel() for m in b.modules() if isinstance(m, nn.Linear))
            for b in self.blocks
        ]
        n = sum(per_block[p] for p in self.schedule.virtual_to_physical)
        return n + self.cfg.vocab_size * self.cfg.model_dim

    def attention_layers(self) -> int:
        """Virtual layers that run attention: all of them."""
        return self.schedule.depth

    # --- routing ---------------------------------------------------------------------------

    def routing_tables(self) -> dict[str, pd.DataFrame]:
        """`skip_weights`, `resid_mix` (one row per virtual layer of the trained schedule; the
        recurrent block's row repeated per pass), `lanes` (none), `embeddings`
        (iter_embeds rows), `params`; columns as golf_core.analysis."""
        return {
            "skip_weights": self._skip_table(),
            "resid_mix": self._controls_table(),
            "lanes": pd.DataFrame(columns=list(LANE_COLUMNS)),
            "embeddings": self._embeddings_table(),
            "params": pd.DataFrame([{"family": FAMILY, "variant": FAMILY,
                                     **self.parameter_counts()}]),
        }

    def _skip_table(self) -> pd.DataFrame:
        enc = self.num_encoder_layers
        return skip_table(self.skip_weights, enc, enc)

    def _controls_table(self) -> pd.DataFrame:
        sched = self.schedule
        rows = []
        for i, (p, cycle) in enumerate(zip(sched.virtual_to_physical, sched.cycle)):
            recurrent = self.use_recurrence and p == len(self.blocks) - 1
            rows.append(block_controls_row(
                i, p, cycle, self.blocks[p],
                output_scale=self.recurrent_scale if recurrent else 1.0,
                iter_embed=min(cycle, self.cfg.num_recurrent_passes - 1) if recurrent else -1))
        return pd.DataFrame(rows)

    def _embeddings_table(self) -> pd.DataFrame:
        rows = []
        table = self.iter_embeds if self.iter_embeds is not None else torch.empty(0)
        for index, row in enumerate(table.detach().float()):
            norm = row.norm().item()
            rows.append({"name": "iter_embeds", "index": index, "norm": norm,
                         "rms": norm / row.numel() ** 0.5})
        return pd.DataFrame(rows, columns=list(EMBEDDING_COLUMNS))


# ----------------------------------------------------------------------------- state dicts


def config_from_state_dict(
    state_dict: Mapping[str, Tensor], base: ModelConfig | None = None
) -> ModelConfig:
    """`base` (default: `ModelConfig()`) as family "pr54" with the sizes the shapes fix:
    vocab_size, model_dim, num_heads, num_kv_heads, mlp_mult, tie_embeddings, and
    num_unique_layers + num_recurrent_passes (rows of `iter_embeds`; without it the script's
    no-recurrence baseline: num_layers, both at 0).

    From `base`, since no shape tells them: rope_base, logit_softcap, eval_recurrent_passes
    (and the init-only qk_gain_init, tied_embed_init_std).
    """
    sd = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}  # torch.compile'd
    sizes = upstream_sizes(sd)
    blocks = sizes.pop("blocks")
    sizes["family"] = FAMILY
    if "iter_embeds" in sd:
        sizes.update(num_unique_layers=blocks - 1,
                     num_recurrent_passes=int(sd["iter_embeds"].shape[0]))
    else:
        sizes.update(num_layers=blocks, num_unique_layers=0, num_recurrent_passes=0)
    return replace(base if base is not None else ModelConfig(), **sizes)

"""PR #363's `RecurrentGPT` (family "pr363"): a few unique blocks cycled to a deeper stack.

Source: openai/parameter-golf PR #363, records/track_non_record_16mb/
2026-03-21_DepthRecurrence_MixedPrecisionQuant/train_gpt.py (
pr363_depth_recurrence_train_gpt.py), class `RecurrentGPT`. State-dict names are the script's,
so its weights load with `strict=True`; its artifact is read by golf_core/quant/pr363.py.

What the script builds (env var names in capitals):

- embedding: `tok_emb(ids) + bigram_proj(bigram_emb(h))` with its BigramHash
  h = (prev * 1000003 + cur) % BIGRAM_BUCKETS, prev = the previous token (the first position
  pairs with itself); `bigram_emb` N(0, 0.02), `bigram_proj` zero-init; then RMSNorm = x0.
- virtual layer i of EFFECTIVE_DEPTH runs `blocks[i % NUM_UNIQUE_BLOCKS]` (upstream's block:
  resid_mix of x and x0, scaled attention and relu^2 MLP), with the per-depth adapter
  `depth_adapters[i]`: rank-DEPTH_LORA_RANK LoRA deltas added to that block's q and v
  projections of the normed input, up-projections zero-init (so every depth starts as the
  shared block). The adapters are plain `nn.Linear` (the script's STE QAT does not touch them).
- U-Net skips on virtual depth: the first EFFECTIVE_DEPTH // 2 layers push, the rest pop
  LIFO through `skip_weights[j]`.
- XSA (exclusive self attention, from PR #287; golf_core/model/extras.py's `xsa`, shared with
  PR #325 and #1204): each head's output minus its component along its own token's
  (normalized) value vector. The script switches it on per *physical* block:
  every block that runs at one of the last XSA_LAST_N virtual layers does XSA at all of its
  depths. With 4 blocks x 12 and XSA_LAST_N=3 that is blocks 1-3 everywhere, block 0 never;
  at the published XSA_LAST_N=4 every layer. (Checked against the fixture's loss.)
- final RMSNorm, tied head, tanh softcap; float32 cross-entropy.

NUM_LAYERS is not read by the script; `num_layers` is left as given (the preset sets it to
the number of unique blocks so run headers say what is stored).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pandas as pd
import torch
from torch import Tensor, nn

from golf_core.config import BASELINE_FIELDS, ModelConfig
from golf_core.model.depth import LayerSchedule, VirtualLayer
from golf_core.model.extras import xsa
from golf_core.model.layers import (
    MLP,
    CastedLinear,
    CausalSelfAttention,
    Embedding,
    RMSNorm,
    apply_rotary_emb,
    causal_attention,
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

FAMILY = "pr363"
PR = 363
SOURCE = "pr363_depth_recurrence_train_gpt.py"
# The ModelConfig fields this model reads (its script's Hyperparameters): its depth is
# NUM_UNIQUE_BLOCKS / EFFECTIVE_DEPTH (num_layers unread), its BigramHash rows BIGRAM_BUCKETS
CONFIG_FIELDS: tuple[str, ...] = (
    *(f for f in BASELINE_FIELDS if f != "num_layers"), "xsa_last_n", "bigram_dim",
    "num_unique_blocks", "effective_depth", "depth_lora_rank", "bigram_buckets",
)

# depth_adapters only exist with DEPTH_LORA_RANK > 0; bigram_emb always (PR #325 and #1204
# name theirs bigram.embed)
IDENTIFYING_KEYS: tuple[str, ...] = ("depth_adapters.", "bigram_emb.")
# the script's CONTROL_TENSOR_NAME_PATTERNS are upstream's (already ours); bigram_emb is trained
# by Adam (with the token embedding there), never Muon
CONTROL_PATTERNS: tuple[str, ...] = (  # the script's CONTROL_TENSOR_NAME_PATTERNS
    "attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes",
    "q_gain", "skip_weight", "skip_weights",
)  # fmt: skip
# trained with Adam at the token LR beside tok_emb (TIED_EMBED_LR), as the script does
TOKEN_PATTERNS: tuple[str, ...] = ("bigram_emb",)

PRESETS: dict[str, dict] = {
    # PR #363's README (8xH100 runs, 22.8M parameters): 4 unique blocks x 3 cycles = 12 deep,
    # 768d, 8 heads / 4 KV, 3x MLP, BigramHash 4096 x 128, XSA on the last 4, LoRA rank 4.
    # (Its late STE QAT at 85% wallclock, QAT_FRACTION=0.15, is a training setting.)
    "pr363": dict(
        family=FAMILY, vocab_size=1024, num_layers=4, model_dim=768, num_heads=8,
        num_kv_heads=4, mlp_mult=3, tie_embeddings=True, num_unique_blocks=4,
        effective_depth=12, depth_lora_rank=4, bigram_buckets=4096, bigram_dim=128,
        xsa_last_n=4,
    ),
}  # fmt: skip

BIGRAM_HASH_MULT = 1000003  # the script's multiplier on the previous token (a prime)


# ----------------------------------------------------------------------------- extras


def bigram_hash(input_ids: Tensor, buckets: int) -> Tensor:
    """PR #363's BigramHash bucket of (previous, current) token; position 0 pairs with itself.
    Not PR #325 / #1204's (golf_core/model/extras.py's BigramHash: xor hash, zero-init table,
    learned scale, names `bigram.*`)."""
    prev = torch.cat([input_ids[:, :1], input_ids[:, :-1]], dim=1)  # (B, T)
    return (prev.long() * BIGRAM_HASH_MULT + input_ids.long()) % buckets


class DepthLoRA(nn.Module):
    """PR #363's per-virtual-layer adapter: low-rank deltas for the shared block's q and v."""

    def __init__(self, dim: int, q_dim: int, v_dim: int, rank: int) -> None:
        super().__init__()
        self.enabled = rank > 0
        if not self.enabled:  # the script keeps an empty module per depth
            return
        self.q_down = nn.Linear(dim, rank, bias=False)
        self.q_up = nn.Linear(rank, q_dim, bias=False)
        self.v_down = nn.Linear(dim, rank, bias=False)
        self.v_up = nn.Linear(rank, v_dim, bias=False)
        nn.init.zeros_(self.q_up.weight)
        nn.init.zeros_(self.v_up.weight)

    def q_delta(self, x: Tensor) -> Tensor:
        return self.q_up(self.q_down(x))  # (B, T, D)

    def v_delta(self, x: Tensor) -> Tensor:
        return self.v_up(self.v_down(x))  # (B, T, kv_dim)

    def delta_weights(self) -> tuple[Tensor, Tensor]:
        """The q and v weight deltas up @ down, (D, D) and (kv_dim, D)."""
        return self.q_up.weight @ self.q_down.weight, self.v_up.weight @ self.v_down.weight


class DeltaAttention(CausalSelfAttention):
    """PR #363's attention: upstream's, plus additive q/v deltas and XSA when `use_xsa`."""

    use_xsa: bool = False

    def forward(
        self, x: Tensor, q_delta: Tensor | None = None, v_delta: Tensor | None = None
    ) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.c_q(x), self.c_k(x), self.c_v(x)
        if q_delta is not None:
            q = q + q_delta
        if v_delta is not None:
            v = v + v_delta
        q = q.reshape(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = k.reshape(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
        v = v.reshape(B, T, self.num_kv_heads, self.head_dim)  # (B, T, Hkv, Dh)
        q, k = rms_norm(q), rms_norm(k)
        cos, sin = self.rotary(T, x.device, q.dtype)
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        y = causal_attention(q, k, v.transpose(1, 2)).transpose(1, 2)  # (B, T, H, Dh)
        if self.use_xsa:
            y = xsa(y, v)  # golf_core/model/extras.py
        return self.proj(y.reshape(B, T, D))


class RecurrentBlock(nn.Module):
    """PR #363's block: upstream's, with the depth adapter's q/v deltas of the normed input."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.model_dim
        self.attn_norm = RMSNorm()
        self.mlp_norm = RMSNorm()
        self.attn = DeltaAttention(cfg)
        self.mlp = MLP(d, cfg.mlp_mult * d)
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))

    def forward(self, x: Tensor, x0: Tensor, adapter: DepthLoRA) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0][None, None, :] * x + mix[1][None, None, :] * x0  # (B, T, D)
        n = self.attn_norm(x)
        qd, vd = (adapter.q_delta(n), adapter.v_delta(n)) if adapter.enabled else (None, None)
        x = x + self.attn_scale.to(x.dtype)[None, None, :] * self.attn(n, qd, vd)
        return x + self.mlp_scale.to(x.dtype)[None, None, :] * self.mlp(self.mlp_norm(x))


# ----------------------------------------------------------------------------- the model


def validate(cfg: ModelConfig) -> None:
    """The script's checks, plus the shared options RecurrentGPT has no use for."""
    n, depth = cfg.num_unique_blocks, cfg.effective_depth
    if n < 1 or depth < n:
        raise ValueError(
            f"pr363: effective_depth ({depth}) must be >= num_unique_blocks ({n}) >= 1"
        )
    if cfg.logit_softcap <= 0.0:
        raise ValueError(f"pr363: logit_softcap must be positive, got {cfg.logit_softcap}")
    if cfg.model_dim % cfg.num_heads or cfg.num_heads % cfg.num_kv_heads:
        raise ValueError("pr363: model_dim must divide by num_heads, num_heads by num_kv_heads")
    if (cfg.model_dim // cfg.num_heads) % 2:
        raise ValueError("pr363: head_dim must be even for RoPE")
    if cfg.bigram_buckets < 1 or cfg.bigram_dim < 1 or cfg.depth_lora_rank < 0:
        raise ValueError("pr363: bigram_buckets and bigram_dim must be >= 1, depth_lora_rank >= 0")
    unused = {"bigram_vocab_size": 0, "rope_dims": 0, "ln_scale": False}
    bad = [f"{k}={getattr(cfg, k)!r}" for k, v in unused.items() if getattr(cfg, k) != v]
    if bad:
        raise ValueError(
            f"pr363: RecurrentGPT has no {', '.join(bad)} (its BigramHash is "
            "sized by bigram_buckets)"
        )


class Model(nn.Module):
    """PR #363's `RecurrentGPT`. forward(input_ids, target_ids=None): softcapped logits
    (B, T, V), or the mean cross-entropy in nats. The depth is fixed (`num_iters` must be None):
    adapters and skips belong to the EFFECTIVE_DEPTH virtual layers."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        validate(cfg)
        self.cfg = cfg
        d, n, depth = cfg.model_dim, cfg.num_unique_blocks, cfg.effective_depth
        self.tok_emb = Embedding(cfg.vocab_size, d)
        self.num_encoder_layers = depth // 2
        self.num_decoder_layers = depth - self.num_encoder_layers
        num_skips = min(self.num_encoder_layers, self.num_decoder_layers)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, d))
        self.blocks = nn.ModuleList(RecurrentBlock(cfg) for _ in range(n))
        kv_dim = cfg.num_kv_heads * (d // cfg.num_heads)
        self.depth_adapters = nn.ModuleList(
            DepthLoRA(d, d, kv_dim, cfg.depth_lora_rank) for _ in range(depth)
        )
        self.final_norm = RMSNorm()
        self.lm_head = None
        if not cfg.tie_embeddings:
            self.lm_head = zero_init(CastedLinear(d, cfg.vocab_size, bias=False))
        self.block_schedule = [i % n for i in range(depth)]
        self.bigram_emb = Embedding(cfg.bigram_buckets, cfg.bigram_dim)
        self.bigram_proj = CastedLinear(cfg.bigram_dim, d, bias=False)
        for i in range(max(0, depth - cfg.xsa_last_n), depth):  # empty for xsa_last_n <= 0
            self.blocks[self.block_schedule[i]].attn.use_xsa = True  # per physical block
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.bigram_emb.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.bigram_proj.weight)
        init_upstream_weights(self, self.cfg)

    @property
    def schedule(self) -> LayerSchedule:
        """Virtual layer i -> block i % N, cycle i // N."""
        n = self.cfg.num_unique_blocks
        layers = tuple(VirtualLayer(physical=p, cycle=i // n)
                       for i, p in enumerate(self.block_schedule))
        return LayerSchedule(layers, self.num_encoder_layers, self.num_decoder_layers)

    def core_modules(self) -> list[nn.Module]:
        """The blocks that run at more than one depth (QAT "core")."""
        return [self.blocks[p] for p in self.schedule.shared_blocks()]

    # --- forward ---------------------------------------------------------------------------

    def _backbone(self, input_ids: Tensor, num_iters: int | None, collect: bool) -> list[Tensor]:
        if num_iters is not None:
            raise ValueError(
                "pr363: RecurrentGPT runs a fixed effective_depth; num_iters must be None"
            )
        bigram = self.bigram_proj(self.bigram_emb(bigram_hash(input_ids, self.cfg.bigram_buckets)))
        x = rms_norm(self.tok_emb(input_ids) + bigram)  # (B, T, D)
        x0 = x
        skips: list[Tensor] = []
        hidden: list[Tensor] = []
        for i, p in enumerate(self.block_schedule):
            j = i - self.num_encoder_layers  # decoder index
            if j >= 0 and skips:
                x = x + self.skip_weights[j].to(x.dtype)[None, None, :] * skips.pop()
            x = self.blocks[p](x, x0, self.depth_adapters[i])
            if j < 0:
                skips.append(x)
            if collect or i == len(self.block_schedule) - 1:
                hidden.append(x)
        return hidden

    def forward_hidden(self, input_ids: Tensor, *, num_iters: int | None = None) -> list[Tensor]:
        """The stream (B, T, D) after each virtual layer, before the final norm."""
        return self._backbone(input_ids, num_iters, collect=True)

    def forward(
        self, input_ids: Tensor, target_ids: Tensor | None = None, *, num_iters: int | None = None
    ) -> Tensor:
        x = self.final_norm(self._backbone(input_ids, num_iters, collect=False)[-1])
        return softcapped_head(x, self.tok_emb, self.lm_head, self.cfg.logit_softcap, target_ids)

    # --- accounting ------------------------------------------------------------------------

    def parameter_counts(self) -> dict[str, int]:
        """Stored parameters; `shared` = those of blocks used at several depths, `unrolled`
        counts each use (the size of the same stack without sharing)."""
        uses = self.schedule.uses()
        block_uses = {id(p): uses.get(b, 0) for b, blk in enumerate(self.blocks)
                      for p in blk.parameters()}  # fmt: skip
        total = shared = unrolled = 0
        for p in self.parameters():
            k = block_uses.get(id(p), 1)
            total += p.numel()
            unrolled += p.numel() * k
            shared += p.numel() if k > 1 else 0
        return {"total": total, "unique": total - shared, "shared": shared, "unrolled": unrolled,
                "physical_layers": self.cfg.num_unique_blocks,
                "effective_depth": self.cfg.effective_depth}  # fmt: skip

    def matmul_params_per_token(self) -> int:
        """Weights multiplied per token in one forward: every depth's block matrices and
        adapters, bigram_proj and the head (embedding lookups are not matmuls)."""
        per_block = [sum(m.weight.numel() for m in blk.modules() if isinstance(m, nn.Linear))
                     for blk in self.blocks]  # fmt: skip
        n = sum(per_block[p] for p in self.block_schedule)
        n += sum(p.numel() for p in self.depth_adapters.parameters())
        return n + self.bigram_proj.weight.numel() + self.tok_emb.weight.numel()

    def attention_layers(self) -> int:
        return self.cfg.effective_depth

    # --- routing ---------------------------------------------------------------------------

    def routing_tables(self) -> dict[str, pd.DataFrame]:
        """`skip_weights`, `resid_mix` (per virtual layer; a block's controls repeat at each of
        its depths), `lanes` and `embeddings` (none here, empty), `lora` (per depth: Frobenius
        norms of the q/v weight deltas, also relative to the shared c_q / c_v), `params`."""
        with torch.no_grad():
            return {
                "skip_weights": self._skip_table(),
                "resid_mix": self._controls_table(),
                "lanes": pd.DataFrame(columns=list(LANE_COLUMNS)),
                "embeddings": pd.DataFrame(columns=list(EMBEDDING_COLUMNS)),
                "lora": self._lora_table(),
                "params": pd.DataFrame([{"family": FAMILY, **self.parameter_counts()}]),
            }

    def _skip_table(self) -> pd.DataFrame:
        enc = self.num_encoder_layers
        return skip_table(self.skip_weights, enc, enc)

    def _controls_table(self) -> pd.DataFrame:
        return pd.DataFrame([
            block_controls_row(i, p, layer.cycle, self.blocks[p],
                               xsa=self.blocks[p].attn.use_xsa)
            for layer, (i, p) in zip(self.schedule.layers, enumerate(self.block_schedule))])

    def _lora_table(self) -> pd.DataFrame:
        cols = ["layer", "physical", "cycle", "q_delta_norm", "v_delta_norm", "q_delta_rel",
                "v_delta_rel"]  # fmt: skip
        rows = []
        n = self.cfg.num_unique_blocks
        for i, (p, adapter) in enumerate(zip(self.block_schedule, self.depth_adapters)):
            if not adapter.enabled:
                continue
            dq, dv = (w.detach().float().norm().item() for w in adapter.delta_weights())
            wq = self.blocks[p].attn.c_q.weight.detach().float().norm().item()
            wv = self.blocks[p].attn.c_v.weight.detach().float().norm().item()
            rows.append(dict(zip(cols, (i, p, i // n, dq, dv, dq / wq if wq else float("nan"),
                                        dv / wv if wv else float("nan")))))  # fmt: skip
        return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------------------- loading


def config_from_state_dict(
    state_dict: Mapping[str, Tensor], base: ModelConfig | None = None
) -> ModelConfig:
    """`base` (default ModelConfig()) with family "pr363" and the sizes the shapes fix: vocab,
    width, heads, KV heads, MLP mult, tying, unique blocks, LoRA rank, bigram table.

    effective_depth comes from the number of depth adapters; with DEPTH_LORA_RANK=0 there are
    none and `skip_weights` (depth // 2 rows) leaves the parity open, so base's value is kept
    if it fits, else 2 * rows. From the user (no shape shows them): xsa_last_n, logit_softcap,
    rope_base (and the init-only qk_gain_init, tied_embed_init_std).
    """
    sd = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
    base = base if base is not None else ModelConfig()
    if "tok_emb.weight" not in sd or "bigram_emb.weight" not in sd:
        raise ValueError(
            "pr363: state dict lacks tok_emb.weight / bigram_emb.weight: not a RecurrentGPT"
        )
    sizes = upstream_sizes(sd)
    n_blocks = sizes.pop("blocks")
    adapters = [int(k.split(".")[1]) for k in sd if k.startswith("depth_adapters.")]
    skips = sd["skip_weights"].shape[0]
    if adapters:
        depth = 1 + max(adapters)
    else:
        depth = base.effective_depth if base.effective_depth // 2 == skips else 2 * skips
    buckets, bigram_dim = sd["bigram_emb.weight"].shape
    return dataclasses.replace(
        base, family=FAMILY, **sizes, num_layers=n_blocks,
        num_unique_blocks=n_blocks, effective_depth=depth,
        depth_lora_rank=sd["depth_adapters.0.q_down.weight"].shape[0] if adapters else 0,
        bigram_buckets=buckets, bigram_dim=bigram_dim,
    )  # fmt: skip

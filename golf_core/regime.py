"""The regime ladder: where depth recurrence starts to pay, over tokens per parameter.

The records that gain from recurrence train ~36M parameters on ~3.9B tokens (~100 tokens per
parameter) at equal bytes and equal wallclock; the study trains ~0.75M on 0.6M (~0.8). This
module lays out the runs that map the gap between a looped model and its flat pair along that
axis, at the competition's two constraints: equal trained parameters (the artifact's bytes)
and equal training FLOPs (our deterministic stand-in for the 600 s).

Pairs (each a looped arm and a flat arm, within 2% in unique parameters and in FLOPs):

* `records`: PR #1204's model (golf_core/model/pr1204.py) looping its middle pair (RECUR_LAYERS
  4,5) switched on at 48% of training (its record's step 3000 of 6,242), against the same model
  never looping. The repeats reuse the repeated layers' MLPs (REPEAT_UNTIE_MLP=none): the
  record unties them, which adds ~12% parameters at width 32 and would break the 2%; tied, the
  loop is pure weight reuse, which is the trade the question asks about. Sizes A and B.
* `pr363`: PR #363 as PR #363 ran it (on PR #325's model): the flat 11-layer model against the
  3 / 3x3 / 3 loop given the flat model's parameters (PR #363: 512d flat vs 640d loop). Widths
  come in steps of 2 x heads (heads of even width), too coarse to land within 2% at size A,
  so the loop takes the widest width that does not overshoot and spends the rest on its loop
  adapters (`loop_shape`). Size A.

Sizes: A = width 32 (2 heads of 16, 1 KV head; ~0.1M non-embedding parameters), B = width 48
(3 heads of 16, 1 KV head; ~2.2x A). Every table a family carries (BigramHash rows and width,
value-embedding width, loop adapters) is scaled by width / the published width, so no
fixed-size table dominates a small model; the token embedding keeps the tokenizer's 1,024 rows.

Rungs: D / N, where D is the flat arm's training tokens and N its non-embedding parameters
(every parameter but the nn.Embedding tables): size A 2, 5.3, 14, 38, 100 (log-spaced); size
B 2, 14, 100. The looped arm of a rung trains the flat arm's FLOPs (golf_core.flops, the
delayed loop's cheaper steps before the switch counted as such), so it sees fewer tokens.
Seeds 1337, 42, 7, 2024, 31337 (paired: a seed is shared by both arms of a rung). At size A's
highest rung the records' pair has a third arm, the loop on from step 0 (`ALWAYS_ON_AT`): the
records' delayed-vs-always-on question, asked at the D/N where the records train.

Runs write under results/regime/ (committed; checkpoints are not). `make regime` trains what is
missing, two at a time, rung by rung (every seed of a rung before the next), resumable.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from torch import nn

from golf_core.config import ModelConfig
from golf_core.experiments import RunSpec, _settings_hash, dataset_dir, scale_settings
from golf_core.flops import flops_per_token
from golf_core.model import build_model, preset
from golf_core.settings import resolve

SCALE = "regime"
SEEDS = (1337, 42, 7, 2024, 31337)
# The pilot (the first rungs at five seeds, 2026-12-02): the seed-to-seed sd of the paired gap
# at size A was 0.004-0.005 bpb for the records' pair (so 6-9 seeds for a 0.004 half-width)
# and 0.014-0.017 for PR #363's (50-70 seeds). The short rungs are cheap: five more seeds
# there for both pairs (the study's seeds 123, 999, 2718, 3141, 1618).
EXTRA_SEEDS = (123, 999, 2718, 3141, 1618)
EXTRA_SEEDS_UP_TO = 15.0  # size A rungs with D/N up to this get them
# The top-up (session 10, size A finished): at five seeds the records' pair's longer rungs at
# size A had 95% half-widths of 0.0074 (D/N 37.6) and 0.0087 (D/N 100) bpb, sd 0.006-0.007,
# so ~10-13 seeds for 0.004. They get EXTRA_SEEDS too (every arm, the always-on one included),
# launched after size B. PR #363's pair there (sd 0.011-0.014: ~60 seeds a rung) stays at five.
TOPUP_PAIR = "records"
SEQ_LEN = 256
BATCH_TOKENS = 2048  # 8 sequences of 256 a step, every rung
RECORD_START_FRAC = 0.48  # PR #1204's record: recurrence on at step 3000 of 6,242
TOLERANCE = 0.02  # a pair's parameters and FLOPs agree within 2%

SIZES: dict[str, dict[str, int]] = {
    "A": {"model_dim": 32, "num_heads": 2, "num_kv_heads": 1},
    "B": {"model_dim": 48, "num_heads": 3, "num_kv_heads": 1},
}
RUNGS: dict[str, tuple[float, ...]] = {
    "A": tuple(2.0 * 50.0 ** (k / 4) for k in range(5)),  # 2, 5.3, 14.1, 37.6, 100
    "B": (2.0, 2.0 * 50.0**0.5, 100.0),  # 2, 14.1, 100
}
PAIRS: dict[str, tuple[str, ...]] = {"records": ("A", "B"), "pr363": ("A",)}
ARMS = ("loop", "flat")
# The records' delayed-vs-always-on question, asked where the records train: at each listed
# size's highest rung the records' pair gets a third arm, the loop on from step 0 ("always"),
# trained the flat arm's FLOPs like the delayed loop.
ALWAYS_ON_AT = ("A",)

# The published widths the tables are scaled from (PR #1204: 512; PR #325 / #363: 640).
_PUBLISHED_WIDTH = {"pr1204": 512, "pr325": 640}


def _scaled(n: int, width: int, published: int, minimum: int) -> int:
    return max(minimum, round(n * width / published))


def table_sizes(preset_name: str, width: int) -> dict[str, int]:
    """The preset's tables at `width`: BigramHash rows and width, value-embedding width and
    loop-adapter width scaled by width / the published width (even widths, a floor of 4)."""
    base = preset(preset_name)
    pub = _PUBLISHED_WIDTH[base.family]
    out = {"bigram_vocab_size": _scaled(base.bigram_vocab_size, width, pub, 16),
           "bigram_dim": 2 * _scaled(base.bigram_dim, width, 2 * pub, 2)}
    if base.family == "pr1204":
        out["ve_dim"] = 2 * _scaled(base.ve_dim, width, 2 * pub, 2)
    if base.family == "pr325" and base.loop_adapter_dim:
        out["loop_adapter_dim"] = _scaled(base.loop_adapter_dim, width, pub, 2)
    return out


def arm_settings(pair: str, arm: str, size: str, width: int | None = None) -> tuple[str, dict]:
    """(preset, model overrides) of one arm at one size (`width` overrides the size's: the
    widened loop of the pr363 pair)."""
    shape = dict(SIZES[size])
    if width is not None:
        heads = shape["num_heads"]
        shape["model_dim"] = width
        if width % heads or (width // heads) % 2:
            raise ValueError(f"width {width}: {heads} heads need an even head dim")
    rope = {"rope_dims": 4}  # a quarter of a 16-dim head, as the study's family scale
    if pair == "records":
        name = "pr1204"
        sets = {**shape, **rope, **table_sizes(name, shape["model_dim"]),
                "repeat_untie_mlp": "none", "repeat_untie_mlp_layers": ()}
        if arm == "loop":
            sets.update(recur_layers=(4, 5), recur_start_frac=RECORD_START_FRAC)
        else:
            sets.update(recur_layers=(), recur_start_step=0, recur_start_frac=0.0)
        return name, sets
    if pair == "pr363":
        name = "pr363-3x3" if arm == "loop" else "pr363-flat"
        if arm == "loop":
            # widened head dims keep 2 heads (PR #363 widened 512 -> 640 at 8 heads)
            rope = {"rope_dims": 4}
        return name, {**shape, **rope, **table_sizes(name, shape["model_dim"])}
    raise ValueError(f"unknown pair {pair!r}; choose one of {', '.join(PAIRS)}")


@lru_cache(maxsize=64)
def _model_facts(preset_name: str, sets_json: str) -> dict[str, float]:
    """Unique / non-embedding parameters and FLOPs per token of a config (recurrence on, and
    with the loop layers off for PR #1204's delayed arm)."""
    sets = json.loads(sets_json)
    mcfg, _ = resolve(scale="cpu", preset=preset_name, environ={}, sets=sets)
    model = build_model(mcfg)
    stored = sum(p.numel() for p in model.parameters())  # each shared tensor once
    embed = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    on, off = loop_flops_per_token(mcfg, SEQ_LEN, model)
    return {"unique": float(stored), "non_embedding": float(stored - embed), "fpt_on": on,
            "fpt_off": off}


def loop_flops_per_token(mcfg: ModelConfig, seq_len: int,
                         model: nn.Module | None = None) -> tuple[float, float]:
    """Training FLOPs per token of `mcfg` with its loop on, and with its loop layers off (a
    delayed loop's steps before the switch); the two equal for a model without a loop.
    `model`: `mcfg` already built, to spare building it again."""
    on = flops_per_token(model if model is not None else mcfg, seq_len)
    if not mcfg.recur_layers:
        return on, on
    off = dataclasses.replace(mcfg, recur_layers=(), repeat_untie_mlp_layers=())
    return on, flops_per_token(off, seq_len)


def model_facts(preset_name: str, sets: dict) -> dict[str, float]:
    return dict(_model_facts(preset_name, json.dumps(sets, sort_keys=True, default=list)))


def run_flops(facts: dict[str, float], iterations: int, start_frac: float = 0.0) -> float:
    """Training FLOPs of `iterations` steps: before the switch (round(start_frac * it), as
    trainer.recurrence_start) at the loop-off cost, after it at the loop-on cost."""
    start = round(start_frac * iterations) if start_frac > 0 else 0
    return BATCH_TOKENS * (start * facts["fpt_off"] + (iterations - start) * facts["fpt_on"])


def matched_iterations(facts: dict[str, float], budget: float, start_frac: float) -> int:
    """The most whole steps whose training FLOPs fit in `budget`."""
    it = max(1, int(budget / (BATCH_TOKENS * facts["fpt_on"])))
    while run_flops(facts, it + 1, start_frac) <= budget:
        it += 1
    while it > 1 and run_flops(facts, it, start_frac) > budget:
        it -= 1
    return it


@lru_cache(maxsize=8)
def loop_shape(size: str) -> tuple[int, int]:
    """The pr363 pair's loop: (width, loop-adapter rank) whose stored parameters come closest
    to the flat 11-layer model's. PR #363 widened its loop (512 -> 640) to fill the same
    bytes; here the widest width that does not overshoot is taken (heads of even width: at
    size A 36 overshoots by 14%, 32 falls 7% short), and the loop's own per-repeat adapters
    (PR #325's LoopAdapter, one per core use) take the rest: the loop spends the parameters
    it saves on loop-specific capacity."""
    flat = model_facts(*arm_settings("pr363", "flat", size))["unique"]
    heads, base = SIZES[size]["num_heads"], SIZES[size]["model_dim"]
    width = base
    for w in range(base, 3 * base, 2 * heads):
        if model_facts(*arm_settings("pr363", "loop", size, w))["unique"] <= flat:
            width = w
    preset_name, sets = arm_settings("pr363", "loop", size, width)
    best = None
    for rank in range(1, 4 * width):
        unique = model_facts(preset_name, {**sets, "loop_adapter_dim": rank})["unique"]
        if best is None or abs(unique / flat - 1) < abs(best[1] / flat - 1):
            best = (rank, unique)
        if unique > flat:
            break
    return width, best[0]


def _train_sets(iterations: int) -> dict[str, Any]:
    """Training settings every run shares, sized by its steps."""
    return {
        "train_seq_len": SEQ_LEN, "train_batch_tokens": BATCH_TOKENS,
        "micro_batch_tokens": BATCH_TOKENS, "iterations": iterations,
        "warmdown_iters": max(1, round(0.25 * iterations)),  # the cpu scale's share
        "val_loss_every": max(1, iterations // 4), "train_log_every": max(1, iterations // 20),
        "val_max_tokens": 32_768, "export_scheme": "int6", "export_gap_bits": (8, 5),
        "compile": "auto", "autocast": "none", "muon_ns_dtype": "fp32",
        "checkpoint_every": 500 if iterations > 1000 else 0, "keep_checkpoints": 1,
    }  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Rung:
    """One rung of one pair at one size: both arms' settings and what they were matched on."""

    size: str
    pair: str
    ratio: float  # D / N of the flat arm, as asked
    arms: dict[str, tuple[str, dict]]  # arm -> (preset, all overrides)
    facts: dict[str, dict[str, float]]  # arm -> parameters, FLOPs per token
    iterations: dict[str, int]
    flops: dict[str, float]

    @property
    def label(self) -> str:
        return f"{self.size}-{self.pair}-r{self.ratio:.3g}"

    def tokens(self, arm: str) -> int:
        return self.iterations[arm] * BATCH_TOKENS

    def achieved_ratio(self) -> float:
        return self.tokens("flat") / self.facts["flat"]["non_embedding"]

    def mismatch(self, arm: str = "loop") -> dict[str, float]:
        """Relative differences `arm` vs flat: stored parameters and training FLOPs."""
        f = self.facts
        return {"params": f[arm]["unique"] / f["flat"]["unique"] - 1,
                "flops": self.flops[arm] / self.flops["flat"] - 1}


def rung(size: str, pair: str, ratio: float) -> Rung:
    """Both arms of one rung, the flat arm's steps set by D / N = `ratio`, the loop's by its
    FLOPs."""
    arms = {"loop": arm_settings(pair, "loop", size), "flat": arm_settings(pair, "flat", size)}
    if pair == "pr363":
        width, rank = loop_shape(size)
        preset_name, sets = arm_settings(pair, "loop", size, width)
        arms["loop"] = (preset_name, {**sets, "loop_adapter_dim": rank})
    if pair == "records" and size in ALWAYS_ON_AT and ratio == max(RUNGS[size]):
        preset_name, sets = arms["loop"]
        arms["always"] = (preset_name, {**sets, "recur_start_frac": 0.0, "recur_start_step": 0})
    facts = {arm: model_facts(*arms[arm]) for arm in arms}
    flat_it = max(1, round(ratio * facts["flat"]["non_embedding"] / BATCH_TOKENS))
    budget = run_flops(facts["flat"], flat_it)
    starts = {"loop": RECORD_START_FRAC if pair == "records" else 0.0, "always": 0.0}
    iterations, flops = {"flat": flat_it}, {"flat": budget}
    for arm in arms:
        if arm != "flat":
            iterations[arm] = matched_iterations(facts[arm], budget, starts[arm])
            flops[arm] = run_flops(facts[arm], iterations[arm], starts[arm])
    full = {arm: (p, {**sets, **_train_sets(iterations[arm])}) for arm, (p, sets) in arms.items()}
    return Rung(size, pair, ratio, full, facts, iterations, flops)


def rungs() -> list[Rung]:
    """Every rung of the ladder: size A's pairs, then size B's, rung by rung."""
    return [rung(size, pair, r) for size in ("A", "B") for r in RUNGS[size]
            for pair in PAIRS if size in PAIRS[pair]]


def _topped_up(size: str, pair: str, ratio: float) -> bool:
    """A rung whose EXTRA_SEEDS are the top-up, launched after every other run."""
    return size == "A" and pair == TOPUP_PAIR and ratio > EXTRA_SEEDS_UP_TO


def seeds_for(size: str, ratio: float, pair: str) -> tuple[int, ...]:
    """The paired seeds of a rung: SEEDS, plus EXTRA_SEEDS on size A's short rungs and on the
    top-up's rungs."""
    extra = size == "A" and ratio <= EXTRA_SEEDS_UP_TO or _topped_up(size, pair, ratio)
    return SEEDS + (EXTRA_SEEDS if extra else ())


def seeds_markdown() -> str:
    """The seeds in words, for the page's setup and `python -m golf_core.regime`."""
    extra = ", ".join(map(str, EXTRA_SEEDS))
    return (f"{len(SEEDS)} paired seeds ({', '.join(map(str, SEEDS))}) per rung; "
            f"{len(SEEDS) + len(EXTRA_SEEDS)} (plus {extra}) on size A's rungs up to D/N "
            f"{EXTRA_SEEDS_UP_TO:g} and on the {TOPUP_PAIR}' pair's longer rungs at size A (a "
            f"top-up launched after size B)")


def _launch_order(seeds: Sequence[int] | None) -> list[tuple[Rung, tuple[int, ...]]]:
    """(rung, seeds) in launch order: every rung with its seeds, the top-up's seeds last."""
    if seeds is not None:
        return [(r, tuple(seeds)) for r in rungs()]
    first = [(r, SEEDS if _topped_up(r.size, r.pair, r.ratio) else seeds_for(r.size, r.ratio,
                                                                              r.pair))
             for r in rungs()]
    return first + [(r, EXTRA_SEEDS) for r in rungs() if _topped_up(r.size, r.pair, r.ratio)]


def ladder(seeds: Sequence[int] | None = None, *, data_path: str = "",
           tokenizer_path: str = "") -> list[RunSpec]:
    """The ladder's runs in launch order: rung by rung (size A first), every seed of a rung
    before the next, the arms of a (rung, seed) side by side, the top-up's extra seeds after
    all that. `seeds`: these for every rung instead of `seeds_for`'s."""
    scale_settings(SCALE)  # the scale must exist (its runs_root places the runs)
    data = data_path or str(dataset_dir(SCALE))
    tok = tokenizer_path or f"{data}/tokenizer.model"
    specs = []
    for r, rung_seeds in _launch_order(seeds):
        for seed in rung_seeds:
            for arm in r.arms:
                preset_name, sets = r.arms[arm]
                overrides = {**sets, "data_path": data, "tokenizer_path": tok}
                digest = _settings_hash(preset_name, overrides, "cpu")
                specs.append(RunSpec(
                    name=f"{SCALE}-{r.label}-{arm}-s{seed}-{digest}", label=f"{r.label}-{arm}",
                    preset=preset_name, seed=seed, scale=SCALE, train_scale="cpu",
                    overrides=overrides, groups=("regime",), budget="flops" if arm != "flat"
                    else "steps", match=f"{r.label}-flat" if arm != "flat" else ""))
    return specs


def plan_table() -> list[dict[str, Any]]:
    """One row per (rung, arm): what it trains and how the pair matches (for the page and
    `python -m golf_core.regime`)."""
    rows = []
    for r in rungs():
        for arm in r.arms:
            f = r.facts[arm]
            mis = r.mismatch("loop" if arm == "flat" else arm)
            rows.append({
                "size": r.size, "pair": r.pair, "rung": round(r.ratio, 2), "arm": arm,
                "width": r.arms[arm][1]["model_dim"], "params": int(f["unique"]),
                "non_embedding": int(f["non_embedding"]), "iterations": r.iterations[arm],
                "tokens": r.tokens(arm), "tokens_per_param": r.tokens(arm) / f["non_embedding"],
                "train_flops": r.flops[arm], "params_mismatch": mis["params"],
                "flops_mismatch": mis["flops"],
            })  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m golf_core.regime`: print the ladder's plan (arms, sizes, steps, matching)."""
    import pandas as pd

    pd.set_option("display.width", 200)
    table = pd.DataFrame(plan_table())
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    worst = table[["params_mismatch", "flops_mismatch"]].abs().max()
    print(f"\nworst mismatch: parameters {worst['params_mismatch']:.2%}, FLOPs "
          f"{worst['flops_mismatch']:.2%} (tolerance {TOLERANCE:.0%}); "
          f"{len(ladder())} runs ({seeds_markdown()})")
    return 0 if worst.max() <= TOLERANCE else 1


if __name__ == "__main__":
    raise SystemExit(main())

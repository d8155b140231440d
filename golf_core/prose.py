"""Setup sentences generated from the run matrix, so that the notebooks' counts cannot drift.

Each function reads one notebook's group of `golf_core.experiments.run_matrix(scale)` (or the
specs the notebook already holds), resolves every arm's config as training does
(`golf_core.settings.resolve`), builds its model on the `meta` device (shapes only, no memory)
for block counts, virtual depth and parameter counts, and returns Markdown: which arms exist
at the scale, their shapes, steps, tokens per step, seeds and budget. The notebooks show it
with `display(Markdown(prose.<fn>(scale, specs)))`; their hand-written prose states no counts
(tests/test_prose.py checks both).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from golf_core import config, experiments, settings
from golf_core.experiments import RunSpec
from golf_core.model import build_model, pr325
from golf_core.trainer import recurrence_start

# PR #1204's seed-1337 log (tests/golden/upstream_logs): recurrence on at step 3000, the run
# stopped by its 600 s cap at step 6,242; the matrix's recur_start_frac 0.48 is their ratio
RECORD_STEPS = 6242
STUDY = "study"  # the scale whose paired seeds decide the claims (notebook 08_study)


@dataclass(frozen=True)
class Arm:
    """One label (and budget) of a group at a scale: its seeds, resolved configs and model."""

    label: str
    budget: str
    match: str
    seeds: tuple[int, ...]
    model_cfg: config.ModelConfig
    train_cfg: config.TrainConfig
    model: torch.nn.Module  # on the meta device: shapes, no data


def arms(scale: str, group: str, specs: Sequence[RunSpec] | None = None) -> list[Arm]:
    """The arms of `group` in the matrix of `scale` (or in `specs`, that matrix as a notebook
    already has it), in matrix order; a label trained under two budgets, as at the gpu scale,
    is two arms."""
    if specs is None:
        specs = experiments.run_matrix(scale, groups=group)
    if any(s.scale != scale for s in specs):
        raise ValueError(f"specs of another scale than {scale!r}")
    by_arm: dict[tuple[str, str], list[RunSpec]] = {}
    for spec in specs:
        if group in spec.groups:
            by_arm.setdefault((spec.label, spec.budget), []).append(spec)
    out = []
    for (label, budget), same in by_arm.items():
        spec = same[0]
        mcfg, tcfg = settings.resolve(scale=spec.train_scale, preset=spec.preset, environ={},
                                    sets=dict(spec.overrides))
        with torch.device("meta"):
            model = build_model(mcfg)
        out.append(Arm(label, budget, spec.match, tuple(s.seed for s in same), mcfg, tcfg, model))
    return out


def _n(x: int) -> str:
    return f"{x:,}"


def _list(items: Sequence[Any]) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _seeds(arm: Arm) -> str:
    n = len(arm.seeds)
    return f"{n} seeds ({_list(arm.seeds)})" if n > 1 else f"seed {arm.seeds[0]} only"


def _batch(tcfg: Any) -> str:
    seqs = tcfg.train_batch_tokens // tcfg.train_seq_len
    return f"{_n(tcfg.train_batch_tokens)} tokens ({seqs} sequences of {tcfg.train_seq_len})"


def _cap(tcfg: Any) -> str:
    cap = tcfg.max_wallclock_seconds
    return f" (a run stops earlier if its {cap:g} s wallclock cap comes first)" if cap > 0 else ""


def _steps(arm: Arm, every: Sequence[Arm]) -> str:
    steps = f"{_n(arm.train_cfg.iterations)} steps"
    if arm.budget != "flops":
        return f"{steps}, the scale's budget"
    ref = next((a for a in every if a.label == arm.match and a.budget == "steps"), None)
    of = f"{_n(ref.train_cfg.iterations)} steps" if ref else "run"
    return (f"{steps}: the training FLOPs of `{arm.match}`'s {of} (equal-FLOPs budget, "
            "`golf_core.flops`)")


def _header(scale: str, group: str) -> str:
    return f"**Setup** (generated from the run matrix: the `{group}` group at the `{scale}` scale)."


# ----------------------------------------------------------------------------- notebook 04


def _loop_shape(arm: Arm) -> str:
    """PR #325's shape of an arm: stem / core x repeats / tail, refinement steps, depth."""
    cfg, model = arm.model_cfg, arm.model
    (stem, core, tail), depth = pr325.split(cfg), model.schedule.depth
    if not pr325.looped(cfg):
        return (f"PR #325's model without the loop (its flat U-Net): {cfg.num_layers} blocks, "
                f"{stem} encoder and {tail} decoder, {depth} virtual layers")
    refine = sorted({s.repeat for s in model.schedule.steps if s.kind == "refine"})
    text = (f"{stem} stem / {core} core x {cfg.loop_repeats} repeats / {tail} tail blocks, "
            f"{depth} virtual layers")
    if refine:
        which = f"repeats {_list(refine)} run" if len(refine) > 1 else f"repeat {refine[0]} runs"
        text += (f" ({model.attention_layers()} with attention: core {which} "
                 f"{len(model.refine_blocks)} attention-free refinement blocks instead, "
                 f"PR #325's LOOP_ATTN_EVERY={cfg.loop_attn_every})")
    return text


def flat_vs_looped_setup(scale: str, specs: Sequence[RunSpec] | None = None) -> str:
    """Notebook 04: the arms of PR #363's comparison at `scale` (PR #325's model in PR #363's
    shapes), each with its blocks, virtual depth, parameters, steps and budget; tokens per
    step, seeds and the export every arm shares. `specs`: the notebook's runs (default: the
    scale's matrix)."""
    every = arms(scale, "flat_vs_looped", specs)
    first = every[0]
    lines = [_header(scale, "flat_vs_looped") + f" PR #325's model in PR #363's shapes at "
             f"width {first.model_cfg.model_dim}:", ""]
    for arm in every:
        counts = arm.model.parameter_counts()
        unique = (f"{_n(counts['unique'])} of them unique (not reused by the loop)"
                  if counts["shared"] else "none reused")
        lines.append(f"- `{arm.label}` ({arm.budget} budget): {_loop_shape(arm)}; "
                     f"{_n(counts['total'])} parameters stored, {unique}; "
                     f"{_steps(arm, every)}; {_seeds(arm)}.")
    t = first.train_cfg
    batches = {_batch(a.train_cfg) + _cap(a.train_cfg) for a in every}
    exports = {f"{a.train_cfg.export_scheme} + {a.train_cfg.export_compressor}" for a in every}
    same_seeds = len({a.seeds for a in every}) == 1
    lines += ["", (f"Every arm trains on {_batch(t)} a step{_cap(t)}" if len(batches) == 1
                   else "Tokens a step differ between the arms: " + "; ".join(
                       f"`{a.label}` {_batch(a.train_cfg)}" for a in every))
              + (", every arm with the same seeds" if same_seeds else "")
              + f"; the artifact is exported at {_list(sorted(exports))} (its bytes below)."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- notebook 03


def _recurrence(arm: Arm) -> str:
    start, t = recurrence_start(arm.model_cfg, arm.train_cfg), arm.train_cfg
    if not start:
        return "recurrence on from step 0 (always on)"
    text = f"recurrence delayed: switched on at step {_n(start)} of {_n(t.iterations)}"
    if t.max_wallclock_seconds > 0:
        text += (f" if the {t.max_wallclock_seconds:g} s cap lets the run get there (the "
                 f"record's stopped at step {_n(RECORD_STEPS)})")
    return text


def lanes_setup(scale: str, specs: Sequence[RunSpec] | None = None) -> str:
    """Notebook 03: PR #1204's shape at `scale`, the arms the matrix has there, when each
    switches recurrence on, and where the 48% comes from."""
    every = arms(scale, "lanes", specs)
    first = every[0]
    cfg, model, t = first.model_cfg, first.model, first.train_cfg
    recur = sorted(set(cfg.recur_layers))
    where = "physical" if cfg.parallel_start_layer_is_physical else "virtual"
    lines = [
        _header(scale, "lanes") + f" PR #1204's record model at width {cfg.model_dim}: "
        f"{cfg.num_layers} physical layers, layers {_list(recur)} run twice once recurrence is "
        f"on ({model.parameter_counts()['effective_depth']} virtual layers), parallel lanes "
        f"from {where} layer {cfg.parallel_start_layer}; {_n(t.iterations)} steps of "
        f"{_batch(t)}{_cap(t)}. The arms at this scale:",
        "",
    ]
    lines += [f"- `{a.label}`: {_recurrence(a)}; {_seeds(a)}." for a in every]
    delayed = next(a for a in every if a.label == "pr1204")
    frac = delayed.model_cfg.recur_start_frac
    if not frac:
        return "\n".join(lines)
    lines += ["", (
        f"Why {frac:.0%}: the preset keeps the record's RECUR_START_STEP="
        f"{delayed.model_cfg.recur_start_step}, and the record's seed-1337 log switched "
        f"recurrence on at that step of the {_n(RECORD_STEPS)} steps its 600 s cap allowed. The "
        f"run matrix entry `pr1204` sets recur_start_frac={frac:g}, their ratio, so the switch "
        "comes at the same fraction of our runs (a fraction wins over the step: "
        "`golf_core.trainer.recurrence_start`)."
    )]
    return "\n".join(lines)


def delayed_vs_always_on(scale: str, specs: Sequence[RunSpec] | None = None) -> str:
    """Notebook 03: what the table of runs at `scale` can show about delayed vs always-on
    recurrence, and where the paired comparison is decided."""
    here = {a.label: a for a in arms(scale, "lanes", specs)}
    study = [s.seed for s in experiments.run_matrix(STUDY, groups="lanes")
             if s.label == "pr1204"]
    decided = (f"The paired comparison is decided at the `{STUDY}` scale (`pr1204` vs "
               f"`pr1204-always-on`, {len(study)} paired seeds): notebook 08_study states its "
               "verdict.")
    if "pr1204-always-on" not in here:
        return (f"At the `{scale}` scale the matrix has no always-on arm: the table below has "
                f"only `pr1204` ({_seeds(here['pr1204'])}), nothing to compare it with. "
                + decided)
    n = min(len(a.seeds) for a in here.values())
    if scale == STUDY:
        return (f"Both arms run here, {n} paired seeds each: the table below has each run's "
                "final numbers, and notebook 08_study states the paired verdict.")
    return (f"Both arms run at the `{scale}` scale ({n} seed{'s' if n > 1 else ''} each): the "
            "table below has each run's final numbers. " + decided)


# ----------------------------------------------------------------------------- notebook 06


def test_time_depth_setup(scale: str, max_k: int, specs: Sequence[RunSpec] | None = None) -> str:
    """Notebook 06: PR #54's run at `scale` (its blocks, K, what is trained and what is fixed)
    and the K' sweep up to `max_k`."""
    every = arms(scale, "depth", specs)
    if not every:
        return (_header(scale, "depth") + f" The `{scale}` scale trains no PR #54 run: "
                "this notebook has nothing to evaluate there.")
    (arm,) = every
    cfg, model, t = arm.model_cfg, arm.model, arm.train_cfg
    k, counts = cfg.num_recurrent_passes, model.parameter_counts()
    trained = sorted({n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad})
    fixed = sorted({n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad})
    embeds = model.iter_embeds
    tokens = (f"at most the first {_n(t.val_max_tokens)} validation tokens"
              if t.val_max_tokens > 0 else "the whole validation split")
    how = ("fixed: drawn once (randn x 0.02) and never trained (a frozen parameter, "
           "requires_grad=False, so in no optimizer group, as PR #54's script leaves them out "
           "of all of its optimizers)") if not embeds.requires_grad else "trained"
    return "\n".join([
        _header(scale, "depth") + f" One run, `{arm.label}`: {_seeds(arm)}, "
        f"{_n(t.iterations)} steps of {_batch(t)}{_cap(t)}, width {cfg.model_dim}.",
        "",
        f"PR #54's model: {cfg.num_unique_layers} unique blocks as a U-Net "
        f"({model.num_encoder_layers} encoder, {model.num_decoder_layers} decoder), then one "
        f"recurrent block run K = {k} times after it: {counts['physical_layers']} physical "
        f"blocks, {counts['effective_depth']} virtual layers, {_n(counts['total'])} parameters. "
        f"Pass k (from 0) computes x = x + block(x + iter_embeds[k], x0) / sqrt({k}): the "
        "block's whole output (its own residual included) is scaled, by the trained K at "
        "every K'. The "
        "iteration embeddings "
        f"({embeds.shape[0]} x {embeds.shape[1]}) are {how}. Trained: "
        f"{_list([f'`{n}`' for n in trained])}; fixed: {_list([f'`{n}`' for n in fixed])}.",
        "",
        f"Evaluation runs K' = 1 to {max_k} passes (the `max_k` parameter; passes beyond "
        f"K = {k} reuse the last embedding row, iter_embeds[{k - 1}]) on {tokens}.",
    ])

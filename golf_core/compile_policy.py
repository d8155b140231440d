"""Compile policy: what the train config's `compile` setting does to a model.

Takes a TrainConfig's `compile` (none | blocks | model | auto, or 0/1/true/false read as
none/model), the device and the built model; `resolve_compile` returns the mode the run uses and
why, `apply_compile` returns the callable the training loop trains with (the model, its blocks
compiled in place, or the whole model compiled). `compile_mode_name` normalises the setting
(ConfigError on an unknown value); `_compile_as_text` reads a stored config whose `compile` was
a JSON boolean. Writes nothing. Imports nothing from golf_core but golf_core.config, so the
low-level modules (precision) can ask it whether a run compiles.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from golf_core.config import ConfigError, TrainConfig

# --- torch.compile: none | blocks (each transformer block, "regional") | model | auto

COMPILE_MODES = ("none", "blocks", "model", "auto")
_COMPILE_ALIASES = {"0": "none", "false": "none", "no": "none", "off": "none",
                    "1": "model", "true": "model", "yes": "model", "on": "model"}
# auto on CPU compiles from this many steps on: our GPT's blocks, a published family's whole
# model. Measured (benchmarks/results/optimizations.md, 2 shared cores, widths 64-128):
# compiled blocks save ~15-25% of our GPT's step (~50-400 ms) and cost ~20-75 s of compiling
# on a cold inductor cache (~5-10 s warm), so they pay off after at most ~1000 steps. The
# families compile whole (fullgraph, no graph break): blocks alone left their per-layer control
# arithmetic, skips and lanes eager. PR #1204 / PR #325's 3x3 at width 32, 4,096 tokens a step,
# fp32, 2 threads, AMD EPYC (Zen 5), 2026-12-02: eager 178 / 176 ms, blocks 176 / 151 ms,
# whole model 119 / 119 ms (benchmarks/families.py); first step 35 s cold.
AUTO_COMPILE_MIN_STEPS = 1000


def compile_targets(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks `compile=blocks` compiles: every member of the model's `*blocks` module
    lists (our GPT's `blocks`; PR #325's stem/loop/refine/tail blocks; PR #54's, #363's and
    #1204's `blocks`). Same-class blocks share one compiled graph (parameters are inputs)."""
    out: list[torch.nn.Module] = []
    for name, child in model.named_children():
        if isinstance(child, torch.nn.ModuleList) and name.endswith("blocks"):
            out.extend(child)
    return out


def _compile_as_text(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A config mapping whose train `compile` was a JSON boolean (before it took modes) with
    that value as 1/0, which the str field reads as model/none."""
    out = dict(cfg)
    for section in ("train", None):
        d = out.get(section, {}) if section else out
        if isinstance(d, dict) and isinstance(d.get("compile"), bool):
            d = {**d, "compile": "1" if d["compile"] else "0"}
            if section:
                out[section] = d
            else:
                out = d
    return out


def compile_mode_name(value: str) -> str:
    """`compile` as one of COMPILE_MODES (0/1/true/false read as none/model)."""
    text = str(value).strip().lower()
    mode = _COMPILE_ALIASES.get(text, text)
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile={value!r}: expected one of {', '.join(COMPILE_MODES)} "
                          "(or 0/1)")
    return mode


def resolve_compile(tcfg: TrainConfig, device: torch.device,
                    model: torch.nn.Module) -> tuple[str, str]:
    """(mode, why): what `compile` does for this run. auto: on CPU, once the run has
    AUTO_COMPILE_MIN_STEPS steps (the compile cost then pays off), a published family's whole
    model (`compile_whole`) or our GPT's blocks; else none (on a GPU auto does not compile: say
    `model` or `blocks` there)."""
    mode = compile_mode_name(tcfg.compile)
    if mode == "blocks" and not compile_targets(model):
        raise ConfigError(f"compile=blocks: {type(model).__name__} has no `blocks` list")
    if mode != "auto":
        return mode, "as set"
    if device.type != "cpu":
        return "none", f"auto compiles only on CPU (device {device.type})"
    whole = compile_whole(model)
    if not whole and not compile_targets(model):
        return "none", f"auto: {type(model).__name__} has no blocks to compile"
    if tcfg.iterations < AUTO_COMPILE_MIN_STEPS:
        return "none", (f"auto: iterations {tcfg.iterations} < {AUTO_COMPILE_MIN_STEPS}, too "
                        "short for the compile time to pay off")
    what = "model" if whole else "blocks"
    return what, f"auto: iterations {tcfg.iterations} >= {AUTO_COMPILE_MIN_STEPS} on CPU"


def compile_whole(model: torch.nn.Module) -> bool:
    """Whether auto compiles `model` whole: the published families (golf_core/model/pr*.py),
    which trace without a graph break and train faster whole than by blocks."""
    cfg = getattr(model, "cfg", None)
    return getattr(cfg, "family", "golf") != "golf"


def apply_compile(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """The callable the loop trains with: the model, its blocks compiled in place (state-dict
    names unchanged), or the whole model compiled."""
    if mode == "model":  # a published family traces whole (its tests check fullgraph=True)
        return torch.compile(model)
    if mode == "blocks":
        for block in compile_targets(model):
            block.compile()
    return model

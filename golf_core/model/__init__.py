"""The models: shared layers, our GPT and its schedules, the published PR families, presets.

| module | what |
|---|---|
| `layers.py` | upstream's layers (RMSNorm, CastedLinear, Rotary, attention, MLP, Block) |
| `gpt.py` | our GPT: every variant of this project as a layer schedule (`family="golf"`) |
| `extras.py` | the extras two or more PR models share (BigramHash, SmearGate, NTK RoPE, XSA, ...) |
| `pr54.py`, `pr325.py`, `pr363.py`, `pr1204.py` | the published models, state-dict names kept |
| `families.py` | `build_model(cfg)`, family registry, detection from state-dict keys |
| `presets.py` | `preset(name)` |
"""

from golf_core.model.families import FAMILIES, build_model, control_patterns, detect_family
from golf_core.model.gpt import GPT, PARALLEL_RESID_INIT, count_parameters, layer_params_unique
from golf_core.model.layers import (
    MLP,
    Block,
    CastedLinear,
    CausalSelfAttention,
    Controls,
    LowRankAdapter,
    RMSNorm,
    Rotary,
    apply_rotary_emb,
    rms_norm,
    zero_init,
)
from golf_core.model.presets import PRESETS, preset

__all__ = [
    "CONTROL_PATTERNS", "FAMILIES", "GPT", "MLP", "PARALLEL_RESID_INIT", "PRESETS", "Block",
    "CastedLinear", "CausalSelfAttention", "Controls", "LowRankAdapter", "RMSNorm", "Rotary",
    "apply_rotary_emb", "build_model", "count_parameters", "detect_family",
    "layer_params_unique", "preset", "rms_norm", "zero_init",
]  # fmt: skip

# ours plus every published family's (each family module lists its own)
CONTROL_PATTERNS: tuple[str, ...] = control_patterns()

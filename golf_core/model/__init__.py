"""The models: shared layers, upstream's baseline GPT, the published PR families, presets.

Read in this order (golf_core/model/README.md says what each PR added):

| module | what |
|---|---|
| `layers.py` | upstream's layers (RMSNorm, CastedLinear, Rotary, attention, MLP, Block) |
| `depth.py`, `tables.py` | virtual depth maps; table rows and sizes every family shares |
| `gpt.py` | upstream's baseline GPT (`family="golf"`: presets `unet`, `flat`) |
| `extras.py` | the extras two or more PR models share (BigramHash, SmearGate, NTK RoPE, XSA, ...) |
| `pr54.py`, `pr325.py`, `pr363.py`, `pr1204.py` | the published models, state-dict names kept |
| `families.py` | `build_model(cfg)`, family registry, detection from state-dict keys |
| `presets.py` | `preset(name)` |
"""

from golf_core.model.families import FAMILIES, build_model, control_patterns, detect_family
from golf_core.model.gpt import GPT, count_parameters
from golf_core.model.layers import (
    MLP,
    Block,
    CastedLinear,
    CausalSelfAttention,
    RMSNorm,
    Rotary,
    apply_rotary_emb,
    rms_norm,
    zero_init,
)
from golf_core.model.presets import PRESETS, preset

__all__ = [
    "CONTROL_PATTERNS", "FAMILIES", "GPT", "MLP", "PRESETS", "Block", "CastedLinear",
    "CausalSelfAttention", "RMSNorm", "Rotary", "apply_rotary_emb", "build_model",
    "count_parameters", "detect_family", "preset", "rms_norm", "zero_init",
]  # fmt: skip

# every family's control-tensor patterns (the baseline's first)
CONTROL_PATTERNS: tuple[str, ...] = control_patterns()

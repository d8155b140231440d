"""The model families: upstream's baseline GPT (`family="golf"`) and the four published PR models.

`ModelConfig.family` picks the module; `build_model(cfg)` builds its model. Each family lives
in one module (golf_core/model/gpt.py, pr54.py, pr325.py, pr363.py, pr1204.py) built from the
shared layers (golf_core/model/layers.py) and extras (golf_core/model/extras.py), and keeps
its script's state-dict names exactly, so an upstream `final_model.pt` loads with
`strict=True`. A family module offers:

- `FAMILY` (str), `PR` (int; 0 for the baseline), `SOURCE` (its script's file name);
- `Model(cfg)`: an nn.Module with `forward(input_ids, target_ids=None, *, num_iters=None)`
  (logits (B, T, V), or mean cross-entropy in nats), `forward_hidden(input_ids, *,
  num_iters=None) -> list[Tensor]` (the stream after each virtual layer), `routing_tables() ->
  dict[str, DataFrame]`, `core_modules() -> list[nn.Module]` (what runs more than once: QAT
  "core"), `parameter_counts() -> dict` (total, unique, shared, unrolled, physical_layers,
  effective_depth), `matmul_params_per_token() -> int` and `attention_layers() -> int` (FLOPs);
- `CONFIG_FIELDS`: the ModelConfig fields its model (and training) reads, its script's
  hyperparameters; settings.resolve refuses a --set value for any other;
- `IDENTIFYING_KEYS`: state-dict key prefixes only this family has;
- `PRESETS`: preset name -> ModelConfig overrides (including `family`);
- `config_from_state_dict(state_dict, base) -> ModelConfig`: `base` with the sizes the tensor
  shapes fix (vocab, width, depth, ...);
- `CONTROL_PATTERNS`: name substrings of its control tensors (Adam, float in the export);
- optionally `read_artifact(path) -> dict[str, Tensor] | None`: the dequantized state dict of
  the PR's own artifact format, None when `path` is not in that format.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType

import torch
from torch import Tensor, nn

from golf_core.config import ConfigError, ModelConfig
from golf_core.model import gpt, pr54, pr325, pr363, pr1204

# Detection asks the published families in this order and takes the first whose keys the
# state dict has: PR #1204's banks before PR #325's SmearGate/BigramHash names (the record
# has those too), so a flat PR #325 model is still recognised.
FAMILY_MODULES: dict[str, ModuleType] = {
    "golf": gpt,
    "pr54": pr54,
    "pr1204": pr1204,
    "pr363": pr363,
    "pr325": pr325,
}
FAMILIES: tuple[str, ...] = tuple(FAMILY_MODULES)
PUBLISHED: tuple[str, ...] = tuple(f for f in FAMILIES if f != "golf")
# Not a control tensor of any script's optimizer, but kept float by our export like one: PR
# #54's iteration embeddings (its own int8 export keeps them as a small fp16 passthrough).
_EXPORT_FLOAT_EXTRA: tuple[str, ...] = ("iter_embed",)


def family_module(name: str) -> ModuleType:
    """The module of family `name`; an unknown name raises ValueError listing the known ones."""
    if name not in FAMILY_MODULES:
        raise ValueError(f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILY_MODULES[name]


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model `cfg` describes: the baseline GPT for family "golf", else that PR's model."""
    return family_module(cfg.family).Model(cfg)


def virtual_depth(cfg: ModelConfig) -> int:
    """The blocks one forward pass of `cfg`'s model runs through (a looped block once per
    use): its `parameter_counts()["effective_depth"]`, read off the model built on the meta
    device, so nothing is allocated or initialized and the random state is untouched."""
    with torch.device("meta"):
        return int(build_model(cfg).parameter_counts()["effective_depth"])


def detect_family(state_dict: Mapping[str, Tensor]) -> str:
    """The family whose identifying keys `state_dict` has ("golf" when none does: the
    baseline's names are what every family builds on)."""
    names = [k.removeprefix("_orig_mod.") for k in state_dict]
    for fam in PUBLISHED:
        prefixes = FAMILY_MODULES[fam].IDENTIFYING_KEYS
        if any(n.startswith(p) for n in names for p in prefixes):
            return fam
    return "golf"


def family_presets() -> dict[str, dict]:
    """Preset name -> overrides, over every family (the baseline's first)."""
    out: dict[str, dict] = {}
    for module in FAMILY_MODULES.values():
        out.update(module.PRESETS)
    return out


def control_patterns() -> tuple[str, ...]:
    """Every family's control-tensor name patterns (the baseline's first): what the export
    keeps float whatever the family."""
    pats: list[str] = []
    for module in FAMILY_MODULES.values():
        pats += [p for p in module.CONTROL_PATTERNS if p not in pats]
    return tuple(pats + [p for p in _EXPORT_FLOAT_EXTRA if p not in pats])


def config_fields(family: str) -> tuple[str, ...]:
    """The ModelConfig fields family `family` reads ("family" itself included)."""
    return ("family", *family_module(family).CONFIG_FIELDS)


def refuse_unread(before: ModelConfig, after: ModelConfig, source: str) -> None:
    """ConfigError when the settings layer `source` (--set, papermill) turned `before`
    into `after` by changing a field that `after`'s family does not read: that value would
    change the run's name and nothing it trains."""
    reads = set(config_fields(after.family))
    changed = [f for f in ModelConfig.__dataclass_fields__
               if f not in reads and getattr(before, f) != getattr(after, f)]
    if not changed:
        return
    owners = {f: [fam for fam in FAMILIES if f in config_fields(fam)] for f in changed}
    said = ", ".join(f"{f} ({' / '.join(owners[f]) or 'no family'}'s)" for f in changed)
    raise ConfigError(f"{source}: family {after.family} does not read {said}; it reads "
                      f"{', '.join(config_fields(after.family)[1:])}")

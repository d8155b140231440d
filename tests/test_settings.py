"""Each family's settings live with the family: the ModelConfig fields its model reads
(CONFIG_FIELDS, its script's hyperparameters), a --set of any other field refused by name,
other families' env vars ignored as the scripts ignore them, and every committed run's
config.json still usable as --config (the resume path)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from golf_core.config import ConfigError, ModelConfig, from_dict
from golf_core.model import build_model, preset
from golf_core.model.families import (
    FAMILIES,
    config_fields,
    family_module,
    family_presets,
)
from golf_core.settings import resolve

ROOT = Path(__file__).resolve().parent.parent


def _reads(name: str, monkeypatch) -> tuple[str, set[str]]:
    """(family, the ModelConfig fields read while building preset `name`, running it forward
    and backward and reading its accounting and routing tables). The family's `validate` is
    stood in by a no-op: it inspects other families' fields to refuse them."""
    cfg = preset(name, model_dim=32, num_heads=2, num_kv_heads=1, vocab_size=64)
    seen: set[str] = set()

    class Tracking(ModelConfig):
        def __getattribute__(self, attr):
            if attr in ModelConfig.__dataclass_fields__:
                seen.add(attr)
            return object.__getattribute__(self, attr)

    module = family_module(cfg.family)
    monkeypatch.setattr(module, "validate", lambda cfg: None, raising=False)
    tracked = Tracking(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    torch.manual_seed(0)
    model = build_model(tracked)
    if hasattr(model, "set_recurrence_active"):
        model.set_recurrence_active(True)
    ids = torch.randint(0, 64, (2, 16))
    model(ids, ids).backward()
    model.parameter_counts(), model.matmul_params_per_token(), model.attention_layers()
    model.routing_tables()
    return cfg.family, seen


@pytest.mark.parametrize("name", sorted(family_presets()))
def test_a_model_reads_only_the_fields_its_family_declares(name, monkeypatch):
    family, seen = _reads(name, monkeypatch)
    undeclared = seen - set(config_fields(family))
    assert not undeclared, f"{name} ({family}) reads undeclared fields {sorted(undeclared)}"


def test_every_declared_field_exists_and_every_field_belongs_to_a_family():
    every = set(ModelConfig.__dataclass_fields__)
    owned = set()
    for family in FAMILIES:
        declared = config_fields(family)
        assert len(declared) == len(set(declared)) and set(declared) <= every, family
        owned |= set(declared)
    assert owned == every  # no field that no model reads


def test_a_set_of_a_field_the_family_does_not_read_is_refused_naming_its_owner():
    with pytest.raises(ConfigError, match=r"^--set: family pr1204 does not read "
                                          r"num_recurrent_passes \(pr54's\); it reads vocab"):
        resolve(scale="cpu", preset="pr1204", environ={}, sets={"num_recurrent_passes": "4"})
    with pytest.raises(ConfigError, match=r"family pr363 does not read bigram_vocab_size "
                                          r"\(pr1204 / pr325's\)"):  # its rows: bigram_buckets
        resolve(preset="pr363", environ={}, sets={"bigram_vocab_size": "512"})
    with pytest.raises(ConfigError, match=r"family golf does not read recur_layers"):
        resolve(preset="unet", environ={}, sets={"recur_layers": "1,2"})
    # the family switched in the same --set: judged by the family it ends as
    mcfg, _ = resolve(preset="unet", environ={}, sets={"family": "pr363", "depth_lora_rank": 2})
    assert (mcfg.family, mcfg.depth_lora_rank) == ("pr363", 2)


def test_env_vars_of_fields_the_family_does_not_read_are_ignored_as_its_script_ignores_them():
    env = {"NUM_LAYERS": "11", "DEPTH_LORA_RANK": "2", "RECUR_LAYERS": "4,5"}
    mcfg, _ = resolve(preset="pr363", environ=env)
    assert mcfg.depth_lora_rank == 2 and mcfg.recur_layers == ()
    assert mcfg.num_layers == preset("pr363").num_layers  # RecurrentGPT has no NUM_LAYERS
    mcfg, _ = resolve(preset="pr1204", environ={"FAMILY": "pr363", "DEPTH_LORA_RANK": "2"})
    assert (mcfg.family, mcfg.depth_lora_rank) == ("pr363", 2)  # FAMILY is read first


def test_every_committed_run_config_resolves_as_a_config_file_to_the_model_it_ran():
    """A run's config.json carries every field (other families' at whatever the scale and
    preset left): as --config (what a resume reads) it is accepted and gives its model."""
    files = sorted(ROOT.glob("results/*/*/config.json"))
    if not files:
        pytest.skip("no committed runs in this checkout")
    for path in files[:: max(1, len(files) // 24)]:
        stored = json.loads(path.read_text())
        mcfg, _ = resolve(config=stored, environ={}, config_source=str(path))
        assert mcfg == from_dict(ModelConfig, stored["model"], source=str(path)), path


def test_an_unknown_family_is_a_config_error_naming_the_known_ones():
    for kwargs in ({"config": {"family": "pr999"}, "environ": {}},
                   {"environ": {"FAMILY": "pr999"}},
                   {"environ": {}, "sets": {"family": "pr999"}}):
        with pytest.raises(ConfigError, match=r"unknown model family 'pr999'; choose one of golf"):
            resolve(**kwargs)

"""Routing tables from models and state dicts, including the upstream baseline fixture."""

from __future__ import annotations

import pytest
import torch

from conftest import fixture_dir
from golf_core.analysis import LANE_COLUMNS, config_from_state_dict, routing_tables
from golf_core.model import PRESETS, build_model, preset
from golf_core.model.tables import SKIP_COLUMNS

SMALL = dict(vocab_size=64, model_dim=32, num_heads=4, num_kv_heads=2)


@pytest.fixture(scope="module")
def upstream_state():
    return torch.load(fixture_dir("upstream_baseline") / "state_dict.pt", weights_only=True)


def test_an_upstream_state_dict_gives_its_config_and_tables(upstream_state):
    cfg = config_from_state_dict(upstream_state)
    assert (cfg.num_layers, cfg.model_dim, cfg.num_heads, cfg.num_kv_heads) == (5, 64, 4, 2)
    assert (cfg.mlp_mult, cfg.tie_embeddings, cfg.variant) == (2, True, "unet")
    tables = routing_tables(upstream_state)
    assert set(tables) == {"skip_weights", "resid_mix", "lanes", "embeddings", "params"}
    assert tables["params"].loc[0, "total"] == 210324
    assert tables["lanes"].empty and tables["embeddings"].empty


def test_skip_rows_name_the_layers_each_skip_connects(upstream_state):
    skips = routing_tables(upstream_state)["skip_weights"]
    # 5 layers: encoder 0, 1 push; decoder layers 2, 3 pop LIFO (layer 2 gets layer 1's output)
    assert skips["encoder_layer"].tolist() == [1, 0]
    assert skips["decoder_layer"].tolist() == [2, 3]
    w = upstream_state["skip_weights"]
    assert skips["mean"].tolist() == pytest.approx(w.mean(dim=1).tolist())
    assert skips["abs_mean"].tolist() == pytest.approx(w.abs().mean(dim=1).tolist())
    assert skips["std"].tolist() == pytest.approx(w.std(dim=1).tolist())


def test_resid_mix_rows_hold_each_layers_x_and_x0_coefficients(upstream_state):
    table = routing_tables(upstream_state)["resid_mix"]
    for i in range(5):
        mix = upstream_state[f"blocks.{i}.resid_mix"]
        row = table.iloc[i]
        assert (row["layer"], row["physical"]) == (i, i)
        assert row["x_coef_mean"] == pytest.approx(mix[0].mean().item())
        assert row["x0_coef_abs_mean"] == pytest.approx(mix[1].abs().mean().item())


@pytest.mark.parametrize("name", PRESETS)
def test_every_family_tabulates_under_the_shared_column_names(name):
    model = build_model(preset(name, vocab_size=64, model_dim=64, num_heads=4, num_kv_heads=2))
    tables = routing_tables(model)
    assert {"skip_weights", "resid_mix", "lanes", "embeddings", "params"} <= set(tables)
    assert tuple(tables["lanes"].columns) == LANE_COLUMNS
    assert {"name", "index"} <= set(tables["embeddings"].columns)
    assert tuple(tables["skip_weights"].columns[:6]) == SKIP_COLUMNS
    params = tables["params"].iloc[0]  # a row per virtual layer of the current schedule
    assert params["physical_layers"] <= len(tables["resid_mix"]) <= params["effective_depth"]


def test_a_state_dict_with_its_config_gives_the_same_tables_as_the_model():
    cfg = preset("pr363-3x3", loop_repeat_embed=True, rope_dims=8, **SMALL)
    model = build_model(cfg)
    with torch.no_grad():
        model.loop_repeat_embed.copy_(torch.arange(3.0)[:, None].expand(3, 32))
    from_model = routing_tables(model)
    from_state = routing_tables(model.state_dict(), cfg)
    for key, table in from_model.items():
        assert table.equals(from_state[key]), key
    norms = from_model["embeddings"]["norm"].tolist()
    assert norms == pytest.approx([0.0, 32**0.5, 2 * 32**0.5])


def test_a_state_dict_of_no_known_shape_is_refused_naming_what_it_lacks():
    with pytest.raises(ValueError, match=r"state dict lacks tok_emb.weight, blocks.0.attn.q_gain"):
        routing_tables({"wte.weight": torch.zeros(4, 2)})

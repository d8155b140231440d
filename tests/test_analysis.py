"""Routing tables from models and state dicts, including the upstream baseline fixture."""

from __future__ import annotations

import pytest
import torch

from conftest import fixture_dir
from golf_core.analysis import LANE_COLUMNS, config_from_state_dict, routing_tables
from golf_core.model import GPT, preset

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


def test_lane_rows_use_pr_1204_names_and_read_the_lambdas_of_each_physical_block():
    cfg = preset("mini+parallel", **SMALL)  # 11 physical blocks, lanes from physical 7
    model = GPT(cfg)
    model.activate_recurrence()
    with torch.no_grad():
        model.parallel_post_lambdas.copy_(torch.randn(11, 2, 2))
        model.parallel_resid_lambdas.copy_(torch.randn(11, 2))
    lanes = routing_tables(model)["lanes"]
    assert tuple(lanes.columns) == LANE_COLUMNS
    assert lanes["layer"].tolist() == [9, 10, 11, 12]  # as in PR #1204's seed-1337 log
    assert lanes["physical"].tolist() == [7, 8, 9, 10]
    post, resid = model.parallel_post_lambdas, model.parallel_resid_lambdas
    row = lanes.iloc[0]
    assert row["attn_to_mlp"] == pytest.approx(post[7, 0, 1].item())
    assert row["mlp_to_attn"] == pytest.approx(post[7, 1, 0].item())
    assert row["mlp_resid"] == pytest.approx(resid[7, 1].item())


def test_a_state_dict_with_its_config_gives_the_same_tables_as_the_model():
    cfg = preset("looped-3x3", loop_repeat_embed=True, **SMALL)
    model = GPT(cfg)
    with torch.no_grad():
        model.loop_repeat_embed.copy_(torch.arange(3.0)[:, None].expand(3, 32))
    from_model = routing_tables(model)
    from_state = routing_tables(model.state_dict(), cfg)
    for key, table in from_model.items():
        assert table.equals(from_state[key]), key
    norms = from_model["embeddings"]["norm"].tolist()
    assert norms == pytest.approx([0.0, 32**0.5, 2 * 32**0.5])


def test_a_variant_state_dict_without_its_config_is_refused():
    state = GPT(preset("rqz", **SMALL)).state_dict()
    with pytest.raises(ValueError, match=r"state dict has variant tensors \(rqz_iter_embed"):
        routing_tables(state)

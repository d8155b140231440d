"""Family "pr325": PR #325's looped middle-cycle GPT against its golden vectors
(tests/golden/upstream_pr325: the script's own GPT, perturbed weights, float32)."""

from __future__ import annotations

import dataclasses
import io
import math
import zlib

import pytest
import torch
import torch.nn.functional as F
import zstandard

from conftest import expected, fixture_dir
from golf_core.config import ModelConfig, TrainConfig, apply_overrides
from golf_core.model import preset
from golf_core.model.families import build_model
from golf_core.model.pr325 import (
    IDENTIFYING_KEYS,
    Model,
    config_from_state_dict,
)
from golf_core.optim import build_optimizers, group_parameters
from golf_core.quant.pr325 import read_artifact

FIXTURE = "upstream_pr325"
# the constructor arguments that are sizes (the rest are the architecture options)
SIZES = {"vocab_size", "model_dim", "num_heads", "num_kv_heads", "bigram_vocab_size",
         "bigram_dim", "loop_adapter_dim", "rope_dims"}  # fmt: skip


def fixture_config() -> ModelConfig:
    """expected.json's `config` (the script's constructor args = our field names)."""
    return apply_overrides(ModelConfig(family="pr325"), expected(FIXTURE)["config"])


def fixture_model() -> tuple[Model, dict]:
    sd = torch.load(fixture_dir(FIXTURE) / "state_dict.pt", weights_only=True)
    model = Model(fixture_config())
    model.load_state_dict(sd, strict=True)
    return model.eval(), torch.load(fixture_dir(FIXTURE) / "batch.pt", weights_only=True)


def tiny_config(**overrides: object) -> ModelConfig:
    """Every option on: untied head, backout, MTP, bigram projection, adapters, XSA."""
    kw = dict(family="pr325", vocab_size=96, num_layers=4, model_dim=32, num_heads=4,
              num_kv_heads=2, loop_core_layers=2, loop_repeats=3, loop_attn_every=2,
              loop_adapter_dim=4, loop_repeat_embed=True, bigram_vocab_size=37, bigram_dim=16,
              xsa_last_n=3, rope_dims=4, ln_scale=True, tie_embeddings=False,
              backout_layer=3, backout_init=0.1, mtp_num_heads=2)  # fmt: skip
    return dataclasses.replace(ModelConfig(), **{**kw, **overrides})


def test_the_fixture_state_dict_loads_strictly_and_reproduces_the_scripts_loss():
    model, batch = fixture_model()
    exp = expected(FIXTURE)
    with torch.no_grad():
        loss = model(batch["input_ids"], batch["target_ids"]).item()
        logits = model(batch["input_ids"])
    per_seq = [F.cross_entropy(lg.float(), t).item() for lg, t in zip(logits, batch["target_ids"])]
    assert loss == pytest.approx(exp["loss"], rel=1e-5)
    assert per_seq == pytest.approx(exp["per_sequence_loss"], rel=1e-5)


def test_forward_hidden_gives_the_stream_after_each_of_the_14_virtual_layers():
    model, batch = fixture_model()
    with torch.no_grad():
        hidden = model.forward_hidden(batch["input_ids"])
        logits = model(batch["input_ids"])
    assert len(hidden) == expected(FIXTURE)["effective_layers"] == model.schedule.depth
    x = F.rms_norm(hidden[-1], (hidden[-1].size(-1),))
    head = 30.0 * torch.tanh(F.linear(x, model.tok_emb.weight) / 30.0)
    torch.testing.assert_close(head, logits)
    # stem 2, then repeats 0, 2, 4 attend and 1, 3 refine (2 blocks each), tail 2
    kinds = [s.kind for s in model.schedule.steps]
    assert kinds == ["stem"] * 2 + (["core"] * 2 + ["refine"] * 2) * 2 + ["core"] * 2 + ["tail"] * 2
    assert model.core_modules() == [*model.loop_blocks, *model.refine_blocks]


def test_config_from_state_dict_needs_only_the_options_no_shape_tells():
    sd = torch.load(fixture_dir(FIXTURE) / "state_dict.pt", weights_only=True)
    base = ModelConfig(loop_attn_every=2, xsa_last_n=4, rope_dims=8, ln_scale=True)
    cfg = config_from_state_dict({f"_orig_mod.{k}": v for k, v in sd.items()}, base)
    assert cfg == fixture_config()
    model = build_model(cfg)
    model.load_state_dict(sd, strict=True)
    batch = torch.load(fixture_dir(FIXTURE) / "batch.pt", weights_only=True)
    with torch.no_grad():
        loss = model.eval()(batch["input_ids"], batch["target_ids"]).item()
    assert loss == pytest.approx(expected(FIXTURE)["loss"], rel=1e-5)
    assert all(any(k.startswith(p) for k in sd) for p in IDENTIFYING_KEYS)
    # without a base, the options no shape tells are PR #325's record command's
    default = config_from_state_dict(sd)
    assert (default.loop_attn_every, default.xsa_last_n, default.rope_dims, default.ln_scale) == (
        2, 4, 16, True)  # fmt: skip
    with pytest.raises(ValueError, match="BACKOUT_LAYER"):
        config_from_state_dict({**sd, "backout_lambda": torch.tensor(0.0)}, base)


def test_the_pr325_preset_is_the_fixture_architecture_at_the_published_size():
    cfg, fix = preset("pr325"), fixture_config()
    for name in expected(FIXTURE)["config"]:
        if name not in SIZES:
            assert getattr(cfg, name) == getattr(fix, name), name
    # PR #325's README: 6 blocks at 640d, 10 heads / 5 KV, 2 x 5 core, adapters 64, bigram
    # 2048 x 128, RoPE on 16 dims; its train.log: model_params:25607485, effective_layers:14
    assert (cfg.model_dim, cfg.num_heads, cfg.num_kv_heads) == (640, 10, 5)
    assert (cfg.bigram_vocab_size, cfg.bigram_dim, cfg.loop_adapter_dim, cfg.rope_dims) == (
        2048, 128, 64, 16)  # fmt: skip
    with torch.device("meta"):
        counts = build_model(cfg).parameter_counts()
    assert counts["total"] == 25_607_485 and counts["effective_depth"] == 14


def test_the_pr363_presets_are_its_3x3_and_2x5_loop_shapes_on_the_record_model():
    with torch.device("meta"):
        m33, m25 = build_model(preset("pr363-3x3")), build_model(preset("pr363-2x5"))
    assert (len(m33.stem_blocks), len(m33.loop_blocks), len(m33.tail_blocks)) == (3, 3, 3)
    assert m33.schedule.depth == 15 and m33.cfg.loop_repeats == 3
    assert (len(m25.stem_blocks), len(m25.loop_blocks), len(m25.tail_blocks)) == (2, 2, 2)
    assert m25.schedule.depth == 14 and m25.cfg.loop_repeats == 5
    # the pair differs in shape only; from the record in heads (PR #363: 8 heads, 4 KV)
    a, b = dataclasses.asdict(preset("pr363-3x3")), dataclasses.asdict(preset("pr363-2x5"))
    assert {k for k in a if a[k] != b[k]} == {"num_layers", "loop_core_layers", "loop_repeats"}
    record = dataclasses.asdict(preset("pr325"))
    assert {k for k in b if b[k] != record[k]} == {"num_heads", "num_kv_heads"}
    assert (m25.cfg.num_heads, m25.cfg.num_kv_heads) == (8, 4)


def test_every_parameter_gets_a_finite_gradient_and_lands_in_the_scripts_optimizer_group():
    torch.manual_seed(0)
    model = Model(tiny_config()).train()
    with torch.no_grad():  # off the zero inits, so that every branch passes gradient
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ids = torch.randint(0, 96, (2, 12))
    model(ids, torch.roll(ids, -1, 1)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    groups = {n: g for g, items in group_parameters(model).items() for n, _ in items}
    # the script: Adam for tok_emb and the bigram table (token LR), vectors, scalars and its
    # control patterns; Muon for block/adapter/MTP matrices and the bigram projection
    assert groups["tok_emb.weight"] == groups["bigram.embed.weight"] == "token"
    assert groups["lm_head.weight"] == "head"
    for name in ("loop_repeat_embed", "skip_weights", "smear.gate",
                 "backout_lambda", "bigram.scale", "loop_adapters.0.adapter_scale",
                 "refine_blocks.0.local_mix_gate", "loop_blocks.0.resid_mix"):
        assert groups[name] == "scalar", name
    for name in ("bigram.proj.weight", "loop_adapters.5.up.weight", "mtp_heads.1.weight",
                 "refine_blocks.1.mlp.fc.weight", "tail_blocks.0.attn.c_k.weight"):
        assert groups[name] == "matrix", name


def test_a_tiny_model_learns_under_the_trainers_optimizers():
    torch.manual_seed(0)
    model = Model(tiny_config(mtp_num_heads=0)).train()
    optimizers = build_optimizers(model, TrainConfig())
    ids = torch.randint(0, 96, (4, 16))
    losses = []
    for _ in range(15):
        loss = model(ids, torch.roll(ids, -1, 1))
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()
        losses.append(loss.item())
    assert math.isfinite(losses[-1]) and losses[-1] < losses[0] - 0.5


def test_logits_are_causal_through_bigram_smear_and_refinement_shifts():
    torch.manual_seed(0)
    model = Model(tiny_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        ids = torch.randint(0, 96, (1, 10))
        changed = ids.clone()
        changed[0, 6] = (ids[0, 6] + 1) % 96
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_routing_tables_have_a_row_per_virtual_layer_and_the_loop_extras():
    model, _ = fixture_model()
    tables = model.routing_tables()
    assert {"skip_weights", "resid_mix", "lanes", "embeddings", "params", "adapters",
            "gates"} <= set(tables)  # fmt: skip
    mix = tables["resid_mix"]
    assert len(mix) == 14 and {"layer", "physical", "cycle", "x_coef_mean", "x0_coef_mean"} <= set(
        mix.columns)  # fmt: skip
    assert mix["cycle"].tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 0, 0]
    # XSA on the last 4 attention blocks (loop 0, 1 and tail 0, 1); LN scale 1/sqrt(v + 1)
    assert mix["xsa"].tolist() == [False, False] + [True, True, False, False] * 2 + [True] * 4
    core = mix[mix["kind"] != "refine"]
    assert core["ln_scale"].tolist() == pytest.approx([1 / math.sqrt(v + 1) for v in core["layer"]])
    assert (mix[mix["kind"] == "refine"]["ln_scale"] == 1.0).all()
    skips = tables["skip_weights"]
    assert skips["encoder_layer"].tolist() == [1, 0] and skips["decoder_layer"].tolist() == [12, 13]
    assert len(tables["embeddings"]) == 5 and tables["lanes"].empty
    adapters = tables["adapters"]
    pairs = [[r, b] for r in range(5) for b in (0, 1)]
    assert adapters[["repeat", "block"]].values.tolist() == pairs
    assert adapters["attn"].tolist() == [r % 2 == 0 for r in range(5) for _ in (0, 1)]
    assert tables["gates"]["name"].tolist() == [
        "smear.gate", "refine_blocks.0.local_mix_gate", "refine_blocks.1.local_mix_gate",
        "bigram.scale"]  # fmt: skip
    counts = tables["params"].iloc[0]
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["effective_depth"] == 14 and model.attention_layers() == 10


def test_read_artifact_dequantizes_the_scripts_int6_zstd_format(tmp_path):
    codes = torch.randint(-32, 32, (3, 4), dtype=torch.int8)
    row_scale = torch.tensor([0.5, 0.25, 2.0], dtype=torch.float16)
    w = {"a.weight.q": codes, "a.weight.scale": row_scale, "b.q": codes[0],
         "b.scale": torch.tensor(0.5, dtype=torch.float16), "c": torch.ones(3).half()}
    meta = {"a.weight": {"type": "int6"}, "b": {"type": "int8"}, "c": "passthrough"}
    buf = io.BytesIO()
    torch.save({"w": w, "m": meta}, buf)
    for i, blob in enumerate((zstandard.ZstdCompressor(level=22).compress(buf.getvalue()),
                              zlib.compress(buf.getvalue(), 9))):  # fmt: skip
        path = tmp_path / f"final_model{i}.int6.ptz"
        path.write_bytes(blob)
        sd = read_artifact(path)
        torch.testing.assert_close(sd["a.weight"], codes.float() * row_scale.float()[:, None])
        torch.testing.assert_close(sd["b"], codes[0].float() * 0.5)
        assert sd["c"].dtype == torch.float32
    (tmp_path / "junk.ptz").write_bytes(b"not an artifact")
    assert read_artifact(tmp_path / "junk.ptz") is None


def test_read_artifact_declines_the_other_families_artifacts():
    for folder, name in (("upstream_baseline", "model.int8.ptz"),
                         ("upstream_pr363", "model.int8.ptz"),
                         ("upstream_pr1204", "model.int6.ptz")):  # fmt: skip
        path = fixture_dir(folder) / name
        if path.exists():
            assert read_artifact(path) is None, folder


def test_test_time_depth_says_what_the_trained_loop_allows():
    model = Model(tiny_config())
    with pytest.raises(ValueError, match="LOOP_REPEATS=3"):
        model(torch.zeros(1, 4, dtype=torch.long), num_iters=4)


def test_a_scale_keeps_the_depth_a_preset_sets_even_when_it_equals_the_default():
    from golf_core.config import ModelConfig
    from golf_core.settings import resolve

    assert ModelConfig().num_layers == 9  # PR #363's 3x3 sets exactly the default depth
    mcfg, _ = resolve(scale="cpu", preset="pr363-3x3", environ={})
    assert (mcfg.num_layers, mcfg.loop_core_layers, mcfg.loop_repeats) == (9, 3, 3)
    assert mcfg.model_dim == 128  # the scale's width still applies

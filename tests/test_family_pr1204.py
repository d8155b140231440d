"""PR #1204 (parallel residuals + mini depth recurrence, family "pr1204") against the record's
own `GPT`'s golden fixture, its int6 artifact, its logs, and its invariants."""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import fields, replace

import brotli
import pytest
import torch
import torch.nn.functional as F

from conftest import expected, fixture_dir
from golf_core.config import ModelConfig, TrainConfig, from_dict
from golf_core.model import CONTROL_PATTERNS, build_model, detect_family, pr1204, preset
from golf_core.optim import build_optimizers, group_parameters
from golf_core.quant.pr1204 import read_int6_artifact

NAME = "upstream_pr1204"
# a tiny record: 5 physical layers, 1,2 repeated (7 virtual: 0 1 2 1 2 3 4), lanes from
# physical 3, every extra on
TINY = replace(
    preset("pr1204"), vocab_size=64, num_layers=5, model_dim=32, num_heads=4, num_kv_heads=2,
    bigram_vocab_size=32, bigram_dim=8, xsa_last_n=5, rope_dims=4, ve_dim=8, ve_layers=(5, 6),
    recur_layers=(1, 2), repeat_untie_mlp_layers=(1, 2), parallel_start_layer=3,
    canon_ac_layers=(1, 4),
)  # fmt: skip
# block 0's attention is off (DISABLE_LAYER0_ATTN): its scale and gain stay, unused, as there
UNUSED = {"blocks.0.attn_scale", "blocks.0.attn.q_gain"}


def _config(exp: dict) -> ModelConfig:
    """expected.json's constructor args are the script's env vars lower-cased (neg_slope is
    NEGATIVE_SLOPE's): our fields."""
    args = dict(exp["config"], family="pr1204")
    args["negative_slope"] = args.pop("neg_slope")
    return from_dict(ModelConfig, args, source="expected.json")


@pytest.fixture(scope="module")
def fixture():
    folder = fixture_dir(NAME)
    exp = expected(NAME)
    state = torch.load(folder / "state_dict.pt", weights_only=True)
    batch = torch.load(folder / "batch.pt", weights_only=True)
    return folder, exp, state, batch


def _loaded(exp: dict, state: dict, active: bool = True) -> pr1204.Model:
    model = pr1204.Model(_config(exp))
    model.set_recurrence_active(active)  # before loading, as the script's eval path does
    model.load_state_dict(state, strict=True)
    return model.eval()


def _per_sequence(model, batch) -> list[float]:
    with torch.no_grad():
        logits = model(batch["input_ids"])
    ce = F.cross_entropy(logits.transpose(1, 2).float(), batch["target_ids"], reduction="none")
    return ce.mean(dim=1).tolist()


def _loss(model, batch, **kw) -> float:
    with torch.no_grad():
        return model(batch["input_ids"], batch["target_ids"], **kw).item()


# ----------------------------------------------------------------------------- the fixture


def test_state_dict_has_the_scripts_names_shapes_and_order(fixture):
    _, exp, state, _ = fixture
    ours = pr1204.Model(_config(exp)).state_dict()
    assert list(ours) == list(state)
    assert {k: list(v.shape) for k, v in ours.items()} == exp["state_dict_shapes"]
    assert detect_family(state) == "pr1204"


@pytest.mark.parametrize("active", [True, False], ids=["recurrence_on", "recurrence_off"])
def test_model_reproduces_the_scripts_loss_and_each_sequence_loss(fixture, active):
    _, exp, state, batch = fixture
    model = _loaded(exp, state, active)
    key = "recurrence_on" if active else "recurrence_off"
    assert model.recurrence_active is active
    assert _loss(model, batch) == pytest.approx(exp[f"loss_{key}"], rel=1e-5)
    assert _per_sequence(model, batch) == pytest.approx(exp[f"per_seq_loss_{key}"], rel=1e-5)
    # num_iters picks either schedule whatever the switch says
    assert _loss(model, batch, num_iters=1) == pytest.approx(exp["loss_recurrence_off"], rel=1e-5)
    assert _loss(model, batch, num_iters=2) == pytest.approx(exp["loss_recurrence_on"], rel=1e-5)


def test_virtual_to_physical_map_is_the_scripts(fixture):
    _, exp, state, _ = fixture
    model = _loaded(exp, state)
    assert model.v2p() == exp["v2p_recurrence_on"]
    assert model.v2p(False) == list(range(7))


def test_lane_table_equals_the_scripts_logged_lane_routing(fixture):
    _, exp, state, _ = fixture
    lanes = _loaded(exp, state).routing_tables()["lanes"]
    want = [{**{k: v for k, v in row.items() if k != "virtual"}, "layer": row["virtual"]}
            for row in exp["lane_routing"]]
    got = lanes.to_dict("records")
    assert [r["layer"] for r in got] == [r["layer"] for r in want] == [6, 7, 8]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-6)


def test_config_read_off_the_state_dict_builds_a_model_that_loads_it_strictly(fixture):
    _, exp, state, batch = fixture
    # what no shape shows: which layers repeat / take the value embedding, the lane start,
    # XSA depth, RoPE dims, LN scale, layer-0 attention
    base = replace(ModelConfig(), recur_layers=(2, 3), ve_layers=(5, 6), parallel_start_layer=4,
                   xsa_last_n=7, rope_dims=8, ln_scale=True, disable_layer0_attn=True)
    cfg = pr1204.config_from_state_dict(state, base)
    assert cfg == _config(exp)
    model = build_model(cfg)
    model.set_recurrence_active(True)
    model.load_state_dict(state, strict=True)
    assert _loss(model, batch) == pytest.approx(exp["loss_recurrence_on"], rel=1e-5)
    with pytest.raises(ValueError, match="recur_layers"):
        pr1204.config_from_state_dict(state, replace(base, recur_layers=()))
    # without the extras: no value embedding, bigram, lanes or repeat MLPs; an untied head
    bare = replace(TINY, ve_enabled=False, ve_layers=(), bigram_vocab_size=0,
                   parallel_residual=False, repeat_untie_mlp="none", repeat_untie_mlp_layers=(),
                   tie_embeddings=False, canon_ac_layers=())
    sd = build_model(bare).state_dict()
    got = pr1204.config_from_state_dict(sd, replace(ModelConfig(), **{
        k: getattr(bare, k) for k in ("recur_layers", "parallel_start_layer", "xsa_last_n",
                                      "rope_dims", "ln_scale", "disable_layer0_attn")}))
    assert build_model(got).load_state_dict(sd, strict=True) is not None
    assert (got.num_layers, got.mlp_mult, got.tie_embeddings) == (5, 3, False)
    assert (got.bigram_vocab_size, got.ve_enabled, got.repeat_untie_mlp) == (0, False, "none")


# ----------------------------------------------------------------------------- the artifact


def test_int6_artifact_roundtrip_reproduces_the_scripts_loss(fixture):
    folder, exp, state, batch = fixture
    sd = read_int6_artifact(folder / "model.int6.ptz")
    assert set(sd) == set(state) and all(t.dtype == torch.float32 for t in sd.values())
    assert torch.equal(sd["qo_bank"][0], torch.zeros(64, 64))  # block 0's attention: dropped
    model = _loaded(exp, sd)
    assert _loss(model, batch) == pytest.approx(exp["int6_roundtrip_loss_recurrence_on"],
                                                rel=1e-5)


def _write(path, obj: dict, stride: int = 2) -> None:
    """The script's writer: torch.save, byte shuffle (b"BSHF" + u16 stride), brotli 11."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    raw = buf.getvalue()
    shuffled = b"".join(raw[s::stride] for s in range(stride))
    path.write_bytes(brotli.compress(b"BSHF" + stride.to_bytes(2, "little") + shuffled,
                                     quality=11))


def test_quantized_entries_dequantize_per_row_as_the_script_does(tmp_path):
    # 2 layers, width 3, MLP 2; block 0's attention dropped (DISABLE_LAYER0_ATTN)
    q = torch.tensor([[-31, 0, 31], [5, -7, 2]], dtype=torch.int8)
    s = torch.tensor([0.5, 0.25], dtype=torch.float16)
    w = {"blocks.0.mlp.fc.weight.q": q, "blocks.0.mlp.fc.weight.scale": s,
         "tok_emb.weight.q": q, "tok_emb.weight.scale": torch.tensor(0.125)}
    m = {"blocks.0.mlp.fc.weight": {"type": "int6"}, "tok_emb.weight": {"type": "int8"}}
    plain = {"blocks.1.mlp.fc.weight": torch.full((2, 3), 1.5),
             **{f"blocks.{p}.mlp.proj.weight": torch.full((3, 2), -2.0) for p in range(2)},
             **{f"blocks.1.attn.{k}.weight": torch.eye(3) for k in ("c_q", "c_k", "c_v", "proj")}}
    for name, t in plain.items():
        w[name], m[name] = t.half(), "passthrough"
    _write(tmp_path / "a.ptz", {"w": w, "m": m}, stride=3)
    sd = read_int6_artifact(tmp_path / "a.ptz")
    assert torch.equal(sd["mlp_up_bank"][0], q.float() * s.float()[:, None])
    assert torch.equal(sd["mlp_up_bank"][1], torch.full((2, 3), 1.5))
    assert torch.equal(sd["tok_emb.weight"], q.float() * 0.125)
    assert torch.equal(sd["qo_bank"], torch.stack([torch.zeros(3, 3), torch.eye(3)] * 2))
    assert sd["kv_bank"].shape == (4, 3, 3) and sd["mlp_down_bank"].shape == (2, 3, 2)
    # with the script's template: its dtypes (the record holds embeddings in bfloat16) and
    # its block-0 matrices
    template = {"tok_emb.weight": torch.zeros(2, 3, dtype=torch.bfloat16),
                "qo_bank": torch.ones(4, 3, 3), "kv_bank": torch.ones(4, 3, 3),
                "mlp_up_bank": torch.zeros(2, 2, 3), "mlp_down_bank": torch.zeros(2, 3, 2)}
    sd = read_int6_artifact(tmp_path / "a.ptz", template)
    assert sd["tok_emb.weight"].dtype == torch.bfloat16
    assert torch.equal(sd["qo_bank"][0], torch.ones(3, 3))
    del w["blocks.1.mlp.fc.weight"]
    _write(tmp_path / "b.ptz", {"w": w, "m": m})
    with pytest.raises(ValueError, match="b.ptz.*passthrough 'blocks.1.mlp.fc.weight'"):
        read_int6_artifact(tmp_path / "b.ptz")


def test_other_formats_are_not_this_one(fixture, tmp_path):
    folder = fixture[0]
    (tmp_path / "z.ptz").write_bytes(zlib.compress(b"x" * 100))
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "text").write_bytes(b"hello")
    for path in (folder / "state_dict.pt", tmp_path / "z.ptz", tmp_path / "empty",
                 tmp_path / "text"):
        assert read_int6_artifact(path) is None, path


@pytest.mark.parametrize("damage", ["truncated", "trailing", "not_torch", "not_w_m"])
def test_a_broken_artifact_is_a_value_error_naming_the_file(fixture, tmp_path, damage):
    data = (fixture[0] / "model.int6.ptz").read_bytes()
    path = tmp_path / "final_model.int6.ptz"
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "trailing":
        path.write_bytes(data + b"\x00junk")
    elif damage == "not_torch":
        path.write_bytes(brotli.compress(b"BSHF\x02\x00" + b"\x01" * 64, quality=11))
    else:
        _write(path, {"w": {}})
    with pytest.raises(ValueError, match="final_model.int6.ptz"):
        read_int6_artifact(path)


# ----------------------------------------------------------------------------- the preset


def test_preset_is_the_fixtures_architecture_at_the_records_logged_size(fixture):
    exp = fixture[1]
    rec, fix = preset("pr1204"), _config(exp)
    sizes = {"vocab_size", "num_layers", "model_dim", "num_heads", "num_kv_heads",
             "bigram_vocab_size", "bigram_dim", "ve_dim", "ve_layers", "xsa_last_n", "rope_dims",
             "recur_layers", "repeat_untie_mlp_layers", "parallel_start_layer",
             "recur_start_step"}  # fmt: skip
    options = {"negative_slope" if k == "neg_slope" else k for k in exp["config"]} - sizes
    assert options <= {f.name for f in fields(ModelConfig)}
    for name in options:
        assert getattr(rec, name) == getattr(fix, name), name
    # the sizes scale alike: the hinge pair repeats (untied MLPs), lanes start past it, value
    # embeddings on virtual L-2, L-1, XSA over the last L virtual layers
    for c in (rec, fix):
        L = c.num_layers
        assert c.recur_layers == c.repeat_untie_mlp_layers == (L // 2 - 1, L // 2)
        assert c.parallel_start_layer > L // 2
        assert (c.ve_layers, c.xsa_last_n) == ((L - 2, L - 1), L)
    # the logs' header: model_params:30352046, XSA active_layers:[2..12], 66 lane params,
    # 3,145,728 repeat-MLP params
    with torch.device("meta"):
        model = build_model(rec)
    assert sum(p.numel() for p in model.parameters()) == 30_352_046
    assert [i for i, b in enumerate(model.blocks) if b.attn.use_xsa] == list(range(2, 13))
    assert model.parallel_post_lambdas.numel() + model.parallel_resid_lambdas.numel() == 66
    assert sum(p.numel() for p in model.repeat_mlp.parameters()) == 3_145_728
    assert (rec.recur_start_step, rec.disable_layer0_attn) == (3000, True)


# ----------------------------------------------------------------------------- invariants


def test_activation_copies_the_bank_mlps_once_and_is_idempotent():
    model = build_model(TINY)
    assert not model.recurrence_active and len(model.forward_hidden(torch.zeros(1, 4).long())) == 5
    model.activate_recurrence()
    fc = model.repeat_mlp[1].fc.weight
    assert model.recurrence_active and torch.equal(fc, model.mlp_up_bank[2])
    with torch.no_grad():
        fc.add_(1.0)
    model.activate_recurrence()
    assert torch.equal(fc, model.mlp_up_bank[2] + 1.0)  # not copied again
    assert len(model.forward_hidden(torch.zeros(1, 4).long())) == 7


def test_hidden_states_end_in_the_logits_and_future_tokens_change_nothing():
    torch.manual_seed(0)
    model = build_model(TINY)
    model.activate_recurrence()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        ids = torch.randint(0, 64, (2, 16))
        hidden = model.forward_hidden(ids)
        logits = F.linear(model.final_norm(hidden[-1]), model.tok_emb.weight)
        assert torch.allclose(30 * torch.tanh(logits / 30), model(ids), atol=1e-6)
        later = ids.clone()
        later[:, 10] = (later[:, 10] + 1) % 64
        assert torch.equal(model(ids)[:, :10], model(later)[:, :10])


def test_every_parameter_gets_a_finite_gradient_but_block_0s_attention_controls():
    torch.manual_seed(0)
    model = build_model(TINY)
    model.activate_recurrence()
    ids = torch.randint(0, 64, (2, 16))
    model(ids, torch.roll(ids, -1, 1)).backward()
    for name, p in model.named_parameters():
        if name in UNUSED:
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert not model.qo_bank.grad[0].any() and model.qo_bank.grad[1:].abs().sum() > 0


def test_optimizer_groups_follow_the_script_where_names_can_say_so():
    model = build_model(TINY)
    groups = {n: g for g, items in group_parameters(model).items() for n, _ in items}
    for name in pr1204.BANKS:  # 3-D; Muon takes them by the "_bank" name
        assert not any(p in name for p in CONTROL_PATTERNS), name
    assert groups["repeat_mlp.0.fc.weight"] == groups["repeat_mlp.1.proj.weight"] == "matrix"
    for name in ("skip_gates", "skip_weights", "ve_shared.proj.weight", "bigram.proj.weight",
                 "smear.gate", "parallel_post_lambdas", "canon_a", "blocks.3.resid_mix",
                 "ve_layer_scales.0", "bigram.scale"):
        assert groups[name] == "scalar", name
    # the script's token group: Adam at the tied-embedding LR
    for name in ("tok_emb.weight", "bigram.embed.weight", "ve_shared.embed.weight"):
        assert groups[name] == "token", name


def test_a_tiny_model_learns_a_repeated_batch():
    torch.manual_seed(0)
    model = build_model(replace(TINY, canon_ac_layers=()))
    model.activate_recurrence()
    opts = build_optimizers(model, TrainConfig())
    ids = torch.randint(0, 64, (4, 16))
    losses = []
    for _ in range(20):
        loss = model(ids, torch.roll(ids, -1, 1))
        loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] - 0.5


def test_routing_tables_cover_every_virtual_layer(fixture):
    _, exp, state, _ = fixture
    model = _loaded(exp, state)
    tables = model.routing_tables()
    assert {"skip_weights", "resid_mix", "lanes", "embeddings", "params"} <= set(tables)
    mix = tables["resid_mix"]
    assert mix["physical"].tolist() == exp["v2p_recurrence_on"]
    assert mix["cycle"].tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0]
    assert mix["repeat_mlp"].tolist()[4:6] == [0, 1] and not mix["attn"][0]
    assert mix["x0_coef_mean"][4] == pytest.approx(state["blocks.4.resid_mix"][1].mean().item())
    skips = tables["skip_weights"]
    assert skips["decoder_layer"].tolist() == [4, 5, 6, 7]
    emb = tables["embeddings"]
    assert emb.loc[emb["name"] == "ve_layer_scales", "layer"].tolist() == [5, 6]
    counts = tables["params"].iloc[0]
    # the repeated layers' attention slices run twice; their MLPs are untied
    assert counts["shared"] == 2 * (2 * 64 * 64 + 2 * 32 * 64)
    assert counts["total"] == sum(t.numel() for t in state.values())
    assert counts["effective_depth"] == 9 and model.attention_layers() == 8
    assert model.core_modules() == []

"""Family "pr363": PR #363's RecurrentGPT and its artifact against the fixture its script made."""

from __future__ import annotations

import dataclasses
import io
import zlib

import pytest
import torch
import torch.nn.functional as F
import zstandard

from conftest import expected, fixture_dir
from golf_core.config import ModelConfig, TrainConfig, from_dict
from golf_core.model import detect_family, pr363
from golf_core.model.families import build_model
from golf_core.model.presets import preset
from golf_core.optim import build_optimizers, group_parameters
from golf_core.quant.pr363 import read_artifact as read_pr363_artifact
from golf_core.quant.upstream import quantize_state_dict_int8

NAME = "upstream_pr363"
TINY = ModelConfig(
    family="pr363", vocab_size=64, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2,
    num_unique_blocks=2, effective_depth=5, depth_lora_rank=2, bigram_buckets=16, bigram_dim=8,
    xsa_last_n=1,
)  # fmt: skip


def _fixture_config() -> ModelConfig:
    return from_dict(ModelConfig, {"family": "pr363", **expected(NAME)["config"]},
                     source="expected.json")  # fmt: skip


@pytest.fixture(scope="module")
def fixture():
    folder = fixture_dir(NAME)
    state = torch.load(folder / "state_dict.pt", weights_only=True)
    batch = torch.load(folder / "batch.pt", weights_only=True)
    model = build_model(_fixture_config())
    model.load_state_dict(state, strict=True)
    return model.eval(), state, batch, expected(NAME), folder


def _loss(model, batch) -> float:
    with torch.no_grad():
        return model(batch["input_ids"], batch["target_ids"]).item()


def _perturbed(model, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


# ----------------------------------------------------------------------------- the fixture


def test_state_dict_has_the_scripts_names_shapes_and_order(fixture):
    model, state, _, exp, _ = fixture
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == exp["state_dict_shapes"]
    assert list(model.state_dict()) == list(state)
    assert detect_family(state) == "pr363"


def test_model_reproduces_the_scripts_loss(fixture):
    model, _, batch, exp, _ = fixture
    assert _loss(model, batch) == pytest.approx(exp["loss"], rel=1e-5)


def test_model_reproduces_each_sequence_loss(fixture):
    model, _, batch, exp, _ = fixture
    with torch.no_grad():
        logits = model(batch["input_ids"])  # (B, T, V)
    nll = F.cross_entropy(logits.transpose(1, 2).float(), batch["target_ids"], reduction="none")
    assert nll.mean(dim=1).tolist() == pytest.approx(exp["per_sequence_loss"], rel=1e-5)


def test_xsa_is_on_for_every_block_that_runs_in_the_last_layers_at_all_its_depths(fixture):
    # the script flags physical blocks: the last 3 of 12 virtual layers run blocks 1, 2, 3,
    # so those do XSA at every depth (the fixture's loss says so: XSA on virtual layers 9-11
    # only gives 13.6166, not 13.6117)
    model = fixture[0]
    assert [b.attn.use_xsa for b in model.blocks] == [False, True, True, True]
    assert model.block_schedule == [i % 4 for i in range(12)]


def test_config_from_state_dict_needs_only_what_no_shape_shows(fixture):
    _, state, batch, exp, _ = fixture
    cfg = pr363.config_from_state_dict(state, ModelConfig(xsa_last_n=3))
    assert cfg == dataclasses.replace(_fixture_config(), num_layers=4)
    model = build_model(cfg)
    model.load_state_dict(state, strict=True)
    assert _loss(model.eval(), batch) == pytest.approx(exp["loss"], rel=1e-5)


# ----------------------------------------------------------------------------- the artifact


def test_artifact_roundtrip_reproduces_the_scripts_loss(fixture):
    model, state, batch, exp, folder = fixture
    deq = read_pr363_artifact(folder / "model.int8.ptz")
    assert set(deq) == set(state) and all(deq[k].dtype == state[k].dtype for k in state)
    qmodel = build_model(model.cfg)
    qmodel.load_state_dict(deq, strict=True)
    assert _loss(qmodel.eval(), batch) == pytest.approx(exp["int8_roundtrip_loss"], rel=1e-5)


def test_a_zstd_tagged_artifact_reads_like_the_zlib_one(fixture, tmp_path):
    folder = fixture[4]
    data = (folder / "model.int8.ptz").read_bytes()
    assert data[:4] == b"ZLIB"
    raw = zlib.decompress(data[4:])
    path = tmp_path / "model.zstd.ptz"
    path.write_bytes(b"ZSTD" + zstandard.ZstdCompressor(level=3).compress(raw))
    a, b = read_pr363_artifact(folder / "model.int8.ptz"), read_pr363_artifact(path)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_quantized_matrix_dequantizes_per_row_as_the_script_does(tmp_path):
    gen = torch.Generator().manual_seed(0)
    state = {"blocks.0.mlp.fc.weight": torch.randn(300, 256, generator=gen), "v": torch.ones(3)}
    obj = {**quantize_state_dict_int8(state), "__quant_format__": "mixed_int8_int6_v1"}
    buf = io.BytesIO()
    torch.save(obj, buf)
    path = tmp_path / "final_model_submission.ptz"
    path.write_bytes(b"ZSTD" + zstandard.ZstdCompressor(level=3).compress(buf.getvalue()))
    deq = read_pr363_artifact(path)
    q, s = obj["quantized"]["blocks.0.mlp.fc.weight"], obj["scales"]["blocks.0.mlp.fc.weight"]
    assert torch.equal(deq["blocks.0.mlp.fc.weight"], q.float() * s.float()[:, None])
    assert torch.equal(deq["v"], state["v"])


def test_a_file_without_the_tag_is_not_this_format(tmp_path):
    path = tmp_path / "upstream.int8.ptz"
    path.write_bytes(zlib.compress(b"upstream writes no tag"))
    assert read_pr363_artifact(path) is None


@pytest.mark.parametrize("tag", ["ZLIB", "ZSTD"])
def test_a_truncated_artifact_is_a_one_line_error_naming_the_file(fixture, tmp_path, tag):
    raw = zlib.decompress((fixture[4] / "model.int8.ptz").read_bytes()[4:])
    body = zlib.compress(raw, 9) if tag == "ZLIB" else zstandard.ZstdCompressor().compress(raw)
    path = tmp_path / "cut.ptz"
    path.write_bytes(tag.encode() + body[: len(body) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt") as err:
        read_pr363_artifact(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- presets


def test_the_preset_is_the_fixtures_architecture_at_the_published_size():
    # published (PR #363 README): 4 unique blocks x 3 cycles, 768d, 8 heads / 4 KV, 3x MLP,
    # BigramHash 4096 x 128, XSA on the last 4, LoRA rank 4: "22.8M parameters"
    cfg = preset("pr363")
    sizes = ("vocab_size", "model_dim", "num_heads", "num_kv_heads", "bigram_buckets",
             "bigram_dim", "xsa_last_n", "num_layers")  # fmt: skip
    fix = _fixture_config()
    assert [getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in sizes] == [
        getattr(fix, f.name) for f in dataclasses.fields(fix) if f.name not in sizes
    ]
    with torch.device("meta"):
        counts = build_model(cfg).parameter_counts()
    assert round(counts["total"] / 1e5) == 228 and counts["effective_depth"] == 12
    assert cfg.model_dim == 768 and cfg.bigram_buckets == 4096 and cfg.xsa_last_n == 4


# ----------------------------------------------------------------------------- structure


def test_hidden_states_follow_the_cycle_and_end_in_the_logits():
    model = _perturbed(build_model(TINY)).eval()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = model.forward_hidden(ids)
        logits = model(ids)
    assert len(hidden) == 5 and model.block_schedule == [0, 1, 0, 1, 0]
    head = F.linear(model.final_norm(hidden[-1]), model.tok_emb.weight)
    assert torch.allclose(30.0 * torch.tanh(head / 30.0), logits, atol=1e-6)
    assert model.core_modules() == list(model.blocks)
    with pytest.raises(ValueError, match="num_iters"):
        model(ids, num_iters=2)


def test_changing_a_token_changes_no_logit_before_it():
    model = _perturbed(build_model(TINY)).eval()
    ids = torch.randint(0, 64, (1, 10), generator=torch.Generator().manual_seed(2))
    other = ids.clone()
    other[0, 6] = (ids[0, 6] + 1) % 64
    with torch.no_grad():
        a, b = model(ids), model(other)
    assert torch.equal(a[:, :6], b[:, :6]) and not torch.allclose(a[:, 6:], b[:, 6:])


def test_every_parameter_gets_a_finite_gradient_in_the_scripts_optimizer_groups():
    model = _perturbed(build_model(TINY))
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(3))
    model(ids[:, :-1], ids[:, 1:]).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    groups = {g: {n for n, _ in ps} for g, ps in group_parameters(model).items()}
    # the script: Muon gets block matrices, adapters and bigram_proj; Adam the rest
    matrices = {n for n, p in model.named_parameters() if p.ndim == 2 and "resid_mix" not in n
                and n.startswith(("blocks.", "depth_adapters."))}  # fmt: skip
    assert groups["matrix"] == matrices | {"bigram_proj.weight"}
    assert groups["token"] == {"tok_emb.weight", "bigram_emb.weight"}  # the token LR
    assert "skip_weights" in groups["scalar"]


def test_a_tiny_model_learns_a_repeated_batch():
    torch.manual_seed(0)
    model = build_model(TINY)
    opts = build_optimizers(model, TrainConfig())
    ids = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(4))
    losses = []
    for _ in range(20):
        loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_routing_tables_cover_every_virtual_layer_and_adapter(fixture):
    model = fixture[0]
    tables = model.routing_tables()
    assert set(tables) == {"skip_weights", "resid_mix", "lanes", "embeddings", "lora", "params"}
    mix = tables["resid_mix"]
    assert mix["layer"].tolist() == list(range(12))
    assert mix["physical"].tolist() == [i % 4 for i in range(12)]
    assert mix["cycle"].tolist() == [i // 4 for i in range(12)]
    assert {"x_coef_mean", "x0_coef_mean", "xsa"} <= set(mix.columns)
    skips = tables["skip_weights"]
    assert skips["encoder_layer"].tolist() == [5, 4, 3, 2, 1, 0]
    assert skips["decoder_layer"].tolist() == [6, 7, 8, 9, 10, 11]
    lora = tables["lora"]
    assert len(lora) == 12 and (lora["q_delta_norm"] > 0).all() and (lora["v_delta_norm"] > 0).all()
    assert tables["lanes"].empty and "mlp_to_attn" in tables["lanes"].columns
    assert tables["embeddings"].empty and list(tables["embeddings"].columns) == [
        "name",
        "index",
        "norm",
        "rms",
    ]
    params = tables["params"].iloc[0]
    block = sum(p.numel() for p in model.blocks.parameters())
    assert params["shared"] == block and params["unrolled"] == params["total"] + 2 * block
    assert params["total"] == sum(v.numel() for v in fixture[1].values())

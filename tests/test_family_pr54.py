"""PR #54 (RQZ-Golf, family "pr54") against its own `GPT`'s golden fixture and its invariants."""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, expected, fixture_dir
from golf_core.config import ModelConfig, TrainConfig, from_dict
from golf_core.model import build_model, detect_family, pr54, preset
from golf_core.optim import build_optimizers, group_parameters

NAME = "upstream_pr54"
TINY = ModelConfig(
    family="pr54", vocab_size=64, model_dim=32, num_heads=4, num_kv_heads=2,
    num_unique_layers=3, num_recurrent_passes=2,
)  # fmt: skip
SCRIPT = REPO.parent / "shared" / "reference" / pr54.SOURCE


def _config(exp: dict) -> ModelConfig:
    """expected.json's constructor args are the script's env vars lower-cased: our fields."""
    return from_dict(ModelConfig, {**exp["config"], "family": "pr54"}, source="expected.json")


@pytest.fixture(scope="module")
def upstream():
    folder = fixture_dir(NAME)
    exp = expected(NAME)
    state = torch.load(folder / "state_dict.pt", weights_only=True)
    batch = torch.load(folder / "batch.pt", weights_only=True)
    model = pr54.Model(_config(exp))
    model.load_state_dict(state, strict=True)
    return model.eval(), state, batch, exp


def _per_sequence(model, batch, **kw) -> torch.Tensor:
    with torch.no_grad():
        logits = model(batch["input_ids"], **kw)
    ce = F.cross_entropy(logits.transpose(1, 2).float(), batch["target_ids"], reduction="none")
    return ce.mean(dim=1)


def _perturbed(model, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


# ----------------------------------------------------------------------------- the fixture


def test_fixture_state_dict_has_exactly_our_names_and_shapes(upstream):
    model, state, _, exp = upstream
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: list(v.shape) for k, v in state.items()} == exp["state_dict_shapes"]


def test_model_reproduces_the_scripts_loss_and_each_sequence_loss(upstream):
    model, _, batch, exp = upstream
    with torch.no_grad():
        loss = model(batch["input_ids"], batch["target_ids"]).item()
    assert loss == pytest.approx(exp["loss"], rel=1e-5)
    assert _per_sequence(model, batch).tolist() == pytest.approx(exp["per_sequence_loss"], rel=1e-5)


def test_test_time_passes_one_to_six_reproduce_the_scripts_losses(upstream):
    model, _, batch, exp = upstream
    for k, want in exp["loss_by_eval_passes"].items():
        with torch.no_grad():
            got = model(batch["input_ids"], batch["target_ids"], num_iters=int(k)).item()
        assert got == pytest.approx(want, rel=1e-5), f"K'={k}"


def test_config_read_off_the_state_dict_builds_a_model_that_loads_it_strictly(upstream):
    _, state, batch, exp = upstream
    cfg = pr54.config_from_state_dict({f"_orig_mod.{k}": v for k, v in state.items()})
    assert (cfg.family, cfg.model_dim, cfg.num_heads, cfg.num_kv_heads) == ("pr54", 64, 4, 2)
    assert (cfg.num_unique_layers, cfg.num_recurrent_passes) == (7, 3)
    model = build_model(cfg)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        loss = model.eval()(batch["input_ids"], batch["target_ids"]).item()
    assert loss == pytest.approx(exp["loss"], rel=1e-5)


def test_the_fixture_state_dict_is_detected_as_pr54(upstream):
    assert detect_family(upstream[1]) == "pr54"


def test_without_recurrence_it_is_the_upstream_baseline():
    """NUM_UNIQUE_LAYERS=0: the script's fallback is the plain baseline (its fixture loads)."""
    folder = fixture_dir("upstream_baseline")
    exp = expected("upstream_baseline")
    state = torch.load(folder / "state_dict.pt", weights_only=True)
    batch = torch.load(folder / "batch.pt", weights_only=True)
    cfg = pr54.config_from_state_dict(state)
    assert (cfg.num_unique_layers, cfg.num_layers) == (0, exp["config"]["num_layers"])
    model = pr54.Model(cfg)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        loss = model.eval()(batch["input_ids"], batch["target_ids"]).item()
    assert loss == pytest.approx(exp["loss"], rel=1e-5)
    assert model.core_modules() == [] and model.parameter_counts()["shared"] == 0


# ----------------------------------------------------------------------------- the preset


def test_preset_is_the_fixtures_architecture_at_the_published_size(upstream):
    cfg, exp = preset("pr54"), expected(NAME)
    sizes = {"model_dim", "num_heads", "num_kv_heads"}
    for key, value in exp["config"].items():
        if key not in sizes:
            assert getattr(cfg, key) == value, key
    # published: the script's defaults, 7 unique + 1 recurrent x 3 at width 512, 8/4 heads
    assert (cfg.model_dim, cfg.num_heads, cfg.num_kv_heads, cfg.mlp_mult) == (512, 8, 4, 2)
    assert (cfg.num_unique_layers, cfg.num_recurrent_passes) == (7, 3)
    with torch.device("meta"):
        counts = build_model(cfg).parameter_counts()
    assert counts == {
        "total": 15_223_872, "unique": 13_386_808, "shared": 1_837_064,
        "unrolled": 15_223_872 + 2 * 1_837_064, "physical_layers": 8, "effective_depth": 10,
    }  # fmt: skip


# ----------------------------------------------------------------------------- semantics


def test_recurrent_pass_adds_the_scaled_whole_block_output_and_reuses_the_last_embedding():
    model = _perturbed(pr54.Model(TINY)).eval()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hs = model.forward_hidden(ids, num_iters=4)
        x0 = F.rms_norm(model.tok_emb(ids), (32,))
        block, psi, scale = model.blocks[-1], model.iter_embeds, 1 / math.sqrt(2)
        assert len(hs) == 3 + 4
        for k in range(4):
            x = hs[2 + k]
            want = x + scale * block(x + psi[min(k, 1)], x0)  # K' = 4 > K = 2: psi_1 again
            torch.testing.assert_close(hs[3 + k], want, rtol=1e-5, atol=1e-6)
        # the unique layers do not depend on K', and the logits read the last layer
        torch.testing.assert_close(model.forward_hidden(ids, num_iters=1)[:3], hs[:3])
        logits = F.linear(model.final_norm(hs[-1]), model.tok_emb.weight)
        torch.testing.assert_close(model(ids, num_iters=4), 30 * torch.tanh(logits / 30))


def test_forward_hidden_has_one_state_per_virtual_layer_at_the_trained_k():
    model = pr54.Model(TINY)
    ids = torch.zeros(1, 4, dtype=torch.long)
    assert len(model.forward_hidden(ids)) == model.schedule.depth == 3 + 2
    assert model.schedule.virtual_to_physical == (0, 1, 2, 3, 3)
    assert model.schedule_for(3).cycle == (0, 0, 0, 0, 1, 2)
    with pytest.raises(ValueError, match="num_iters"):
        model(ids, num_iters=0)


@pytest.mark.skipif(importlib.util.find_spec("sentencepiece") is None, reason="no sentencepiece")
def test_same_seed_gives_the_scripts_init_including_iter_embeds_randn():
    if not SCRIPT.is_file():
        pytest.skip(f"reference script not found at {SCRIPT}")
    spec = importlib.util.spec_from_file_location("pr54_reference", SCRIPT)
    ref = importlib.util.module_from_spec(spec)
    sys.modules.pop("pr54_reference", None)
    spec.loader.exec_module(ref)
    args = {k: getattr(TINY, k) for k in expected(NAME)["config"]}  # the constructor's names
    torch.manual_seed(7)
    theirs = ref.GPT(**args).state_dict()
    torch.manual_seed(7)
    ours = pr54.Model(TINY).state_dict()
    assert list(ours) == list(theirs)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    assert 0.005 < ours["iter_embeds"].std().item() < 0.05  # randn * 0.02, not zeros


# ----------------------------------------------------------------------------- training


def test_one_backward_gives_every_trainable_parameter_a_finite_gradient():
    model = _perturbed(pr54.Model(replace(TINY, tie_embeddings=False)))
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(2))
    model.iter_embeds.requires_grad_(True)  # used in forward (the script only never steps it)
    model(ids, ids.roll(-1, 1)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_optimizer_groups_are_the_scripts_and_iter_embeds_stays_at_init():
    model = pr54.Model(TINY)
    assert not model.iter_embeds.requires_grad
    groups = {g: {n for n, _ in ps} for g, ps in group_parameters(model).items()}
    blocks = dict(model.blocks.named_parameters())
    assert groups["token"] == {"tok_emb.weight"} and groups["head"] == set()
    assert groups["matrix"] == {f"blocks.{n}" for n, p in blocks.items() if p.ndim == 2
                                and "resid_mix" not in n}
    assert groups["scalar"] == {f"blocks.{n}" for n, p in blocks.items() if p.ndim < 2
                                or "resid_mix" in n} | {"skip_weights"}
    init = model.iter_embeds.detach().clone()
    opts = build_optimizers(model, TrainConfig())
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 64, (4, 16), generator=gen)
    losses = []
    for _ in range(10):
        loss = model(x, x.roll(-1, 1))
        loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert torch.equal(model.iter_embeds, init)


# ----------------------------------------------------------------------------- analysis


def test_routing_tables_repeat_the_recurrent_block_per_pass(upstream):
    model = upstream[0]
    tables = model.routing_tables()
    assert set(tables) >= {"skip_weights", "resid_mix", "lanes", "embeddings", "params"}
    mix = tables["resid_mix"]
    assert mix["layer"].tolist() == list(range(10))
    assert mix["physical"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 7, 7]
    assert mix["cycle"].tolist() == [0] * 7 + [0, 1, 2]
    assert mix["x_coef_mean"].iloc[-1] == mix["x_coef_mean"].iloc[-3]
    skips = tables["skip_weights"]
    assert skips["encoder_layer"].tolist() == [2, 1, 0]
    assert skips["decoder_layer"].tolist() == [3, 4, 5]
    emb = tables["embeddings"]
    assert emb["name"].tolist() == ["iter_embeds"] * 3
    want = upstream[1]["iter_embeds"].norm(dim=1).tolist()
    assert emb["norm"].tolist() == pytest.approx(want)
    assert tables["lanes"].empty and "mlp_to_attn" in tables["lanes"].columns
    assert tables["params"].iloc[0]["total"] == model.parameter_counts()["total"]


def test_flop_counts_count_each_recurrent_pass():
    model = pr54.Model(TINY)
    block = sum(m.weight.numel() for m in model.blocks[0].modules()
                if isinstance(m, torch.nn.Linear))
    assert model.matmul_params_per_token() == (3 + 2) * block + 64 * 32
    assert model.attention_layers() == 5
    assert model.core_modules() == [model.blocks[3]]

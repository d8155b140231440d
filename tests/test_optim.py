"""golf_core.optim against upstream's Muon fixture, its grouping rule and its LR schedule."""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import expected, fixture_dir
from golf_core.config import ModelConfig, TrainConfig
from golf_core.model import CONTROL_PATTERNS, GPT, build_model, preset
from golf_core.optim import (
    Muon,
    _check_partition,
    apply_schedule,
    build_optimizers,
    group_parameters,
    lr_multiplier,
    muon_momentum_at,
    newton_schulz5,
)

TINY = dict(num_layers=4, model_dim=32, num_heads=2, num_kv_heads=1, vocab_size=64)


def _muon_fixture() -> dict:
    return torch.load(fixture_dir("upstream_muon") / "muon.pt", weights_only=True)


def _muon_steps(init: list, grads: list, **kw) -> list[torch.Tensor]:
    params = [torch.nn.Parameter(t.clone()) for t in init]
    opt = Muon(params, **kw)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


# ----------------------------------------------------------------------------- Muon


# bf16 tolerance: the reference is bf16 (8 significant bits); on this CPU build we match it
# exactly, but another BLAS may accumulate the 5 matmul rounds in another order. One bf16 ulp
# at the outputs' magnitude (|x| < 0.5) is 2**-9; allow 4 ulps.
NS_ATOL = 4 * 2**-9


@pytest.mark.parametrize("name", ["G1", "G2"])
def test_newton_schulz_matches_upstream_outputs_to_bf16_tolerance(name):
    fx = _muon_fixture()
    out = newton_schulz5(fx[name], steps=expected("upstream_muon")["backend_steps"])
    assert out.dtype == torch.bfloat16 and out.shape == fx[name].shape
    torch.testing.assert_close(out.float(), fx[f"ns5_{name}"].float(), atol=NS_ATOL, rtol=0)


def test_newton_schulz_orthogonalizes_roughly_and_keeps_zero_at_zero():
    g = torch.randn(24, 40, generator=torch.Generator().manual_seed(0))
    sv = torch.linalg.svdvals(newton_schulz5(g).float())
    assert sv.min() > 0.5 and sv.max() < 1.3  # the quintic's target band, not exactly 1
    assert not newton_schulz5(torch.zeros(8, 4)).any()
    with pytest.raises(ValueError, match=r"expected a 2-D matrix, got shape \(3, 4, 5\)"):
        newton_schulz5(torch.zeros(3, 4, 5))


def test_three_muon_steps_match_upstream_params():
    fx, exp = _muon_fixture(), expected("upstream_muon")
    kw = dict(lr=exp["lr"], momentum=exp["momentum"], backend_steps=exp["backend_steps"],
              nesterov=exp["nesterov"])
    for got, want in zip(_muon_steps(fx["init"], fx["grads"], **kw), fx["after_3_steps"]):
        # updates are bf16 (NS output) times lr=0.04 added to fp32 params
        torch.testing.assert_close(got, want, atol=exp["lr"] * NS_ATOL, rtol=0)


def test_muon_without_nesterov_differs_and_muon_refuses_vectors():
    fx = _muon_fixture()
    a = _muon_steps(fx["init"], fx["grads"], lr=0.04, momentum=0.95, backend_steps=5)
    b = _muon_steps(fx["init"], fx["grads"], lr=0.04, momentum=0.95, backend_steps=5,
                    nesterov=False)
    assert not torch.allclose(a[0], b[0])
    with pytest.raises(ValueError, match=r"must be 2-D matrices or 3-D banks, got shape \(4,\)"):
        Muon([torch.nn.Parameter(torch.zeros(4))], lr=0.1, momentum=0.9, backend_steps=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank: int, world: int, port: int, fx: dict, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        params = _muon_steps(fx["init"], fx["grads"], lr=0.04, momentum=0.95, backend_steps=5)
        out[rank] = [p.clone() for p in params]
    finally:
        dist.destroy_process_group()


def test_distributed_round_robin_muon_equals_single_process():
    fx = _muon_fixture()
    single = _muon_steps(fx["init"], fx["grads"], lr=0.04, momentum=0.95, backend_steps=5)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_distributed_worker, args=(2, _free_port(), fx, out), nprocs=2, join=True)
        results = dict(out)
    for rank in (0, 1):  # each rank computed one matrix; the all-reduce gave both to both
        for got, want in zip(results[rank], single):
            assert torch.equal(got, want)


# ----------------------------------------------------------------------------- grouping


def _names(model, params) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _opt_params(opt) -> list:
    return [p for g in opt.param_groups for p in g["params"]]


def test_baseline_grouping_is_upstreams_and_covers_every_parameter_once():
    model = GPT(ModelConfig(**TINY))
    tcfg = TrainConfig()
    opts = build_optimizers(model, tcfg)
    assert [type(o).__name__ for o in opts] == ["Adam", "Muon", "Adam"]
    token, muon, scalar = opts
    assert _names(model, _opt_params(token)) == {"tok_emb.weight"}
    assert token.param_groups[0]["lr"] == token.param_groups[0]["base_lr"] == tcfg.tied_embed_lr
    matrices = _names(model, _opt_params(muon))
    assert matrices == {n for n, p in model.named_parameters()
                        if n.startswith("blocks.") and p.ndim == 2 and "resid_mix" not in n}
    controls = _names(model, _opt_params(scalar))
    assert "skip_weights" in controls and all(any(c in n for c in CONTROL_PATTERNS)
                                              for n in controls)
    assert muon.param_groups[0]["base_lr"] == tcfg.matrix_lr
    assert scalar.param_groups[0]["base_lr"] == tcfg.scalar_lr
    all_params = [p for o in opts for p in _opt_params(o)]
    assert len(all_params) == len({id(p) for p in all_params}) == len(list(model.parameters()))


def test_untied_head_gets_its_own_adam_and_the_embedding_uses_embed_lr():
    model = GPT(ModelConfig(**TINY, tie_embeddings=False))
    tcfg = TrainConfig()
    token, head, *_ = build_optimizers(model, tcfg)
    assert token.param_groups[0]["lr"] == tcfg.embed_lr
    assert _names(model, _opt_params(head)) == {"lm_head.weight"}
    assert head.param_groups[0]["lr"] == tcfg.head_lr


def test_looped_model_groups_shared_blocks_once_and_repeat_tensors_to_adam():
    cfg = preset("pr363-3x3", model_dim=32, num_heads=2, num_kv_heads=1, vocab_size=64,
                 loop_repeat_embed=True, loop_adapter_dim=2)
    model = build_model(cfg)
    groups = group_parameters(model)
    named = dict(model.named_parameters())
    assert sum(len(v) for v in groups.values()) == len(named)
    scalar = {n for n, _ in groups["scalar"]}
    assert "loop_repeat_embed" in scalar
    assert any(n.startswith("loop_adapters.") for n, _ in groups["matrix"])
    build_optimizers(model, TrainConfig())  # the partition check passes


def test_partition_check_names_a_parameter_in_two_optimizers_or_in_none():
    model = GPT(ModelConfig(**TINY))
    emb = model.tok_emb.weight
    rest = [p for n, p in model.named_parameters() if n != "tok_emb.weight"]
    with pytest.raises(ValueError, match=r"'tok_emb.weight' is in two optimizers"):
        _check_partition(model, [torch.optim.Adam([emb]), torch.optim.Adam([emb, *rest])])
    with pytest.raises(ValueError, match=r"in no optimizer: tok_emb.weight$"):
        _check_partition(model, [torch.optim.Adam(rest)])


def test_optimizers_train_a_tiny_model():
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**TINY, "num_layers": 2}))
    tcfg = TrainConfig(iterations=12, warmdown_iters=4, max_wallclock_seconds=0)
    opts = build_optimizers(model, tcfg)
    x = torch.arange(64).repeat(2, 1)[:, :33]  # a deterministic pattern to memorize
    losses = []
    for step in range(12):
        apply_schedule(opts, step, 0.0, tcfg)
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        for opt in opts:
            opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ----------------------------------------------------------------------------- schedule


def _tc(**kw) -> TrainConfig:
    return dataclasses.replace(TrainConfig(), **kw)


@pytest.mark.parametrize(
    ("step", "mult"),
    [(0, 1.0), (79, 1.0), (80, 1.0), (90, 0.5), (95, 0.25), (99, 0.05), (100, 1.0)],
)
def test_step_warmdown_is_linear_over_the_last_iters(step, mult):
    # iterations 100, warmdown 20: the last 20 steps go 20/20 .. 1/20; step 100 is past the
    # end (upstream returns 1.0 there; the loop never steps at it)
    tcfg = _tc(iterations=100, warmdown_iters=20, max_wallclock_seconds=0)
    assert lr_multiplier(step, 12345.0, tcfg) == pytest.approx(mult)


@pytest.mark.parametrize(
    ("step", "elapsed_ms", "mult"),
    [(100, 5_000.0, 1.0), (180, 9_000.0, 1.0), (190, 9_500.0, 0.5), (199, 9_950.0, 0.05),
     (200, 10_000.0, 0.0), (210, 10_500.0, 0.0)],
)
def test_wallclock_warmdown_reaches_zero_at_the_cap(step, elapsed_ms, mult):
    # 50 ms/step, warmdown 20 steps = the last 1000 ms before the 10 s cap
    tcfg = _tc(iterations=20000, warmdown_iters=20, max_wallclock_seconds=10.0)
    assert lr_multiplier(step, elapsed_ms, tcfg) == pytest.approx(mult)


def test_no_warmdown_means_constant_lr():
    assert lr_multiplier(99, 1e9, _tc(warmdown_iters=0, iterations=100)) == 1.0


@pytest.mark.parametrize(("step", "momentum"), [(0, 0.85), (250, 0.90), (500, 0.95), (900, 0.95)])
def test_muon_momentum_warms_up_linearly(step, momentum):
    assert muon_momentum_at(step, TrainConfig()) == pytest.approx(momentum)


def test_apply_schedule_sets_lr_from_base_lr_and_muon_momentum():
    model = GPT(ModelConfig(**TINY))
    tcfg = _tc(iterations=100, warmdown_iters=20, max_wallclock_seconds=0,
               muon_momentum_warmup_steps=0)
    opts = build_optimizers(model, tcfg)
    assert apply_schedule(opts, 90, 0.0, tcfg) == (pytest.approx(0.5), tcfg.muon_momentum)
    for opt in opts:
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(0.5 * group["base_lr"])
    assert opts[1].param_groups[0]["momentum"] == tcfg.muon_momentum


def test_grouping_sees_through_ddp_and_compile_name_prefixes():
    class Wrapper(torch.nn.Module):  # DDP keeps the model as `.module`
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.module = inner

    model = GPT(ModelConfig(**TINY))
    groups = group_parameters(Wrapper(model))
    assert [n for n, _ in groups["token"]] == ["tok_emb.weight"]
    assert len(groups["matrix"]) == len(group_parameters(model)["matrix"])

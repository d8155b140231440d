"""dtype by measurement: `auto` follows the matmul probe, never the CPU model; Muon in either
Newton-Schulz dtype and on 3-D banks."""

from __future__ import annotations

import pytest
import torch

from golf_core import precision
from golf_core.config import ConfigError
from golf_core.distributed import pick_autocast
from golf_core.optim import Muon, newton_schulz5

CPU = torch.device("cpu")


@pytest.fixture
def measured():
    """Install probe results (fast or slow bf16) for the test, then measure again after."""
    def install(fp32_ms: float, bf16_ms: float) -> None:
        for kind in ("autocast", "muon_ns_dtype"):
            precision.adopt(kind, precision.Probe(kind, fp32_ms, bf16_ms, 1,
                                                  precision.ProbeShape()))
    yield install
    precision.adopt("autocast", None)
    precision.adopt("muon_ns_dtype", None)


def test_auto_picks_bf16_only_where_the_probe_measured_it_faster(measured):
    measured(fp32_ms=1.0, bf16_ms=0.2)  # native bf16 (AMX / AVX-512 BF16)
    assert pick_autocast(CPU, "auto")[0] is torch.bfloat16
    assert precision.pick_ns_dtype("auto", CPU)[0] is torch.bfloat16
    measured(fp32_ms=0.3, bf16_ms=23.6)  # emulated bf16 (the AVX2 machine of the issue)
    dtype, why = pick_autocast(CPU, "auto")
    assert dtype is None and "fp32 0.30 ms, bf16 23.60 ms" in why
    assert precision.pick_ns_dtype("auto", CPU)[0] is torch.float32
    measured(fp32_ms=1.0, bf16_ms=0.95)  # a near tie is not worth the rounding
    assert pick_autocast(CPU, "auto")[0] is None


def test_explicit_choices_ignore_the_probe_and_bad_values_name_the_setting(measured):
    measured(fp32_ms=0.3, bf16_ms=23.6)
    assert pick_autocast(CPU, "bf16")[0] is torch.bfloat16
    assert precision.pick_ns_dtype("bf16", CPU)[0] is torch.bfloat16
    assert precision.pick_ns_dtype("fp32", CPU)[0] is torch.float32
    with pytest.raises(ConfigError, match="muon_ns_dtype: 'fp16' is not one of auto, bf16, fp32"):
        precision.pick_ns_dtype("fp16", CPU)


def test_the_probes_time_both_dtypes_at_the_runs_shape_once_per_process():
    shape = precision.ProbeShape(model_dim=32, num_heads=2, num_kv_heads=1, seq_len=32,
                                 tokens=128)
    p = precision.block_probe(shape)
    assert p.fp32_ms > 0 and p.bf16_ms > 0 and p.threads == torch.get_num_threads()
    assert p.shape == shape and precision.block_probe(shape) is p  # cached
    assert p.to_dict()["bf16_faster"] == (p.fp32_ms / p.bf16_ms >= precision.BF16_MIN_SPEEDUP)
    ns = precision.ns_probe(shape)
    assert ns.shape.model_dim == 32 and ns.shape.tokens == 0  # widths only
    assert set(precision.probes()) == {"autocast", "muon_ns_dtype"}


def test_the_probe_shape_follows_the_run():
    from golf_core.config import ModelConfig, TrainConfig

    mcfg = ModelConfig(model_dim=64, num_heads=4, num_kv_heads=2, mlp_mult=3)
    tcfg = TrainConfig(train_batch_tokens=8192, micro_batch_tokens=4096, train_seq_len=256)
    s = precision.ProbeShape.of(mcfg, tcfg)
    assert (s.model_dim, s.num_heads, s.mlp_mult, s.seq_len, s.tokens) == (64, 4, 3, 256, 4096)
    big = TrainConfig(train_batch_tokens=524_288, micro_batch_tokens=65_536, train_seq_len=1024)
    assert precision.ProbeShape.of(mcfg, big).tokens == precision.MAX_PROBE_TOKENS


def test_fp32_newton_schulz_orthogonalizes_like_bf16():
    g = torch.randn(48, 96, generator=torch.Generator().manual_seed(0))
    x32, x16 = newton_schulz5(g, dtype=torch.float32), newton_schulz5(g)
    assert x32.dtype is torch.float32 and x16.dtype is torch.bfloat16
    # NS5 pushes singular values into roughly [0.7, 1.2], whatever the dtype
    for x in (x32, x16):
        sv = torch.linalg.svdvals(x.float())
        assert sv.min() > 0.5 and sv.max() < 1.3
    assert (x32 - x16.float()).abs().max() < 0.05


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_bank_is_updated_as_its_slices_would_be(dtype):
    gen = torch.Generator().manual_seed(1)
    bank = torch.nn.Parameter(torch.randn(3, 16, 8, generator=gen))
    slices = [torch.nn.Parameter(bank.detach()[i].clone()) for i in range(3)]
    grads = torch.randn(2, 3, 16, 8, generator=gen)
    opt_bank = Muon([bank], lr=0.05, momentum=0.9, backend_steps=5, ns_dtype=dtype)
    opt_slices = Muon(slices, lr=0.05, momentum=0.9, backend_steps=5, ns_dtype=dtype)
    for g in grads:
        bank.grad = g.clone()
        for i, p in enumerate(slices):
            p.grad = g[i].clone()
        opt_bank.step()
        opt_slices.step()
    assert torch.equal(bank.detach(), torch.stack([p.detach() for p in slices]))

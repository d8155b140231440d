"""dtype by measurement: `auto` follows the matmul probe, never the CPU model; Muon in either
Newton-Schulz dtype and on 3-D banks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from golf_core import precision
from golf_core.config import ConfigError
from golf_core.distributed import pick_autocast
from golf_core.model import layers
from golf_core.optim import Muon, newton_schulz5

CPU = torch.device("cpu")


@pytest.fixture
def measured():
    """Install probe results (fast or slow bf16) for the test, then measure again after."""
    def install(fp32_ms: float, bf16_ms: float, attention: tuple[float, float] | None = None
                ) -> None:
        for kind in ("attention", "autocast", "muon_ns_dtype"):
            f, b = attention if kind == "attention" and attention else (fp32_ms, bf16_ms)
            precision.adopt(kind, precision.Probe(kind, f, b, 1, precision.ProbeShape()))
    yield install
    for kind in ("attention", "autocast", "muon_ns_dtype"):
        precision.adopt(kind, None)
    pick_autocast(CPU, "none")  # leaves cpu_attention_fp32 off


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


def test_attention_runs_in_fp32_under_autocast_where_its_bf16_kernel_measured_slower(measured):
    measured(fp32_ms=1.0, bf16_ms=0.5, attention=(1.0, 2.5))  # AMX matmuls, slow bf16 attention
    dtype, why = pick_autocast(CPU, "auto")
    assert dtype is torch.bfloat16 and layers.cpu_attention_fp32()
    assert "attention in fp32" in why and "fp32 1.00 ms, bf16 2.50 ms" in why
    measured(fp32_ms=1.0, bf16_ms=0.5, attention=(1.0, 0.5))  # bf16 attention faster too
    assert pick_autocast(CPU, "auto")[0] is torch.bfloat16 and not layers.cpu_attention_fp32()
    measured(fp32_ms=1.0, bf16_ms=0.5, attention=(1.0, 2.5))
    pick_autocast(CPU, "auto")
    assert pick_autocast(CPU, "bf16")[0] is torch.bfloat16  # upstream's all-bf16 autocast
    assert not layers.cpu_attention_fp32()
    measured(fp32_ms=1.0, bf16_ms=1.0, attention=(1.0, 2.5))  # fp32 run: no autocast to split
    assert pick_autocast(CPU, "auto")[0] is None and not layers.cpu_attention_fp32()


def test_causal_attention_in_fp32_is_the_fp32_kernel_on_the_same_inputs():
    from golf_core.model.layers import causal_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 16, 8, generator=gen).bfloat16() for h in (4, 2, 2))
    want = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with layers.attention_fp32(True):
            y = causal_attention(q, k, v)
        plain = causal_attention(q, k, v)  # the bf16 kernel
    assert y.dtype is torch.bfloat16 and torch.equal(y, want.bfloat16())
    assert plain.dtype is torch.bfloat16
    # without autocast the flag changes nothing: fp32 in, the plain call (our CPU kernel where
    # it applies, SDPA elsewhere: the same values to fp32 rounding, not bit for bit)
    with layers.attention_fp32(True):
        flagged = causal_attention(q.float(), k.float(), v.float())
    assert torch.equal(flagged, causal_attention(q.float(), k.float(), v.float()))
    torch.testing.assert_close(flagged, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["unet", "pr54", "pr325", "pr363", "pr363-3x3", "pr1204"])
def test_every_family_trains_under_autocast_with_fp32_attention(name):
    from golf_core.model import build_model
    from golf_core.model.presets import preset

    cfg = preset(name, model_dim=32, num_heads=2, num_kv_heads=1, vocab_size=64)
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.randint(0, 64, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16), layers.attention_fp32(True):
        loss = model(x, x)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)


def test_the_probe_shape_says_whether_the_run_compiles():
    from golf_core.config import ModelConfig, TrainConfig

    m = ModelConfig()
    of = lambda **kw: precision.ProbeShape.of(m, TrainConfig(**kw)).compiled  # noqa: E731
    assert of(compile="blocks") and of(compile="model") and of(compile="1")
    assert not of(compile="none") and not of(compile="auto", iterations=180)
    assert of(compile="auto", iterations=20000)


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
    a = precision.attention_probe(shape)
    assert a.fp32_ms > 0 and a.bf16_ms > 0 and precision.attention_probe(shape) is a
    assert {"attention", "block", "muon_ns_dtype"} <= set(precision.probes())


def test_auto_reads_one_step_estimated_as_depth_blocks_plus_the_head():
    """The head counts: in fp32 it is our fused head + loss kernel, under bf16 the logits are
    written; a block alone undersold fp32 (module docstring)."""
    shape = precision.ProbeShape(model_dim=32, num_heads=2, num_kv_heads=1, seq_len=32,
                                 tokens=128, vocab_size=64, depth=5)
    step = precision.autocast_probe(shape)
    parts = precision.probes()
    block, head = (precision.Probe(**{k: v for k, v in parts[k].items()
                                      if k not in ("bf16_speedup", "bf16_faster", "shape")},
                                   shape=shape) for k in ("block", "head"))
    assert step.fp32_ms == pytest.approx(5 * block.fp32_ms + head.fp32_ms)
    assert step.bf16_ms == pytest.approx(5 * block.bf16_ms + head.bf16_ms)
    assert "depth=5 vocab=64" in step.describe()
    assert parts["head"]["shape"]["vocab_size"] == 64 and head.fp32_ms > 0 < head.bf16_ms
    assert pick_autocast(CPU, "auto", shape)[1].count("depth=5") == 1  # says what it read
    pick_autocast(CPU, "none")


def test_the_probe_depth_is_the_familys_virtual_depth_and_costs_no_randomness():
    from golf_core.config import ModelConfig, TrainConfig
    from golf_core.model.presets import preset

    tcfg = TrainConfig()
    state = torch.random.get_rng_state()
    depth = {name: precision.ProbeShape.of(preset(name), tcfg).depth
             for name in ("unet", "pr1204", "pr363-3x3", "pr363-flat")}
    assert torch.equal(state, torch.random.get_rng_state())  # built on the meta device
    # PR #1204: 11 layers, its recur pair run twice; PR #325's 3x3: stem + 3 x 3 core + tail
    assert depth == {"unet": 9, "pr1204": 13, "pr363-3x3": 15, "pr363-flat": 11}
    assert precision.ProbeShape.of(ModelConfig(vocab_size=96), tcfg).vocab_size == 96


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


@pytest.mark.slow
def test_a_compiling_run_probes_its_block_compiled_with_the_compiles_kept_apart():
    shape = precision.ProbeShape(model_dim=32, num_heads=2, num_kv_heads=1, seq_len=32,
                                 tokens=64, compiled=True)
    p = precision.block_probe(shape, attention_in_fp32=True)
    assert p.shape.compiled and "compiled" in p.describe()
    assert p.setup_s > 0 and p.fp32_ms > 0 and p.bf16_ms > 0
    eager = precision.block_probe(dataclasses.replace(shape, compiled=False))
    assert eager.setup_s == 0 and "compiled" not in eager.describe()

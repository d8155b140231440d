"""Our CPU attention kernel (golf_core.model.attention_kernel) against the faithful path,
PyTorch's `scaled_dot_product_attention`: the same outputs and gradients as an fp64 reference
to fp32 rounding (no worse than PyTorch's own fp32 kernel), for every head dim it takes, GQA,
strided inputs; the custom op passes torch's opcheck (fake shapes and strides, autograd,
compile); each family's golden loss on both paths; and the fallbacks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from golf_core.model import attention_kernel as ak
from golf_core.model.layers import causal_attention

pytestmark = pytest.mark.skipif(not ak._available(), reason="attention kernel not built here")


def _inputs(B, H, HK, T, D, dtype=torch.float64, seed=0):
    """q, k, v as (B, heads, T, Dh) views of one (B, T, heads, Dh) tensor (the families' layout:
    strided, last dim contiguous), and an output gradient."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, H + 2 * HK, D, dtype=dtype, generator=g)
    q, k, v = x[:, :, :H], x[:, :, H:H + HK], x[:, :, H + HK:]
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), torch.randn(
        B, H, T, D, dtype=dtype, generator=g)


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                          enable_gqa=q.size(1) != k.size(1))


def _run(fn, q, k, v, grad, dtype):
    q, k, v = (t.to(dtype).detach().requires_grad_() for t in (q, k, v))
    y = fn(q, k, v)
    y.backward(grad.to(dtype))
    return [t.double() for t in (y, q.grad, k.grad, v.grad)]


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("shape", [(2, 2, 1, 32, 16), (3, 4, 2, 64, 8), (2, 2, 2, 48, 32),
                                   (1, 2, 1, 256, 64), (8, 2, 1, 256, 16), (1, 1, 1, 16, 16)])
def test_outputs_and_gradients_equal_an_fp64_reference_to_fp32_rounding(shape):
    q, k, v, grad = _inputs(*shape)
    assert ak.applies(q.float(), k.float(), v.float())
    ref = _run(_sdpa, q, k, v, grad, torch.float64)
    ours = _run(ak.attention, q, k, v, grad, torch.float32)
    torchs = _run(_sdpa, q, k, v, grad, torch.float32)
    for name, a, t, r in zip(("out", "dq", "dk", "dv"), ours, torchs, ref):
        # fp32 rounding: ~1e-7 of the largest entry; PyTorch's fp32 kernel lands the same
        assert _rel(a, r) < 3e-6, f"{shape} {name}: {_rel(a, r):.1e} (torch's {_rel(t, r):.1e})"


def test_causality_a_later_token_never_reaches_an_earlier_output():
    q, k, v, _ = _inputs(2, 2, 1, 64, 16, dtype=torch.float32)
    y = ak.attention(q, k, v)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 40:] += 5.0
    v2[:, :, 40:] -= 3.0
    y2 = ak.attention(q, k2, v2)
    assert torch.equal(y[:, :, :40], y2[:, :, :40])
    assert not torch.allclose(y[:, :, 40:], y2[:, :, 40:])


def test_the_custom_ops_pass_torchs_opcheck():
    # fake tensors' shapes and strides equal the real op's, autograd registration, and a
    # torch.compile round trip
    q, k, v, grad = _inputs(2, 4, 2, 32, 16, dtype=torch.float32)
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    torch.library.opcheck(torch.ops.golf.causal_attention.default, (q, k, v))
    o, lse = torch.ops.golf.causal_attention(q, k, v)
    torch.library.opcheck(torch.ops.golf.causal_attention_backward.default,
                          (q.detach(), k.detach(), v.detach(), o.detach(), lse.detach(), grad))


def test_compiled_fullgraph_equals_eager():
    q, k, v, grad = _inputs(2, 2, 1, 64, 16, dtype=torch.float32)

    def f(q, k, v):
        return causal_attention(q, k, v) * 2.0

    torch._dynamo.reset()
    eager = _run(f, q, k, v, grad, torch.float32)
    compiled = _run(torch.compile(f, fullgraph=True, backend="aot_eager"), q, k, v, grad,
                    torch.float32)
    for a, b in zip(compiled, eager):
        assert torch.equal(a, b)


@pytest.mark.parametrize("why", ["head dim 12", "T 40", "bf16", "autocast", "switched off"])
def test_other_inputs_take_pytorchs_attention(why):
    shape = {"head dim 12": (1, 2, 1, 32, 12), "T 40": (1, 2, 1, 40, 16)}.get(why,
                                                                          (1, 2, 1, 32, 16))
    q, k, v, _ = _inputs(*shape, dtype=torch.bfloat16 if why == "bf16" else torch.float32)
    if why == "switched off":
        ak.use_kernel(False)
        try:
            assert not ak.applies(q, k, v) and ak.kernel_mode() == "sdpa"
        finally:
            ak.use_kernel(True)
        return
    if why == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not ak.applies(q, k, v)
        return
    assert not ak.applies(q, k, v)
    y = causal_attention(q, k, v)  # the fallback runs
    assert torch.allclose(y.float(), _sdpa(q, k, v).float(), atol=1e-6)


def _child(code: str, **env) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                          text=True, timeout=120)


def test_without_a_compiler_it_warns_once_and_uses_pytorchs_attention(tmp_path):
    proc = _child("from golf_core.model import attention_kernel as ak; print(ak.kernel_mode())",
                  CXX=str(tmp_path / "no-such-compiler"), GOLF_KERNEL_CACHE=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "sdpa"
    assert "using PyTorch's attention" in proc.stderr
    assert not list(tmp_path.glob("*.so*"))  # nothing half-written left behind


def test_a_bad_golf_attention_value_is_a_one_line_error():
    proc = _child("import golf_core.model.attention_kernel", GOLF_ATTENTION="fast")
    assert proc.returncode != 0
    assert "GOLF_ATTENTION='fast': expected one of auto, sdpa" in proc.stderr


@pytest.mark.parametrize("family", ["pr1204", "pr325", "pr54", "pr363"])
def test_each_familys_golden_loss_on_the_kernel_and_on_pytorchs_attention(family, monkeypatch):
    import test_fast_path as fp

    fp.check_golden_on_kernel_and_faithful(family, ak, "attention", monkeypatch)

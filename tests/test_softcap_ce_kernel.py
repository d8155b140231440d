"""Our CPU softcap cross-entropy kernel (golf_core.model.softcap_ce_kernel) against the faithful
path, `F.cross_entropy(cap * tanh(x / cap), y)` as the scripts write it: the same loss and
gradient as an fp64 reference to fp32 rounding (no worse than a few times PyTorch's own fp32
ops), across logit scales that reach tanh's saturation; strided rows; a scaled upstream
gradient; the custom op passes torch's opcheck and compiles whole; each family's golden loss on
both paths; the fallbacks and the errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from golf_core.model import softcap_ce_kernel as ck
from golf_core.model.layers import softcap_cross_entropy

pytestmark = pytest.mark.skipif(not ck._available(), reason="cross-entropy kernel not built")


def _inputs(N, V, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, V, dtype=torch.float64, generator=g) * scale
    return x, torch.randint(0, V, (N,), generator=g)


def _faithful(x, y, cap):
    return F.cross_entropy(cap * torch.tanh(x / cap), y)


def _loss_and_grad(fn, x, y, cap, dtype, upstream=1.0):
    x = x.to(dtype).detach().requires_grad_()
    loss = fn(x, y, cap)
    (loss * upstream).backward()
    return loss.double(), x.grad.double()


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("N,V,scale,cap", [(64, 1024, 0.01, 30.0), (64, 1024, 3.0, 30.0),
                                           (32, 1024, 100.0, 30.0), (40, 8, 1.0, 15.0),
                                           (17, 264, 400.0, 5.0)])
def test_loss_and_gradient_equal_an_fp64_reference_to_fp32_rounding(N, V, scale, cap):
    # scales from near-zero logits (tanh ~ x) to far past tanh's saturation (|x / cap| >> 8)
    x, y = _inputs(N, V, scale)
    ref_loss, ref_grad = _loss_and_grad(_faithful, x, y, cap, torch.float64)
    assert ck.applies(x.float(), y)
    loss, grad = _loss_and_grad(ck.softcap_cross_entropy, x, y, cap, torch.float32)
    t_loss, t_grad = _loss_and_grad(_faithful, x, y, cap, torch.float32)
    assert abs(loss - ref_loss) <= 1e-6 * abs(ref_loss) + 1e-7, (loss, ref_loss, t_loss)
    err, torchs = _rel(grad, ref_grad), _rel(t_grad, ref_grad)
    assert err < 2e-6, f"gradient off by {err:.1e} of its max (torch's fp32: {torchs:.1e})"


def test_strided_rows_and_a_scaled_upstream_gradient():
    x, y = _inputs(48, 2048, 5.0)
    wide = x.float()
    rows = wide[:, 512:1536]  # row stride 2048, last dim contiguous
    assert not rows.is_contiguous() and ck.applies(rows, y)
    y = y % 1024
    ref_loss, ref_grad = _loss_and_grad(_faithful, rows.double(), y, 30.0, torch.float64, 2.5)
    loss, grad = _loss_and_grad(ck.softcap_cross_entropy, rows, y, 30.0, torch.float32, 2.5)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    assert _rel(grad, ref_grad) < 2e-6


def test_the_custom_op_passes_torchs_opcheck_and_compiles_whole():
    x, y = _inputs(16, 64, 4.0)
    x = x.float().requires_grad_()
    torch.library.opcheck(torch.ops.golf.softcap_cross_entropy.default, (x, y, 30.0))

    def f(x, y):
        return softcap_cross_entropy(x, y, 30.0) * 2.0

    torch._dynamo.reset()
    eager = _loss_and_grad(lambda a, b, c: f(a, b), x, y, 30.0, torch.float32)
    compiled_f = torch.compile(f, fullgraph=True, backend="aot_eager")
    compiled = _loss_and_grad(lambda a, b, c: compiled_f(a, b), x, y, 30.0, torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(compiled, eager))


def test_an_out_of_range_target_is_an_error_naming_it():
    x, y = _inputs(8, 64, 1.0)
    y[3] = 64
    with pytest.raises(IndexError, match=r"target 64 is outside the vocabulary \[0, 64\)"):
        ck.softcap_cross_entropy(x.float(), y, 30.0)


@pytest.mark.parametrize("why", ["vocab 12", "bf16", "autocast", "int32 targets", "switched off"])
def test_other_inputs_take_pytorchs_ops(why):
    x, y = _inputs(8, 12 if why == "vocab 12" else 64, 2.0)
    x = x.to(torch.bfloat16 if why == "bf16" else torch.float32)
    y = y.int() if why == "int32 targets" else y
    if why == "switched off":
        ck.use_kernel(False)
        try:
            assert not ck.applies(x, y) and ck.kernel_mode() == "torch"
        finally:
            ck.use_kernel(True)
        return
    if why == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not ck.applies(x, y)
        return
    assert not ck.applies(x, y)
    got = softcap_cross_entropy(x, y.long(), 30.0)  # the fallback runs
    assert got.item() == pytest.approx(_faithful(x.float(), y.long(), 30.0).item(), rel=1e-2)


def test_a_bad_golf_cross_entropy_value_is_a_one_line_error():
    proc = subprocess.run([sys.executable, "-c", "import golf_core.model.softcap_ce_kernel"],
                          env={"PYTHONPATH": str(REPO), "GOLF_CROSS_ENTROPY": "fast"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "GOLF_CROSS_ENTROPY='fast': expected one of auto, torch" in proc.stderr


@pytest.mark.parametrize("family", ["pr1204", "pr325", "pr54", "pr363"])
def test_each_familys_golden_loss_on_the_kernel_and_on_pytorchs_ops(family, monkeypatch):
    import test_fast_path as fp

    fp.check_golden_on_kernel_and_faithful(family, ck, "softcap_cross_entropy", monkeypatch)

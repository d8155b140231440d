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
@pytest.mark.parametrize("entry", ["softcap_head_cross_entropy", "softcap_cross_entropy"])
def test_each_familys_golden_loss_on_the_kernel_and_on_pytorchs_ops(family, entry, monkeypatch):
    # training takes the fused head; with it off (as under QAT), the logits' kernel
    import test_fast_path as fp

    if entry == "softcap_cross_entropy":
        monkeypatch.setattr(ck, "head_applies", lambda *args: False)
    fp.check_golden_on_kernel_and_faithful(family, ck, entry, monkeypatch)


# ---- the head fused in (golf::softcap_head_cross_entropy)


def _head_inputs(N, V, D, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, dtype=torch.float64, generator=g)
    w = torch.randn(V, D, dtype=torch.float64, generator=g) * scale / D**0.5
    return x, w, torch.randint(0, V, (N,), generator=g)


def _head_loss_and_grads(fn, x, w, y, cap, dtype, upstream=1.0):
    x, w = (t.to(dtype).detach().requires_grad_() for t in (x, w))
    loss = fn(x, w, y, cap)
    (loss * upstream).backward()
    return loss.double(), x.grad.double(), w.grad.double()


def _unfused_head(x, w, y, cap):
    return F.cross_entropy(cap * torch.tanh(F.linear(x, w) / cap), y)


@pytest.mark.parametrize("N,V,D,scale,threads", [
    (64, 1024, 32, 3.0, 2), (37, 1024, 64, 3.0, 2), (5, 32, 8, 1.0, 1), (130, 256, 24, 1.0, 2),
    (66, 128, 48, 500.0, 2), (3, 16, 16, 0.01, 4)])
def test_fused_head_equals_an_fp64_reference_to_fp32_rounding(N, V, D, scale, threads):
    # rows not a multiple of the 4-row tile, widths not a multiple of the column chunk, logits
    # near zero to far past tanh's saturation, more threads than tiles
    x, w, y = _head_inputs(N, V, D, scale)
    ref = _head_loss_and_grads(_unfused_head, x, w, y, 30.0, torch.float64)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert ck.head_applies(x.float().requires_grad_(), w.float(), y)
        got = _head_loss_and_grads(ck.softcap_head_cross_entropy, x, w, y, 30.0, torch.float32,
                                   upstream=2.5)
    finally:
        torch.set_num_threads(saved)
    assert abs(got[0] - ref[0]) <= 1e-6 * abs(ref[0]) + 1e-7
    for name, a, b in (("x", got[1] / 2.5, ref[1]), ("weight", got[2] / 2.5, ref[2])):
        assert _rel(a, b) < 1e-5, f"d{name} off by {_rel(a, b):.1e} of its max"


def test_fused_head_takes_strided_rows_and_is_the_same_on_one_thread_or_two():
    x, w, y = _head_inputs(64, 512, 32, 2.0)
    wide = torch.cat([x, x], 1).float()[:, 16:48]  # row stride 64
    assert not wide.is_contiguous()
    out = {}
    saved = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            out[threads] = _head_loss_and_grads(ck.softcap_head_cross_entropy, wide, w, y, 30.0,
                                                torch.float32)
        finally:
            torch.set_num_threads(saved)
    ref = _head_loss_and_grads(_unfused_head, torch.cat([x, x], 1)[:, 16:48], w, y, 30.0,
                               torch.float64)
    for a, b in zip(out[1], out[2]):  # dW sums per-thread parts: fp32 rounding apart
        assert _rel(a, b) < 1e-6
    assert _rel(out[1][1], ref[1]) < 1e-5 and _rel(out[1][2], ref[2]) < 1e-5


def test_the_fused_head_op_passes_torchs_opcheck_and_compiles_whole():
    x, w, y = _head_inputs(16, 64, 16, 2.0)
    x, w = x.float().requires_grad_(), w.float().requires_grad_()
    torch.library.opcheck(torch.ops.golf.softcap_head_cross_entropy.default, (x, w, y, 30.0))

    def f(x, w, y):
        return ck.softcap_head_cross_entropy(x, w, y, 30.0) * 2.0

    torch._dynamo.reset()
    eager = _head_loss_and_grads(lambda a, b, c, d: f(a, b, c), x, w, y, 30.0, torch.float32)
    compiled_f = torch.compile(f, fullgraph=True, backend="aot_eager")
    compiled = _head_loss_and_grads(lambda a, b, c, d: compiled_f(a, b, c), x, w, y, 30.0,
                                    torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(compiled, eager))


def test_the_fused_head_names_an_out_of_range_target():
    x, w, y = _head_inputs(8, 64, 8, 1.0)
    y[5] = -1
    with pytest.raises(IndexError, match=r"target -1 is outside the vocabulary \[0, 64\)"):
        ck.softcap_head_cross_entropy(x.float().requires_grad_(), w.float(), y, 30.0)


@pytest.mark.parametrize("why", ["no grad", "nothing requires grad", "width 12", "vocab 40",
                                 "bf16", "autocast", "switched off"])
def test_other_heads_are_not_fused(why):
    x, w, y = _head_inputs(8, 40 if why == "vocab 40" else 64, 12 if why == "width 12" else 16,
                           1.0)
    x, w = x.float(), w.float()
    x.requires_grad_(why != "nothing requires grad")
    if why == "bf16":
        x = x.detach().bfloat16().requires_grad_()
    if why == "no grad":
        with torch.no_grad():
            assert not ck.head_applies(x, w, y)
        return
    if why == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not ck.head_applies(x, w, y)
        return
    if why == "switched off":
        ck.use_kernel(False)
        try:
            assert not ck.head_applies(x, w, y)
        finally:
            ck.use_kernel(True)
        return
    assert not ck.head_applies(x, w, y)


def test_softcapped_head_fuses_only_a_plain_head_in_training():
    from golf_core.model.layers import CastedLinear, softcapped_head

    x, w, y = _head_inputs(32, 64, 16, 2.0)
    emb = torch.nn.Embedding(64, 16)
    with torch.no_grad():
        emb.weight.copy_(w.float())
    x = x.float().view(2, 16, 16).requires_grad_()
    calls = []
    fused = ck.softcap_head_cross_entropy
    try:
        ck.softcap_head_cross_entropy = lambda *a: calls.append("fused") or fused(*a)
        tied = softcapped_head(x, emb, None, 30.0, y.view(2, 16))
        untied = CastedLinear(16, 64, bias=False)
        untied.weight = emb.weight
        plain = softcapped_head(x, emb, untied, 30.0, y.view(2, 16))
        assert calls == ["fused", "fused"]
        untied.qat = lambda t: t  # a QAT head keeps the unfused logits
        softcapped_head(x, emb, untied, 30.0, y.view(2, 16))
        assert calls == ["fused", "fused"]
    finally:
        ck.softcap_head_cross_entropy = fused
    want = _unfused_head(x.reshape(32, 16), emb.weight, y, 30.0)
    assert tied.item() == pytest.approx(want.item(), rel=1e-6) and plain.item() == tied.item()

"""Cross-entropy of tanh-softcapped logits on the CPU (fp32): our C++ kernel
(csrc/softcap_cross_entropy.cpp) as a torch custom op, the fast path `layers.softcap_cross_entropy`
takes where it applies; `F.cross_entropy(cap * tanh(x / cap), y)` as the scripts write it stays
the faithful path it is tested against (tests/test_softcap_ce_kernel.py) and the fallback
everywhere else.

One pass over each row computes the row's loss and its gradient together (the loss is the last
node of a training graph, so the backward only scales the stored gradient by the incoming one);
tanh and exp are polynomial approximations within a few ulp (`csrc/simd.h`).

For training, `softcap_head_cross_entropy` fuses the head in as well: from the (N, D) hidden
states and the (V, D) head weight it computes the loss and both gradients a few rows at a time,
so the (N, V) logits are never written (`layers.softcapped_head` takes it where
`head_applies`: a plain head, fp32, a gradient wanted).

Where it applies: CPU, fp32 (N, V) logits with V a multiple of 8, int64 targets, outside
autocast. Targets must lie in [0, V): unlike F.cross_entropy there is no ignore_index (no family
uses one), and an out-of-range target is an error. Built on first use like the attention kernel
(`golf_core.model.cpu_build`). `GOLF_CROSS_ENTROPY=torch` (or `use_kernel(False)`) turns it off.
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor

from golf_core.model import cpu_build

SOURCE = cpu_build.CSRC / "softcap_cross_entropy.cpp"

_mode = cpu_build.env_mode("GOLF_CROSS_ENTROPY", ("auto", "torch"))


def use_kernel(on: bool) -> None:
    """Switch the kernel on (where it applies) or off (PyTorch's ops everywhere)."""
    global _mode
    _mode = "auto" if on else "torch"


def kernel_mode() -> str:
    """'kernel' when calls that fit it run our kernel, else 'torch': what a run records."""
    return "kernel" if _mode == "auto" and _available() else "torch"


_i64, _ptr = ctypes.c_int64, ctypes.c_void_p
# What cpu_build.load needs besides the source: names for its warning, and each entry point's
# argument types (benchmarks.kernels --against builds another revision's source with them).
BUILD = ("cross-entropy kernel", "cross-entropy", {
    "golf_softcap_cross_entropy": [_ptr, _i64, _ptr, _i64, _i64, ctypes.c_float, _ptr, _ptr,
                                   ctypes.c_int],
    "golf_softcap_head_cross_entropy": [_ptr, _i64, _ptr, _i64, _ptr, _i64, _i64, _i64,
                                        ctypes.c_float, _ptr, _ptr, _ptr, ctypes.c_int],
})


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The built kernel (built on the first call), or None where it cannot be built."""
    return cpu_build.load(SOURCE, *BUILD)


@torch._dynamo.assume_constant_result
def _available() -> bool:
    """Whether the kernel is built (building it on the first call); a constant to dynamo."""
    return _library() is not None


def _fits(rows: Tensor, target: Tensor, *others: Tensor) -> bool:
    """What both kernels ask: switched on, outside CPU autocast, 2-D fp32 CPU `rows` (and
    `others`), one int64 target per row."""
    if _mode != "auto" or torch.is_autocast_enabled("cpu") or target.dtype != torch.int64:
        return False
    if any(t.device.type != "cpu" or t.dim() != 2 or t.dtype != torch.float32
           for t in (rows, *others)):
        return False
    return target.shape == rows.shape[:1]


def _check(rc: int, target: Tensor, V: int, unsupported: str) -> None:
    """A kernel's status as an error: an out-of-range target named (IndexError), else
    `unsupported` where the kernel refused the shapes."""
    if rc == -1:
        bad = target[(target < 0) | (target >= V)][0].item()
        raise IndexError(f"softcap cross-entropy: target {bad} is outside the vocabulary [0, {V})")
    assert rc == 0, unsupported


def applies(logits: Tensor, target: Tensor) -> bool:
    """Whether `softcap_cross_entropy(logits, target, cap)` runs our kernel for these inputs."""
    return _fits(logits, target) and logits.size(1) % 8 == 0 and _available()


@torch.library.custom_op("golf::softcap_cross_entropy", mutates_args=())
def _forward(logits: Tensor, target: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    logits = logits if logits.stride(-1) == 1 else logits.contiguous()
    target = target.contiguous()
    N, V = logits.shape
    loss, grad = logits.new_empty(N), logits.new_empty((N, V))
    lib = _library()
    assert lib is not None, "golf::softcap_cross_entropy called without the kernel"
    rc = lib.golf_softcap_cross_entropy(
        logits.data_ptr(), logits.stride(0), target.data_ptr(), N, V, cap, loss.data_ptr(),
        grad.data_ptr(), torch.get_num_threads())
    _check(rc, target, V, f"golf::softcap_cross_entropy: vocabulary {V} is not a multiple of 8")
    return loss, grad


@_forward.register_fake
def _(logits, target, cap):
    return logits.new_empty(logits.shape[:1]), logits.new_empty(logits.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _grad(ctx, grad_loss, grad_grad):
    (grad,) = ctx.saved_tensors
    return grad * grad_loss[:, None], None, None


_forward.register_autograd(_grad, setup_context=_setup_context)


def softcap_cross_entropy(logits: Tensor, target: Tensor, cap: float) -> Tensor:
    """Mean F.cross_entropy(cap * tanh(logits / cap), target) over (N, V) fp32 logits by our
    kernel; call only where `applies(logits, target)`. Same value and gradient as PyTorch's ops
    to fp32 rounding."""
    return _forward(logits, target, float(cap))[0].mean()


# ---- The head fused in: x (N, D) times the head's weight (V, D), softcapped, cross-entropy.


def head_applies(x: Tensor, weight: Tensor, target: Tensor) -> bool:
    """Whether `softcap_head_cross_entropy(x, weight, target, cap)` runs our fused kernel: the
    conditions of `applies` on (N, D) x and (V, D) weight with D % 8 == 0 and V % 16 == 0, and
    a gradient wanted (the kernel computes the gradients with the loss; a loss without them,
    as evaluation asks, is cheaper unfused)."""
    if not torch.is_grad_enabled() or not (x.requires_grad or weight.requires_grad):
        return False
    if not _fits(x, target, weight):
        return False
    shapes_fit = x.size(1) == weight.size(1) and x.size(1) % 8 == 0 and weight.size(0) % 16 == 0
    return shapes_fit and _available()


@torch.library.custom_op("golf::softcap_head_cross_entropy", mutates_args=())
def _head_forward(x: Tensor, weight: Tensor, target: Tensor,
                  cap: float) -> tuple[Tensor, Tensor, Tensor]:
    x = x if x.stride(-1) == 1 else x.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    target = target.contiguous()
    (N, D), V = x.shape, weight.size(0)
    loss, dx, dw = x.new_empty(()), x.new_empty((N, D)), weight.new_empty((V, D))
    lib = _library()
    assert lib is not None, "golf::softcap_head_cross_entropy called without the kernel"
    rc = lib.golf_softcap_head_cross_entropy(
        x.data_ptr(), x.stride(0), weight.data_ptr(), weight.stride(0), target.data_ptr(), N, V,
        D, cap, loss.data_ptr(), dx.data_ptr(), dw.data_ptr(), torch.get_num_threads())
    _check(rc, target, V,
           f"golf::softcap_head_cross_entropy: vocabulary {V} or width {D} unsupported")
    return loss, dx, dw


@_head_forward.register_fake
def _(x, weight, target, cap):
    return x.new_empty(()), x.new_empty(x.shape), weight.new_empty(weight.shape)


def _head_setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1], output[2])


def _head_grad(ctx, grad_loss, grad_dx, grad_dw):
    dx, dw = ctx.saved_tensors
    return dx * grad_loss, dw * grad_loss, None, None


_head_forward.register_autograd(_head_grad, setup_context=_head_setup_context)


def softcap_head_cross_entropy(x: Tensor, weight: Tensor, target: Tensor, cap: float) -> Tensor:
    """Mean F.cross_entropy(cap * tanh(x @ weight.T / cap), target) over (N, D) fp32 x and a
    (V, D) head weight, by our fused kernel; call only where `head_applies(x, weight, target)`.
    The same loss and gradients as the unfused head to fp32 rounding."""
    return _head_forward(x, weight, target, float(cap))[0]

"""Causal attention for small heads on the CPU (fp32): our C++ kernel (csrc/causal_attention.cpp)
as a torch custom op with its own backward, the fast path `layers.causal_attention` takes where
it applies; PyTorch's `scaled_dot_product_attention` stays the faithful path it is tested
against (tests/test_attention_kernel.py) and the fallback everywhere else.

Where it applies: CPU tensors, all fp32 outside autocast, head dim 8 / 16 / 32 / 64, sequence
length a multiple of 16 up to 512 (MAX_SEQ_LEN), query heads a multiple of the key/value heads
(GQA). At the study's shapes PyTorch's flash kernel runs such heads at ~14% of a core's FMA
peak (see benchmarks/README.md for what this one gives).

The kernel is compiled on first use (`golf_core.model.cpu_build`: the machine's C++ compiler,
cached per source and CPU in `$GOLF_KERNEL_CACHE`). No compiler, or a failed build: the faithful
path, with one warning. `GOLF_ATTENTION=sdpa` (or `use_kernel(False)`) turns the kernel off.
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor

from golf_core.model import cpu_build

SOURCE = cpu_build.CSRC / "causal_attention.cpp"
HEAD_DIMS = (8, 16, 32, 64)
MAX_SEQ_LEN = 512  # two T x T fp32 buffers a thread (2 MB at 512); at 1,024 they outgrow L2 and
# the kernel measured slower than PyTorch's (benchmarks/README.md)

_mode = cpu_build.env_mode("GOLF_ATTENTION", ("auto", "sdpa"))


def use_kernel(on: bool) -> None:
    """Switch the kernel on (where it applies) or off (PyTorch's attention everywhere)."""
    global _mode
    _mode = "auto" if on else "sdpa"


def kernel_mode() -> str:
    """'kernel' when calls that fit it run our kernel, else 'sdpa' (switched off, or no
    build): what a run records in env.json."""
    return "kernel" if _mode == "auto" and _available() else "sdpa"


_i64, _f32p, _flt, _cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int
# What cpu_build.load needs besides the source: names for its warning, and each entry point's
# argument types (benchmarks.kernels --against builds another revision's source with them).
BUILD = ("attention kernel", "attention", {
    "golf_attention_forward": [_f32p, _i64, _i64, _i64] * 4 + [_f32p] + [_i64] * 5
    + [_flt, _cint],
    "golf_attention_backward": [_f32p] * 10 + [_i64] * 5 + [_flt, _cint],
})


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The built kernel (built on the first call), or None where it cannot be built."""
    return cpu_build.load(SOURCE, *BUILD)


@torch._dynamo.assume_constant_result
def _available() -> bool:
    """Whether the kernel is built (building it on the first call); a constant to dynamo, so
    a compiled model traces no build and no ctypes."""
    return _library() is not None


def applies(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether `attention(q, k, v)` runs our kernel for these inputs (see the module doc)."""
    if _mode != "auto" or q.device.type != "cpu" or q.dim() != 4:
        return False
    if any(t.dtype != torch.float32 for t in (q, k, v)) or torch.is_autocast_enabled("cpu"):
        return False
    B, H, T, D = q.shape
    if D not in HEAD_DIMS or T % 16 or T > MAX_SEQ_LEN or k.shape != v.shape:
        return False
    if k.shape[0] != B or k.shape[2:] != q.shape[2:] or H % k.shape[1]:
        return False
    return _available()


def _strides(t: Tensor) -> list[int]:
    return [t.stride(0), t.stride(1), t.stride(2)]


def _rows(t: Tensor) -> Tensor:  # the kernel reads rows with a contiguous last dim
    return t if t.stride(-1) == 1 else t.contiguous()


def _scale(D: int) -> float:
    return 1.0 / D**0.5


@torch.library.custom_op("golf::causal_attention", mutates_args=())
def _forward(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    q, k, v = _rows(q), _rows(k), _rows(v)
    B, H, T, D = q.shape
    o = q.new_empty((B, T, H, D)).transpose(1, 2)  # (B, H, T, D) view, as SDPA lays it out
    lse = q.new_empty((B, H, T))
    lib = _library()
    assert lib is not None, "golf::causal_attention called without the kernel"
    rc = lib.golf_attention_forward(
        q.data_ptr(), *_strides(q), k.data_ptr(), *_strides(k), v.data_ptr(), *_strides(v),
        o.data_ptr(), *_strides(o), lse.data_ptr(), B, H, k.shape[1], T, D, _scale(D),
        torch.get_num_threads())
    assert rc == 0, f"golf::causal_attention: head dim {D} not built"
    return o, lse


@_forward.register_fake
def _(q, k, v):
    B, H, T, D = q.shape
    return q.new_empty((B, T, H, D)).transpose(1, 2), q.new_empty((B, H, T))


@torch.library.custom_op("golf::causal_attention_backward", mutates_args=())
def _backward(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
              grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    q, k, v, o, grad = _rows(q), _rows(k), _rows(v), _rows(o), _rows(grad)
    lse = lse.contiguous()
    B, H, T, D = q.shape
    dq, dk, dv = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
    strides = [s for t in (q, k, v, o, grad, dq, dk, dv) for s in _strides(t)]
    arr = (ctypes.c_int64 * len(strides))(*strides)
    lib = _library()
    assert lib is not None, "golf::causal_attention_backward called without the kernel"
    rc = lib.golf_attention_backward(
        ctypes.addressof(arr), q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(),
        grad.data_ptr(), lse.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
        B, H, k.shape[1], T, D, _scale(D), torch.get_num_threads())
    assert rc == 0, f"golf::causal_attention_backward: head dim {D} not built"
    return dq, dk, dv


@_backward.register_fake
def _(q, k, v, o, lse, grad):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)


def _grad(ctx, grad_o, grad_lse):
    q, k, v, o, lse = ctx.saved_tensors
    return _backward(q, k, v, o, lse, grad_o)


_forward.register_autograd(_grad, setup_context=_setup_context)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal softmax attention of (B, H, T, Dh) q over (B, H_kv, T, Dh) k, v (H a multiple
    of H_kv) by our kernel; call only where `applies(q, k, v)`. Same values as
    `F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=H != H_kv)` to fp32
    rounding, and its gradients likewise."""
    return _forward(q, k, v)[0]

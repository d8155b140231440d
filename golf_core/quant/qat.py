"""Quantization-aware training hooks on `CastedLinear.qat`.

* **noisy** (PR #363): `w + (U[0,1) - 0.5) * rowmax|w| / qmax`: uniform noise of one
  quantization step per row, the error rounding to the export grid would add (its std is
  step/sqrt(12)). The noise is built from a detached copy, so d(out)/dw is the identity.
* **ste**: the weight the export will produce (per-row quantize + dequantize with the export
  policy's clip and scale rule), with a straight-through gradient `w + (fq(w) - w).detach()`.

Both act only while the module is in training mode: evaluation sees the float weights, and the
roundtrip score is measured on the exported artifact. Which layers get a hook follows the
export policy the run uses: only 2-D weights that policy would quantize (upstream's rule for
int8 export is numel > 65,536, so a tiny CPU model has none unless the threshold is lowered
on the policy), with the policy's bits per weight name. Starting QAT late is the training
loop's business: it calls `enable_qat` at the chosen step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from golf_core.quant.codec import QuantPolicy, fake_quantize, qmax_for, resolve_policy

QAT_MODES = ("noisy", "ste")


def noisy_weight(w: Tensor, bits: int) -> Tensor:
    """w plus uniform noise of one per-row quantization step (rowmax|w| / qmax); the noise
    carries no gradient, so gradients reach w unchanged."""
    step = w.detach().abs().amax(dim=1, keepdim=True) / qmax_for(bits)  # (rows, 1)
    return w + (torch.rand_like(w) - 0.5) * step


def ste_weight(w: Tensor, bits: int, policy: QuantPolicy) -> Tensor:
    """The exported (quantize -> dequantize) weight in the forward, identity gradient."""
    return w + (fake_quantize(w.detach(), bits, policy) - w.detach())


class QATHook:
    """The callable set as `CastedLinear.qat`; a no-op while its module is in eval mode."""

    def __init__(self, module: nn.Module, mode: str, bits: int, policy: QuantPolicy) -> None:
        self.module, self.mode, self.bits, self.policy = module, mode, bits, policy

    def __call__(self, w: Tensor) -> Tensor:
        if not self.module.training:
            return w
        if self.mode == "noisy":
            return noisy_weight(w, self.bits)
        return ste_weight(w, self.bits, self.policy)

    def __repr__(self) -> str:
        return f"QATHook(mode={self.mode!r}, bits={self.bits})"


def _target_modules(model: nn.Module, modules: str) -> list[tuple[str, nn.Module]]:
    """(full name, module) of every module carrying a `qat` hook slot, in `modules`."""
    named = [(n, m) for n, m in model.named_modules() if hasattr(m, "qat") and hasattr(m, "weight")]
    if modules == "all":
        return named
    if modules != "core":
        raise ValueError(f"enable_qat: modules must be 'all' or 'core', got {modules!r}")
    core = getattr(model, "core_modules", lambda: [])()
    if not core:
        raise ValueError("enable_qat: modules='core' but the model has no shared core "
                         "(no block runs more than once)")
    inside = {id(sub) for c in core for sub in c.modules()}
    return [(n, m) for n, m in named if id(m) in inside]


def enable_qat(
    model: nn.Module,
    mode: str = "noisy",
    bits: int = 8,
    modules: str = "all",
    *,
    scheme: str | QuantPolicy | None = None,
) -> list[str]:
    """Set QAT hooks on the linear layers the export would quantize; returns their weight names.

    `scheme` (a name from `SCHEMES` or a `QuantPolicy`) is the export policy: which weights
    are quantized and their bits. Without it, `QuantPolicy(bits=bits)` (upstream's
    65,536-element threshold). `modules="core"` limits QAT to the shared/looped core.
    """
    if mode not in QAT_MODES:
        raise ValueError(f"enable_qat: mode must be one of {QAT_MODES}, got {mode!r}")
    policy = resolve_policy(scheme) if scheme is not None else QuantPolicy(bits=bits)
    enabled = []
    for name, module in _target_modules(model, modules):
        wname = f"{name}.weight" if name else "weight"
        if module.weight.ndim != 2 or not policy.quantizes(wname, module.weight):
            continue
        module.qat = QATHook(module, mode, policy.bits_for(wname), policy)
        enabled.append(wname)
    return enabled


def disable_qat(model: nn.Module) -> int:
    """Remove every QAT hook; returns how many were set."""
    count = 0
    for module in model.modules():
        if getattr(module, "qat", None) is not None:
            module.qat = None
            count += 1
    return count

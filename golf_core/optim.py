"""Optimizers: Muon for block matrices, Adam for everything else, and the LR/momentum schedule.

Follows the optimizer section of upstream parameter-golf `train_gpt.py` (baseline record):
`zeropower_via_newtonschulz5`, the `Muon` class with its round-robin distributed update,
the parameter grouping of `main()` (token embedding, untied head, block matrices, scalars and
control tensors), the Muon momentum warmup and `lr_mul` (linear warmdown over the last
WARMDOWN_ITERS steps, measured in wallclock when MAX_WALLCLOCK_SECONDS caps the run).
Muon itself is Keller Jordan's (modded-nanogpt); the quintic coefficients are his.

Unlike upstream, the grouping is a function of parameter *names* over the whole model (not only
`model.blocks`), so the depth-recurrence variants' extra tensors (repeat embeddings, adapters,
lane lambdas) land in a group too, and a parameter that would land in two groups or in none is
an error naming it.

Also unlike upstream (a speed change, not a semantic one): Muon stacks the same-shape matrices
a rank owns and runs Newton–Schulz on each stack as one batch of matmuls; the updates are
bit-identical to upstream's per-matrix loop on this CPU (benchmarks/results/optimizations.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from golf_core.config import TrainConfig
from golf_core.model import CONTROL_PATTERNS
from golf_core.model.families import family_module
from golf_core.newton_schulz import NS_COEFFS, newton_schulz5, newton_schulz5_batched

# newton_schulz5 and NS_COEFFS are part of this module's API (Muon's orthogonalization)
__all__ = ["GROUPS", "NS_COEFFS", "Muon", "apply_schedule", "build_optimizers",
           "group_parameters", "is_muon_matrix", "lr_multiplier", "muon_momentum_at",
           "newton_schulz5", "newton_schulz5_batched"]
from golf_core.precision import ProbeShape, pick_ns_dtype

# Quintic Newton–Schulz coefficients from modded-nanogpt: chosen to push singular values into
# roughly [0.7, 1.2] in 5 steps (steepest slope at 0) rather than to converge exactly to 1.

TOKEN_EMBEDDING = "tok_emb.weight"
GROUPS = ("token", "head", "matrix", "scalar")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
LM_HEAD = "lm_head.weight"


# ----------------------------------------------------------------------------- Muon


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton–Schulz (upstream `Muon`), for matrices and banks.

    Per parameter: buf = momentum*buf + g; Nesterov g = g + momentum*buf; orthogonalize;
    scale by sqrt(max(1, rows/cols)); p -= lr * update. A 3-D parameter is a bank of matrices
    (PR #1204's `qo_bank` ...): each [rows, cols] slice is orthogonalized and scaled on its own.
    Under torch.distributed, parameter i's update is computed on rank i % world_size into a
    flat buffer, and one all-reduce (SUM) gives every rank every update (the others contribute
    zeros), as upstream does. `ns_dtype`: the Newton–Schulz and update-buffer dtype, bf16 as
    upstream, or fp32 where bf16 matmuls are slow (golf_core.precision.pick_ns_dtype).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        momentum: float,
        backend_steps: int,
        nesterov: bool = True,
        ns_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim not in (2, 3):
                    raise ValueError(
                        f"Muon: parameters must be 2-D matrices or 3-D banks, got shape "
                        f"{tuple(p.shape)}"
                    )

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        distributed = dist.is_available() and dist.is_initialized()
        world_size = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            offsets = [0]
            for p in params:
                offsets.append(offsets[-1] + p.numel())
            updates_flat = torch.zeros(offsets[-1], device=params[0].device, dtype=self.ns_dtype)
            # round robin: parameter i is orthogonalized on rank i % world_size only
            mine = [i for i, p in enumerate(params)
                    if i % world_size == rank and p.grad is not None]
            for i, update in zip(mine, self._updates([params[i] for i in mine], group)):
                updates_flat[offsets[i] : offsets[i + 1]] = update.reshape(-1)
            if distributed:
                dist.all_reduce(updates_flat, op=dist.ReduceOp.SUM)
            for i, p in enumerate(params):
                update = updates_flat[offsets[i] : offsets[i + 1]].view_as(p).to(dtype=p.dtype)
                p.add_(update, alpha=-group["lr"])
        return loss

    def _updates(self, params: list[Tensor], group: dict) -> list[Tensor]:
        """Momentum + Nesterov + orthogonalization for the parameters this rank owns (in
        `ns_dtype`, shaped like each p); same-shape matrices (bank slices included) share one
        batched Newton–Schulz."""
        grads = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            buf = state["momentum_buffer"]
            buf.mul_(group["momentum"]).add_(p.grad)
            grads.append(p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf)
        mats = [m for g in grads for m in (g.unbind(0) if g.ndim == 3 else (g,))]
        ortho = newton_schulz5_batched(mats, steps=group["backend_steps"], dtype=self.ns_dtype)
        # Scale correction from the Muon reference: tall matrices get sqrt(rows/cols) so the
        # per-element update size does not shrink with the aspect ratio.
        ortho = [u * (u.size(0) / u.size(1)) ** 0.5 if u.size(0) > u.size(1) else u
                 for u in ortho]
        out, k = [], 0
        for g in grads:
            n = g.size(0) if g.ndim == 3 else 1
            out.append(torch.stack(ortho[k : k + n]) if g.ndim == 3 else ortho[k])
            k += n
        return out


# ----------------------------------------------------------------------------- grouping


def group_parameters(model: nn.Module) -> dict[str, list[tuple[str, Tensor]]]:
    """Split named parameters into upstream's groups: "token", "head", "matrix", "scalar".

    token = `tok_emb.weight` (plus, for a published family, the embedding tables its script
    trains beside it: its TOKEN_PATTERNS); head = `lm_head.weight` (untied only); matrix
    (Muon) = every other 2-D parameter (or 3-D `*_bank`) whose name matches no control
    pattern; scalar (Adam at scalar_lr) = vectors, scalars, other >2-D tensors and anything
    matching a control pattern (skip_weights, resid_mix, q_gain, lane lambdas, repeat
    embeddings, ...). A published family uses its own script's control patterns (PR #325
    trains `bigram.proj` with Muon, PR #1204 with Adam). `named_parameters()` yields a shared
    (looped) parameter once, under its first name.
    """
    controls, tokens = _patterns(model)
    groups: dict[str, list[tuple[str, Tensor]]] = {k: [] for k in GROUPS}
    for full_name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = _unwrapped(full_name)
        if name == TOKEN_EMBEDDING or any(pat in name for pat in tokens):
            groups["token"].append((name, p))
        elif name == LM_HEAD:
            groups["head"].append((name, p))
        elif is_muon_matrix(name, p, controls):
            groups["matrix"].append((name, p))
        else:
            groups["scalar"].append((name, p))
    if not groups["token"]:
        raise ValueError(f"build_optimizers: model has no parameter named {TOKEN_EMBEDDING!r}")
    return groups


def _patterns(model: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(control patterns, token patterns) of the model's family."""
    family = getattr(getattr(model, "cfg", None), "family", "golf")
    if family == "golf":
        return CONTROL_PATTERNS, ()
    module = family_module(family)
    return tuple(module.CONTROL_PATTERNS), tuple(getattr(module, "TOKEN_PATTERNS", ()))


def is_muon_matrix(name: str, p: Tensor, controls: tuple[str, ...] = CONTROL_PATTERNS) -> bool:
    """Muon's share: a 2-D matrix, or a 3-D bank of them (PR #1204's `*_bank`), whose name
    matches no control pattern."""
    shaped = p.ndim == 2 or (p.ndim == 3 and "_bank" in name)
    return shaped and not any(pat in name for pat in controls)


def _unwrapped(name: str) -> str:
    """The parameter name without DDP (`module.`) / torch.compile (`_orig_mod.`) prefixes."""
    while name.startswith(_WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def _check_partition(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
    """Every trainable parameter in exactly one optimizer group; errors name the parameter."""
    names = {id(p): n for n, p in model.named_parameters()}
    seen: dict[int, int] = {}
    for k, opt in enumerate(optimizers):
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) in seen:
                    raise ValueError(
                        f"build_optimizers: parameter {names.get(id(p), '?')!r} is in two "
                        f"optimizers ({type(optimizers[seen[id(p)]]).__name__} and "
                        f"{type(opt).__name__})"
                    )
                seen[id(p)] = k
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ValueError(f"build_optimizers: parameter(s) in no optimizer: {', '.join(missing)}")


def _adam(params: list[Tensor], lr: float, tcfg: TrainConfig) -> torch.optim.Adam:
    # fused on CUDA (upstream); on CPU torch's default, its per-tensor loop (torch defaults to
    # foreach only on CUDA-like devices), which every committed run used. torch's CPU fused
    # Adam would save ~1.7 ms a step at most (PR #325's 3x3 at width 32, all 139 tensors in
    # Adam, 2 threads: 1.30 vs 2.97 ms; in training Muon takes the matrices) and does not round
    # as the loop does: not worth the runs' comparability.
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.Adam(
        [{"params": params, "lr": lr, "base_lr": lr}],
        betas=(tcfg.beta1, tcfg.beta2),
        eps=tcfg.adam_eps,
        fused=fused,
    )


def build_optimizers(model: nn.Module, tcfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """Upstream's optimizers: [Adam(token), Adam(head) if untied, Muon(matrices), Adam(scalars)].

    Token LR is `tied_embed_lr` when the embedding is tied (no `lm_head.weight`), else
    `embed_lr`. Each param group stores `base_lr`; the train loop sets
    `lr = base_lr * lr_multiplier(...)` (see `apply_schedule`). An empty scalar group is
    left out.
    """
    groups = group_parameters(model)
    tied = not groups["head"]
    token_lr = tcfg.tied_embed_lr if tied else tcfg.embed_lr
    token = [p for _, p in groups["token"]]
    optimizers: list[torch.optim.Optimizer] = [_adam(token, token_lr, tcfg)]
    if groups["head"]:
        optimizers.append(_adam([p for _, p in groups["head"]], tcfg.head_lr, tcfg))
    if groups["matrix"]:
        matrices = [p for _, p in groups["matrix"]]
        shape = ProbeShape.of(model.cfg, tcfg) if hasattr(model, "cfg") else None
        ns_dtype, _why = pick_ns_dtype(tcfg.muon_ns_dtype, matrices[0].device, shape)
        muon = Muon(
            matrices,
            lr=tcfg.matrix_lr,
            momentum=tcfg.muon_momentum,
            backend_steps=tcfg.muon_backend_steps,
            ns_dtype=ns_dtype,
        )
        for group in muon.param_groups:
            group["base_lr"] = tcfg.matrix_lr
        optimizers.append(muon)
    if groups["scalar"]:
        optimizers.append(_adam([p for _, p in groups["scalar"]], tcfg.scalar_lr, tcfg))
    _check_partition(model, optimizers)
    return optimizers


# ----------------------------------------------------------------------------- schedule


def lr_multiplier(step: int, elapsed_ms: float, tcfg: TrainConfig) -> float:
    """Upstream `lr_mul`: 1 until the warmdown, then linear to 0.

    Without a wallclock cap the warmdown is the last `warmdown_iters` steps. With a cap
    (`max_wallclock_seconds > 0`) it is the last `warmdown_iters * (mean ms per step so far)`
    milliseconds before the cap, so the LR reaches 0 exactly when the cap is hit.
    """
    if tcfg.warmdown_iters <= 0:
        return 1.0
    if tcfg.max_wallclock_seconds <= 0:
        warmdown_start = max(tcfg.iterations - tcfg.warmdown_iters, 0)
        if warmdown_start <= step < tcfg.iterations:
            return max((tcfg.iterations - step) / max(tcfg.warmdown_iters, 1), 0.0)
        return 1.0
    cap_ms = 1000.0 * tcfg.max_wallclock_seconds
    step_ms = elapsed_ms / max(step, 1)
    warmdown_ms = tcfg.warmdown_iters * step_ms
    remaining_ms = max(cap_ms - elapsed_ms, 0.0)
    return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0


def muon_momentum_at(step: int, tcfg: TrainConfig) -> float:
    """Muon momentum warmup: linear from `muon_momentum_warmup_start` to `muon_momentum`."""
    steps = tcfg.muon_momentum_warmup_steps
    frac = min(step / steps, 1.0) if steps > 0 else 1.0
    return (1 - frac) * tcfg.muon_momentum_warmup_start + frac * tcfg.muon_momentum


def apply_schedule(
    optimizers: list[torch.optim.Optimizer], step: int, elapsed_ms: float, tcfg: TrainConfig
) -> tuple[float, float]:
    """Set every group's lr (= base_lr * multiplier) and Muon's momentum for `step`.

    Returns (lr multiplier, Muon momentum), as upstream's loop does before `opt.step()`.
    """
    mult = lr_multiplier(step, elapsed_ms, tcfg)
    momentum = muon_momentum_at(step, tcfg)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * mult
            if isinstance(opt, Muon):
                group["momentum"] = momentum
    return mult, momentum

"""The training loop of one run: model, optimizers, loader, counters and their checkpoints.

`Trainer(inv, rt, plan, data)` seeds the RNGs, builds the model from `inv.mcfg` on `rt.device`
(the same initial weights on every rank), applies the compile policy and builds the optimizers
and the token loader. The caller then sets `run_dir` and `log` (a runs.RunLog). `warmup()` runs
the discarded priming steps, `loop()` trains until `iterations`, the wallclock cap or
`inv.stop_at_step` (True when the run finished) and meanwhile writes train/val rows to the log,
checkpoints under `run_dir/checkpoints/`, and switches mini recurrence and QAT on at their steps.
`capture()` / `restore(state)` are the checkpoint state a resume loads; `evaluate(model)` scores
val_bpb. A non-finite loss or weight raises TrainingError naming the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from golf_core import checkpoint as ckpt
from golf_core.compile_policy import apply_compile, resolve_compile
from golf_core.config import ConfigError, ModelConfig, TrainConfig
from golf_core.data import DistributedTokenLoader
from golf_core.data_checks import Data
from golf_core.distributed import (
    BatchPlan,
    Runtime,
    all_reduce_grads,
    any_rank,
    autocast_context,
    broadcast_module,
    sync_round_robin_state,
    synchronize,
)
from golf_core.evaluate import evaluate_bpb
from golf_core.model import build_model as model_from_config
from golf_core.model import count_parameters
from golf_core.optim import apply_schedule, build_optimizers
from golf_core.quant import enable_qat, resolve_policy
from golf_core.runs import RunLog


@dataclass
class Invocation:
    """What the command line asked for, after config resolution."""

    mcfg: ModelConfig
    tcfg: TrainConfig
    preset: str | None
    scale: str | None
    run_dir: Path | None  # explicit --run-dir or (resume) runs_dir/run_name
    resume: bool
    stop_at_step: int
    print_config: bool = False
    argv: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # logged once the run directory is open



class TrainingError(RuntimeError):
    """The run cannot continue (a non-finite loss); the message says where and what is kept."""


def seed_everything(seed: int) -> None:
    """Upstream seeds python, numpy and torch (CPU and every CUDA device) with SEED."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(mcfg: ModelConfig, rt: Runtime) -> torch.nn.Module:
    try:
        model = model_from_config(mcfg)
    except ValueError as e:
        raise ConfigError(f"model config: {e}") from None
    return model.to(rt.device)


def recurrence_start(mcfg: ModelConfig, tcfg: TrainConfig) -> int | None:
    """Step at which mini recurrence switches on (None: no mini recurrence)."""
    if not mcfg.recur_layers:
        return None
    if mcfg.recur_start_frac > 0:
        return round(mcfg.recur_start_frac * tcfg.iterations)
    return mcfg.recur_start_step


def qat_start(tcfg: TrainConfig) -> int | None:
    """Step at which QAT hooks go on (None: no QAT)."""
    if tcfg.qat_mode == "none":
        return None
    return round(tcfg.qat_start_frac * tcfg.iterations)


def _format_eta(ms: float) -> str:
    s = max(int(ms / 1000), 0)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Trainer:
    """One run's model, optimizers, loader and counters; the loop and its side effects."""

    def __init__(self, inv: Invocation, rt: Runtime, plan: BatchPlan, data: Data) -> None:
        self.inv, self.rt, self.plan, self.data = inv, rt, plan, data
        self.mcfg, self.tcfg = inv.mcfg, inv.tcfg
        seed_everything(self.tcfg.seed)
        self.model = build_model(self.mcfg, rt)
        broadcast_module(rt, self.model)
        self.compile_mode, self.compile_why = resolve_compile(self.tcfg, rt.device, self.model)
        self.forward = apply_compile(self.model, self.compile_mode)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizers = build_optimizers(self.model, self.tcfg)
        seed = self.tcfg.seed if self.tcfg.random_windows else None
        self.loader = DistributedTokenLoader(data.data_path, rt.rank, rt.world_size, rt.device,
                                             seed=seed)
        self.step, self.train_ms, self.stopped_early, self.qat_on = 0, 0.0, False, False
        self.recur_at, self.qat_at = recurrence_start(self.mcfg, self.tcfg), qat_start(self.tcfg)
        self.last_val: dict[str, Any] | None = None
        self._last_logged: tuple[int, float] | None = None  # (step, train ms) of the last line
        self.run_dir: Path | None = None
        self.log = RunLog(None, echo=rt.is_main)

    # --- state --------------------------------------------------------------------------

    def capture(self) -> dict[str, Any]:
        """Everything a resume needs (tensors and plain values only: weights_only loads it)."""
        rows, log_bytes = self.log.position
        return {
            "step": self.step,
            "train_seconds": self.train_ms / 1000.0,
            "stopped_early": self.stopped_early,
            "tokens_seen": self.step * self.tcfg.train_batch_tokens,
            "recurrence_active": bool(getattr(self.model, "recurrence_active", False)),
            "qat_active": self.qat_on,
            "metrics_rows": rows,
            "log_bytes": log_bytes,
            "world_size": self.rt.world_size,
            "model": self.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "loader": self.loader.state_dict(),
            "rng": ckpt.rng_state(),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        if len(state["optimizers"]) != len(self.optimizers):
            raise ConfigError(f"checkpoint has {len(state['optimizers'])} optimizers, this "
                              f"model needs {len(self.optimizers)} (was the model changed?)")
        if hasattr(self.model, "set_recurrence_active"):  # PR #1204: the switch is no tensor
            self.model.set_recurrence_active(bool(state.get("recurrence_active", False)))
        self.model.load_state_dict(state["model"])  # ours: restores the recurrence switch too
        for opt, sd in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(sd)
        self.loader.load_state_dict(state["loader"])
        ckpt.set_rng_state(state["rng"])
        self.step, self.train_ms = int(state["step"]), 1000.0 * float(state["train_seconds"])
        cap_ms = 1000.0 * self.tcfg.max_wallclock_seconds
        self.stopped_early = bool(state["stopped_early"]) and 0 < cap_ms <= self.train_ms
        if state["qat_active"]:
            self._enable_qat(verb="restored")

    def _check_parameters(self) -> None:
        """A checkpoint must hold finite weights (a loss can be finite one step before the
        weights that follow it are not)."""
        bad = [n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            self._check_finite(float("nan"), f"parameter {bad[0]!r} is non-finite")

    def save_checkpoint(self) -> None:
        self._check_parameters()
        sync_round_robin_state(self.rt, self.optimizers)
        if not self.rt.is_main:
            return
        name = ckpt.checkpoint_path(self.run_dir / "checkpoints", self.step).name
        self.log.log(f"checkpoint:{name} step:{self.step}/{self.tcfg.iterations}", console=False)
        state = self.capture()
        meta = {k: v for k, v in state.items() if isinstance(v, (int, float, bool, str))}
        ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step, state, meta,
                             keep=self.tcfg.keep_checkpoints)

    # --- switches -----------------------------------------------------------------------

    def _enable_qat(self, verb: str = "enabled") -> None:
        t = self.tcfg
        # QAT sees the weights the export quantizes, at the export's bits unless qat_bits
        # asks for other uniform bits
        policy = resolve_policy(t.export_scheme if t.export_scheme != "upstream" else "int8",
                                keep_float_max_numel=t.export_keep_float_max_numel)
        if t.qat_bits > 0:
            policy = dataclasses.replace(policy, bits=t.qat_bits, rules=())
        names = enable_qat(self.model, t.qat_mode, modules=t.qat_modules, scheme=policy)
        self.qat_on = True
        bits = t.qat_bits or "export"
        self.log.log(f"qat:{verb} step:{self.step} mode:{t.qat_mode} bits:{bits} "
                     f"modules:{t.qat_modules} weights:{len(names)}")
        if not names:
            self.log.log("warning: QAT hooked no weight: the export keeps every matrix of this "
                         "model in float (all are at or below its passthrough size)")

    def switch_features(self) -> None:
        """Mini recurrence (PR #1204) and QAT go on at the top of their start step."""
        if self.recur_at is not None and self.step >= self.recur_at:
            if not self.model.recurrence_active:
                self.model.activate_recurrence()
                depth = count_parameters(self.model)["effective_depth"]
                self.log.log(f"recurrence:activated step:{self.step} virtual_layers:{depth}")
        if self.qat_at is not None and self.step >= self.qat_at and not self.qat_on:
            self._enable_qat()

    # --- one step, one eval -------------------------------------------------------------

    def train_step(self, elapsed_ms: float) -> tuple[torch.Tensor, float]:
        """One optimizer step over the global batch; returns (mean loss over all ranks, lr mult)."""
        t, accum = self.tcfg, self.plan.grad_accum_steps
        mult, _momentum = apply_schedule(self.optimizers, self.step, elapsed_ms, t)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.rt.device)
        for _ in range(accum):
            x, y = self.loader.next_batch(t.train_batch_tokens, t.train_seq_len, accum)  # (B, T)
            with autocast_context(self.rt):
                loss = self.forward(x, y)
            loss_sum += loss.detach().float()
            (loss / accum).backward()
        loss = all_reduce_grads(self.rt, self.params, loss_sum / accum)
        if t.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip_norm)
        for opt in self.optimizers:
            opt.step()
        return loss, mult

    def evaluate(self, model: torch.nn.Module, stride: int | None = None) -> dict[str, Any]:
        t = self.tcfg
        local = t.val_batch_size // (self.rt.world_size * self.plan.grad_accum_steps)
        batch_seqs = max(1, local // t.train_seq_len)  # upstream's val batch per rank
        # a compiled run on CPU evaluates eagerly (so did compiled blocks everywhere): no
        # second (inference, eval-batch) compile, and eager's numbers
        eager_eval = self.compile_mode == "blocks" or (
            self.compile_mode == "model" and self.rt.device.type == "cpu")
        eager = (torch.compiler.set_stance("force_eager") if eager_eval
                 else contextlib.nullcontext())
        with autocast_context(self.rt), eager:
            return evaluate_bpb(model, self.data.val_tokens, t.train_seq_len, self.data.tables,
                                batch_seqs=batch_seqs, stride=stride, device=self.rt.device)

    def validate(self) -> None:
        res = self.evaluate(self.forward)
        self.last_val = res
        ms, step, total = self.train_ms, self.step, self.tcfg.iterations
        self.log.metric({"kind": "val", "step": step, "val_loss": res["val_loss"],
                         "val_bpb": res["val_bpb"], "train_seconds": ms / 1000.0,
                         "eval_seconds": res["seconds"]})
        self.log.log(f"step:{step}/{total} val_loss:{res['val_loss']:.4f} "
                     f"val_bpb:{res['val_bpb']:.4f} train_time:{ms:.0f}ms "
                     f"step_avg:{ms / max(step, 1):.2f}ms eval_time:{1000 * res['seconds']:.0f}ms")

    def log_train(self, loss: float, mult: float, approx_ms: float) -> None:
        t, step = self.tcfg, self.step
        tokens = step * t.train_batch_tokens
        tps = tokens / max(approx_ms / 1000.0, 1e-9)
        # the pace since the previous line: the average from step 0 keeps a compile's or a
        # recompile's seconds in it for the rest of the run (a compiled CPU run's first
        # line took ~80 s of its 87), so an ETA from it overstated the rest 4x
        since_step, since_ms = self._last_logged or (0, 0.0)
        if step <= since_step or approx_ms <= since_ms:
            since_step, since_ms = 0, 0.0
        ms_per_step = (approx_ms - since_ms) / (step - since_step)
        self._last_logged = (step, approx_ms)
        recent_tps = t.train_batch_tokens / max(ms_per_step / 1000.0, 1e-9)
        remaining = (t.iterations - step) * ms_per_step
        if t.max_wallclock_seconds > 0:
            remaining = min(remaining, 1000.0 * t.max_wallclock_seconds - approx_ms)
        self.log.metric({"kind": "train", "step": step, "train_loss": loss, "lr_mult": mult,
                         "tokens_seen": tokens, "train_seconds": approx_ms / 1000.0,
                         "tokens_per_s": tps, "recent_tokens_per_s": recent_tps})
        self.log.log(f"step:{step}/{t.iterations} train_loss:{loss:.4f} "
                     f"train_time:{approx_ms:.0f}ms step_avg:{approx_ms / step:.2f}ms "
                     f"lr_mult:{mult:.4f} tokens_per_s:{tps:.0f} recent:{recent_tps:.0f} "
                     f"eta:{_format_eta(remaining)}")

    def _check_finite(self, loss: float, what: str = "") -> None:
        if not math.isfinite(loss):
            kept = ckpt.list_checkpoints(self.run_dir / "checkpoints")
            where = kept[-1][1] if kept else "none (no checkpoint was written yet)"
            what = what or f"train_loss is {loss}"
            raise TrainingError(f"{what} at step {self.step}: stopping; the last good "
                                f"checkpoint is {where}")

    # --- the loop -----------------------------------------------------------------------

    def warmup(self) -> None:
        """Upstream's priming steps (compile, allocator): run them, then restore the state."""
        n = self.tcfg.warmup_steps
        if n <= 0:
            return
        saved = copy.deepcopy(self.capture())
        for i in range(n):
            self.train_step(0.0)
            self.log.log(f"warmup_step:{i + 1}/{n}", console=False)
        self.restore(saved)

    def _due(self, step: int, every: int) -> bool:
        return every > 0 and step % every == 0

    def loop(self) -> bool:
        """Train until `iterations`, the wallclock cap or --stop-at-step; True when finished."""
        t, rt = self.tcfg, self.rt
        cap_ms = 1000.0 * t.max_wallclock_seconds if t.max_wallclock_seconds > 0 else None
        synchronize(rt)
        t0 = time.perf_counter()
        while True:
            last = self.step >= t.iterations or self.stopped_early
            if last or self._due(self.step, t.val_loss_every):
                synchronize(rt)
                self.train_ms += 1000.0 * (time.perf_counter() - t0)
                self.validate()  # eval time is not training time (upstream)
                synchronize(rt)
                t0 = time.perf_counter()
            if last:
                if self.stopped_early and self.step < t.iterations:
                    self.log.log(f"stopping_early: wallclock_cap train_time:{self.train_ms:.0f}ms "
                                 f"step:{self.step}/{t.iterations}")
                return True
            self.switch_features()
            loss, mult = self.train_step(self.train_ms + 1000.0 * (time.perf_counter() - t0))
            self.step += 1
            approx_ms = self.train_ms + 1000.0 * (time.perf_counter() - t0)
            if cap_ms is not None and any_rank(rt, approx_ms >= cap_ms):
                self.stopped_early = True
            stop_here = self.step == self.inv.stop_at_step
            log_now = t.train_log_every > 0 and (
                self.step <= 10 or self._due(self.step, t.train_log_every)
                or self.step == t.iterations or self.stopped_early)
            save_now = (self._due(self.step, t.checkpoint_every) or self.step >= t.iterations
                        or self.stopped_early or stop_here)
            if log_now or save_now or rt.device.type == "cpu":
                value = float(loss)  # a GPU sync: only when needed
                self._check_finite(value)
                if log_now:
                    self.log_train(value, mult, approx_ms)
            if save_now:
                synchronize(rt)
                self.train_ms += 1000.0 * (time.perf_counter() - t0)
                self.save_checkpoint()  # before the final eval, so a resume redoes it
                t0 = time.perf_counter()
            if stop_here and self.step < t.iterations:
                self.log.log(f"stopped: --stop-at-step {self.step}; continue with --resume")
                return False

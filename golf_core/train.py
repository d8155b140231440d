"""Training entry point: `python -m golf_core.train` or `torchrun ... -m golf_core.train`.

Follows the `main()` of upstream parameter-golf `train_gpt.py`, split into named steps:
resolve the config, set up processes/device, check the data, build the model and optimizers,
the training loop (upstream's: validation every VAL_LOSS_EVERY steps, log lines every
TRAIN_LOG_EVERY, a wallclock cap on training time only with the LR warmdown reaching 0 at the
cap, `warmup_steps` priming steps whose updates are discarded), then finalize (final model,
quantized artifact + its budget report, roundtrip val_bpb). Ours on top: a run directory
(golf_core.runs), checkpoints with exact `--resume`, mini-recurrence activation (PR #1204) and
QAT (PR #363) switched on at their steps, gradient accumulation that keeps the global batch
independent of the number of processes, and errors that name the setting at fault.

Resume is bit-exact when the run is step-based (`max_wallclock_seconds=0`, the cpu scale):
model, optimizers, data position and every RNG come back, and metric rows written after the
checkpoint are cut. With a wallclock cap the LR warmdown and the stopping step depend on
measured time, so a resumed run follows the same schedule only approximately.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from golf_core import checkpoint as ckpt
from golf_core import paths, precision
from golf_core.compile_policy import (
    _compile_as_text,
    apply_compile,
    compile_mode_name,
    resolve_compile,
)
from golf_core.config import (
    SCALES,
    ConfigError,
    ModelConfig,
    TrainConfig,
    load_json,
    parse_set_args,
    resolve,
    save_json,
    to_dict,
)
from golf_core.data_checks import Data, load_data
from golf_core.distributed import (
    BatchPlan,
    Runtime,
    all_reduce_grads,
    any_rank,
    autocast_context,
    broadcast_object,
    plan_batches,
    setup_runtime,
    sync_round_robin_state,
    synchronize,
    teardown,
    world_size_from_env,
)
from golf_core.runs import (
    ARTIFACT_REPORT,
    CONFIG,
    FINAL_MODEL,
    QUANT_ERROR,
    ROUTING,
    SUMMARY,
    RunLog,
    env_info,
    new_run_dir,
    variant_label,
    write_run_files,
)

# keys that may differ when resuming: they change logging, hardware, where files live or the
# stopping point, not the model or the data order (iterations/max_wallclock_seconds extend or
# cut a run; the warmdown then differs from an uninterrupted run, and the log says so)
RESUME_MUTABLE = {"checkpoint_every", "val_loss_every", "train_log_every", "val_batch_size",
                  "device", "compile", "iterations", "max_wallclock_seconds", "runs_dir",
                  "data_path", "tokenizer_path"}


class TrainingError(RuntimeError):
    """The run cannot continue (a non-finite loss); the message says where and what is kept."""


# ----------------------------------------------------------------------------- CLI and config


def _keys_epilog() -> str:
    model = ", ".join(f.name for f in fields(ModelConfig))
    train = ", ".join(f.name for f in fields(TrainConfig))
    paragraphs = [
        f"model keys: {model}",
        f"train keys: {train}",
        "Every key is also read from its upstream environment variable (the key upper-cased, "
        "e.g. NUM_LAYERS=11; run_name is RUN_ID). Precedence: --set > environment > --config > "
        "--scale/--preset > defaults. --print-config shows the resolved values.",
        "Exit status: 0 done, 2 bad configuration or data (nothing written), 3 training "
        "failed (non-finite loss; the last good checkpoint is kept).",
    ]
    return "\n\n".join(textwrap.fill(p, width=79) for p in paragraphs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m golf_core.train",
        description="Train a golf-recurrence GPT into a run directory (runs/<name>/). Also "
        "runs under torchrun: torchrun --standalone --nproc_per_node=N -m golf_core.train ...",
        epilog=_keys_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE",
                        help="JSON config: flat keys or {\"model\": {...}, \"train\": {...}} "
                        "(a run's config.json works)")
    parser.add_argument("--preset", metavar="NAME",
                        help="model preset (golf_core.model.preset): flat, unet, looped-3x3, "
                        "looped-2x5, rqz, mini, parallel, mini+parallel")
    parser.add_argument("--scale", choices=sorted(SCALES),
                        help="named overrides (config.SCALES): cpu = the built-in CPU run "
                        "(0.59M params, 200 steps of 2048 tokens, ~1 min), upstream = the "
                        "upstream defaults")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override one model or train key (repeatable)")
    parser.add_argument("--run-dir", metavar="DIR",
                        help="run directory (default: <runs_dir>/<run_name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir (or runs_dir/run_name) from its "
                        "newest loadable checkpoint")
    parser.add_argument("--stop-at-step", type=int, default=0, metavar="N",
                        help="checkpoint and exit after step N (continue later with --resume)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as JSON and exit")
    return parser


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


def _stored_config(run_dir: Path) -> dict[str, Any]:
    cfg = load_json(run_dir / CONFIG)
    return _compile_as_text({"model": cfg.get("model", {}), "train": cfg.get("train", {})})


def _resume_config(
    run_dir: Path, environ: Mapping[str, str], sets: Mapping[str, str]
) -> tuple[ModelConfig, TrainConfig, list[str]]:
    """The run's own config.json with env/--set on top; changing anything but
    RESUME_MUTABLE is a ConfigError naming the keys. Returns notes on what did change."""
    stored = _stored_config(run_dir)
    base_m, base_t = resolve(config=stored, environ={}, config_source=str(run_dir / CONFIG))
    mcfg, tcfg = resolve(config=stored, environ=environ, sets=sets,
                         config_source=str(run_dir / CONFIG))
    changed = {f.name: (getattr(base, f.name), getattr(cfg, f.name))
               for cfg, base in ((mcfg, base_m), (tcfg, base_t)) for f in fields(cfg)
               if getattr(cfg, f.name) != getattr(base, f.name)}
    fixed = [k for k in changed if k not in RESUME_MUTABLE]
    if fixed:
        raise ConfigError(
            f"--resume: {', '.join(map(repr, fixed))} differ(s) from {run_dir / CONFIG}; "
            "a resumed run keeps its config (start a new run instead)"
        )
    notes = [f"resume: {k} changed {old!r} -> {new!r}" + (
        " (the LR schedule now differs from an uninterrupted run)"
        if k in ("iterations", "max_wallclock_seconds") else "")
        for k, (old, new) in changed.items()]
    return mcfg, tcfg, notes


def parse_invocation(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Invocation:
    """Parse argv and resolve the config (ConfigError on any unknown key or bad value)."""
    args = build_parser().parse_args(argv)
    sets = parse_set_args(args.sets)
    file_cfg = _compile_as_text(load_json(args.config)) if args.config else None
    mcfg, tcfg = resolve(scale=args.scale, preset=args.preset, config=file_cfg,
                         environ=environ, sets=sets, config_source=args.config or "config")
    run_dir = Path(args.run_dir).resolve() if args.run_dir else None
    notes: list[str] = []
    if args.resume:
        if run_dir is None and not tcfg.run_name:
            raise ConfigError("--resume: name the run with --run-dir or run_name (RUN_ID)")
        run_dir = run_dir or _runs_root(tcfg) / tcfg.run_name
        if not (run_dir / CONFIG).is_file():  # before any data is looked for
            raise ConfigError(f"--resume: {run_dir} is not a run directory (no {CONFIG})")
        mcfg, tcfg, notes = _resume_config(run_dir, environ, sets)
    if args.stop_at_step < 0:
        raise ConfigError(f"--stop-at-step {args.stop_at_step}: must be >= 0")
    tcfg = dataclasses.replace(tcfg, compile=compile_mode_name(tcfg.compile))
    return Invocation(mcfg, tcfg, args.preset, args.scale, run_dir, args.resume,
                      args.stop_at_step, args.print_config,
                      list(argv) if argv is not None else sys.argv[1:], notes)


def _runs_root(tcfg: TrainConfig) -> Path:
    return Path(tcfg.runs_dir).resolve() if tcfg.runs_dir else paths.runs_dir()


# ----------------------------------------------------------------------------- model


def seed_everything(seed: int) -> None:
    """Upstream seeds python, numpy and torch (CPU and every CUDA device) with SEED."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(mcfg: ModelConfig, rt: Runtime) -> torch.nn.Module:
    from golf_core.model import build_model

    try:
        model = build_model(mcfg)
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


def check_choices(tcfg: TrainConfig) -> None:
    """String settings with a fixed set of values (ConfigError naming the key)."""
    from golf_core.quant import COMPRESSORS, SCHEMES

    choices = {
        "qat_mode": ("none", "noisy", "ste"),
        "qat_modules": ("all", "core"),
        "export_scheme": (*SCHEMES, "upstream"),
        "export_compressor": tuple(COMPRESSORS),
        "autocast": precision.AUTOCAST_CHOICES,
        "muon_ns_dtype": precision.NS_DTYPES,
    }
    for key, allowed in choices.items():
        if getattr(tcfg, key) not in allowed:
            raise ConfigError(f"{key}={getattr(tcfg, key)!r}: must be one of {', '.join(allowed)}")
    if tcfg.iterations < 0 or tcfg.warmup_steps < 0 or tcfg.checkpoint_every < 0:
        raise ConfigError("iterations, warmup_steps and checkpoint_every must be >= 0")


def _format_eta(ms: float) -> str:
    s = max(int(ms / 1000), 0)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    """One run's model, optimizers, loader and counters; the loop and its side effects."""

    def __init__(self, inv: Invocation, rt: Runtime, plan: BatchPlan, data: Data) -> None:
        from golf_core.data import DistributedTokenLoader
        from golf_core.distributed import broadcast_module
        from golf_core.optim import build_optimizers

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
        from golf_core.quant import enable_qat, resolve_policy

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
                from golf_core.model import count_parameters

                depth = count_parameters(self.model)["effective_depth"]
                self.log.log(f"recurrence:activated step:{self.step} virtual_layers:{depth}")
        if self.qat_at is not None and self.step >= self.qat_at and not self.qat_on:
            self._enable_qat()

    # --- one step, one eval -------------------------------------------------------------

    def train_step(self, elapsed_ms: float) -> tuple[torch.Tensor, float]:
        """One optimizer step over the global batch; returns (mean loss over all ranks, lr mult)."""
        from golf_core.optim import apply_schedule

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
        from golf_core.evaluate import evaluate_bpb

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
        remaining = (t.iterations - step) * approx_ms / step
        if t.max_wallclock_seconds > 0:
            remaining = min(remaining, 1000.0 * t.max_wallclock_seconds - approx_ms)
        self.log.metric({"kind": "train", "step": step, "train_loss": loss, "lr_mult": mult,
                         "tokens_seen": tokens, "train_seconds": approx_ms / 1000.0,
                         "tokens_per_s": tps})
        self.log.log(f"step:{step}/{t.iterations} train_loss:{loss:.4f} "
                     f"train_time:{approx_ms:.0f}ms step_avg:{approx_ms / step:.2f}ms "
                     f"lr_mult:{mult:.4f} tokens_per_s:{tps:.0f} eta:{_format_eta(remaining)}")

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

    # --- the end ------------------------------------------------------------------------

    def _artifact_path(self) -> Path:
        t = self.tcfg
        if t.export_scheme == "upstream":
            return self.run_dir / "final_model.int8.ptz"  # upstream's name and format
        return self.run_dir / f"final_model.{t.export_scheme}.{t.export_compressor}.ptz"

    def _final_row(self, kind: str, res: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
        self.log.metric({"kind": kind, "step": self.step, "val_loss": res["val_loss"],
                         "val_bpb": res["val_bpb"], **extra})
        self.log.log(f"{kind} val_loss:{res['val_loss']:.4f} val_bpb:{res['val_bpb']:.4f} "
                     f"eval_time:{1000 * res['seconds']:.0f}ms")
        self.log.log(f"{kind}_exact val_loss:{res['val_loss']:.8f} val_bpb:{res['val_bpb']:.8f}")

    def finalize(self) -> dict[str, Any]:
        """final_model.pt, the artifact + report, roundtrip (and sliding-window) scores,
        summary.json (written last: its presence marks a finished run)."""
        from golf_core.quant import artifact_report, dequantized_copy, load_artifact

        t, art = self.tcfg, self._artifact_path()
        report = None
        if self.rt.is_main:
            tmp = self.run_dir / (FINAL_MODEL + ".tmp")
            torch.save(self.model.state_dict(), tmp)
            os.replace(tmp, self.run_dir / FINAL_MODEL)
            report = artifact_report(self.model.state_dict(), art, scheme=t.export_scheme,
                                     compressor=t.export_compressor,
                                     keep_float_max_numel=t.export_keep_float_max_numel)
            save_json(self.run_dir / ARTIFACT_REPORT, report)
            self.log.log(f"Serialized model {t.export_scheme}+{report['compressor']}: "
                         f"{report['model_bytes']} bytes")
            self.log.log(f"Code size: {report['code_bytes']} bytes")
            self.log.log(f"Total submission size {t.export_scheme}+{report['compressor']}: "
                         f"{report['total_bytes']} bytes")
        report = broadcast_object(self.rt, report)  # also: the file exists for every rank
        qmodel = dequantized_copy(self.model, load_artifact(art))
        sizes = {"bytes": report["model_bytes"], "total_bytes": report["total_bytes"]}
        rt_res = self.evaluate(qmodel)
        self._final_row("final_roundtrip", rt_res, sizes)
        results = {"final_roundtrip": rt_res}
        if t.eval_stride > 0:
            results["final_sliding_window"] = self.evaluate(self.forward, stride=t.eval_stride)
            self._final_row("final_sliding_window", results["final_sliding_window"],
                            {"stride": t.eval_stride})
            results["final_roundtrip_sliding_window"] = self.evaluate(qmodel, stride=t.eval_stride)
            self._final_row("final_roundtrip_sliding_window",
                            results["final_roundtrip_sliding_window"],
                            {"stride": t.eval_stride, **sizes})
        summary = self.summary(report, results)
        summary["gaps_by_bits"], quant_error = self.precision_gaps()
        if self.rt.is_main:
            self.save_tables(quant_error)
            save_json(self.run_dir / SUMMARY, summary)
        return summary

    def precision_gaps(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """`export_gap_bits`: per uniform precision, the bpb after an in-memory roundtrip
        of the final weights (the artifact's codec and float threshold) and its gap to the
        float model; and each one's hidden-state error per virtual layer (the rows of
        quant_error.json; none for families without a layer schedule)."""
        from golf_core.quant import (
            dequantize_state_dict,
            dequantized_copy,
            quantize_state_dict,
            recurrence_error,
            resolve_policy,
        )

        t, out, rows = self.tcfg, {}, []
        if not t.export_gap_bits:
            return out, rows
        float_model = dequantized_copy(self.model, self.model.state_dict())  # no QAT hooks
        seqs = min(4, (self.data.val_tokens.numel() - 1) // t.train_seq_len)
        batch = self.data.val_tokens[: seqs * t.train_seq_len + 1].to(self.rt.device)
        x, y = batch[:-1].view(seqs, -1), batch[1:].view(seqs, -1)  # (B, T)
        layered = hasattr(float_model, "forward_hidden") and (
            hasattr(float_model, "schedule_for") or hasattr(float_model, "schedule"))
        for bits in t.export_gap_bits:
            policy = resolve_policy(f"int{bits}",
                                    keep_float_max_numel=t.export_keep_float_max_numel)
            deq = dequantize_state_dict(quantize_state_dict(self.model.state_dict(), policy),
                                        source=f"int{bits} roundtrip")
            qmodel = dequantized_copy(float_model, deq)
            res = self.evaluate(qmodel)
            gap = res["val_bpb"] - self.last_val["val_bpb"]
            out[f"int{bits}"] = {"roundtrip_val_bpb": res["val_bpb"], "bpb_gap": gap}
            self.log.log(f"precision_gap int{bits} roundtrip_val_bpb:{res['val_bpb']:.4f} "
                         f"gap:{gap:+.4f}")
            if layered:
                with autocast_context(self.rt):
                    err = recurrence_error(float_model, qmodel, x, y)
                rows += err.assign(bits=bits, loss_gap=err.attrs.get("loss_gap")).to_dict(
                    "records")
        return out, rows

    def save_tables(self, quant_error: list[dict[str, Any]]) -> None:
        """routing.json (the final routing tables: what the notebooks plot) and
        quant_error.json (`precision_gaps`' rows): small files that outlive the checkpoints
        (results/study/)."""
        from golf_core.analysis import routing_tables

        tables = {k: json.loads(v.to_json(orient="records"))
                  for k, v in routing_tables(self.model).items()}
        save_json(self.run_dir / ROUTING, {"step": self.step, "tables": tables})
        if quant_error:
            save_json(self.run_dir / QUANT_ERROR, {"step": self.step, "rows": quant_error})

    def summary(self, report: Mapping[str, Any], results: Mapping[str, Any]) -> dict[str, Any]:
        from golf_core.model import count_parameters

        t, secs = self.tcfg, self.train_ms / 1000.0
        tokens = self.step * t.train_batch_tokens
        out = {
            "run_name": self.run_dir.name,
            "variant": variant_label(self.mcfg),
            "preset": self.inv.preset,
            "scale": self.inv.scale,
            "seed": t.seed,
            "complete": True,
            "steps": self.step,
            "iterations": t.iterations,
            "stopped_early": self.stopped_early,
            "val_loss": self.last_val["val_loss"],
            "val_bpb": self.last_val["val_bpb"],
            "roundtrip_val_loss": results["final_roundtrip"]["val_loss"],
            "roundtrip_val_bpb": results["final_roundtrip"]["val_bpb"],
            "bpb_gap": results["final_roundtrip"]["val_bpb"] - self.last_val["val_bpb"],
            "artifact": Path(report["path"]).name,
            "artifact_bytes": report["model_bytes"],
            "total_bytes": report["total_bytes"],
            "fits_budget": report["fits"],
            "train_seconds": secs,
            "ms_per_step": 1000.0 * secs / max(self.step, 1),
            "tokens_seen": tokens,
            "tokens_per_s": tokens / secs if secs > 0 else None,
            "params": count_parameters(self.model),
            "recurrence_active": bool(getattr(self.model, "recurrence_active", False)),
            "qat_active": self.qat_on,
            "hardware": {"device": str(self.rt.device), "world_size": self.rt.world_size,
                         "autocast": str(self.rt.autocast_dtype), "compile": t.compile},
        }
        for name, res in results.items():
            if name != "final_roundtrip":
                out[f"{name}_val_bpb"] = res["val_bpb"]
        return out


# ----------------------------------------------------------------------------- run directory


def open_run_dir(inv: Invocation, rt: Runtime) -> Path:
    """Rank 0 picks/creates the run directory and writes config.json + env.json; every rank
    gets its path (or the same ConfigError)."""
    verdict: tuple[str | None, str | None] = (None, None)
    if rt.is_main:
        try:
            t = inv.tcfg
            if inv.resume:
                run_dir = inv.run_dir  # parse_invocation checked it holds a run
            else:
                run_dir = new_run_dir(_runs_root(t), run_dir=inv.run_dir, run_name=t.run_name,
                                      label=inv.preset or variant_label(inv.mcfg), tag=t.tag,
                                      seed=t.seed)
            session = {"argv": inv.argv, "preset": inv.preset, "scale": inv.scale,
                       "resume": inv.resume, "reasons": dict(rt.reasons)}
            if rt.device.type == "cpu":  # the measurement behind the dtype choices
                session["precision_probes"] = precision.probes()
            write_run_files(run_dir, {"model": to_dict(inv.mcfg), "train": to_dict(t)},
                            {**env_info(rt.device, rt.world_size), **session}, inv.resume)
            verdict = (str(run_dir), None)
        except ConfigError as e:
            verdict = (None, str(e))
    path, error = broadcast_object(rt, verdict)
    if error:
        raise ConfigError(error)
    return Path(path)


def resume_from_checkpoint(trainer: Trainer) -> None:
    """Load the newest checkpoint that loads (rank 0 picks it), cut the logs back to it."""
    rt, ckpt_dir = trainer.rt, trainer.run_dir / "checkpoints"
    choice, warnings = None, []
    if rt.is_main:
        warnings = [f"removed partial write {p.name}" for p in ckpt.remove_partial_writes(ckpt_dir)]
        found = ckpt.load_latest(ckpt_dir, warn=warnings.append)
        choice = str(found[0]) if found else None
    choice = broadcast_object(rt, choice)
    if choice is None:
        trainer.log.truncate(0, 0)
        for w in warnings:
            trainer.log.log(f"warning: {w}")
        trainer.log.log(f"resume: no loadable checkpoint in {ckpt_dir}; starting at step 0")
        return
    state = ckpt.load_checkpoint(choice, map_location=rt.device)
    trainer.restore(state)
    if rt.is_main:
        for step, path in ckpt.list_checkpoints(ckpt_dir):
            if step > trainer.step:  # newer but unreadable: keep it aside, out of the way
                os.replace(path, path.with_name(path.name + ".corrupt"))
        trainer.log.truncate(int(state["metrics_rows"]), int(state["log_bytes"]))
    for w in warnings:  # after the cut, so the log keeps them
        trainer.log.log(f"warning: {w}")
    trainer.log.log(f"resume: from {Path(choice).name} step:{trainer.step}/"
                    f"{trainer.tcfg.iterations} train_time:{trainer.train_ms:.0f}ms")


# ----------------------------------------------------------------------------- main


def print_header(trainer: Trainer) -> None:
    """Derived values at the start (upstream's key:value header, plus ours)."""
    from golf_core.model import count_parameters

    inv, rt, plan, t = trainer.inv, trainer.rt, trainer.plan, trainer.tcfg
    counts = count_parameters(trainer.model)
    log = trainer.log.log
    log(f"run:{trainer.run_dir.name} run_dir:{trainer.run_dir}")
    log(f"variant:{variant_label(trainer.mcfg)} preset:{inv.preset} scale:{inv.scale}")
    log(f"model_params:{counts['total']} unique:{counts['unique']} shared:{counts['shared']} "
        f"unrolled:{counts['unrolled']} physical_layers:{counts['physical_layers']} "
        f"virtual_depth:{counts['effective_depth']}")
    log(f"world_size:{rt.world_size} grad_accum_steps:{plan.grad_accum_steps} "
        f"micro_batch_tokens:{plan.local_tokens}")
    log(f"train_batch_tokens:{t.train_batch_tokens} train_seq_len:{t.train_seq_len} "
        f"iterations:{t.iterations} warmup_steps:{t.warmup_steps} "
        f"max_wallclock_seconds:{t.max_wallclock_seconds:.3f}")
    log(f"seed:{t.seed}")
    log(f"device:{rt.device} backend:{rt.backend} autocast:{rt.autocast_dtype} "
        f"compile:{trainer.compile_mode}" + (f" ({t.compile}: {trainer.compile_why})"
                                              if t.compile == "auto" else ""))
    for what, why in rt.reasons.items():
        log(f"why {what}: {why}")
    log(f"data: {trainer.data.data_path} tokenizer: {trainer.data.tokenizer_path} "
        f"val_tokens:{trainer.data.val_tokens.numel()}")
    if trainer.recur_at is not None:
        log(f"recurrence: layers={list(trainer.mcfg.recur_layers)} start_step:{trainer.recur_at}")
    if trainer.qat_at is not None:
        log(f"qat: mode={t.qat_mode} bits={t.qat_bits} modules={t.qat_modules} "
            f"start_step:{trainer.qat_at}")


def _run(inv: Invocation, rt: Runtime) -> dict[str, Any]:
    """Every step after the config: checks, model, run directory, loop, finalize."""
    plan = plan_batches(inv.tcfg, rt.world_size)
    data = load_data(inv.mcfg, inv.tcfg)
    # config.json records the files actually used, not "" for "the default"
    inv.tcfg = dataclasses.replace(inv.tcfg, data_path=str(data.data_path.resolve()),
                                   tokenizer_path=str(data.tokenizer_path.resolve()))
    trainer = Trainer(inv, rt, plan, data)  # model errors surface here, before any file
    trainer.run_dir = open_run_dir(inv, rt)
    trainer.log = RunLog(trainer.run_dir if rt.is_main else None, echo=rt.is_main)
    try:
        if inv.resume:
            if (trainer.run_dir / SUMMARY).is_file():
                trainer.log.log(f"resume: {trainer.run_dir} is already complete")
                return load_json(trainer.run_dir / SUMMARY)
            resume_from_checkpoint(trainer)
            for note in inv.notes:
                trainer.log.log(note)
        print_header(trainer)
        if trainer.step == 0:
            trainer.warmup()
        if not trainer.loop():
            return {"run_dir": str(trainer.run_dir), "complete": False, "steps": trainer.step}
        summary = trainer.finalize()
        trainer.log.log(f"summary: {trainer.run_dir / SUMMARY}")
        return {"run_dir": str(trainer.run_dir), **summary}
    except TrainingError as e:
        trainer.log.log(f"error: {e}")
        raise
    finally:
        trainer.log.close()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> dict:
    """Train (or, with --print-config, only resolve); returns the run summary.

    `environ` defaults to os.environ (torchrun's RANK/WORLD_SIZE and upstream config names).
    Raises ConfigError for bad settings/data (before anything is written) and TrainingError
    when the loss goes non-finite.
    """
    environ = os.environ if environ is None else environ
    inv = parse_invocation(argv, environ)
    config = {"model": to_dict(inv.mcfg), "train": to_dict(inv.tcfg)}
    if inv.print_config:
        print(json.dumps(config, indent=2))
        return config
    check_choices(inv.tcfg)
    plan = plan_batches(inv.tcfg, world_size_from_env(environ))  # before any process group
    shape = precision.ProbeShape.of(inv.mcfg, inv.tcfg, plan.local_tokens)
    rt = setup_runtime(inv.tcfg.device, inv.tcfg.autocast, environ, inv.tcfg.threads,
                       inv.tcfg.muon_ns_dtype, shape)
    finished = False
    try:
        summary = _run(inv, rt)
        finished = True
        return summary
    finally:
        teardown(rt, finished=finished)


def cli(argv: Sequence[str] | None = None) -> int:
    """Console entry: one-line errors, exit 2 (config/data) or 3 (training failed)."""
    rank = os.environ.get("RANK", "0")
    try:
        main(argv)
    except ConfigError as e:
        if rank == "0":  # every rank raises the same one
            print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(cli())

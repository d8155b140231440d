"""The start of a run in its directory: open it, or reopen it and resume, and log the header.

`open_run_dir(inv, rt)`: rank 0 creates the run directory (`--run-dir`, or a new folder under
`runs_dir`) or takes the one being resumed, and writes config.json and env.json (the command
line, the device choices and, on CPU, the precision probes); every rank gets its path, or the
same ConfigError. `resume_from_checkpoint(trainer)` restores a Trainer from the newest
checkpoint that loads, moves newer unreadable ones aside (`.corrupt`) and cuts metrics.jsonl
and train.log back to that step. `print_header(trainer)` logs the run's derived values
(parameters, batch plan, device, data) as train.log's opening key:value lines.
"""

from __future__ import annotations

import os
from pathlib import Path

from golf_core import checkpoint as ckpt
from golf_core import paths, precision
from golf_core.config import ConfigError, TrainConfig, to_dict
from golf_core.distributed import Runtime, broadcast_object
from golf_core.model import count_parameters
from golf_core.runs import env_info, new_run_dir, variant_label, write_run_files
from golf_core.trainer import Invocation, Trainer


def _runs_root(tcfg: TrainConfig) -> Path:
    return Path(tcfg.runs_dir).resolve() if tcfg.runs_dir else paths.runs_dir()


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


def print_header(trainer: Trainer) -> None:
    """Derived values at the start (upstream's key:value header, plus ours)."""
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

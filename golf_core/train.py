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

This module parses the command line, resolves the config (on `--resume`, re-reads the run's
own) and runs the steps in order; the steps live in golf_core.data_checks (the data),
golf_core.trainer (model, optimizers, the loop, checkpoints), golf_core.compile_policy
(`compile`), golf_core.run_start (the run directory, resume, the log header) and
golf_core.finalize (export, roundtrip scores, summary.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from golf_core import precision
from golf_core.compile_policy import _compile_as_text, compile_mode_name
from golf_core.config import (
    SCALES,
    ConfigError,
    ModelConfig,
    TrainConfig,
    load_json,
    parse_set_args,
    to_dict,
)
from golf_core.data_checks import load_data
from golf_core.distributed import (
    Runtime,
    plan_batches,
    setup_runtime,
    teardown,
    world_size_from_env,
)
from golf_core.finalize import finalize
from golf_core.model import PRESETS
from golf_core.quant import COMPRESSORS, SCHEMES
from golf_core.run_start import _runs_root, open_run_dir, print_header, resume_from_checkpoint
from golf_core.runs import CONFIG, SUMMARY, RunLog
from golf_core.settings import resolve
from golf_core.trainer import Invocation, Trainer, TrainingError

# keys that may differ when resuming: they change logging, hardware, where files live or the
# stopping point, not the model or the data order (iterations/max_wallclock_seconds extend or
# cut a run; the warmdown then differs from an uninterrupted run, and the log says so)
RESUME_MUTABLE = {"checkpoint_every", "val_loss_every", "train_log_every", "val_batch_size",
                  "device", "compile", "iterations", "max_wallclock_seconds", "runs_dir",
                  "data_path", "tokenizer_path"}


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
                        help="model preset (golf_core.model.preset): "
                        + ", ".join(PRESETS))
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


def check_choices(tcfg: TrainConfig) -> None:
    """String settings with a fixed set of values (ConfigError naming the key)."""
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


# ----------------------------------------------------------------------------- main


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
        summary = finalize(trainer)
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

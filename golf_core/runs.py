"""Run directories: naming, the metrics/log writer, listing and reading runs.

A run directory (`runs/<YYYYmmdd-HHMMSS>_<variant>_<tag>_s<seed>/`, written by
`golf_core.train`) explains itself:

    config.json          resolved {"model": ..., "train": ...} (usable as --config)
    env.json             git commit + dirty flag, versions, device (and CPU ISA), world
                         size, host
    metrics.jsonl        one JSON object per logged step ("kind": train | val |
                         final_roundtrip | ...), flushed as written
    train.log            the same in upstream `train_gpt.py`'s `step:N/T key:value` format
    checkpoints/         ckpt_<step>.pt + .json (see golf_core.checkpoint)
    final_model.pt       the trained state dict (upstream's name)
    final_model.<scheme>.<compressor>.ptz + artifact_report.json
    summary.json         final numbers; present only when the run finished

`load_model` (golf_core.loading: any checkpoint or artifact as a model) and
`parse_upstream_log` (golf_core.upstream_log: upstream train logs, our train.log too) are
importable from here as well, and `python -m golf_core.runs PATH [KEY=VALUE ...]` prints what
`load_model` makes of a file.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from golf_core import paths
from golf_core.analysis import routing_tables
from golf_core.checkpoint import list_checkpoints
from golf_core.config import ConfigError, ModelConfig, from_dict, parse_set_args, save_json
from golf_core.loading import load_model
from golf_core.model import attention_kernel, count_parameters, softcap_ce_kernel
from golf_core.paths import (  # noqa: F401  (a run directory's file names, used from here)
    ARTIFACT_REPORT,
    CONFIG,
    ENV,
    FINAL_MODEL,
    LOG,
    METRICS,
    QUANT_ERROR,
    ROUTING,
    SUMMARY,
)
from golf_core.upstream_log import parse_upstream_log  # noqa: F401  (documented here too)

# ----------------------------------------------------------------------------- naming


def variant_label(mcfg: ModelConfig) -> str:
    """A short name of the model: a published family's name (`pr1204`), else the baseline's
    variant (`unet`, `flat`)."""
    return mcfg.family if mcfg.family != "golf" else mcfg.variant


def default_run_name(label: str, tag: str, seed: int, now: datetime | None = None) -> str:
    """`<YYYYmmdd-HHMMSS>_<label>_<tag>_s<seed>` (the tag part left out when empty)."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    parts = [stamp, label] + ([tag] if tag else []) + [f"s{seed}"]
    return "_".join(p.replace("/", "-").replace(" ", "-") for p in parts)


# ----------------------------------------------------------------------------- writing


def _git(args: list[str]) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=Path(__file__).resolve().parent.parent,
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Env vars that cap the instruction set of torch's CPU kernels: ATen's dispatch, oneDNN (bf16
# matmuls, convolutions) and MKL (fp32 GEMM). `make ... CPU_ISA=avx2` sets all three, so an
# AVX-512 machine runs the kernels an AVX2-only CPU runs (bf16 then has no instructions).
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def isa_limits() -> list[str]:
    """The ISA_LIMITS set in this process's environment, as "NAME=value"."""
    return [f"{k}={os.environ[k]}" for k in ISA_LIMITS if os.environ.get(k)]


def cpu_isa() -> str:
    """The vector ISA torch's CPU kernels dispatch to ("AVX512", "AVX2", ...), followed by the
    ISA_LIMITS in force when any is set: "AVX2 (ATEN_CPU_CAPABILITY=avx2, ...)"."""
    limits = isa_limits()
    cap = torch.backends.cpu.get_cpu_capability()
    return f"{cap} ({', '.join(limits)})" if limits else cap


def machine_slug(device_name: str) -> str:
    """A file-name stem for one machine's benchmark results: the device name in [A-Za-z0-9-],
    plus "-as-<ISA>" while ISA_LIMITS are set, so a capped run never overwrites the file of
    the machine's own kernels."""
    slug = "".join(c if c.isalnum() else "-" for c in device_name).strip("-")[:40]
    if isa_limits():
        slug += f"-as-{torch.backends.cpu.get_cpu_capability()}"
    return slug


def env_info(device: torch.device, world_size: int, extra: dict[str, Any] | None = None) -> dict:
    """Code version and hardware of a run (env.json)."""
    status = _git(["status", "--porcelain", "--untracked-files=no"])
    info = {
        "git_commit": _git(["rev-parse", "HEAD"]),
        "git_dirty": None if status is None else bool(status),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else cpu_name(),
        "cpu_isa": cpu_isa(),
        "attention": attention_kernel.kernel_mode() if device.type == "cpu" else "sdpa",
        "cross_entropy": softcap_ce_kernel.kernel_mode() if device.type == "cpu" else "torch",
        "cpu_threads": torch.get_num_threads(),
        "world_size": world_size,
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    return {**info, **(extra or {})}


def new_run_dir(
    root: Path, *, run_dir: Path | None, run_name: str, label: str, tag: str, seed: int
) -> Path:
    """The directory of a fresh run: `run_dir`, else root/run_name, else root/<default name>
    (with -2, -3 ... when two runs start within the same second). An existing non-empty
    directory is a ConfigError: runs are never overwritten."""
    if run_dir is not None or run_name:
        run_dir = run_dir or root / run_name
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError(f"run directory {run_dir} already exists; pass --resume to "
                              "continue it or choose another run_name")
        return run_dir
    base = default_run_name(label, tag, seed)
    run_dir, n = root / base, 1
    while run_dir.exists():
        n += 1
        run_dir = root / f"{base}-{n}"
    return run_dir


def write_run_files(run_dir: Path, config: dict, env: dict, resume: bool) -> None:
    """config.json and env.json (a resumed run appends its session to env.json's "resumed")."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_json(run_dir / CONFIG, config)
    if resume and (run_dir / ENV).is_file():
        old = json.loads((run_dir / ENV).read_text())
        old.setdefault("resumed", []).append(env)
        save_json(run_dir / ENV, old)
    else:
        save_json(run_dir / ENV, env)


class RunLog:
    """Appends metric rows (metrics.jsonl) and human log lines (train.log), flushed at once.

    `position` (rows, bytes) goes into each checkpoint; `truncate` cuts both files back to it
    on resume, so a row written after the checkpoint by a killed run is neither lost (it is
    re-run) nor duplicated. A RunLog with `run_dir=None` (ranks other than 0) only prints when
    `echo` is set, and writes nothing.
    """

    def __init__(self, run_dir: Path | None, echo: bool = True) -> None:
        self.run_dir, self.echo = run_dir, echo
        self.rows = 0
        self._metrics = self._log = None
        if run_dir is not None:
            self.rows = _count_lines(run_dir / METRICS)
            self._metrics = open(run_dir / METRICS, "a", encoding="utf-8")  # noqa: SIM115
            self._log = open(run_dir / LOG, "a", encoding="utf-8")  # noqa: SIM115

    def metric(self, row: dict[str, Any]) -> None:
        if self._metrics is not None:
            self._metrics.write(json.dumps(row) + "\n")
            self._metrics.flush()
            self.rows += 1

    def log(self, line: str, console: bool = True) -> None:
        if self._log is not None:
            self._log.write(line + "\n")
            self._log.flush()
        if console and self.echo:
            print(line, flush=True)

    @property
    def position(self) -> tuple[int, int]:
        if self._log is None:
            return self.rows, 0
        return self.rows, self._log.tell()

    def truncate(self, rows: int, log_bytes: int) -> None:
        """Cut metrics.jsonl to its first `rows` rows and train.log to `log_bytes` bytes."""
        if self.run_dir is None:
            return
        self.close()
        metrics = self.run_dir / METRICS
        text = metrics.read_text(encoding="utf-8") if metrics.exists() else ""
        lines = text.splitlines(keepends=True)
        tmp = metrics.with_name(METRICS + ".tmp")
        tmp.write_text("".join(lines[:rows]), encoding="utf-8")
        os.replace(tmp, metrics)
        log = self.run_dir / LOG
        if log.exists() and log.stat().st_size > log_bytes:
            with open(log, "r+b") as f:
                f.truncate(log_bytes)
        self.__init__(self.run_dir, self.echo)

    def close(self) -> None:
        for f in (self._metrics, self._log):
            if f is not None:
                f.close()
        self._metrics = self._log = None


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(1 for _ in f)


# ----------------------------------------------------------------------------- reading runs


@dataclass
class Run:
    """A loaded run directory. `summary` is None while the run is unfinished."""

    path: Path
    config: dict[str, Any]
    env: dict[str, Any]
    metrics: pd.DataFrame
    summary: dict[str, Any] | None
    artifact_report: dict[str, Any] | None = None
    checkpoints: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def complete(self) -> bool:
        return self.summary is not None

    @property
    def model_config(self) -> ModelConfig:
        return from_dict(ModelConfig, self.config["model"], source=str(self.path / CONFIG))

    def curve(self, kind: str = "val") -> pd.DataFrame:
        """The metric rows of one kind (train, val, final_roundtrip, ...)."""
        if self.metrics.empty:
            return self.metrics
        return self.metrics[self.metrics["kind"] == kind].reset_index(drop=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def read_metrics(path: str | Path) -> pd.DataFrame:
    """metrics.jsonl as a DataFrame (a torn last line from a killed process is skipped)."""
    rows = []
    path = Path(path)
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return pd.DataFrame(rows)


def load_run(path: str | Path) -> Run:
    """Config, env, metrics (DataFrame), summary and artifact report of a run directory."""
    path = Path(path)
    config = _read_json(path / CONFIG)
    if config is None:
        raise FileNotFoundError(f"{path}: not a run directory (no {CONFIG})")
    return Run(
        path=path,
        config=config,
        env=_read_json(path / ENV) or {},
        metrics=read_metrics(path / METRICS),
        summary=_read_json(path / SUMMARY),
        artifact_report=_read_json(path / ARTIFACT_REPORT),
        checkpoints=[p for _, p in list_checkpoints(path / "checkpoints")],
    )


def _last(df: pd.DataFrame, kind: str, column: str) -> Any:
    if df.empty or column not in df:
        return None
    values = df.loc[df["kind"] == kind, column].dropna()
    return values.iloc[-1].item() if len(values) else None


def list_runs(runs_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per run directory under `runs_dir` (default paths.runs_dir()), oldest first."""
    runs_dir = Path(runs_dir) if runs_dir is not None else paths.runs_dir()
    rows = []
    for path in sorted(p for p in runs_dir.glob("*") if (p / CONFIG).is_file()):
        run = load_run(path)
        train, s = run.config.get("train", {}), run.summary or {}
        rows.append({
            "name": run.name,
            "variant": variant_label(run.model_config),
            "tag": train.get("tag", ""),
            "seed": train.get("seed"),
            "steps": s.get("steps", _last(run.metrics, "train", "step")),
            "val_bpb": s.get("val_bpb", _last(run.metrics, "val", "val_bpb")),
            "roundtrip_val_bpb": s.get("roundtrip_val_bpb"),
            "artifact_bytes": s.get("artifact_bytes"),
            "complete": run.complete,
            "path": str(path),
        })
    columns = ["name", "variant", "tag", "seed", "steps", "val_bpb", "roundtrip_val_bpb",
               "artifact_bytes", "complete", "path"]
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------- inspect CLI


def inspect_cli(argv: list[str] | None = None) -> int:
    """`python -m golf_core.runs PATH [KEY=VALUE ...]`: load a run, checkpoint, upstream
    `final_model.pt` or artifact of any family and print its family, size and routing
    tables. KEY=VALUE are the env vars of the script it was trained with (NUM_LAYERS=11 ...).
    Bad input: one line on stderr, exit 2."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m golf_core.runs", description=inspect_cli.__doc__)
    p.add_argument("path", help="run directory, checkpoint, final_model.pt or .ptz artifact")
    p.add_argument("config", nargs="*", metavar="KEY=VALUE",
                   help="env vars of the training command (e.g. RECUR_LAYERS=4,5)")
    args = p.parse_args(argv)
    try:
        config = parse_set_args(args.config) or None
        model = load_model(args.path, config=config)
        tables = routing_tables(model)
    except (ValueError, FileNotFoundError, OSError) as e:  # ConfigError is a ValueError
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    counts = count_parameters(model)
    print(f"{args.path}: family {model.cfg.family}, {counts['total']:,} parameters, "
          f"{counts['physical_layers']} physical / {counts['effective_depth']} virtual layers")
    with pd.option_context("display.width", 120, "display.max_columns", 12):
        for name, df in tables.items():
            if len(df):
                print(f"\n{name}\n{df.to_string(index=False, max_rows=20)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(inspect_cli())

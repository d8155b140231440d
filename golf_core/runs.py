"""Run directories: naming, the metrics/log writer, listing and loading runs, upstream logs.

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

`parse_upstream_log` reads upstream parameter-golf logs (`step:` lines, the `final_*` /
`DIAGNOSTIC` / roundtrip / sliding-window results and PR #1204's `parallel_residual layer:`
routing lines), so upstream curves and learned routing plot beside ours; it reads our
train.log too.
"""

from __future__ import annotations

import json
import os
import platform
import re
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
from golf_core.checkpoint import list_checkpoints, load_checkpoint
from golf_core.config import (
    ConfigError,
    ModelConfig,
    apply_overrides,
    env_name,
    from_dict,
    parse_set_args,
    save_json,
)

CONFIG, ENV, METRICS, LOG, SUMMARY = (
    "config.json", "env.json", "metrics.jsonl", "train.log", "summary.json"
)
FINAL_MODEL, ARTIFACT_REPORT = "final_model.pt", "artifact_report.json"
# written at the end of a run beside summary.json: small, and kept where checkpoints are not
ROUTING, QUANT_ERROR = "routing.json", "quant_error.json"


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


# ----------------------------------------------------------------------------- loading models


def infer_baseline_config(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Size fields of an upstream baseline state dict, read off its tensor shapes."""
    sd = state_dict
    if "tok_emb.weight" not in sd or "blocks.0.attn.q_gain" not in sd:
        return {}
    vocab, dim = sd["tok_emb.weight"].shape
    heads = sd["blocks.0.attn.q_gain"].numel()
    head_dim = dim // heads
    return {
        "vocab_size": int(vocab),
        "model_dim": int(dim),
        "num_layers": len({k.split(".")[1] for k in sd if k.startswith("blocks.")}),
        "num_heads": int(heads),
        "num_kv_heads": int(sd["blocks.0.attn.c_k.weight"].shape[0] // head_dim),
        "mlp_mult": int(sd["blocks.0.mlp.fc.weight"].shape[0] // dim),
        "tie_embeddings": "lm_head.weight" not in sd,
    }


def _env_keys(config: dict, source: str) -> dict[str, Any]:
    """Field names from a dict of field names or upstream env names (`NUM_LAYERS`)."""
    by_env = {env_name(f): f for f in ModelConfig.__dataclass_fields__}
    keys = {by_env.get(k, k): v for k, v in config.items()}
    unknown = sorted(set(keys) - set(ModelConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"{source}: unknown config key(s) {', '.join(map(repr, unknown))}")
    return keys


def _config_for(config: ModelConfig | dict | None, sd: dict, source: str,
                family: str) -> ModelConfig:
    """A ModelConfig from an explicit config, or: the family's published preset (ours: the
    upstream baseline), the user's env-style overrides, then the sizes the shapes fix."""
    if isinstance(config, ModelConfig):
        return config
    keys = _env_keys(config or {}, f"load_model config for {source}")
    if family == "golf":
        cfg = apply_overrides(ModelConfig(), infer_baseline_config(sd), source=f"{source} shapes")
        return apply_overrides(cfg, keys, source="load_model config")
    from golf_core.model import preset
    from golf_core.model.families import family_module

    base = apply_overrides(preset(family), keys, source="load_model config")
    try:
        return family_module(family).config_from_state_dict(sd, base)
    except ValueError as e:
        raise ConfigError(f"load_model: {source}: {e}") from None


def _weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, run config or None) of a run directory or a weights file."""
    if path.is_dir():
        run_cfg = _read_json(path / CONFIG)
        if (path / FINAL_MODEL).is_file():
            return torch.load(path / FINAL_MODEL, map_location="cpu", weights_only=True), run_cfg
        ckpts = list_checkpoints(path / "checkpoints")
        if not ckpts:
            raise FileNotFoundError(f"{path}: no {FINAL_MODEL} and no checkpoints")
        return load_checkpoint(ckpts[-1][1])["model"], run_cfg
    if path.suffix == ".ptz":
        from golf_core.quant import load_artifact

        return load_artifact(path), None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code in it, a truncated or foreign file
        raise ValueError(f"{path}: not a weights file torch.load(weights_only=True) can read "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if isinstance(sd, dict) and "model" in sd and "step" in sd:  # one of our checkpoints
        return sd["model"], None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
    return sd, None


def _recurrence_flag(path: Path, mcfg: ModelConfig) -> bool:
    """PR #1204's recurrence switch, which no tensor holds: as the run saved it, else on (the
    script exports and evaluates with recurrence on)."""
    summary = _read_json(path / SUMMARY) if path.is_dir() else None
    if summary and "recurrence_active" in summary:
        return bool(summary["recurrence_active"])
    return bool(mcfg.recur_layers)


def _expected_keys() -> str:
    from golf_core.model.families import PUBLISHED, family_module

    keys = ["blocks.0.attn.c_q.weight (baseline / ours)"]
    keys += [f"{', '.join(family_module(f).IDENTIFYING_KEYS)} (PR #{family_module(f).PR})"
             for f in PUBLISHED]
    return "; ".join(keys)


def load_model(
    path: str | Path, config: ModelConfig | dict | None = None, device: str = "cpu"
) -> torch.nn.Module:
    """A model in eval mode from a run directory (final_model.pt, else its newest checkpoint),
    one of our checkpoints, an upstream `final_model.pt` or an artifact: ours, upstream's
    `.int8.ptz`, PR #363's `ZLIB`/`ZSTD` int8 file, PR #1204's `final_model.int6.ptz`.

    The family (baseline/ours, PR #54, #325, #363, #1204) is read off the state-dict keys.
    `config`: a ModelConfig, or a dict of field names or *that family's script's* env var
    names (`{"RECUR_LAYERS": "4,5", "PARALLEL_START_LAYER": "7"}`: paste the command you
    trained with) applied over the family's published preset, then the sizes the weights'
    shapes fix; a run directory's own config.json is used when `config` is None. A
    mini-recurrence model comes back switched on or off as it was saved (PR #1204's upstream
    files: on, as at export). Errors name the file and what was expected, in one line.
    """
    from golf_core.model import build_model, detect_family

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"load_model: {path}: no such file or directory")
    sd, run_cfg = _weights(path)
    sd = {k.removeprefix("_orig_mod."): v for k, v in sd.items()}  # torch.compile'd
    family = detect_family(sd)
    if config is None and run_cfg is not None:
        mcfg = from_dict(ModelConfig, run_cfg["model"], source=str(path / CONFIG))
    else:
        mcfg = _config_for(config, sd, str(path), family)
    if family == "golf" and not any(k.startswith("blocks.") for k in sd):
        raise ValueError(f"{path}: no model family recognised in its {len(sd)} keys (first: "
                         f"{', '.join(list(sd)[:3]) or 'none'}); expected {_expected_keys()}")
    model = build_model(mcfg)
    if hasattr(model, "set_recurrence_active"):
        model.set_recurrence_active(_recurrence_flag(path, mcfg))
    try:
        model.load_state_dict(sd)
        model.load_state_dict(sd)  # ours: the first load's hook switched mini recurrence
    except RuntimeError as e:
        first = str(e).splitlines()
        detail = " ".join(line.strip() for line in first[1:3])[:300]
        raise ValueError(f"{path}: weights do not fit the {family} model of this config "
                         f"({detail}); pass config= with the env vars you trained with") from None
    return model.to(device).eval()


# ----------------------------------------------------------------------------- upstream logs

_STEP = re.compile(r"^step:(\d+)/(\d+)\s+(.*)$")
_KV = re.compile(r"^([A-Za-z_]\w*):(\S+)$")
_RESULT = re.compile(r"^(?P<name>[^:]+?)\s+(?P<rest>(?:\w+:\S+\s*)*val_loss:\S+\s+val_bpb:\S+.*)$")
_SIZE = re.compile(
    r"^(?P<name>Serialized model.*|Total submission size.*|Code size):\s+(\d+) bytes"
)
_ROUTING = re.compile(r"^parallel_residual layer:(\d+)\s+(.*)$")
ROUTING_COLUMNS = ["layer", "physical", "attn_resid", "attn_to_attn", "attn_to_mlp",
                   "mlp_resid", "mlp_to_attn", "mlp_to_mlp"]
METRIC_COLUMNS = ["step", "kind", "train_loss", "val_loss", "val_bpb", "train_time_ms",
                  "step_avg_ms"]


def _value(text: str) -> Any:
    """'43.50ms' -> 43.5, '1337' -> 1337, 'True' -> True, anything else stays a string."""
    if text in ("True", "False"):
        return text == "True"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _pairs(text: str, strict: bool = True) -> dict[str, Any] | None:
    """`a:1 b:2ms` -> {"a": 1, "b_ms": 2}; a token that is not key:value makes it None
    (strict) or is skipped."""
    out: dict[str, Any] = {}
    for token in text.split():
        m = _KV.match(token)
        if not m:
            if strict:
                return None
            continue
        key, raw = m.groups()
        if raw.endswith("ms") and _value(raw[:-2]) != raw[:-2]:
            key, raw = f"{key}_ms", raw[:-2]
        out[key] = _value(raw)
    return out


def _step_row(m: re.Match) -> dict[str, Any] | None:
    kv = _pairs(m.group(3)) or {}
    kind = "val" if "val_loss" in kv else "train" if "train_loss" in kv else None
    if kind is None:
        return None
    row = {"step": int(m.group(1)), "kind": kind}
    row.update({c: kv.get(c) for c in METRIC_COLUMNS[2:]})
    return row


def parse_upstream_log(path: str | Path) -> dict[str, Any]:
    """Curves, final results, sizes, header and lane routing of an upstream train log.

    Returns {"metrics": DataFrame (one row per `step:` line; columns METRIC_COLUMNS, NaN where
    a line lacks a value), "final": {name: {val_loss, val_bpb, eval_time_ms, ...}} for every
    result line (`final_*`, `DIAGNOSTIC ...`, roundtrip, sliding window), "sizes": {name:
    bytes}, "header": key:value settings printed before training, "events": [{step, text}]
    (recurrence activation, QAT, early stop ...), "routing": DataFrame of ROUTING_COLUMNS},
    "iterations": the planned step count}.
    """
    rows, final, sizes, header, events, routing = [], {}, {}, {}, [], []
    iterations = None
    for raw in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.strip()
        if m := _STEP.match(line):
            iterations = int(m.group(2))
            if (row := _step_row(m)) is not None:
                rows.append(row)
        elif m := _ROUTING.match(line):
            kv = _pairs(m.group(2)) or {}
            routing.append({"layer": int(m.group(1)),
                            **{c: kv.get(c) for c in ROUTING_COLUMNS[1:]}})
        elif m := _RESULT.match(line):
            final[m.group("name")] = _pairs(m.group("rest"), strict=False)
        elif m := _SIZE.match(line):
            sizes[m.group("name")] = int(m.group(2))
        elif rows and (s := re.search(r"\bstep:(\d+)", line)):
            events.append({"step": int(s.group(1)), "text": line})
        elif not rows and (kv := _pairs(line)) and not any(k.endswith("warmup_step") for k in kv):
            header.update(kv)
    return {
        "metrics": pd.DataFrame(rows, columns=METRIC_COLUMNS),
        "final": final,
        "sizes": sizes,
        "header": header,
        "events": events,
        "routing": pd.DataFrame(routing, columns=ROUTING_COLUMNS),
        "iterations": iterations,
    }


# ----------------------------------------------------------------------------- inspect CLI


def inspect_cli(argv: list[str] | None = None) -> int:
    """`python -m golf_core.runs PATH [KEY=VALUE ...]`: load a run, checkpoint, upstream
    `final_model.pt` or artifact of any family and print its family, size and routing
    tables. KEY=VALUE are the env vars of the script it was trained with (NUM_LAYERS=11 ...).
    Bad input: one line on stderr, exit 2."""
    import argparse
    import sys

    from golf_core.analysis import routing_tables
    from golf_core.model import count_parameters

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

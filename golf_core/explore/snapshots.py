"""Snapshots: what the explorer opens (a run at a step, or a weights file), its routing
tables plus the quantization error per virtual layer, and the difference of two."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from golf_core import paths
from golf_core.analysis import routing_tables
from golf_core.checkpoint import checkpoint_path, list_checkpoints
from golf_core.data import load_validation_tokens
from golf_core.loading import load_model
from golf_core.model import build_model
from golf_core.quant import QuantPolicy, quantize_state_dict, recurrence_error
from golf_core.runs import load_run, variant_label

FINAL = -1  # the step value of a run's final model (final_model.pt)
FAMILY_LABELS = {
    "auto": "auto (run config / tensor names)", "golf": "baseline / ours (golf)",
    "pr54": "PR #54", "pr325": "PR #325", "pr363": "PR #363", "pr1204": "PR #1204",
}  # fmt: skip
# rows of two snapshots are matched on these columns (where both tables have them): lanes and
# layer controls by physical block and repeat, so a mini model compares across its hinge
ROW_KEYS = {
    "skip_weights": ["skip"], "resid_mix": ["physical", "cycle"], "lanes": ["physical"],
    "embeddings": ["name", "index"], "quant_error": ["physical_block", "cycle"],
}  # fmt: skip


# a relative quantity beyond this is a ratio over a ~0 reference (`changes` does not rank it)
RATIO_LIMIT = 1e6
QUANT_COLUMNS = ["virtual_layer", "physical_block", "cycle", "rel_error", "shared", "bits",
                 "batch"]


class ExploreError(ValueError):
    """A parameter or file the explorer cannot open; the message names it."""


# ----------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """A run directory (`kind="run"`) or one weights file (`kind="file"`)."""

    path: Path
    kind: str
    label: str

    def steps(self) -> list[int]:
        """A run: 0 (its initialisation), each kept checkpoint, FINAL when final_model.pt is
        there. A file: [FINAL] (it is one point)."""
        if self.kind == "file":
            return [FINAL]

        kept = [s for s, _ in list_checkpoints(self.path / "checkpoints")]
        final = [FINAL] if (self.path / "final_model.pt").is_file() else []
        return sorted({0, *kept}) + final

    def step_label(self, step: int) -> str:
        if self.kind == "file":
            return self.path.name
        return "final" if step == FINAL else "0 (init)" if step == 0 else str(step)


def run_source(path: str | Path) -> Source:
    run = load_run(path)
    return Source(Path(path), "run", f"{run.name} ({variant_label(run.model_config)})")


def file_source(path: str | Path) -> Source:
    path = Path(path)
    return Source(path, "file", f"{path.parent.name}/{path.name}")


def resolve_source(text: str, *, what: str = "run") -> Source:
    """A run directory, a run name under `paths.runs_dir()`, or a weights file; anything else
    raises ExploreError naming `what` (the parameter)."""
    path = Path(text).expanduser()
    if not text:
        raise ExploreError(f"{what}: empty")
    if not path.exists() and not path.is_absolute() and (paths.runs_dir() / text).exists():
        path = paths.runs_dir() / text
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ExploreError(f"{what}: {path} is not a run directory (no config.json)")
        return run_source(path)
    if path.is_file():
        return file_source(path)
    raise ExploreError(f"{what}: {text!r} is neither a weights file nor a run directory "
                       f"(run names are looked up in {paths.runs_dir()})")


def list_sources(runs_dir: str | Path | None = None) -> list[Source]:
    """Every run under `runs_dir` (default paths.runs_dir()) with weights to open."""
    root = Path(runs_dir) if runs_dir is not None else paths.runs_dir()
    found = sorted(p for p in root.glob("*") if (p / "config.json").is_file()) \
        if root.is_dir() else []
    return [run_source(p) for p in found
            if (p / "final_model.pt").is_file() or any((p / "checkpoints").glob("ckpt_*.pt"))]


# ----------------------------------------------------------------------------- snapshots


@dataclass
class Snapshot:
    """A model at one point: `source` at `step` (FINAL, 0 = initialisation, or a checkpoint)."""

    source: Source
    step: int
    model: torch.nn.Module
    config: Any
    data_path: str = ""
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.source.kind == "file":
            return self.source.label
        return f"{self.source.path.name} @ step {self.source.step_label(self.step)}"


def check_family(family: str) -> None:
    if family not in FAMILY_LABELS:
        raise ExploreError(f"family: unknown {family!r}; choose one of {', '.join(FAMILY_LABELS)}")


def check_step(source: Source, step: int, what: str = "step") -> None:
    """ExploreError naming `what` unless `source` has `step`."""
    steps = source.steps()
    if step in steps:
        return
    if source.kind == "file":
        raise ExploreError(f"{what}: {source.path.name} is one weights file, it has no step "
                           f"{step} (use -1)")
    have = ", ".join(source.step_label(s) for s in steps)
    raise ExploreError(f"{what}: run {source.path.name} has no step {step}; it has {have}")


def load_snapshot(source: Source, step: int = FINAL, *, family: str = "auto",
                  config: Mapping[str, Any] | None = None) -> Snapshot:
    """The model of `source` at `step`. `family` (not "auto") and `config` (config fields or
    upstream env names) apply to a weights file; a run brings its own config.json."""

    check_family(family)
    check_step(source, step)
    if source.kind == "file":
        overrides = {**(config or {}), **({"family": family} if family != "auto" else {})}
        model = load_model(source.path, config=overrides or None)
        return Snapshot(source, step, model, getattr(model, "cfg", None))
    run = load_run(source.path)
    cfg = run.model_config
    if family not in ("auto", cfg.family):
        raise ExploreError(f"family: run {run.name} was trained as family {cfg.family!r}; "
                           f"choose auto or {cfg.family}")
    if config:
        raise ExploreError(f"upstream_config: applies to a weights file; run {run.name} has "
                           "its own config.json")
    if step == FINAL:
        model = load_model(source.path)
    elif step == 0 and not (source.path / "checkpoints" / "ckpt_000000.pt").is_file():
        model = _initial_model(cfg, int(run.config["train"].get("seed", 1337)))
    else:
        model = load_model(checkpoint_path(source.path / "checkpoints", step), config=cfg)
    return Snapshot(source, step, model, cfg, str(run.config["train"].get("data_path", "")))


def _initial_model(cfg: Any, seed: int) -> torch.nn.Module:
    """The model as trainer.py builds it before step 1 (seeded as the run was), in eval mode;
    the caller's RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg).eval()


def snapshot_tables(snap: Snapshot, *, bits: int = 6, n_seqs: int = 2,
                    seq_len: int = 128) -> dict[str, pd.DataFrame]:
    """routing_tables of the snapshot's model (every key it returns, a family's extras
    included) plus `quant_error` (empty, with the reason in `.attrs["unavailable"]`, for a
    model `recurrence_error` cannot run); stored on `snap.tables` too."""
    tables = dict(routing_tables(snap.model, snap.config))
    try:
        tables["quant_error"] = quant_error_table(snap, bits=bits, n_seqs=n_seqs,
                                                  seq_len=seq_len)
    except (AttributeError, NotImplementedError, TypeError, ValueError, RuntimeError) as e:
        # a model recurrence_error cannot run (e.g. a state dict that does not load back
        # into it): the other panels still show, this one says why
        empty = pd.DataFrame(columns=QUANT_COLUMNS)
        empty.attrs["unavailable"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        tables["quant_error"] = empty
    snap.tables = tables
    return tables


def error_batch(snap: Snapshot, n_seqs: int = 2, seq_len: int = 128
                ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(inputs, targets, what): the start of the run's validation split when its shards are
    on this machine, else seeded random token ids (an upstream file brings no data)."""
    if snap.data_path and Path(snap.data_path).is_dir():
        try:
            tokens = load_validation_tokens(snap.data_path, seq_len, n_seqs * seq_len + 1)
        except FileNotFoundError:
            tokens = torch.empty(0, dtype=torch.long)
        n = (tokens.numel() - 1) // seq_len
        if n >= 1:
            batch = tokens[: n * seq_len + 1]
            return batch[:-1].view(n, seq_len), batch[1:].view(n, seq_len), "validation tokens"
    vocab = int(getattr(snap.config, "vocab_size", 1024))
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(vocab, (n_seqs, seq_len + 1), generator=gen)
    return batch[:, :-1], batch[:, 1:], "random tokens"


def quant_error_table(snap: Snapshot, *, bits: int = 6, n_seqs: int = 2,
                      seq_len: int = 128) -> pd.DataFrame:
    """Relative hidden-state error after each virtual layer of the model quantized to `bits`
    (every matrix, as notebook 05 does), with `shared` (the block runs more than once) and
    `batch`; the loss gap (nats) is in `.attrs["loss_gap"]`."""
    x, y, what = error_batch(snap, n_seqs, seq_len)
    model = snap.model
    policy = QuantPolicy(bits=bits, keep_float_max_numel=0)
    with torch.no_grad():
        df = recurrence_error(model, quantize_state_dict(model.state_dict(), policy), x, y)
    uses = df["physical_block"].map(df["physical_block"].value_counts())
    out = df.assign(shared=uses > 1, bits=bits, batch=what)
    out.attrs = dict(df.attrs)
    return out


# ----------------------------------------------------------------------------- differences


def _row_keys(key: str, a: pd.DataFrame, b: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(key columns, float value columns) shared by `a` and `b`: ROW_KEYS where both have
    them; else no keys for two one-row tables; else the leading non-float columns."""
    common = [c for c in a.columns if c in b.columns]
    floats = [c for c in common if pd.api.types.is_float_dtype(a[c])
              and pd.api.types.is_float_dtype(b[c])]
    known = ROW_KEYS.get(key)
    if known and all(c in common for c in known):
        return known, [c for c in floats if c not in known]
    if len(a) == 1 and len(b) == 1:
        numeric = [c for c in common if pd.api.types.is_numeric_dtype(a[c])
                   and not pd.api.types.is_bool_dtype(a[c])]
        return [], numeric
    keys = []
    for c in common:
        if c in floats:
            break
        keys.append(c)
    return keys, [c for c in floats if c not in keys]


def difference(a: Mapping[str, pd.DataFrame], b: Mapping[str, pd.DataFrame]
               ) -> dict[str, pd.DataFrame]:
    """Per table both snapshots have: one row per (matched row, quantity) with columns the
    row keys, `quantity`, `a`, `b`, `a_minus_b` (NaN where a row is in one snapshot only,
    e.g. the repeated layers of a mini model before its recurrence starts)."""
    out: dict[str, pd.DataFrame] = {}
    for key in [k for k in a if k in b]:
        ta, tb = a[key], b[key]
        keys, values = _row_keys(key, ta, tb)
        if not values or ta.empty and tb.empty:
            continue
        left = ta[keys + values].drop_duplicates(keys) if keys else ta[values]
        right = tb[keys + values].drop_duplicates(keys) if keys else tb[values]
        if keys:
            m = left.merge(right, on=keys, how="outer", suffixes=("_a", "_b"))
        else:
            m = pd.concat([left.add_suffix("_a").reset_index(drop=True),
                           right.add_suffix("_b").reset_index(drop=True)], axis=1)
        frames = [m[keys].assign(quantity=v, a=m[f"{v}_a"].astype(float),
                                 b=m[f"{v}_b"].astype(float)) for v in values]
        long = pd.concat(frames, ignore_index=True)
        out[key] = long.assign(a_minus_b=long["a"] - long["b"])
    return out


def is_ratio(quantity: str) -> bool:
    """Whether a quantity is relative to a reference (`rel` or `ratio` a word of its name:
    rel_error, proj_rel_diff, ...)."""
    return bool(re.search(r"(^|_)(rel|ratio)(_|$)", quantity))


def changes(diff: Mapping[str, pd.DataFrame], top: int = 12) -> pd.DataFrame:
    """The `top` largest |a - b| over every table of a `difference`: table, row, quantity,
    a, b, a_minus_b. A row without a finite value on both sides has no difference to rank.
    Neither has a relative quantity (`is_ratio`) above RATIO_LIMIT on either side: that is a
    ratio over a ~0 reference, not a change (the tables report an absolute difference for
    such rows, e.g. PR #1204's repeat_mlp `*_abs_diff`, and that ranks); those rows are in
    `.attrs["left_out"]` (table, row, quantity, a, b)."""
    rows, left_out = [], []
    for key, df in diff.items():
        keys = [c for c in df.columns if c not in ("quantity", "a", "b", "a_minus_b")]
        for rec in df.to_dict("records"):
            row = ", ".join(f"{k}={rec[k]}" for k in keys) or "-"
            one = {"table": key, "row": row, "quantity": rec["quantity"], "a": rec["a"],
                   "b": rec["b"], "a_minus_b": rec["a_minus_b"]}
            if not (math.isfinite(rec["a"]) and math.isfinite(rec["b"])):
                continue
            if is_ratio(str(rec["quantity"])) and max(abs(rec["a"]), abs(rec["b"])) > RATIO_LIMIT:
                left_out.append({k: one[k] for k in ("table", "row", "quantity", "a", "b")})
                continue
            rows.append(one)
    df = pd.DataFrame(rows, columns=["table", "row", "quantity", "a", "b", "a_minus_b"])
    if not df.empty:
        order = df["a_minus_b"].abs().sort_values(ascending=False, kind="stable").index
        df = df.loc[order].head(top).reset_index(drop=True)
    df.attrs["left_out"] = left_out
    return df

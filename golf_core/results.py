"""Tables of finished runs, read from their files: what the notebooks tabulate and plot.

The functions take `RunSpec`s of the run matrix (golf_core.experiments) and return a pandas
DataFrame built from the files the runs wrote (summary.json, metrics.jsonl, env.json,
config.json, routing.json, quant_error.json): the matrix itself with completion
(`matrix_table`), final numbers (`summary_table`), train/val curves (`curves`,
`learning_table`), hardware (`hardware_table`), stored routing and quantization-error tables
(`stored_routing`, `stored_quant_error`); `error_growth` and `compare` (per-label statistics)
take a table made here. `load_runs` gives the runs themselves; a missing or unfinished run is
a FileNotFoundError naming it. Nothing is computed from weights and nothing is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from golf_core import paths
from golf_core.experiments import RunSpec
from golf_core.runs import QUANT_ERROR, ROUTING, load_run

# ----------------------------------------------------------------------------- run tables


def matrix_table(specs: Sequence[RunSpec]) -> pd.DataFrame:
    """The run matrix as a table (one row per run, with whether it already finished)."""
    return pd.DataFrame([{**s.as_row(), "complete": s.is_complete()} for s in specs])


def load_runs(specs: Sequence[RunSpec]) -> list[Any]:
    """`golf_core.runs.Run` of each spec; a missing or unfinished run is an error naming it."""
    missing = [s.name for s in specs if not s.is_complete()]
    if missing:
        raise FileNotFoundError(
            f"run(s) not finished under {paths.runs_dir()}: {', '.join(missing)}; "
            "execute notebooks/01_train.ipynb (or `make report`) first"
        )
    return [load_run(s.run_dir) for s in specs]


def summary_table(specs: Sequence[RunSpec]) -> pd.DataFrame:
    """Final numbers of each run: val_bpb before/after the quantization roundtrip, artifact
    bytes, unique/total parameters, virtual depth, training seconds and ms per step."""
    rows = []
    for spec, run in zip(specs, load_runs(specs)):
        s = run.summary
        rows.append({
            "name": spec.name, "label": spec.label, "seed": spec.seed, "budget": spec.budget,
            "steps": s["steps"],
            "val_bpb": s["val_bpb"], "roundtrip_val_bpb": s["roundtrip_val_bpb"],
            "bpb_gap": s["bpb_gap"], "artifact_bytes": s["artifact_bytes"],
            "unique_params": s["params"]["unique"], "total_params": s["params"]["total"],
            "virtual_depth": s["params"]["effective_depth"],
            "train_seconds": s["train_seconds"], "ms_per_step": s["ms_per_step"],
            # PR #363's per-precision post-export gaps (export_gap_bits; NaN where not run)
            **{f"gap_int{b}": _gap(s, run.config["train"], b) for b in (8, 6, 5)},
        })  # fmt: skip
    return pd.DataFrame(rows)


def _gap(summary: Mapping[str, Any], train: Mapping[str, Any], bits: int) -> float:
    """The post-export bpb gap at uniform `bits`: the run's in-memory roundtrip at those bits
    (export_gap_bits), else its artifact's when the artifact is that uniform precision (every
    matrix quantized alike: the same policy), else NaN."""
    got = summary.get("gaps_by_bits", {}).get(f"int{bits}")
    if got is not None:
        return float(got["bpb_gap"])
    if train.get("export_scheme") == f"int{bits}":
        return float(summary["bpb_gap"])
    return float("nan")


def curves(specs: Sequence[RunSpec]) -> pd.DataFrame:
    """Every logged train and val row of the runs: label, seed, name, kind, step,
    train_seconds, train_loss, val_bpb (NaN where a row lacks it)."""
    frames = []
    for spec, run in zip(specs, load_runs(specs)):
        m = run.metrics[run.metrics["kind"].isin(["train", "val"])].copy()
        for col in ("train_loss", "val_bpb", "train_seconds"):
            if col not in m:
                m[col] = np.nan
        m = m.assign(label=spec.label, seed=spec.seed, name=spec.name)
        frames.append(m[["label", "seed", "name", "kind", "step", "train_seconds",
                         "train_loss", "val_bpb"]])
    return pd.concat(frames, ignore_index=True)


def learning_table(specs: Sequence[RunSpec]) -> pd.DataFrame:
    """Did each run learn? First and last val_bpb (step 0 is the untrained model)."""
    val = curves(specs).query("kind == 'val'").sort_values("step")
    out = val.groupby(["name", "label", "seed"], sort=False).agg(
        first_step=("step", "first"), first_val_bpb=("val_bpb", "first"),
        last_step=("step", "last"), last_val_bpb=("val_bpb", "last")).reset_index()
    out["drop"] = out["first_val_bpb"] - out["last_val_bpb"]
    return out


def hardware_table(specs: Sequence[RunSpec]) -> pd.DataFrame:
    """Where the runs ran (env.json + summary): one row per distinct hardware setup."""
    rows = []
    for run in load_runs(specs):
        env, hw = run.env, run.summary.get("hardware", {})
        rows.append({"device": hw.get("device", env.get("device")),
                     "device_name": env.get("device_name", env.get("cpu", "")),
                     "cpu_isa": env.get("cpu_isa", ""),
                     "world_size": hw.get("world_size"), "autocast": hw.get("autocast"),
                     "torch": env.get("torch", env.get("torch_version")),
                     "commit": str(env.get("git_commit", env.get("commit", "")))[:10],
                     "host": env.get("host", env.get("hostname", ""))})
    df = pd.DataFrame(rows).astype(str)
    counts = df.value_counts().rename("runs").reset_index()
    return counts


def compare(summary: pd.DataFrame, metric: str = "val_bpb") -> pd.DataFrame:
    """Per label: seeds, mean, std, min and max of `metric`, best first."""
    g = summary.groupby("label")[metric]
    out = pd.DataFrame({"seeds": g.size(), "mean": g.mean(), "std": g.std(ddof=1),
                        "min": g.min(), "max": g.max()})
    return out.sort_values("mean").reset_index()


# ----------------------------------------------------------------------------- stored tables


def stored_routing(specs: Sequence[RunSpec], table: str) -> pd.DataFrame:
    """One final routing table (`routing.json`, written by train.py at the end of a run:
    e.g. "lanes", "skip_weights") of every run that has it, with label, seed, name, step."""
    frames = []
    for spec in specs:
        path = spec.run_dir / ROUTING
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        rows = data["tables"].get(table)
        if rows:
            frames.append(pd.DataFrame(rows).assign(label=spec.label, seed=spec.seed,
                                                    name=spec.name, step=data["step"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def stored_quant_error(specs: Sequence[RunSpec]) -> pd.DataFrame:
    """Hidden-state error per virtual layer of each run's final weights at each of its
    export_gap_bits (`quant_error.json`): virtual_layer, physical_block, cycle, rel_error,
    bits, loss_gap, plus label, seed, name and `shared` (the block is applied more than
    once: the loop core). Empty where no run wrote one."""
    frames = []
    for spec in specs:
        path = spec.run_dir / QUANT_ERROR
        if path.is_file():
            df = pd.DataFrame(json.loads(path.read_text())["rows"])
            frames.append(df.assign(label=spec.label, seed=spec.seed, name=spec.name))
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    uses = df.groupby(["name", "bits", "physical_block"])["virtual_layer"].transform("size")
    return df.assign(shared=uses > 1)


def error_growth(errors: pd.DataFrame) -> pd.DataFrame:
    """Per run and bits: the loop core's hidden-state error at its first and last layer and
    their ratio (PR #363: ~900x over 3 cycles at int6)."""
    core = errors[errors["shared"]].sort_values("virtual_layer")
    g = core.groupby(["label", "seed", "name", "bits"], sort=False)["rel_error"]
    out = pd.DataFrame({"first": g.first(), "last": g.last()}).reset_index()
    return out.assign(growth=out["last"] / out["first"])


"""Training checkpoints: the whole state of a run at a step, written atomically, resumable.

Layout (nanochat-style): `checkpoints/ckpt_<step>.pt` holds everything `--resume` needs (model,
optimizers, data-loader position, torch/numpy/python RNG states, step, training seconds,
recurrence/QAT switches, how many metric rows and log bytes belonged to the run at that point)
and `ckpt_<step>.json` the same metadata without tensors, for people and `golf_core.runs`.
Both are written under a `.tmp` name and renamed, the JSON first and the `.pt` last, so a
`.pt` that exists was written completely; a process killed mid-write leaves a `.tmp` that is
ignored. The newest `keep` checkpoints are kept. Everything loads with `weights_only=True`:
only tensors and plain Python containers/numbers/strings are stored.
"""

from __future__ import annotations

import os
import random
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from golf_core.config import save_json

CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")


def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    # zero-padded so a plain `ls` sorts them by step
    return Path(ckpt_dir) / f"ckpt_{step:06d}.pt"


def rng_state() -> dict[str, Any]:
    """torch (CPU + every CUDA device), numpy global and python `random` states."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),  # uint32 -> a tensor for pickle
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` captured (CUDA states only where a GPU is present)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def list_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete-looking `ckpt_<step>.pt`, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = []
    for path in ckpt_dir.iterdir():
        m = CKPT_RE.match(path.name)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def save_checkpoint(
    ckpt_dir: str | Path, step: int, state: Mapping[str, Any], meta: Mapping[str, Any],
    keep: int = 2,
) -> Path:
    """Write `state` (tensors + plain values) and `meta` (JSON) for `step`; prune to `keep`."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(ckpt_dir, step)
    save_json(path.with_suffix(".json"), {"step": step, "file": path.name, **meta})
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(state), tmp)
    os.replace(tmp, path)
    for _, old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """One checkpoint, `weights_only=True`; a bad file raises ValueError naming it."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, pickle/zip errors, EOFError, ...
        raise ValueError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise ValueError(f"{path}: not a training checkpoint (no 'step'/'model' entries)")
    return state


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def load_latest(
    ckpt_dir: str | Path,
    map_location: str | torch.device = "cpu",
    warn: Callable[[str], None] = _warn,
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads (newer corrupt/partial ones skipped with a warning)."""
    for _, path in reversed(list_checkpoints(ckpt_dir)):
        try:
            return path, load_checkpoint(path, map_location)
        except ValueError as e:
            warn(f"skipping checkpoint: {e}")
    return None


def remove_partial_writes(ckpt_dir: str | Path) -> list[Path]:
    """Delete `*.tmp` left by a process killed while writing; returns what was removed."""
    ckpt_dir = Path(ckpt_dir)
    removed = sorted(ckpt_dir.glob("*.tmp")) if ckpt_dir.is_dir() else []
    for path in removed:
        path.unlink(missing_ok=True)
    return removed

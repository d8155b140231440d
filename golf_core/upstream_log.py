"""Upstream parameter-golf train logs, read into tables.

`parse_upstream_log(path)` takes the path of a `train_gpt.py` log (upstream's, a record's, or
the `train.log` our runs write in the same format) and returns its curves (`step:` lines),
final results (`final_*`, `DIAGNOSTIC`, roundtrip and sliding-window lines), sizes, the
settings printed before training, events during training and PR #1204's
`parallel_residual layer:` lane routing, so upstream curves and learned routing plot beside
ours. It only reads the file; nothing is written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

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

"""Analyses that go back to the runs' weights: routing over training, lane routing beside
PR #1204's, quantization error through the recurrence, test-time depth.

Each function takes `RunSpec`s of the run matrix (golf_core.experiments) whose runs have
finished, or the path of any checkpoint or artifact, loads the weights (golf_core.loading,
golf_core.checkpoint) and re-evaluates them: `routing_history` (routing tables at
initialisation, every kept checkpoint and the end; `final_rows` keeps the last step),
`lane_table` (ours beside an upstream log's or checkpoint's; runs kept without checkpoints give
their stored final table), `checkpoint_routing` (any file's routing tables),
`recurrence_error_table` (hidden-state error of a quantized copy per virtual layer on
validation tokens), `depth_sweep` (val_bpb at K' passes of the shared layer) and `trained_k`
(the K a run trained with). They return pandas DataFrames (a dict of them, or an int) and
write nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from golf_core.analysis import routing_tables
from golf_core.checkpoint import list_checkpoints, load_checkpoint
from golf_core.data import load_validation_tokens
from golf_core.evaluate import evaluate_bpb, load_byte_tables
from golf_core.experiments import RunSpec
from golf_core.loading import load_model, parse_env_config
from golf_core.model import build_model
from golf_core.quant import QuantPolicy, quantize_state_dict, recurrence_error
from golf_core.results import load_runs, stored_routing
from golf_core.upstream_log import parse_upstream_log

# ----------------------------------------------------------------------------- routing


def _history_files(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, checkpoint) of every checkpoint the run kept (routing runs keep them all)."""
    return sorted(list_checkpoints(run_dir / "checkpoints"))


def routing_history(specs: Sequence[RunSpec]) -> dict[str, pd.DataFrame]:
    """routing_tables (golf_core.analysis) of each run at step 0 (its initialisation), every
    kept checkpoint and the end, each table with `label`, `seed`, `name`, `step` columns."""
    out: dict[str, list[pd.DataFrame]] = {}
    for spec, run in zip(specs, load_runs(specs)):
        cfg = run.model_config
        torch.manual_seed(spec.seed)
        states = [(0, build_model(cfg).state_dict())]
        states += [(step, load_checkpoint(p)["model"]) for step, p in _history_files(run.path)]
        for step, sd in states:
            for key, table in routing_tables(sd, cfg).items():
                tagged = table.assign(label=spec.label, seed=spec.seed, name=spec.name, step=step)
                out.setdefault(key, []).append(tagged)
    return {k: pd.concat(v, ignore_index=True) for k, v in out.items()}


def final_rows(history: pd.DataFrame) -> pd.DataFrame:
    """The rows of the last step of each run of a routing_history table."""
    last = history.groupby("name")["step"].transform("max")
    return history[history["step"] == last].reset_index(drop=True)


def lane_table(specs: Sequence[RunSpec], upstream_log: str = "", upstream_checkpoint: str = "",
               upstream_config: str = "") -> pd.DataFrame:
    """Final lane routing (physical layer) of our parallel runs, PR #1204's from its log
    (`golf_core.upstream_log.parse_upstream_log`) when `upstream_log` names one, and a checkpoint's
    (any PR #1204 `final_model.pt` / `.int6.ptz`, with the env vars it was trained with) when
    `upstream_checkpoint` names one: column `source`. Runs without checkpoints (committed
    results) give their final table from routing.json."""
    if all((s.run_dir / "checkpoints").is_dir() for s in specs):
        ours = final_rows(routing_history(specs)["lanes"])
    else:
        ours = stored_routing(specs, "lanes")
    ours = ours.assign(source=[f"ours: {lab} s{seed}" for lab, seed in
                               zip(ours["label"], ours["seed"])])
    frames = [ours]
    if upstream_log:
        theirs = parse_upstream_log(upstream_log)["routing"]
        frames.append(theirs.assign(source=f"PR #1204 ({Path(upstream_log).stem})"))
    if upstream_checkpoint:
        lanes = checkpoint_routing(upstream_checkpoint, upstream_config)["lanes"]
        frames.append(lanes.assign(source=f"checkpoint {Path(upstream_checkpoint).name}"))
    df = pd.concat(frames, ignore_index=True)
    df["virtual_layer"] = df["layer"]
    df["layer"] = df["physical"].astype(int)  # physical blocks line up across depths
    return df


# ----------------------------------------------------------------------------- evaluation


def _val_setup(run: Any) -> tuple[Any, Any, int]:
    t = run.config["train"]
    seq_len = int(t["train_seq_len"])
    tokens = load_validation_tokens(t["data_path"], seq_len, int(t.get("val_max_tokens", 0)))
    tables = load_byte_tables(t["tokenizer_path"], int(run.config["model"]["vocab_size"]))
    return tokens, tables, seq_len


def recurrence_error_table(specs: Sequence[RunSpec], *, bits: int = 6, n_seqs: int = 4,
                           quantize_all: bool = True) -> pd.DataFrame:
    """Per virtual layer, the relative hidden-state error of each run's quantized copy on the
    same validation batch (golf_core.quant.recurrence_error), column `setting` = the label,
    `shared` = the layer's block is applied more than once (the loop core).

    `quantize_all`: quantize every matrix; upstream keeps 2-D tensors of <= 65,536 elements in
    float, which at our widths is every matrix, so the diagnostic would see only fp16 rounding.
    """
    policy = QuantPolicy(bits=bits, keep_float_max_numel=0) if quantize_all else f"int{bits}"
    frames = []
    for spec, run in zip(specs, load_runs(specs)):
        model = load_model(run.path)
        tokens, _, seq_len = _val_setup(run)
        batch = tokens[: n_seqs * seq_len + 1]
        x, y = batch[:-1].view(n_seqs, seq_len), batch[1:].view(n_seqs, seq_len)  # (B, T)
        with torch.no_grad():
            df = recurrence_error(model, quantize_state_dict(model.state_dict(), policy), x, y)
        uses = df["physical_block"].map(df["physical_block"].value_counts())
        frames.append(df.assign(setting=spec.label, name=spec.name, bits=bits,
                                shared=uses > 1, loss_gap=df.attrs.get("loss_gap")))
    return pd.concat(frames, ignore_index=True)


def depth_sweep(spec: RunSpec, ks: Sequence[int], *, batch_seqs: int = 16) -> pd.DataFrame:
    """val_bpb of a PR #54 run evaluated with K' = each of `ks` passes of its shared layer."""
    (run,) = load_runs([spec])
    model = load_model(run.path)
    tokens, tables, seq_len = _val_setup(run)
    rows = []
    for k in ks:
        res = evaluate_bpb(model, tokens, seq_len, tables, batch_seqs=batch_seqs,
                           model_kwargs={"num_iters": int(k)})
        rows.append({"label": spec.label, "name": spec.name, "k": int(k),
                     "val_loss": res["val_loss"], "val_bpb": res["val_bpb"]})
    return pd.DataFrame(rows)


def trained_k(spec: RunSpec) -> int:
    """The K (passes of the shared layer) a PR #54 run was trained with."""
    (run,) = load_runs([spec])
    m = run.config["model"]
    return int(m["num_recurrent_passes"])


def checkpoint_routing(path: str, config: str = "") -> dict[str, pd.DataFrame]:
    """The routing tables of a checkpoint or artifact of any family (an upstream
    `final_model.pt`, PR #1204's `final_model.int6.ptz`, one of our runs ...), each with a
    `variant` column naming the file; `config` = the env vars it was trained with."""
    model = load_model(path, config=parse_env_config(config) or None)
    label = f"{model.cfg.family} {Path(path).name}"
    return {k: v.assign(variant=label) for k, v in routing_tables(model).items()}

"""The end of a finished run: the exported artifact, its scores and the run's summary.

`finalize(trainer)` takes a Trainer whose loop finished. On rank 0 it writes final_model.pt,
the quantized artifact (`final_model.<scheme>.<compressor>.ptz`, or upstream's
`final_model.int8.ptz`) and artifact_report.json (its bytes against the budget); every rank
then scores the artifact read back (the roundtrip val_bpb; with `eval_stride`, the
sliding-window scores too), logs those rows, and rank 0 writes routing.json, quant_error.json
(with `export_gap_bits`) and summary.json, last, since its presence marks a finished run.
Returns the summary dict (what summary.json holds).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from golf_core.analysis import routing_tables
from golf_core.config import save_json
from golf_core.distributed import autocast_context, broadcast_object
from golf_core.model import count_parameters
from golf_core.quant import (
    artifact_report,
    dequantize_state_dict,
    dequantized_copy,
    load_artifact,
    quantize_state_dict,
    recurrence_error,
    resolve_policy,
)
from golf_core.runs import (
    ARTIFACT_REPORT,
    FINAL_MODEL,
    QUANT_ERROR,
    ROUTING,
    SUMMARY,
    variant_label,
)
from golf_core.trainer import Trainer


def _artifact_path(trainer: Trainer) -> Path:
    t = trainer.tcfg
    if t.export_scheme == "upstream":
        return trainer.run_dir / "final_model.int8.ptz"  # upstream's name and format
    return trainer.run_dir / f"final_model.{t.export_scheme}.{t.export_compressor}.ptz"


def _final_row(trainer: Trainer, kind: str, res: Mapping[str, Any],
               extra: Mapping[str, Any]) -> None:
    trainer.log.metric({"kind": kind, "step": trainer.step, "val_loss": res["val_loss"],
                        "val_bpb": res["val_bpb"], **extra})
    trainer.log.log(f"{kind} val_loss:{res['val_loss']:.4f} val_bpb:{res['val_bpb']:.4f} "
                    f"eval_time:{1000 * res['seconds']:.0f}ms")
    trainer.log.log(f"{kind}_exact val_loss:{res['val_loss']:.8f} val_bpb:{res['val_bpb']:.8f}")


def finalize(trainer: Trainer) -> dict[str, Any]:
    """final_model.pt, the artifact + report, roundtrip (and sliding-window) scores,
    summary.json (written last: its presence marks a finished run)."""
    t, art = trainer.tcfg, _artifact_path(trainer)
    report = None
    if trainer.rt.is_main:
        tmp = trainer.run_dir / (FINAL_MODEL + ".tmp")
        torch.save(trainer.model.state_dict(), tmp)
        os.replace(tmp, trainer.run_dir / FINAL_MODEL)
        report = artifact_report(trainer.model.state_dict(), art, scheme=t.export_scheme,
                                 compressor=t.export_compressor,
                                 keep_float_max_numel=t.export_keep_float_max_numel)
        save_json(trainer.run_dir / ARTIFACT_REPORT, report)
        trainer.log.log(f"Serialized model {t.export_scheme}+{report['compressor']}: "
                        f"{report['model_bytes']} bytes")
        trainer.log.log(f"Code size: {report['code_bytes']} bytes")
        trainer.log.log(f"Total submission size {t.export_scheme}+{report['compressor']}: "
                        f"{report['total_bytes']} bytes")
    report = broadcast_object(trainer.rt, report)  # also: the file exists for every rank
    qmodel = dequantized_copy(trainer.model, load_artifact(art))
    sizes = {"bytes": report["model_bytes"], "total_bytes": report["total_bytes"]}
    rt_res = trainer.evaluate(qmodel)
    _final_row(trainer, "final_roundtrip", rt_res, sizes)
    results = {"final_roundtrip": rt_res}
    if t.eval_stride > 0:
        results["final_sliding_window"] = trainer.evaluate(trainer.forward, stride=t.eval_stride)
        _final_row(trainer, "final_sliding_window", results["final_sliding_window"],
                   {"stride": t.eval_stride})
        results["final_roundtrip_sliding_window"] = trainer.evaluate(qmodel, stride=t.eval_stride)
        _final_row(trainer, "final_roundtrip_sliding_window",
                   results["final_roundtrip_sliding_window"],
                   {"stride": t.eval_stride, **sizes})
    summary = build_summary(trainer, report, results)
    summary["gaps_by_bits"], quant_error = precision_gaps(trainer)
    if trainer.rt.is_main:
        save_tables(trainer, quant_error)
        save_json(trainer.run_dir / SUMMARY, summary)
    return summary


def precision_gaps(trainer: Trainer) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`export_gap_bits`: per uniform precision, the bpb after an in-memory roundtrip
    of the final weights (the artifact's codec and float threshold) and its gap to the
    float model; and each one's hidden-state error per virtual layer (the rows of
    quant_error.json; none for families without a layer schedule)."""
    t, out, rows = trainer.tcfg, {}, []
    if not t.export_gap_bits:
        return out, rows
    float_model = dequantized_copy(trainer.model, trainer.model.state_dict())  # no QAT hooks
    seqs = min(4, (trainer.data.val_tokens.numel() - 1) // t.train_seq_len)
    batch = trainer.data.val_tokens[: seqs * t.train_seq_len + 1].to(trainer.rt.device)
    x, y = batch[:-1].view(seqs, -1), batch[1:].view(seqs, -1)  # (B, T)
    layered = hasattr(float_model, "forward_hidden") and (
        hasattr(float_model, "schedule_for") or hasattr(float_model, "schedule"))
    for bits in t.export_gap_bits:
        policy = resolve_policy(f"int{bits}",
                                keep_float_max_numel=t.export_keep_float_max_numel)
        deq = dequantize_state_dict(quantize_state_dict(trainer.model.state_dict(), policy),
                                    source=f"int{bits} roundtrip")
        qmodel = dequantized_copy(float_model, deq)
        res = trainer.evaluate(qmodel)
        gap = res["val_bpb"] - trainer.last_val["val_bpb"]
        out[f"int{bits}"] = {"roundtrip_val_bpb": res["val_bpb"], "bpb_gap": gap}
        trainer.log.log(f"precision_gap int{bits} roundtrip_val_bpb:{res['val_bpb']:.4f} "
                        f"gap:{gap:+.4f}")
        if layered:
            with autocast_context(trainer.rt):
                err = recurrence_error(float_model, qmodel, x, y)
            rows += err.assign(bits=bits, loss_gap=err.attrs.get("loss_gap")).to_dict(
                "records")
    return out, rows


def save_tables(trainer: Trainer, quant_error: list[dict[str, Any]]) -> None:
    """routing.json (the final routing tables: what the notebooks plot) and
    quant_error.json (`precision_gaps`' rows): small files that outlive the checkpoints
    (results/study/)."""
    tables = {k: json.loads(v.to_json(orient="records"))
              for k, v in routing_tables(trainer.model).items()}
    save_json(trainer.run_dir / ROUTING, {"step": trainer.step, "tables": tables})
    if quant_error:
        save_json(trainer.run_dir / QUANT_ERROR, {"step": trainer.step, "rows": quant_error})


def build_summary(trainer: Trainer, report: Mapping[str, Any],
                  results: Mapping[str, Any]) -> dict[str, Any]:
    t, secs = trainer.tcfg, trainer.train_ms / 1000.0
    tokens = trainer.step * t.train_batch_tokens
    out = {
        "run_name": trainer.run_dir.name,
        "variant": variant_label(trainer.mcfg),
        "preset": trainer.inv.preset,
        "scale": trainer.inv.scale,
        "seed": t.seed,
        "complete": True,
        "steps": trainer.step,
        "iterations": t.iterations,
        "stopped_early": trainer.stopped_early,
        "val_loss": trainer.last_val["val_loss"],
        "val_bpb": trainer.last_val["val_bpb"],
        "roundtrip_val_loss": results["final_roundtrip"]["val_loss"],
        "roundtrip_val_bpb": results["final_roundtrip"]["val_bpb"],
        "bpb_gap": results["final_roundtrip"]["val_bpb"] - trainer.last_val["val_bpb"],
        "artifact": Path(report["path"]).name,
        "artifact_bytes": report["model_bytes"],
        "total_bytes": report["total_bytes"],
        "fits_budget": report["fits"],
        "train_seconds": secs,
        "ms_per_step": 1000.0 * secs / max(trainer.step, 1),
        "tokens_seen": tokens,
        "tokens_per_s": tokens / secs if secs > 0 else None,
        "params": count_parameters(trainer.model),
        "recurrence_active": bool(getattr(trainer.model, "recurrence_active", False)),
        "qat_active": trainer.qat_on,
        "hardware": {"device": str(trainer.rt.device), "world_size": trainer.rt.world_size,
                     "autocast": str(trainer.rt.autocast_dtype), "compile": t.compile},
    }
    for name, res in results.items():
        if name != "final_roundtrip":
            out[f"{name}_val_bpb"] = res["val_bpb"]
    return out

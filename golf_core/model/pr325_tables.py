"""The routing tables of PR #325's model (golf_core/model/pr325.py, whose `Model` inherits
them): skip weights, one row of controls per virtual layer (NaN where a refinement block has
no such tensor), the loop-repeat embeddings, the loop adapters and the gates. Reporting only:
nothing here is in the script's forward pass.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import Tensor

from golf_core.model.tables import EMBEDDING_COLUMNS, LANE_COLUMNS, SKIP_COLUMNS, summary


def _f(t: Tensor) -> Tensor:
    return t.detach().float()


class RoutingTables:
    """`routing_tables()` for pr325.Model."""

    def routing_tables(self) -> dict[str, pd.DataFrame]:
        """`skip_weights`, `resid_mix` (a row per virtual layer, NaN where a refinement block
        has no such tensor), `lanes` (none), `embeddings` (loop_repeat_embed rows), `params`,
        `adapters` (a row per LoopAdapter) and `gates` (SmearGate and local-mix gates through
        their sigmoid, bigram scale, backout lambda); columns as golf_core.analysis."""
        kinds, depth = [s.kind for s in self.schedule.steps], self.schedule.depth
        S, T = kinds.count("stem"), kinds.count("tail")
        skips = pd.DataFrame(
            [{"skip": j, "encoder_layer": S - 1 - j, "decoder_layer": depth - T + j, **summary(w)}
             for j, w in enumerate(_f(self.skip_weights))],
            columns=list(SKIP_COLUMNS),
        ).astype({"encoder_layer": "Int64", "decoder_layer": "Int64"})  # fmt: skip
        table = self.loop_repeat_embed if self.loop_repeat_embed is not None else torch.empty(0)
        embeds = [{"name": "loop_repeat_embed", "index": i, "norm": r.norm().item(),
                   "rms": r.norm().item() / r.numel() ** 0.5} for i, r in enumerate(_f(table))]
        C = self.cfg.loop_core_layers
        attn = {s.repeat: s.kind == "core" for s in self.schedule.steps}
        adapters = [{"adapter": i, "repeat": i // C, "block": i % C, "attn": attn[i // C],
                     **{f"adapter_scale_{k}": x for k, x in summary(_f(a.adapter_scale)).items()},
                     "down_norm": _f(a.down.weight).norm().item(),
                     "up_norm": _f(a.up.weight).norm().item()}
                    for i, a in enumerate(self.loop_adapters)]  # fmt: skip
        return {
            "skip_weights": skips,
            "resid_mix": pd.DataFrame([self._layer_row(v, s) for v, s in
                                       enumerate(self.schedule.steps)]),
            "lanes": pd.DataFrame(columns=list(LANE_COLUMNS)),
            "embeddings": pd.DataFrame(embeds, columns=list(EMBEDDING_COLUMNS)),
            "params": pd.DataFrame([{"family": self.cfg.family, "variant": self.cfg.family,
                                     **self.parameter_counts()}]),
            "adapters": pd.DataFrame(adapters, columns=[
                "adapter", "repeat", "block", "attn", "adapter_scale_mean",
                "adapter_scale_abs_mean", "adapter_scale_std", "down_norm", "up_norm"]),
            "gates": self._gate_table(),
        }  # fmt: skip

    def _layer_row(self, v: int, s: Any) -> dict[str, object]:
        m, attn = self._module(s), s.kind != "refine"
        mix, nan = _f(m.resid_mix), float("nan")
        return {
            "layer": v, "physical": s.physical, "cycle": max(s.repeat, 0), "kind": s.kind,
            "module": s.module, "controls": "own",
            "x_coef_mean": mix[0].mean().item(), "x0_coef_mean": mix[1].mean().item(),
            "x_coef_abs_mean": mix[0].abs().mean().item(),
            "x0_coef_abs_mean": mix[1].abs().mean().item(),
            "attn_scale_abs_mean": _f(m.attn_scale).abs().mean().item() if attn else nan,
            "mlp_scale_abs_mean": _f(m.mlp_scale).abs().mean().item()
            if m.mlp_scale is not None else nan,
            "q_gain_mean": _f(m.attn.q_gain).mean().item() if attn else nan,
            "ln_scale": s.ln_scale, "xsa": attn and m.attn.use_xsa,
        }  # fmt: skip

    def _gate_table(self) -> pd.DataFrame:
        gates = [("smear.gate", "smear", self.smear.gate, True)] + [
            (f"refine_blocks.{b}.local_mix_gate", "local_mix", r.local_mix_gate,
             r.enable_local_mix) for b, r in enumerate(self.refine_blocks)]  # fmt: skip
        rows = [{"name": name, "kind": kind, "enabled": on, "raw_mean": _f(p).mean().item(),
                 **{f"sigmoid_{k}": getattr(torch.sigmoid(_f(p)), k)().item()
                    for k in ("mean", "min", "max")}}
                for name, kind, p, on in gates]  # fmt: skip
        scales = (("bigram.scale", self.bigram.scale if self.bigram is not None else None),
                  ("backout_lambda", self.backout_lambda))  # fmt: skip
        rows += [{"name": n, "kind": "scale", "enabled": True, "raw_mean": _f(p).item()}
                 for n, p in scales if p is not None]
        return pd.DataFrame(rows, columns=["name", "kind", "enabled", "raw_mean",
                                           "sigmoid_mean", "sigmoid_min", "sigmoid_max"])

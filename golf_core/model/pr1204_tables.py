"""The routing tables of PR #1204's model (golf_core/model/pr1204.py, whose `Model` inherits
them): gated skips, one row of controls per virtual layer run now, the lane lambdas as its
log prints them, the value/bigram/smear embeddings and how far each untied repeat MLP moved
from its bank slice; and its parameter and FLOP accounting. Reporting only: nothing here is
in the script's forward pass.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from golf_core.model.layers import CastedLinear
from golf_core.model.tables import LANE_COLUMNS, summary


class RoutingTables:
    """`routing_tables()` and the parameter/FLOP accounting for pr1204.Model."""

    def _slice_uses(self) -> dict[tuple[str, int], int]:
        """(bank, slice) -> uses over the recurrent schedule (a repeat MLP replaces its slice)."""
        L, uses = self.cfg.num_layers, {}
        for i, p in enumerate(self.v2p(True)):
            keys = [] if self.blocks[i].disable_attn else [
                ("qo_bank", p), ("qo_bank", L + p), ("kv_bank", p), ("kv_bank", L + p)]
            j = self._repeat_index(i, True)
            m = self.repeat_mlp[j] if j is not None else None
            keys += [] if m is not None and m.fc is not None else [("mlp_up_bank", p)]
            keys += [] if m is not None and m.proj is not None else [("mlp_down_bank", p)]
            for key in keys:
                uses[key] = uses.get(key, 0) + 1
        return uses

    def parameter_counts(self) -> dict[str, int]:
        """Stored parameters; `shared` = bank slices run by several virtual layers (the
        repeated layers' attention, and MLPs unless untied), `unrolled` counts each use."""
        uses = self._slice_uses()
        total = sum(p.numel() for p in self.parameters())
        shared = unrolled = 0
        for name in ("qo_bank", "kv_bank", "mlp_up_bank", "mlp_down_bank"):
            bank = getattr(self, name)
            for k in range(bank.shape[0]):
                n = uses.get((name, k), 1)
                shared += bank[k].numel() if n > 1 else 0
                unrolled += bank[k].numel() * (n - 1)
        return {"total": total, "unique": total - shared, "shared": shared,
                "unrolled": total + unrolled, "physical_layers": self.cfg.num_layers,
                "effective_depth": self.virtual_layers}  # fmt: skip

    def matmul_params_per_token(self) -> int:
        """Matmul weights per token over the recurrent schedule (benchmarks/flops.py's
        N_matmul): each virtual layer's slices, the bigram / value projections, the head."""
        n = 0
        for i in range(self.virtual_layers):
            w = self._weights(i, self.v2p_recur, True)
            n += sum(t.numel() for t in (w[4:] if self.blocks[i].disable_attn else w))
        for proj in (self.bigram and self.bigram.proj, self.ve_shared and self.ve_shared.proj):
            n += proj.weight.numel() if proj is not None else 0
        return n + self.cfg.vocab_size * self.cfg.model_dim

    def attention_layers(self) -> int:
        """Virtual layers of the recurrent schedule that run attention."""
        return sum(not b.disable_attn for b in self.blocks)

    def routing_tables(self) -> dict[str, pd.DataFrame]:
        """`skip_weights` (with the gates), `resid_mix` (one row per virtual layer run now),
        `lanes` (the script's `parallel_residual layer:` lines), `embeddings` (the value
        embedding, bigram and smear scales), `repeat_mlp` (how far each untied MLP moved from
        its bank slice), `params`. Columns as golf_core.analysis."""
        return {
            "skip_weights": self._skip_table(),
            "resid_mix": self._controls_table(),
            "lanes": self._lanes_table(),
            "embeddings": self._embeddings_table(),
            "repeat_mlp": self._repeat_table(),
            "params": pd.DataFrame([{"family": self.cfg.family, "variant": self.cfg.family,
                                     **self.parameter_counts()}]),
        }

    def _skip_table(self) -> pd.DataFrame:
        enc, rows = len(self.v2p()) // 2, []
        weights = self.skip_weights.detach().float()
        gates = (self.skip_gates.detach().float() if self.skip_gates is not None
                 else [None] * len(weights))  # ungated (skip_gated=0): x + w * skip
        for j, (w, g) in enumerate(zip(weights, gates)):
            used = j < enc
            keep = torch.sigmoid(g) if g is not None else torch.zeros_like(w)
            rows.append({"skip": j, "encoder_layer": enc - 1 - j if used else pd.NA,
                         "decoder_layer": enc + j if used else pd.NA, **summary(w),
                         "gate_mean": keep.mean().item() if g is not None else float("nan"),
                         "skip_coef_mean": ((1 - keep) * w).mean().item()})
        cols = ["skip", "encoder_layer", "decoder_layer", "mean", "abs_mean", "std",
                "gate_mean", "skip_coef_mean"]
        return pd.DataFrame(rows, columns=cols).astype(
            {"encoder_layer": "Int64", "decoder_layer": "Int64"})

    def _controls_table(self) -> pd.DataFrame:
        rows, v2p = [], self.v2p()
        for i, p in enumerate(v2p):
            b = self.blocks[i]
            mix = b.resid_mix.detach().float()
            rows.append({
                "layer": i, "physical": p, "cycle": v2p[:i].count(p), "controls": f"blocks.{i}",
                "x_coef_mean": mix[0].mean().item(), "x0_coef_mean": mix[1].mean().item(),
                "x_coef_abs_mean": mix[0].abs().mean().item(),
                "x0_coef_abs_mean": mix[1].abs().mean().item(),
                "attn_scale_abs_mean": b.attn_scale.detach().abs().mean().item(),
                "mlp_scale_abs_mean": b.mlp_scale.detach().abs().mean().item(),
                "q_gain_mean": b.attn.q_gain.detach().float().mean().item(),
                "attn": not b.disable_attn, "xsa": b.attn.use_xsa, "lanes": self._lanes_at(i, v2p),
                "ve": i in self.ve_layers, "ln_scale": b.ln_scale,
                "repeat_mlp": self._repeat_index(i, self._recurrence_active),
            })  # fmt: skip
        return pd.DataFrame(rows).astype({"repeat_mlp": "Int64"})

    def _lanes_table(self) -> pd.DataFrame:
        rows, v2p = [], self.v2p()
        for i, p in enumerate(v2p):
            if self._lanes_at(i, v2p):
                r = self.parallel_resid_lambdas[p].detach().float().tolist()
                q = self.parallel_post_lambdas[p].detach().float().tolist()
                rows.append(dict(zip(LANE_COLUMNS, (i, p, r[0], q[0][0], q[0][1], r[1], q[1][0],
                                                    q[1][1]))))
        return pd.DataFrame(rows, columns=list(LANE_COLUMNS))

    def _embeddings_table(self) -> pd.DataFrame:
        named = []
        if self.ve_shared is not None:
            named.append(("ve_shared.scale", 0, pd.NA, self.ve_shared.scale))
        named += [("ve_layer_scales", k, i, s) for k, (i, s) in
                  enumerate(zip(self.ve_layers, self.ve_layer_scales))]
        if self.bigram is not None:
            named.append(("bigram.scale", 0, pd.NA, self.bigram.scale))
        if self.smear is not None:
            named.append(("smear.gate", 0, pd.NA, self.smear.gate))
        rows = []
        for name, index, layer, t in named:
            t = t.detach().float().reshape(-1)
            norm = t.norm().item()
            rows.append({"name": name, "index": index, "layer": layer, "norm": norm,
                         "rms": norm / t.numel() ** 0.5, "mean": t.mean().item()})
        cols = ["name", "index", "layer", "norm", "rms", "mean"]
        return pd.DataFrame(rows, columns=cols).astype({"layer": "Int64"})

    def _repeat_table(self) -> pd.DataFrame:
        """How far each untied repeat MLP is from the bank slice it copies at activation:
        `*_abs_diff` = ||W - slice||, `*_rel_diff` = that / ||slice||. The down slices start
        at zero (and a repeat MLP of width >= 64 starts orthogonal), so early on a slice can
        be ~0 (rms under 1e-6): no reference to be relative to, `*_rel_diff` is NaN there and
        `*_abs_diff` says how far apart they are. NaN too where the repeat MLP has no such
        matrix (untied "down": no fc)."""
        def moved(lin: CastedLinear | None, base: Tensor) -> tuple[float, float]:
            if lin is None:
                return float("nan"), float("nan")
            base = base.detach().float()
            diff = (lin.weight.detach().float() - base).norm().item()
            ref = base.norm().item()
            from_zero = ref <= 1e-6 * base.numel() ** 0.5
            return diff, float("nan") if from_zero else diff / ref

        rows = []
        for j, (m, p) in enumerate(zip(self.repeat_mlp, self.recur_layers)):
            fc_abs, fc_rel = moved(m.fc, self.mlp_up_bank[p])
            proj_abs, proj_rel = moved(m.proj, self.mlp_down_bank[p])
            rows.append({"index": j, "physical": p, "fc_rel_diff": fc_rel,
                         "proj_rel_diff": proj_rel, "fc_abs_diff": fc_abs,
                         "proj_abs_diff": proj_abs})
        cols = ["index", "physical", "fc_rel_diff", "proj_rel_diff", "fc_abs_diff",
                "proj_abs_diff"]
        return pd.DataFrame(rows, columns=cols).astype({c: "float64" for c in cols[2:]})

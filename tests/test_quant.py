"""golf_core.quant: upstream .ptz byte for byte, our container, hostile files, QAT, diagnostics."""

from __future__ import annotations

import ast
import io
import os
import zlib
from pathlib import Path

import pytest
import torch

from conftest import expected, fixture_dir
from golf_core.config import ModelConfig, TrainConfig
from golf_core.evaluate import ByteTables, evaluate_bpb
from golf_core.model import GPT, CastedLinear, build_model, preset
from golf_core.optim import build_optimizers
from golf_core.quant import (
    BUDGET_BYTES,
    CODE_FILES,
    MAGIC,
    SCHEMES,
    QuantPolicy,
    artifact_bytes,
    artifact_report,
    dequantize_state_dict,
    dequantize_upstream,
    dequantized_copy,
    disable_qat,
    enable_qat,
    encode_container,
    fake_quantize,
    load_artifact,
    qmax_for,
    quantize_rows,
    quantize_state_dict,
    quantize_state_dict_int8,
    read_artifact_object,
    recurrence_error,
    roundtrip_bpb,
    save_artifact,
    save_upstream_int8,
    upstream_int8_bytes,
)

TINY = dict(num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, vocab_size=64)
ALL = QuantPolicy(bits=8, keep_float_max_numel=0)  # quantize every matrix of a tiny model


def _baseline():
    folder = fixture_dir("upstream_baseline")
    sd = torch.load(folder / "state_dict.pt", weights_only=True)
    return folder, sd, expected("upstream_baseline")


def _heavy_tailed(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Student-t (3 dof) rows like trained weights, one outlier, one all-zero row."""
    g = torch.Generator().manual_seed(seed)
    chi2 = torch.randn(rows, cols, 3, generator=g).pow(2).sum(-1)
    w = 0.02 * torch.randn(rows, cols, generator=g) / (chi2 / 3).sqrt()
    w[3, 5] = 1.5  # an outlier the quantile/std clip must handle
    w[7] = 0.0  # an all-zero row (zero-init projections have them)
    return w


def _perturbed(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Random values everywhere (zero-init projections would hide quantization error)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


# ----------------------------------------------------------------------------- upstream int8


def test_upstream_writer_reproduces_the_fixture_ptz_byte_for_byte(tmp_path):
    folder, sd, exp = _baseline()
    reference = (folder / "model.int8.ptz").read_bytes()
    assert len(reference) == exp["artifact_bytes"]
    assert upstream_int8_bytes(sd) == reference
    assert save_upstream_int8(sd, tmp_path / "m.int8.ptz") == len(reference)
    assert (tmp_path / "m.int8.ptz").read_bytes() == reference


def test_reading_the_fixture_ptz_gives_upstreams_roundtrip_loss():
    folder, sd, exp = _baseline()
    loaded = load_artifact(folder / "model.int8.ptz")
    want = dequantize_upstream(quantize_state_dict_int8(sd), "expected")
    assert list(loaded) == list(want)
    for name in want:
        assert loaded[name].dtype == want[name].dtype and torch.equal(loaded[name], want[name])
    model = GPT(ModelConfig(**exp["config"]))
    model.load_state_dict(loaded, strict=True)
    batch = torch.load(folder / "batch.pt", weights_only=True)
    with torch.no_grad():
        loss = model(batch["input_ids"], batch["target_ids"]).item()
    assert loss == pytest.approx(exp["int8_roundtrip_loss"], rel=1e-5)


def test_upstream_int8_quantizes_large_float_tensors_by_its_documented_rule(tmp_path):
    w = _heavy_tailed(300, 256)
    w[10] *= 100  # a row with |w| max > 1: its scale is above upstream's 1/127 floor
    sd = {
        "big.weight": w,  # 76,800 elements: per-row int8
        "vec": torch.linspace(-2, 2, 70_000),  # large but 1-D: one per-tensor scale
        "blocks.0.attn_scale": torch.rand(64),  # control: kept fp32
        "small.weight": torch.randn(8, 8).bfloat16(),  # small: kept fp16, dtype recorded
        "count": torch.arange(5),  # non-float: passed through
    }
    obj = quantize_state_dict_int8(sd)
    assert obj["qmeta"] == {"big.weight": {"scheme": "per_row", "axis": 0}}
    assert obj["dtypes"] == {"big.weight": "float32", "vec": "float32"}
    assert obj["passthrough_orig_dtypes"] == {"small.weight": "bfloat16"}
    assert obj["passthrough"]["blocks.0.attn_scale"].dtype == torch.float32
    q, s = obj["quantized"]["big.weight"], obj["scales"]["big.weight"]
    assert q.dtype == torch.int8 and s.dtype == torch.float16 and q.abs().max() <= 127
    assert s[0] == torch.tensor(1 / 127).half()  # rows with |w| max < 1 hit the floor
    assert s[10] > torch.tensor(1 / 127).half()
    assert obj["scales"]["vec"].ndim == 0  # non-2-D: one fp32 scale
    save_upstream_int8(sd, tmp_path / "x.ptz")
    out = load_artifact(tmp_path / "x.ptz")
    assert out["small.weight"].dtype == torch.bfloat16 and torch.equal(out["count"], sd["count"])
    # fp16 scale rounding (2**-11 relative, x127 codes) adds at most ~0.07 step to half a step
    err = (out["big.weight"] - w).abs() / s.float()[:, None]
    assert err[w.abs() <= 127 * s.float()[:, None]].max() <= 0.5 + 127 * 2**-11


# ----------------------------------------------------------------------------- our schemes


@pytest.mark.parametrize("bits", [8, 6, 5])
@pytest.mark.parametrize("clip", ["quantile", "std"])
def test_every_scheme_round_trips_within_half_a_step_and_stays_in_range(bits, clip):
    # Clipped elements (|w| beyond qmax * scale) saturate at ±qmax * scale: they are the
    # exception to the half-step bound, and checked separately.
    w = _heavy_tailed(64, 1100)
    policy = QuantPolicy(bits=bits, clip=clip, keep_float_max_numel=0)
    q, s = quantize_rows(w, bits, policy)
    qmax = qmax_for(bits)
    assert q.dtype == torch.int8 and q.min() >= -qmax and q.max() <= qmax
    step = s.float()[:, None]
    deq = q.float() * step
    inside = w.abs() <= qmax * step
    assert ((deq - w).abs() <= 0.5 * step * (1 + 1e-6))[inside].all()
    assert torch.equal(deq[~inside], torch.sign(w[~inside]) * qmax * step.expand_as(w)[~inside])
    assert not deq[7].any()  # the zero row stays zero
    if clip == "std":
        assert (~inside).sum() > 0  # 4 sigma of a t(3) row clips something
    assert torch.equal(fake_quantize(w, bits, policy), deq)


def test_int6_and_int5_codes_in_the_file_stay_in_their_range(tmp_path):
    sd = {"a.weight": _heavy_tailed(70, 1000)}
    for scheme, qmax in (("int6", 31), ("int5", 15)):
        save_artifact(sd, tmp_path / scheme, scheme=scheme)
        codes = read_artifact_object(tmp_path / scheme)["tensors"]["a.weight"]
        assert codes.dtype == torch.int8 and codes.abs().max() == qmax


@pytest.mark.parametrize("compressor", ["brotli", "zlib", "lzma"])
def test_container_file_equals_the_in_memory_dequantization(tmp_path, compressor):
    sd = _perturbed(GPT(ModelConfig(**TINY))).state_dict()
    policy = QuantPolicy(bits=6, rules=((r"tok_emb", 8),), keep_float_max_numel=1000)
    path = tmp_path / "model.qnt"
    n = save_artifact(sd, path, scheme=policy, compressor=compressor)
    assert n == path.stat().st_size and path.read_bytes().startswith(MAGIC)
    loaded, want = load_artifact(path), dequantize_state_dict(quantize_state_dict(sd, policy))
    assert list(loaded) == list(sd)
    for name in sd:
        assert loaded[name].dtype == sd[name].dtype and torch.equal(loaded[name], want[name])
    entries = read_artifact_object(path)["entries"]
    assert entries["tok_emb.weight"]["bits"] == 8
    assert entries["blocks.0.mlp.fc.weight"]["bits"] == 6
    assert entries["blocks.0.attn_scale"]["kind"] == "float"  # control: never quantized


def test_mixed_scheme_keeps_the_embedding_int8_and_matrices_int6():
    policy = SCHEMES["mixed"]
    assert policy.bits_for("tok_emb.weight") == 8 and policy.bits_for("lm_head.weight") == 8
    assert policy.bits_for("blocks.3.mlp.fc.weight") == 6


def test_a_tensor_stored_under_two_names_is_stored_once(tmp_path):
    w = _heavy_tailed(100, 700)
    one = save_artifact({"a.weight": w}, tmp_path / "one")
    two = save_artifact({"a.weight": w, "b.weight": w}, tmp_path / "two")
    assert two < one + 200  # metadata only, not a second copy
    loaded = load_artifact(tmp_path / "two")
    assert torch.equal(loaded["a.weight"], loaded["b.weight"])
    assert read_artifact_object(tmp_path / "two")["entries"]["b.weight"] == {
        "kind": "alias", "of": "a.weight"}


def _trained_tiny_model(steps: int = 5) -> GPT:
    """vocab 1024 x d 68: the embedding (69,632 > 65,536) is int8-quantized by upstream too."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(num_layers=2, model_dim=68, num_heads=2, num_kv_heads=1))
    tcfg = TrainConfig(iterations=steps, max_wallclock_seconds=0)
    opts = build_optimizers(model, tcfg)
    g = torch.Generator().manual_seed(0)
    walk = torch.cumsum(torch.randint(-3, 4, (4, 33), generator=g), dim=1) % 1024  # local text
    for _ in range(steps):
        model(walk[:, :-1], walk[:, 1:]).backward()
        for opt in opts:
            opt.step()
        model.zero_grad(set_to_none=True)
    return model


def test_brotli_container_is_smaller_than_upstream_zlib_on_trained_weights():
    sd = _trained_tiny_model().state_dict()
    upstream = len(upstream_int8_bytes(sd))
    ours = len(artifact_bytes(sd, "upstream-int8", "brotli"))  # the same int8 values
    unshuffled = len(artifact_bytes(sd, "upstream-int8", "brotli", shuffle=False))
    print(f"\nupstream zlib {upstream} B, ours brotli {ours} B (ratio {ours / upstream:.3f}), "
          f"brotli without shuffle {unshuffled} B")
    assert ours < upstream
    assert ours < unshuffled  # the byte shuffle earns its place


# ----------------------------------------------------------------------------- hostile files


class _Hostile:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_a_pickle_that_would_run_code_is_refused_in_both_formats(tmp_path):
    marker = tmp_path / "pwned"
    payload = _torch_bytes({"__quant_format__": "int8_clean_per_row_v1", "x": _Hostile(marker)})
    # the payload is live: an unsafe load would run it (done here on a throwaway marker)
    live = tmp_path / "live"
    torch.load(io.BytesIO(_torch_bytes(_Hostile(live))), weights_only=False)
    assert live.exists()
    (tmp_path / "up.ptz").write_bytes(zlib.compress(payload))
    (tmp_path / "ours.qnt").write_bytes(encode_container({"x": _Hostile(marker)}))
    for name in ("up.ptz", "ours.qnt"):
        with pytest.raises(ValueError, match=rf"{name}: torch.load\(weights_only=True\) refused"):
            load_artifact(tmp_path / name)
    assert not marker.exists()


def test_truncated_corrupt_and_foreign_files_raise_errors_naming_the_file(tmp_path):
    sd = {"a.weight": _heavy_tailed(70, 1000)}
    good = artifact_bytes(sd, "int8", "brotli")
    cases = {
        "half.qnt": (good[: len(good) // 2], r"brotli decompression failed.*truncated or corrupt"),
        "header.qnt": (good[:10], r"truncated \(header needs 21 bytes\)"),
        "flipped.qnt": (good[:-40] + bytes([good[-40] ^ 0xFF]) + good[-39:],
                        r"brotli decompression failed.*truncated or corrupt"),
        "crc.qnt": (good[:17] + bytes([good[17] ^ 0xFF]) + good[18:],
                    r"payload is \d+ bytes with crc32 \d+, header says .*truncated or corrupt"),
        "version.qnt": (good[:7] + b"\x09" + good[8:], r"container version 9 is not supported"),
        "compressor.qnt": (good[:8] + b"\x07" + good[9:], r"unknown compressor id 7"),
        "up_half.ptz": (upstream_int8_bytes(sd)[:500], r"zlib decompression failed"),
        "garbage.bin": (b"PK\x03\x04 not an artifact", r"not a quantized artifact"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=rf"{name}: {message}"):
            load_artifact(tmp_path / name)


def test_unknown_tags_and_non_dict_payloads_are_refused(tmp_path):
    obj = quantize_state_dict({"a.weight": torch.randn(4, 4)})
    files = {
        "tag.qnt": (encode_container({**obj, "__golf_format__": "golf_v9"}),
                    r"unknown format tag 'golf_v9'"),
        "list.qnt": (encode_container([1, 2, 3]), r"payload is a list, expected a dict"),
        "up_tag.ptz": (zlib.compress(_torch_bytes({"__quant_format__": "int4_magic"})),
                       r"unknown format tag 'int4_magic'"),
        "up_tensor.ptz": (zlib.compress(_torch_bytes(torch.zeros(3))),
                          r"payload is a Tensor, expected a dict"),
        "up_dtype.ptz": (zlib.compress(_torch_bytes({
            "__quant_format__": "int8_clean_per_row_v1", "quantized": {},
            "scales": {}, "dtypes": {}, "passthrough": {"a": torch.zeros(2)},
            "passthrough_orig_dtypes": {"a": "__import__('os')"}})), r"unsupported dtype"),
    }
    for name, (data, message) in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=rf"{name}: .*{message}"):
            load_artifact(tmp_path / name)


def test_bad_scheme_bits_and_compressor_are_named():
    with pytest.raises(ValueError, match=r"unknown quantization scheme 'int3'"):
        quantize_state_dict({}, "int3")
    with pytest.raises(ValueError, match=r"bits must be in 2..8 .* got 9"):
        QuantPolicy(bits=9)
    with pytest.raises(ValueError, match=r"unknown compressor 'zstd'"):
        artifact_bytes({}, "int8", "zstd")


# ----------------------------------------------------------------------------- QAT


def test_noisy_qat_adds_one_step_of_uniform_noise_per_row_and_passes_gradients():
    torch.manual_seed(0)
    lin = CastedLinear(512, 256, bias=False)  # 131,072 weights: quantized by the int8 export
    assert enable_qat(torch.nn.ModuleDict({"fc": lin}), "noisy", bits=6) == ["fc.weight"]
    w = lin.weight.detach()
    step = w.abs().amax(dim=1) / 31  # (rows,)
    noise = lin.qat(lin.weight).detach() - w
    ratio = noise.std(dim=1) / (step / 12**0.5)  # 512 samples per row: ~2% standard error
    assert (ratio - 1).abs().max() < 0.15 and abs(ratio.mean().item() - 1) < 0.02
    assert (noise.abs() <= step[:, None] / 2 + 1e-7).all()
    x = torch.randn(4, 512)
    lin(x).sum().backward()
    torch.testing.assert_close(lin.weight.grad, x.sum(0).expand(256, 512))  # identity
    lin.eval()
    assert lin.qat(lin.weight) is lin.weight  # evaluation sees the float weights


def test_ste_qat_forwards_the_exported_weight_with_identity_gradient():
    lin = CastedLinear(512, 256, bias=False)
    enable_qat(torch.nn.ModuleDict({"fc": lin}), "ste", scheme="int5")
    assert torch.equal(lin.qat(lin.weight), fake_quantize(lin.weight.detach(), 5, SCHEMES["int5"]))
    x = torch.randn(3, 512)
    lin(x).sum().backward()
    torch.testing.assert_close(lin.weight.grad, x.sum(0).expand(256, 512))
    assert disable_qat(lin) == 1 and lin.qat is None


def test_qat_follows_the_export_policy_and_can_target_the_loop_core():
    tiny = GPT(ModelConfig(**TINY))
    assert enable_qat(tiny, "noisy") == []  # nothing this small is quantized at export
    looped = _looped()  # PR #363: 3 blocks cycled to depth 9, per-depth LoRA
    every = enable_qat(looped, "noisy", scheme=ALL)
    assert any(not n.startswith("blocks.") for n in every)  # bigram_proj: not the core
    disable_qat(looped)
    core = enable_qat(looped, "ste", modules="core", scheme=ALL)
    shared = {f"blocks.{p}." for p in looped.schedule.shared_blocks()}
    assert core and set(core) < set(every) and {n[: len("blocks.1.")] for n in core} == shared
    with pytest.raises(ValueError, match=r"modules='core' but the model has no shared core"):
        enable_qat(tiny, "noisy", modules="core")
    with pytest.raises(ValueError, match=r"mode must be one of \('noisy', 'ste'\), got 'int'"):
        enable_qat(tiny, "int")


# ----------------------------------------------------------------------------- diagnostics


def _looped() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = preset("pr363", model_dim=32, num_heads=2, num_kv_heads=1, vocab_size=64,
                 num_unique_blocks=3, effective_depth=9, bigram_buckets=64, bigram_dim=16)
    return _perturbed(build_model(cfg))


def test_recurrence_error_is_zero_for_an_unquantized_copy_with_one_row_per_virtual_layer():
    model = _looped()
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    df = recurrence_error(model, model.state_dict(), x, x)
    sched = model.schedule
    assert len(df) == sched.depth
    assert df["physical_block"].tolist() == sched.virtual_to_physical
    assert df["cycle"].tolist() == sched.cycle
    assert df["rel_error"].dtype == "float64" and (df["rel_error"] == 0).all()
    assert df.attrs["logits_rel_error"] == 0 and df.attrs["loss_gap"] == 0


def test_quantization_error_shows_through_the_loop_cycles():
    model = _looped()
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    int5 = QuantPolicy(bits=5, keep_float_max_numel=0)
    df = recurrence_error(model, quantize_state_dict(model.state_dict(), int5), x, x)
    print("\n" + df.to_string())
    assert (df["rel_error"] > 0).all()
    core = df[df["physical_block"].isin(model.schedule.shared_blocks())]
    by_cycle = core.groupby("cycle")["rel_error"].mean()
    assert len(by_cycle) == 3
    assert by_cycle.iloc[-1] > by_cycle.iloc[0]  # the last loop cycle carries more error
    assert df.attrs["logits_rel_error"] > 0


def test_artifact_report_accounts_model_and_code_bytes_against_the_budget(tmp_path):
    model = GPT(ModelConfig(**TINY))
    for scheme in ("mixed", "upstream"):
        path = tmp_path / f"model.{scheme}"
        rep = artifact_report(model, path, scheme=scheme)
        assert rep["model_bytes"] == path.stat().st_size
        assert rep["code_bytes"] == sum(rep["code_files"].values()) > 0
        assert "model/gpt.py" in rep["code_files"] and "quant/codec.py" in rep["code_files"]
        assert rep["total_bytes"] == rep["model_bytes"] + rep["code_bytes"]
        assert rep["headroom_bytes"] == BUDGET_BYTES - rep["total_bytes"] and rep["fits"]
        groups = rep["groups"]
        assert sum(g["params"] for g in groups.values()) == sum(
            t.numel() for t in model.state_dict().values())
        assert {"embedding", "attention", "mlp", "controls"} <= set(groups)


def _golf_imports(path: Path, package: Path) -> set[Path]:
    """golf_core source files `path` imports (at top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("golf_core"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("golf_core")]
        for name in names:
            rel = Path(*name.split(".")[1:])
            module = [package / rel.with_suffix(".py")] if rel.parts else []
            for candidate in (*module, package / rel / "__init__.py"):
                if candidate.is_file():
                    found.add(candidate)
    return found


def test_code_bytes_count_every_module_the_training_entry_point_needs():
    package = Path(__import__("golf_core").__file__).parent
    todo, seen = [package / "train.py", package / "__init__.py"], set()
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(_golf_imports(path, package))
    needed = {p.relative_to(package).as_posix() for p in seen}
    assert needed <= set(CODE_FILES), sorted(needed - set(CODE_FILES))


def test_roundtrip_bpb_scores_the_model_read_back_from_the_written_file(tmp_path):
    model = _perturbed(GPT(ModelConfig(**TINY)), std=0.02)
    tokens = torch.randint(0, 64, (4 * 16 + 1,), generator=torch.Generator().manual_seed(2))
    tables = ByteTables(torch.ones(64, dtype=torch.int16), torch.zeros(64, dtype=torch.bool),
                        torch.zeros(64, dtype=torch.bool))
    path = tmp_path / "rt.qnt"
    res = roundtrip_bpb(model, path, tokens, 16, tables, scheme=QuantPolicy(
        bits=5, keep_float_max_numel=0), batch_seqs=4)
    floated = evaluate_bpb(model, tokens, 16, tables, batch_seqs=4)
    back = evaluate_bpb(dequantized_copy(model, load_artifact(path)), tokens, 16, tables,
                        batch_seqs=4)
    assert res["val_bpb"] == floated["val_bpb"]
    assert res["roundtrip_val_bpb"] == back["val_bpb"] != floated["val_bpb"]
    assert res["bpb_gap"] == pytest.approx(back["val_bpb"] - floated["val_bpb"])
    assert res["artifact_bytes"] == path.stat().st_size

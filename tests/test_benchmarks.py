"""benchmarks/: the FLOP count against hand computations, the runner end to end on a tiny
model, its argument errors, and batched Newton-Schulz (what Muon runs) against the per-matrix
loop, alone and under a simulated two-rank round robin."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist

from benchmarks import run
from benchmarks.flops import matmul_flops_per_token, matmul_params_per_token
from golf_core.model import GPT, build_model, preset
from golf_core.optim import Muon, newton_schulz5, newton_schulz5_batched

# d=32, 2 heads / 1 KV head (head dim 16, kv dim 16), mlp_mult 2, vocab 64
TINY = dict(model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2, vocab_size=64)
# one block's matmul weights: c_q 32x32, c_k 16x32, c_v 16x32, proj 32x32, fc 64x32, proj 32x64
BLOCK = 32 * 32 + 16 * 32 + 16 * 32 + 32 * 32 + 64 * 32 + 32 * 64
HEAD = 64 * 32  # the tied LM head
SEQ = 16


# ----------------------------------------------------------------------------- FLOPs


def test_flat_model_flops_are_six_n_plus_twelve_l_d_t():
    model = GPT(preset("flat", num_layers=2, **TINY))
    assert matmul_params_per_token(model) == 2 * BLOCK + HEAD == 16_384
    assert matmul_flops_per_token(model, SEQ) == 6 * 16_384 + 12 * 2 * 32 * SEQ == 110_592


def test_a_recurrent_model_counts_its_shared_block_once_per_use():
    # PR #54: 2 unique blocks, then the shared block 3 times: 3 physical, 5 virtual layers
    model = build_model(preset("pr54", num_unique_layers=2, num_recurrent_passes=3, **TINY))
    assert matmul_params_per_token(model) == 5 * BLOCK + HEAD
    assert matmul_flops_per_token(model, SEQ) == 6 * (5 * BLOCK + HEAD) + 12 * 5 * 32 * SEQ


# ----------------------------------------------------------------------------- the runner

TINY_SETS = ["--set", "model_dim=32", "--set", "num_heads=2", "--set", "num_kv_heads=1",
             "--set", "vocab_size=64", "--set", "train_seq_len=32",
             "--set", "train_batch_tokens=64", "--set", "num_layers=2"]


def test_runner_main_runs_end_to_end_and_writes_the_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run, "bf16_skip_reason", lambda *a: "")  # as on a CPU with bf16
    out = tmp_path / "bench.json"
    argv = ["--variants", "unet", *TINY_SETS, "--warmup", "0", "--repeat", "1",
            "--eval-seqs", "2", "--peak-size", "64", "--threads", "1", "--out", str(out)]
    threads = torch.get_num_threads()
    assert run.main(argv) == 0
    assert torch.get_num_threads() == threads  # restored after the run
    result = json.loads(out.read_text())
    assert result["machine"]["torch_threads"] == 1
    assert {"machine", "scale", "sets", "compile", "warmup", "repeat", "peaks_flops",
            "configs", "train", "eval", "artifact", "load_average"} <= set(result)
    assert result["sets"]["num_layers"] == "2" and result["configs"]["unet"]["num_layers"] == 2
    rows = result["train"]
    assert [(r["variant"], r["dtype"]) for r in rows] == [("unet", "fp32"), ("unet", "bf16")]
    for r in rows:
        assert r["tokens_per_step"] == 64 and r["step_ms"] > 0
        assert r["step_ms"] == pytest.approx(r["forward_ms"] + r["backward_ms"]
                                             + r["optimizer_ms"])
        assert r["tokens_per_s"] == pytest.approx(64 / (r["step_ms"] / 1000))
        assert r["mfu"] == pytest.approx(r["flops_per_token"] * r["tokens_per_s"]
                                         / result["peaks_flops"][r["dtype"]])
        assert len(r["samples_ms"]["step"]) == 1
        assert r["newton_schulz_dtype"] in ("float32", "bfloat16")  # as its Muon runs NS
    assert [e["mode"] for e in result["eval"]] == ["non-overlapping", "sliding stride 8"]
    assert all(a["bytes"] > 0 for a in result["artifact"])
    assert not list(tmp_path.glob("*.tmp"))  # written to a temp name, then renamed
    assert "wrote" in capsys.readouterr().out


def test_bf16_cases_are_left_out_only_where_the_cpu_emulates_bf16():
    from benchmarks.flops import BF16_EMULATED_BELOW, bf16_skip_reason

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert bf16_skip_reason(cpu, 114e9, 0.6e9).startswith("bf16 cases left out")
    assert "0.005x" in bf16_skip_reason(cpu, 114e9, 0.6e9)
    assert bf16_skip_reason(cpu, 186e9, 1.7 * 186e9) == ""  # AMX: bf16 the faster
    assert bf16_skip_reason(cpu, 100e9, BF16_EMULATED_BELOW * 100e9) == ""  # slower, not emulated
    assert bf16_skip_reason(cuda, 1e12, 1e9) == ""  # a GPU always times bf16


def test_runner_on_a_cpu_that_emulates_bf16_times_fp32_and_says_why(tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setattr(run, "bf16_skip_reason", lambda *a: "bf16 cases left out: emulated")
    out = tmp_path / "bench.json"
    argv = ["--variants", "unet", *TINY_SETS, "--warmup", "0", "--repeat", "1",
            "--eval-seqs", "2", "--peak-size", "64", "--threads", "1", "--out", str(out)]
    assert run.main(argv) == 0
    result = json.loads(out.read_text())
    assert [r["dtype"] for r in result["train"]] == ["fp32"]
    assert result["bf16_skipped"] == "bf16 cases left out: emulated"
    assert "bf16 cases left out: emulated" in capsys.readouterr().out
    # asked for explicitly, bf16 is timed whatever the CPU
    assert run.main([*argv[:-1], str(tmp_path / "b.json"), "--autocast", "bf16"]) == 0
    assert [r["dtype"] for r in json.loads((tmp_path / "b.json").read_text())["train"]] == \
        ["bf16"]


def test_runner_rejects_an_unknown_variant_with_exit_code_2(capsys):
    assert run.main(["--variants", "unet,nope"]) == 2
    assert "--variants: unknown preset(s) ['nope']; known: flat, unet" in capsys.readouterr().err


def test_runner_rejects_a_set_that_breaks_the_variant_naming_it(capsys):
    assert run.main(["--variants", "unet", "--set", "num_kv_heads=3"]) == 2
    assert "variant 'unet'" in capsys.readouterr().err
    assert run.main(["--set", "num_layers"]) == 2
    assert "--set: expected key=value, got 'num_layers'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- batched NS

# as tests/test_optim.py: 4 bf16 ulps at the outputs' magnitude (identical on this CPU build)
NS_ATOL = 4 * 2**-9
SHAPES = [(16, 24), (24, 16), (16, 24), (8, 8), (24, 16), (8, 8), (5, 7)]


def _grads(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen) for s in SHAPES]


def test_batched_newton_schulz_equals_the_per_matrix_loop():
    grads = _grads(0)
    for got, g in zip(newton_schulz5_batched(grads), grads, strict=True):
        want = newton_schulz5(g)
        assert got.shape == g.shape and got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want.float(), atol=NS_ATOL, rtol=0)
    with pytest.raises(ValueError, match=r"expected a 2-D matrix, got shape \(2, 3, 4\)"):
        newton_schulz5_batched([torch.zeros(2, 3), torch.zeros(2, 3, 4)])


def test_round_robin_muon_with_batching_equals_single_process(monkeypatch):
    steps = [_grads(s) for s in (1, 2, 3)]
    single = [torch.nn.Parameter(torch.zeros(s)) for s in SHAPES]
    ranks = {r: [torch.nn.Parameter(torch.zeros(s)) for s in SHAPES] for r in (0, 1)}
    opts = {r: Muon(ranks[r], lr=0.04, momentum=0.95, backend_steps=5) for r in (0, 1)}
    ref = Muon(single, lr=0.04, momentum=0.95, backend_steps=5)
    sent: list[torch.Tensor] = []

    def fake_all_reduce(t: torch.Tensor, op=None) -> None:
        if rank["now"] == 1:
            sent.append(t.clone())  # rank 1 contributes its matrices' updates ...
        else:
            t += sent.pop()  # ... and rank 0 receives them in its sum

    rank = {"now": 0}
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: rank["now"])
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    for grads in steps:
        for r in (1, 0):
            rank["now"] = r
            for p, g in zip(ranks[r], grads):
                p.grad = g.clone()
            opts[r].step()
        with monkeypatch.context() as m:
            m.setattr(dist, "is_initialized", lambda: False)
            for p, g in zip(single, grads):
                p.grad = g.clone()
            ref.step()
    for got, want in zip(ranks[0], single, strict=True):
        assert torch.equal(got, want)
    for r in (0, 1):  # each rank keeps momentum only for the matrices it owns
        owned = [i for i, p in enumerate(ranks[r]) if "momentum_buffer" in opts[r].state[p]]
        assert owned == [i for i in range(len(SHAPES)) if i % 2 == r]


def test_artifact_table_scores_each_scheme_and_counts_the_threshold(tmp_path):
    """bench_artifacts on real weights: every scheme/compressor/threshold row, the dequantized
    weights scored once per (scheme, threshold), and quantizing every matrix (threshold 0)
    gives a smaller file than upstream's 65,536-element rule at this tiny width."""
    torch.manual_seed(0)
    model = GPT(preset("unet", num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1))
    calls = []

    def score(sd):
        calls.append(sd)
        return float(len(calls))

    rows = run.bench_artifacts(model.state_dict(), score, (65_536, 0))
    assert len(rows) == 1 + 2 * 4 * 3  # upstream + 2 thresholds x 4 schemes x 3 compressors
    assert len(calls) == 1 + 2 * 4  # scored once per (scheme, threshold)
    by = {(r["scheme"], r["compressor"], r["keep_float_max_numel"]): r for r in rows}
    assert by[("int6", "brotli", 0)]["bytes"] < by[("int6", "brotli", 65_536)]["bytes"]
    assert by[("int6", "zlib", 0)]["roundtrip_val_bpb"] == by[("int6", "brotli", 0)][
        "roundtrip_val_bpb"]


def test_artifacts_of_a_path_that_is_no_run_exits_2(tmp_path, capsys):
    assert run.main(["--artifacts-of", str(tmp_path)]) == 2
    assert "is not a run directory (no config.json)" in capsys.readouterr().err


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_as_a_cpu_dry_run(tmp_path):
    from benchmarks import gpu_check

    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    names = [s["step"] for s in report["steps"]]
    assert names == ["cuda tests", "data", "train", "versus", "notebook 00_prepare_data"]
    assert all(s["rc"] == 0 for s in report["steps"]), report["steps"]
    assert report["train_summary"]["steps"] == 2 and report["train_summary"]["mfu"] > 0
    assert report["versus"]["rows"][0]["ratio"] > 0


# ----------------------------------------------------------------------------- side by side

def _upstream_or_skip():
    from benchmarks import versus

    up = versus.load_upstream()
    if up is None:
        pytest.skip(f"no {versus.REFERENCE / versus.UPSTREAM_SCRIPT}: the side-by-side needs "
                    "../shared/reference beside the checkout")
    return versus, up


def test_the_side_by_side_times_both_codes_on_one_batch_and_names_our_dtypes():
    versus, up = _upstream_or_skip()
    spec = dict(num_layers=2, model_dim=32, tokens=64, seq_len=32, num_heads=2, num_kv_heads=1)
    row = versus.compare(lambda: up, "tiny", spec, warmup=1, repeat=2, peak=1e9,
                         device=torch.device("cpu"))
    assert {"upstream fp32", "upstream bf16", "ours"} == set(row["samples_ms"])
    assert all(len(v) == 2 for v in row["samples_ms"].values())
    best = min(row["upstream_fp32_ms"], row["upstream_bf16_ms"])
    assert row["ratio"] == pytest.approx(best / row["ours_ms"])
    assert row["ours_dtype"] in ("fp32", "bf16", "bf16, fp32 attention")
    assert row["ours_dtype_why"].startswith("auto on CPU")  # what the probe measured, said


def test_the_side_by_side_without_bf16_times_upstream_fp32_only():
    versus, up = _upstream_or_skip()
    spec = dict(num_layers=2, model_dim=32, tokens=64, seq_len=32, num_heads=2, num_kv_heads=1)
    row = versus.compare(lambda: up, "tiny", spec, warmup=0, repeat=1, peak=1e9,
                         device=torch.device("cpu"), bf16=False)
    assert {"upstream fp32", "ours"} == set(row["samples_ms"])
    assert row["upstream_bf16_ms"] is None and row["upstream_best"] == "fp32"
    assert row["ratio"] == pytest.approx(row["upstream_fp32_ms"] / row["ours_ms"])


def test_the_side_by_side_without_the_upstream_script_skips_and_says_so(tmp_path):
    from benchmarks import versus

    lines: list[str] = []
    assert versus.main(["--reference", str(tmp_path)], echo=lines.append) == 0
    assert lines and lines[0].startswith("skipped:")
    assert "upstream_baseline_train_gpt.py" in lines[0]


def test_the_kernel_bench_times_each_kernel_beside_its_reference_and_writes_the_json(
        tmp_path, capsys):
    from benchmarks import kernels

    out = tmp_path / "k.json"
    assert kernels.main(["--cases", "cross_entropy,head", "--repeat", "2", "--warmup", "0",
                         "--threads", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["case"], r["shape"]) for r in rows] == [
        ("cross_entropy", "(4096, 1024)"), ("head", "(4096 x 32) x 1024"),
        ("head", "(4096 x 64) x 1024")]
    for r in rows:
        assert len(r["samples_ms"]["reference"]) == 2 and r["reference_ms"] > 0
        if r["kernel_built"]:
            assert r["speedup"] == pytest.approx(r["reference_ms"] / r["kernel_ms"])
    assert "speedup" in capsys.readouterr().out


def test_the_kernel_bench_rejects_an_unknown_case_with_exit_code_2(capsys):
    from benchmarks import kernels

    assert kernels.main(["--cases", "softmax"]) == 2
    assert "--cases ['softmax'] not of attention, cross_entropy, head" in capsys.readouterr().err


def test_the_kernel_bench_against_a_revision_swaps_in_that_build_and_compares_the_bits(
        tmp_path, monkeypatch, capsys):
    """--against REV: the reference is our kernel built from REV's sources, called in the
    same process. Here REV's build is stood in by the current source with one exp coefficient
    changed, so the bits must differ; and HEAD's own sources build and load."""
    from benchmarks import kernels
    from golf_core.model import cpu_build, softcap_ce_kernel

    if not softcap_ce_kernel._available():
        pytest.skip("no C++ compiler: the kernel is not built")
    if not (kernels.REPO / ".git").exists():
        pytest.skip("not a git checkout: no revision to build")
    head = kernels.build_at("HEAD", softcap_ce_kernel)
    assert hasattr(head, "golf_softcap_cross_entropy")
    csrc = softcap_ce_kernel.SOURCE.parent
    for f in [softcap_ce_kernel.SOURCE, *csrc.glob("*.h")]:
        text = f.read_text()
        (tmp_path / f.name).write_text(text.replace("1.6666665459E-1f", "1.6666E-1f"))
    changed = cpu_build.load(tmp_path / softcap_ce_kernel.SOURCE.name, *softcap_ce_kernel.BUILD)
    monkeypatch.setattr(kernels, "build_at", lambda rev, module: changed)
    out = tmp_path / "k.json"
    assert kernels.main(["--cases", "cross_entropy", "--against", "v0", "--repeat", "1",
                         "--warmup", "0", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    row = result["rows"][0]
    assert result["against"] == "v0" and row["reference"] == "ours at v0"
    assert result["malloc"] == "glibc keeps freed memory"  # no page faults in the timings
    assert row["identical"] is False and row["kernel_ms"] > 0 and row["reference_ms"] > 0
    assert softcap_ce_kernel._library() is not changed  # the swap ends with the call
    assert "identical" in capsys.readouterr().out


def test_the_kernel_bench_names_a_revision_it_cannot_read(capsys):
    from benchmarks import kernels

    if not (kernels.REPO / ".git").exists():
        pytest.skip("not a git checkout: no revision to read")

    assert kernels.main(["--cases", "cross_entropy", "--against", "no-such-rev"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("benchmarks.kernels: --against no-such-rev: git cannot list")
    assert err.count("\n") == 1

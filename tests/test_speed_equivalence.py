"""The fused CPU ops of golf_core/model/layers.py against the unfused formulas they replace
(upstream's), forward and backward, to fp32 rounding. No timing here: the speed-ups are
measured in benchmarks/results/optimizations.md."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from golf_core.compile_policy import (
    AUTO_COMPILE_MIN_STEPS,
    _compile_as_text,
    compile_mode_name,
    resolve_compile,
)
from golf_core.config import ModelConfig, TrainConfig
from golf_core.model import GPT, CausalSelfAttention, apply_rotary_emb, rms_norm
from golf_core.model.layers import (
    Block,
    Embedding,
    Rotary,
    apply_rotary_full,
    fast_rms_norm,
    softcap_cross_entropy,
)

CFG = ModelConfig(vocab_size=64, num_layers=4, model_dim=32, num_heads=4, num_kv_heads=2)
RTOL = 1e-5  # relative to the largest magnitude of the reference


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> None:
    scale = b.abs().max().clamp_min(1e-12)
    assert (a - b).abs().max() <= rtol * scale, ((a - b).abs().max(), scale)


def _grads(fn, *inputs: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, list]:
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    out.backward(g)
    return out.detach(), [x.grad for x in leaves]


def _perturb(module: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("shape", [(2, 16, 32), (2, 16, 6, 8), (3, 5)])
def test_fast_rms_norm_matches_torch_forward_and_backward(shape):
    x = 3.0 * torch.randn(shape, generator=torch.Generator().manual_seed(1))
    out, (gx,) = _grads(fast_rms_norm, x)
    ref, (gref,) = _grads(rms_norm, x)
    _close(out, ref)
    _close(gx, gref)


def test_fast_rms_norm_on_a_strided_view_and_outside_fp32():
    x = torch.randn(2, 8, 10, 4)
    view = x[:, :, :6]  # q|k of a fused qkv, not contiguous
    _close(fast_rms_norm(view), rms_norm(view))
    half = x.bfloat16()
    assert torch.equal(fast_rms_norm(half), rms_norm(half))  # bf16: torch's own op


def test_full_width_rotary_equals_upstreams_split_halves():
    rot = Rotary(16)
    x = torch.randn(2, 12, 3, 16)  # (B, T, heads, Dh)
    cos, sin = rot(12, x.device, x.dtype)  # (1, 1, T, Dh/2)
    fcos, fsin = rot.full_tables(12, x.device, x.dtype)  # (T, 1, Dh)
    ref = apply_rotary_emb(x.transpose(1, 2), cos, sin).transpose(1, 2)
    _close(apply_rotary_full(x, fcos, fsin), ref)  # same products (addcmul may fuse the sum)
    assert rot.full_tables(12, x.device, x.dtype)[0] is fcos  # cached
    assert rot.full_tables(8, x.device, x.dtype)[0].shape == (8, 1, 16)


def test_rotary_tables_built_in_inference_mode_are_not_reused_for_training():
    attn = CausalSelfAttention(CFG)
    x = torch.randn(2, 8, 32)
    with torch.inference_mode():
        attn(x)
    attn(x.requires_grad_(True)).sum().backward()  # would raise on an inference table
    assert not attn.rotary.full_tables(8, x.device, x.dtype)[0].is_inference()


def _attention_reference(attn: CausalSelfAttention, x: torch.Tensor,
                         q_gain: torch.Tensor | None = None) -> torch.Tensor:
    """Upstream's CausalSelfAttention.forward, op for op."""
    B, T, D = x.shape
    H, Hkv, Dh = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q = attn.c_q(x).reshape(B, T, H, Dh).transpose(1, 2)
    k = attn.c_k(x).reshape(B, T, Hkv, Dh).transpose(1, 2)
    v = attn.c_v(x).reshape(B, T, Hkv, Dh).transpose(1, 2)
    q, k = rms_norm(q), rms_norm(k)
    cos, sin = attn.rotary(T, x.device, q.dtype)
    q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
    gain = attn.q_gain if q_gain is None else q_gain
    q = q * gain.to(q.dtype)[None, :, None, None]
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=Hkv != H)
    return attn.proj(y.transpose(1, 2).contiguous().reshape(B, T, D))


def test_fused_attention_matches_upstreams_and_keeps_the_state_dict_names():
    torch.manual_seed(0)
    attn = CausalSelfAttention(CFG)
    _perturb(attn)
    assert {"c_q.weight", "c_k.weight", "c_v.weight", "proj.weight", "q_gain"} <= set(
        attn.state_dict())
    x = torch.randn(2, 16, 32)
    for q_gain in (None, torch.linspace(0.5, 2.0, 4)):
        out, (gx,) = _grads(lambda t, g=q_gain: attn(t, g), x)
        params = {n: p.grad.clone() for n, p in attn.named_parameters() if p.grad is not None}
        attn.zero_grad()
        ref, (gref,) = _grads(lambda t, g=q_gain: _attention_reference(attn, t, g), x)
        _close(out, ref)
        _close(gx, gref)
        for n, p in attn.named_parameters():
            assert (p.grad is None) == (n not in params)
            if p.grad is not None:
                _close(params[n], p.grad)
        attn.zero_grad()


def test_fused_attention_applies_the_qat_hook_to_each_weight():
    attn = CausalSelfAttention(CFG)
    _perturb(attn)
    x = torch.randn(2, 8, 32)
    for m in (attn.c_q, attn.c_k, attn.c_v):
        m.qat = torch.round  # any map of the weight: it must act before the concatenation
    with torch.no_grad():
        _close(attn(x), _attention_reference(attn, x))


def test_fused_block_matches_upstreams_formula():
    torch.manual_seed(0)
    block = Block(CFG)
    _perturb(block)

    def reference(x, x0):
        mix = block.resid_mix
        x = mix[0][None, None, :] * x + mix[1][None, None, :] * x0
        x = x + block.attn_scale[None, None, :] * _attention_reference(block.attn, rms_norm(x))
        return x + block.mlp_scale[None, None, :] * block.mlp(rms_norm(x))

    x, x0 = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    out, grads = _grads(block, x, x0)
    ref, refs = _grads(reference, x, x0)
    _close(out, ref)
    for a, b in zip(grads, refs):
        _close(a, b)


@pytest.mark.parametrize("cap", [30.0, 5.0])
def test_softcap_cross_entropy_matches_autograd(cap):
    gen = torch.Generator().manual_seed(0)
    logits = 20.0 * torch.randn(64, 50, generator=gen)
    target = torch.randint(0, 50, (64,), generator=gen)

    def reference(z):
        return F.cross_entropy((cap * torch.tanh(z / cap)).float(), target)

    out, (g,) = _grads(lambda z: softcap_cross_entropy(z, target, cap), logits)
    ref, (gref,) = _grads(reference, logits)
    _close(out, ref)
    _close(g, gref)
    half = logits.bfloat16()  # other dtypes: the plain ops
    assert torch.equal(softcap_cross_entropy(half, target, cap), reference(half))


def test_gpt_loss_and_logits_agree_with_the_unfused_path():
    torch.manual_seed(0)
    model = GPT(CFG)
    _perturb(model)
    x = torch.randint(0, 64, (2, 16))
    y = torch.randint(0, 64, (2, 16))
    logits = model(x)  # the logits path keeps the plain softcap
    ref = F.cross_entropy(logits.reshape(-1, 64).float(), y.reshape(-1))
    _close(model(x, y).detach(), ref.detach())


def test_compile_setting_reads_modes_and_the_old_booleans():
    assert [compile_mode_name(v) for v in ("0", "1", "false", "True", "blocks", "AUTO")] == [
        "none", "model", "none", "model", "blocks", "auto"]
    with pytest.raises(Exception, match="expected one of"):
        compile_mode_name("everything")
    old = {"model": {}, "train": {"compile": True, "iterations": 5}}
    assert _compile_as_text(old)["train"] == {"compile": "1", "iterations": 5}
    assert _compile_as_text({"compile": False})["compile"] == "0"  # flat config


def test_auto_compile_picks_blocks_for_long_cpu_runs_of_our_gpt():
    model, cpu = GPT(CFG), torch.device("cpu")
    short = TrainConfig(compile="auto", iterations=AUTO_COMPILE_MIN_STEPS - 1)
    long = TrainConfig(compile="auto", iterations=AUTO_COMPILE_MIN_STEPS)
    assert resolve_compile(short, cpu, model)[0] == "none"
    assert resolve_compile(long, cpu, model)[0] == "blocks"
    assert resolve_compile(long, torch.device("cuda"), model)[0] == "none"
    assert resolve_compile(TrainConfig(compile="1"), cpu, model)[0] == "model"


@pytest.mark.slow
def test_a_compiled_blocks_run_resumes_exactly(tmp_path):
    """compile=blocks: 4 steps, then --resume to 8, equals 8 straight (tolerance 0)."""
    from test_train import metric_rows, small_dataset, strip_timing, tiny_config

    from golf_core.train import main

    data = small_dataset(tmp_path)
    kw = dict(checkpoint_every=4, iterations=8, val_loss_every=4, compile="blocks")
    straight = main(["--config", str(tiny_config(tmp_path, data, run_name="a", **kw))],
                    environ={})
    cfg = tiny_config(tmp_path, data, run_name="b", **kw)
    main(["--config", str(cfg), "--stop-at-step", "4"], environ={})
    resumed = main(["--config", str(cfg), "--resume"], environ={})
    assert resumed["val_bpb"] == straight["val_bpb"]
    a, b = Path(straight["run_dir"]), Path(resumed["run_dir"])
    def rows(run):  # total_bytes counts the source tree's size, not the model
        return [{k: v for k, v in r.items() if k != "total_bytes"}
                for r in strip_timing(metric_rows(run))]

    assert rows(a) == rows(b)
    wa = torch.load(a / "final_model.pt", weights_only=True)
    wb = torch.load(b / "final_model.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert "compile:blocks" in (a / "train.log").read_text()


def test_compiled_embedding_backward_sums_repeated_ids_like_torchs():
    """Compiled on the CPU, `Embedding`'s backward is our index_add_ op (not inductor's
    atomic adds): it runs, and the table's gradient (ids repeated, some rows never read)
    equals nn.Embedding's eager one; the state dict keeps nn.Embedding's name."""
    torch.manual_seed(0)
    table = Embedding(50, 8)
    assert list(table.state_dict()) == ["weight"] and isinstance(table, torch.nn.Embedding)
    ids = torch.randint(0, 20, (4, 32))  # rows 20..49 get no gradient
    upstream = torch.randn(4, 32, 8)

    def loss(fn):
        table.weight.grad = None
        (fn(ids) * upstream).sum().backward()
        return table.weight.grad.clone()

    eager = loss(table)
    assert torch.equal(loss(lambda i: F.embedding(i, table.weight)), eager)
    torch._dynamo.reset()
    with torch.profiler.profile() as prof:
        compiled = loss(torch.compile(table, fullgraph=True))
    assert "golf::embedding_backward" in {e.key for e in prof.key_averages()}
    _close(compiled, eager)
    assert not compiled[20:].any()

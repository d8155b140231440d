"""What users have, loaded: each published family's state dict and artifact through
`golf_core.runs.load_model` (family read off the keys, config as that script's env vars),
routing tables of every family, and one-line errors for foreign files."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import REPO, expected, fixture_dir
from golf_core.analysis import routing_tables
from golf_core.loading import load_model
from golf_core.model import detect_family

# (fixture, family, expected-loss key, artifact file, its roundtrip-loss key)
CASES = [
    ("upstream_pr54", "pr54", "loss", None, None),
    ("upstream_pr325", "pr325", "loss", None, None),
    ("upstream_pr363", "pr363", "loss", "model.int8.ptz", "int8_roundtrip_loss"),
    ("upstream_pr1204", "pr1204", "loss_recurrence_on", "model.int6.ptz",
     "int6_roundtrip_loss_recurrence_on"),
]
_ENV_NAMES = {"neg_slope": "NEGATIVE_SLOPE"}  # the constructor arg vs the script's env var


def env_config(name: str) -> dict[str, str]:
    """The fixture's model as a user would paste it: its script's env vars, as strings."""
    out = {}
    for key, value in expected(name)["config"].items():
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        elif isinstance(value, bool):
            value = "1" if value else "0"
        out[_ENV_NAMES.get(key, key.upper())] = str(value)
    return out


def loss(model, name: str) -> float:
    batch = torch.load(fixture_dir(name) / "batch.pt", weights_only=True)
    with torch.no_grad():
        return model(batch["input_ids"], batch["target_ids"]).item()


@pytest.mark.parametrize("name, family, key, artifact, art_key", CASES)
def test_each_family_loads_from_its_state_dict_and_artifact(name, family, key, artifact,
                                                            art_key):
    folder, exp = fixture_dir(name), expected(name)
    state = torch.load(folder / "state_dict.pt", weights_only=True)
    assert detect_family(state) == family
    model = load_model(folder / "state_dict.pt", config=env_config(name))
    assert model.cfg.family == family and not model.training
    assert loss(model, name) == pytest.approx(exp[key], rel=1e-5)
    if artifact:
        back = load_model(folder / artifact, config=env_config(name))
        assert loss(back, name) == pytest.approx(exp[art_key], rel=1e-5)


@pytest.mark.parametrize("name, family", [(c[0], c[1]) for c in CASES])
def test_routing_tables_work_on_every_family_from_the_state_dict(name, family):
    state = torch.load(fixture_dir(name) / "state_dict.pt", weights_only=True)
    model = load_model(fixture_dir(name) / "state_dict.pt", config=env_config(name))
    tables = routing_tables(model)
    assert {"skip_weights", "resid_mix", "lanes", "embeddings", "params"} <= set(tables)
    assert len(tables["resid_mix"]) == model.parameter_counts()["effective_depth"]
    assert tables["params"]["total"].item() == sum(p.numel() for p in model.parameters())
    if family == "pr1204":  # the lane table its logger printed, from the raw state dict too
        lanes = routing_tables(state, model.cfg)["lanes"]
        logged = expected(name)["lane_routing"]
        assert lanes["layer"].tolist() == [row["virtual"] for row in logged]
        for col in ("attn_resid", "attn_to_mlp", "mlp_to_attn", "mlp_to_mlp"):
            assert lanes[col].tolist() == pytest.approx([row[col] for row in logged], rel=1e-6)


def test_the_record_loads_with_recurrence_on_as_it_was_exported():
    model = load_model(fixture_dir("upstream_pr1204") / "state_dict.pt",
                       config=env_config("upstream_pr1204"))
    assert model.recurrence_active


def test_a_foreign_or_hostile_file_gets_one_line_naming_it(tmp_path):
    junk = tmp_path / "junk.pt"
    torch.save({"encoder.layer.0.weight": torch.zeros(2, 2)}, junk)
    with pytest.raises(ValueError, match=r"junk\.pt: no model family recognised .*qo_bank"):
        load_model(junk)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.pt: not a weights file"):
        load_model(text)
    bad = tmp_path / "x.ptz"
    bad.write_bytes(b"\x01\x02garbage")
    with pytest.raises(ValueError, match=r"x\.ptz: not a quantized artifact"):
        load_model(bad)


def test_the_inspect_cli_prints_routing_or_one_error_line(tmp_path):
    folder = fixture_dir("upstream_pr1204")
    args = [f"{k}={v}" for k, v in env_config("upstream_pr1204").items()]
    run = subprocess.run([sys.executable, "-m", "golf_core.runs", str(folder / "state_dict.pt"),
                          *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "family pr1204" in run.stdout and "mlp_to_attn" in run.stdout
    junk = tmp_path / "junk.pt"
    torch.save({"w": torch.zeros(1)}, junk)
    run = subprocess.run([sys.executable, "-m", "golf_core.runs", str(junk)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith("error: ") and len(run.stderr.strip().splitlines()) == 1


def test_a_users_checkpoint_and_command_reach_the_notebooks_tables():
    from golf_core.loading import parse_env_config
    from golf_core.reanalysis import checkpoint_routing

    folder = fixture_dir("upstream_pr1204")
    command = " ".join(f"{k}={v}" for k, v in env_config("upstream_pr1204").items())
    tables = checkpoint_routing(str(folder / "model.int6.ptz"), command)
    assert set(tables["lanes"]["variant"]) == {"pr1204 model.int6.ptz"}
    logged = expected("upstream_pr1204")["lane_routing"]
    assert tables["lanes"]["layer"].tolist() == [r["virtual"] for r in logged]
    assert parse_env_config("A=1\nB=2,3") == {"A": "1", "B": "2,3"}
    with pytest.raises(ValueError, match="upstream_config: expected KEY=VALUE items, got 'oops'"):
        parse_env_config("A=1 oops")

"""golf_core.runs: upstream log parsing (real logs), loading upstream models, run listing."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from conftest import expected, fixture_dir
from golf_core.config import ConfigError
from golf_core.loading import load_model
from golf_core.model.gpt import config_from_state_dict
from golf_core.runs import RunLog, default_run_name, list_runs, load_run, read_metrics
from golf_core.upstream_log import ROUTING_COLUMNS, parse_upstream_log


@pytest.fixture(scope="module")
def baseline_log():
    return parse_upstream_log(fixture_dir("upstream_logs") / "naive_baseline_train.log")


@pytest.fixture(scope="module")
def pr1204_logs():
    d = fixture_dir("upstream_logs")
    return {seed: parse_upstream_log(d / f"parallel_resid_mini_recur_seed{seed}.log")
            for seed in (1337, 42)}


def test_baseline_log_curves_end_at_the_wallclock_cap_step(baseline_log):
    m = baseline_log["metrics"]
    val = m[m["kind"] == "val"]
    last = val.iloc[-1]
    assert last["step"] == 13780
    assert last["val_bpb"] == pytest.approx(1.2172)
    assert last["val_loss"] == pytest.approx(2.0606)
    assert last["train_time_ms"] == pytest.approx(600038)
    assert last["step_avg_ms"] == pytest.approx(43.54)
    train = m[m["kind"] == "train"]
    assert train.iloc[-1][["step", "train_loss"]].tolist() == [13750, pytest.approx(1.9910)]
    assert math.isnan(train.iloc[-1]["val_bpb"]) and math.isnan(last["train_loss"])
    assert baseline_log["iterations"] == 20000
    # warmup_step:k/20 lines are not training steps
    assert m["step"].min() >= 0 and not (train["step"] == 20).sum() > 1


def test_baseline_log_final_roundtrip_sizes_and_header(baseline_log):
    final = baseline_log["final"]
    assert final["final_int8_zlib_roundtrip_exact"] == {
        "val_loss": pytest.approx(2.07269931), "val_bpb": pytest.approx(1.22436570)}
    assert final["final_int8_zlib_roundtrip"]["eval_time_ms"] == 1401
    assert baseline_log["sizes"]["Serialized model int8+zlib"] == 15815847
    assert baseline_log["sizes"]["Total submission size int8+zlib"] == 15863489
    assert baseline_log["sizes"]["Code size"] == 47642
    header = baseline_log["header"]
    assert header["model_params"] == 17059912
    assert header["world_size"] == 8 and header["train_batch_tokens"] == 524288
    assert header["seed"] == 1337
    stop = [e for e in baseline_log["events"] if e["text"].startswith("stopping_early")]
    assert [e["step"] for e in stop] == [13780]


def test_pr1204_routing_table_has_the_logged_lane_weights(pr1204_logs):
    r = pr1204_logs[1337]["routing"]
    assert list(r.columns) == ROUTING_COLUMNS
    assert r["layer"].tolist() == [9, 10, 11, 12]
    assert r["physical"].tolist() == [7, 8, 9, 10]
    assert r["mlp_to_attn"].tolist() == pytest.approx([0.3063, 0.1179, 0.0114, 0.0850])
    assert r.iloc[0]["attn_to_attn"] == pytest.approx(1.7709)
    r42 = pr1204_logs[42]["routing"]
    assert r42["mlp_to_attn"].tolist() == pytest.approx([0.4326, 0.2243, 0.0037, 0.0857])


def test_pr1204_log_results_events_and_curves(pr1204_logs):
    log = pr1204_logs[1337]
    final = log["final"]
    assert final["DIAGNOSTIC post_ema"]["val_bpb"] == pytest.approx(1.1232)
    sw = final["final_int6_sliding_window_exact"]
    assert sw["val_bpb"] == pytest.approx(1.10658225) and "stride" not in sw
    assert final["final_int6_sliding_window"]["stride"] == 64
    assert final["final_int6_roundtrip_exact"]["val_bpb"] == pytest.approx(1.13105437)
    assert log["sizes"]["Serialized model int6+brotli"] == 15848542
    events = {e["text"].split()[0]: e["step"] for e in log["events"]}
    assert events["recurrence:activated"] == 3000
    assert events["late_qat:enabled"] == 5765
    m = log["metrics"]
    assert m.iloc[0].to_dict()["val_bpb"] == pytest.approx(4.1047)  # step 0 val
    assert len(m[m["kind"] == "train"]) == 22
    assert log["header"]["model_params"] == 30352046


def test_upstream_state_dict_loads_with_shapes_read_from_the_tensors():
    d = fixture_dir("upstream_baseline")
    exp = expected("upstream_baseline")
    sd = torch.load(d / "state_dict.pt", weights_only=True)
    inferred = config_from_state_dict(sd)
    for key in ("vocab_size", "num_layers", "model_dim", "num_heads", "num_kv_heads", "mlp_mult",
                "tie_embeddings"):
        assert getattr(inferred, key) == exp["config"][key], key
    assert inferred.variant == "unet"
    batch = torch.load(d / "batch.pt", weights_only=True)
    x, y = (batch[k] for k in sorted(batch) if k.startswith("input") or k.startswith("target"))
    model = load_model(d / "state_dict.pt")
    with torch.no_grad():
        assert float(model(x, y)) == pytest.approx(exp["loss"], abs=1e-5)
    qmodel = load_model(d / "model.int8.ptz", config={"NUM_LAYERS": "5", "model_dim": 64})
    with torch.no_grad():
        assert float(qmodel(x, y)) == pytest.approx(exp["int8_roundtrip_loss"], abs=1e-5)


def test_load_model_rejects_an_unknown_config_key():
    d = fixture_dir("upstream_baseline")
    with pytest.raises(ConfigError, match="'NUM_LAYERZ'"):
        load_model(d / "state_dict.pt", config={"NUM_LAYERZ": "5"})


def test_run_log_truncate_cuts_rows_and_log_bytes_back_to_a_checkpoint(tmp_path):
    log = RunLog(tmp_path, echo=False)
    log.metric({"step": 1})
    log.log("step:1")
    rows, nbytes = log.position
    log.metric({"step": 2})
    log.log("step:2")
    log.truncate(rows, nbytes)
    assert read_metrics(tmp_path / "metrics.jsonl")["step"].tolist() == [1]
    assert (tmp_path / "train.log").read_text() == "step:1\n"
    log.metric({"step": 2})
    log.close()
    assert read_metrics(tmp_path / "metrics.jsonl")["step"].tolist() == [1, 2]


def test_list_runs_marks_unfinished_runs_and_reads_finished_summaries(tmp_path):
    for name, summary in (("a_unet_s1", {"steps": 5, "val_bpb": 2.5}), ("b_unet_s2", None)):
        run = tmp_path / name
        run.mkdir()
        cfg = {"model": {"family": "pr1204", "recur_layers": [1], "num_layers": 3},
               "train": {"seed": 7, "tag": "t"}}
        (run / "config.json").write_text(json.dumps(cfg))
        (run / "metrics.jsonl").write_text(
            '{"kind": "train", "step": 3, "train_loss": 4.0}\n'
            '{"kind": "val", "step": 3, "val_loss": 3.0, "val_bpb": 2.9}\n{"kind": "tr')
        if summary:
            (run / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "not_a_run").mkdir()
    df = list_runs(tmp_path)
    assert df["name"].tolist() == ["a_unet_s1", "b_unet_s2"]
    assert df["complete"].tolist() == [True, False]
    assert df["val_bpb"].tolist() == [2.5, 2.9]  # summary, else the last val row
    assert df["steps"].tolist() == [5, 3]
    assert df["variant"].tolist() == ["pr1204", "pr1204"]
    run = load_run(tmp_path / "b_unet_s2")
    assert not run.complete and isinstance(run.metrics, pd.DataFrame)
    assert run.curve("val")["val_bpb"].tolist() == [2.9]  # the torn last line is skipped


def test_default_run_name_has_date_variant_tag_and_seed():
    from datetime import datetime

    now = datetime(2025, 3, 4, 5, 6, 7)
    assert default_run_name("pr1204", "", 42, now) == "20250304-050607_pr1204_s42"
    assert default_run_name("unet", "ab c", 1, now) == "20250304-050607_unet_ab-c_s1"


def test_load_model_and_parse_upstream_log_stay_importable_from_runs():
    # documented as golf_core.runs.load_model / .parse_upstream_log (README, the runs CLI)
    from golf_core import loading, runs, upstream_log

    assert runs.load_model is loading.load_model
    assert runs.parse_upstream_log is upstream_log.parse_upstream_log

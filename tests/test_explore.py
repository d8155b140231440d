"""The routing explorer (golf_core.explore): what a run or file opens at each step, the
tables it shows against the analysis they come from, differences between two snapshots,
the figure's panels, the widgets reacting to picks, and one-line errors for bad parameters.

Two tiny runs are trained in-process (as tests/test_train.py does): a U-Net with mini
recurrence and parallel lanes (skips, resid_mix with a repeat, lanes; its recurrence starts
half-way, so the virtual depth changes between checkpoints) and a looped model with repeat
embeddings."""

from __future__ import annotations

import base64
import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import small_dataset, tiny_config

from conftest import REPO, fixture_dir
from golf_core import analysis, explore
from golf_core.checkpoint import checkpoint_path, load_checkpoint
from golf_core.loading import load_model
from golf_core.train import main

FINAL = explore.FINAL


# One tiny run per published family, PR #363's 3x3 loop on PR #325's model too: 4 steps,
# checkpoints at 2 and 4. PR #1204's is 64 wide, where its repeat MLPs start orthogonal
# against zero-initialised bank slices, and its repeat starts at step 2.
FAMILY_RUNS = {
    "pr1204": dict(num_layers=5, model_dim=64, num_heads=4, num_kv_heads=2, rope_dims=4,
                   bigram_vocab_size=32, bigram_dim=8, xsa_last_n=5, ve_dim=8, ve_layers=[5, 6],
                   recur_layers=[1, 2], repeat_untie_mlp_layers=[1, 2], parallel_start_layer=3,
                   recur_start_frac=0.5),
    "pr325": dict(num_layers=4, num_heads=4, num_kv_heads=2, rope_dims=4, loop_core_layers=2,
                  loop_repeats=3, loop_adapter_dim=4, bigram_vocab_size=32, bigram_dim=8,
                  xsa_last_n=3),
    "pr363-3x3": dict(num_layers=9, num_heads=4, num_kv_heads=2, rope_dims=4,
                      loop_adapter_dim=4, bigram_vocab_size=32, bigram_dim=8),
    "pr54": dict(num_heads=4, num_kv_heads=2, num_unique_layers=3, num_recurrent_passes=2),
    "pr363": dict(num_layers=2, num_heads=4, num_kv_heads=2, num_unique_blocks=2,
                  effective_depth=5, depth_lora_rank=2, bigram_buckets=16, bigram_dim=8,
                  xsa_last_n=1),
    "golf": dict(num_layers=4),
}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"mini": PR #1204's run dir (mini recurrence from step 5, lanes), "looped": PR #363's
    3x3 loop on PR #325's model}, each with checkpoints at steps 5 and 10."""
    base = tmp_path_factory.mktemp("explore")
    data = small_dataset(tmp_path_factory.getbasetemp())
    shapes = {"mini": ("pr1204", FAMILY_RUNS["pr1204"]),
              "looped": ("pr363-3x3", FAMILY_RUNS["pr363-3x3"])}
    out = {}
    for name, (preset, shape) in shapes.items():
        cfg = tiny_config(base, data, iterations=10, checkpoint_every=5, keep_checkpoints=0,
                          run_name=name, **shape)
        main(["--config", str(cfg), "--preset", preset], environ={})
        out[name] = base / "runs" / name
    return out


@pytest.fixture(scope="module")
def family_run(tmp_path_factory, runs):
    """preset name -> its FAMILY_RUNS run dir, trained on first use; "golf": the upstream
    baseline (unet) at the tiny size."""
    base = tmp_path_factory.mktemp("families")
    data = small_dataset(tmp_path_factory.getbasetemp())
    done = {}

    def get(name: str):
        if name not in done:
            cfg = tiny_config(base, data, iterations=4, checkpoint_every=2, keep_checkpoints=0,
                              warmdown_iters=2, val_loss_every=0, run_name=name,
                              **FAMILY_RUNS[name])
            main(["--config", str(cfg), "--preset", "unet" if name == "golf" else name],
                 environ={})
            done[name] = base / "runs" / name
        return done[name]

    return get


@pytest.fixture(scope="module")
def baseline_file():
    return fixture_dir("upstream_baseline") / "state_dict.pt"


def _tables(source, step=FINAL, **kw):
    return explore.snapshot_tables(explore.load_snapshot(source, step, **kw))


# ----------------------------------------------------------------------------- snapshots


def test_a_run_opens_at_its_initialisation_each_kept_checkpoint_and_its_final_model(runs):
    source = explore.run_source(runs["mini"])
    assert source.steps() == [0, 5, 10, FINAL]
    assert [source.step_label(s) for s in source.steps()] == ["0 (init)", "5", "10", "final"]
    assert source.label == "mini (pr1204)"


def test_step_0_is_the_initialisation_the_run_started_from(runs):
    init = _tables(explore.run_source(runs["mini"]), 0)
    assert np.allclose(init["skip_weights"]["mean"], 1.0)  # skip_init "ones"
    assert np.allclose(init["resid_mix"]["x_coef_mean"], 1.0)
    assert np.allclose(init["resid_mix"]["x0_coef_mean"], 0.0)
    assert np.allclose(init["lanes"][["attn_to_attn", "mlp_to_mlp"]], 1.0)
    assert np.allclose(init["lanes"][["attn_resid", "mlp_resid"]], np.sqrt(1.1))
    assert len(init["resid_mix"]) == 5  # the mini repeat has not started: 5 virtual layers


def test_each_step_shows_the_routing_tables_of_that_checkpoint(runs):
    source = explore.run_source(runs["mini"])
    cfg = load_model(runs["mini"]).cfg
    for step in (5, 10):
        state = load_checkpoint(checkpoint_path(runs["mini"] / "checkpoints", step))["model"]
        expected = analysis.routing_tables(state, cfg)
        got = _tables(source, step)
        for key, table in expected.items():
            pd.testing.assert_frame_equal(got[key], table, obj=f"step {step} {key}")
    assert len(_tables(source, 10)["resid_mix"]) == 7  # repeat on: 2 more virtual layers


def test_the_upstream_baseline_file_opens_with_its_config_read_off_the_shapes(baseline_file):
    source = explore.resolve_source(str(baseline_file), what="checkpoint")
    assert source.kind == "file" and source.steps() == [FINAL]
    got = _tables(source)
    expected = analysis.routing_tables(torch.load(baseline_file, weights_only=True))
    for key, table in expected.items():
        pd.testing.assert_frame_equal(got[key], table, obj=key)
    err = got["quant_error"]
    assert list(err["virtual_layer"]) == list(range(5)) and set(err["batch"]) == {
        "random tokens"}  # an upstream file brings no data: seeded random ids


def test_quantization_error_has_a_row_per_virtual_layer_and_shrinks_with_more_bits(runs):
    snap = explore.load_snapshot(explore.run_source(runs["looped"]))
    int4 = explore.quant_error_table(snap, bits=4)
    int8 = explore.quant_error_table(snap, bits=8)
    assert list(int4["virtual_layer"]) == list(range(15))  # stem 3, core 3 x 3, tail 3
    shared = list(int4["shared"])  # stem and tail once; the core's blocks at every repeat
    assert shared[:3] == shared[-3:] == [False] * 3 and sum(shared) >= 6
    assert set(int4["batch"]) == {"validation tokens"}
    assert (int8["rel_error"] < int4["rel_error"]).all()
    assert (int8["rel_error"] > 0).all()
    assert "loss_gap" in int4.attrs


def test_repeat_embeddings_are_tabulated_per_repeat(runs):
    emb = _tables(explore.run_source(runs["looped"]))["embeddings"]
    assert list(emb["name"]) == ["loop_repeat_embed"] * 3 and list(emb["index"]) == [0, 1, 2]


# ----------------------------------------------------------------------------- differences


def test_a_snapshot_minus_itself_is_zero_everywhere(runs):
    tables = _tables(explore.run_source(runs["mini"]))
    diff = explore.difference(tables, tables)
    assert {"skip_weights", "resid_mix", "lanes", "quant_error"} <= set(diff)
    for key, df in diff.items():
        assert (df["a_minus_b"] == 0).all(), key


def test_rows_are_matched_by_physical_block_and_repeat_across_the_mini_hinge(runs):
    source = explore.run_source(runs["mini"])
    final, init = _tables(source), _tables(source, 0)
    mix = explore.difference(final, init)["resid_mix"]
    x = mix[mix["quantity"] == "x_coef_mean"].set_index(["physical", "cycle"])
    # the repeated pass of blocks 1, 2 exists only after the hinge: no partner at step 0
    assert x.loc[(1, 1), "b"] != x.loc[(1, 1), "b"] and x.loc[(2, 1), "b"] != x.loc[(2, 1), "b"]
    row = final["resid_mix"].query("physical == 3 and cycle == 0").iloc[0]
    assert x.loc[(3, 0), "a_minus_b"] == pytest.approx(row["x_coef_mean"] - 1.0)
    lanes = explore.difference(final, init)["lanes"]
    assert set(lanes["physical"]) == {3, 4} and lanes["a_minus_b"].notna().all()


def test_changes_lists_the_largest_moves_first(runs):
    source = explore.run_source(runs["mini"])
    top = explore.changes(explore.difference(_tables(source), _tables(source, 0)), top=5)
    assert len(top) == 5
    assert list(top["a_minus_b"].abs()) == sorted(top["a_minus_b"].abs(), reverse=True)
    assert (top["a_minus_b"] == top["a"] - top["b"]).all()


# ----------------------------------------------------------------------------- figure


def _titles(fig):
    return [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]


def test_the_figure_has_a_panel_per_table_and_a_family_extra_table_gets_its_own(runs):
    tables = _tables(explore.run_source(runs["mini"]))
    extra = pd.DataFrame({"layer": [0, 1, 2], "gate": [0.1, 0.5, 0.9]})
    fig = explore.snapshot_figure({**tables, "skip_gates": extra})
    titles = _titles(fig)
    for part in ("skip weights", "resid_mix", "lane lambdas", "embeddings", "int6 error",
                 "skip_gates"):
        assert any(part in t for t in titles), (part, titles)
    (gates,) = [ax for ax in fig.axes if ax.get_title() == "skip_gates"]
    assert list(gates.lines[0].get_ydata()) == [0.1, 0.5, 0.9]


def test_with_a_second_snapshot_the_lane_matrix_shows_a_minus_b(runs):
    source = explore.run_source(runs["mini"])
    final, init = _tables(source), _tables(source, 0)
    fig = explore.snapshot_figure(final, init, title="A", other_title="B")
    (lanes,) = [ax for ax in fig.axes if ax.get_title().startswith("lane lambdas")]
    assert lanes.get_title().endswith("A - B")
    shown = lanes.images[0].get_array()
    a = final["lanes"].sort_values("physical")["attn_to_attn"].to_numpy()
    assert np.allclose(shown[0], a - 1.0)  # row 0 = attn_to_attn, initialised to 1


CORE = {"skip_weights", "resid_mix", "lanes", "embeddings", "params", "quant_error"}


def test_a_published_family_file_shows_its_own_tables_as_extra_panels():
    path = fixture_dir("upstream_pr325") / "state_dict.pt"
    ex = explore.Explorer.from_parameters(checkpoint=str(path))
    assert ex.a.config.family == "pr325"  # detected from the tensor names
    extras = set(ex.tables) - CORE
    assert extras, sorted(ex.tables)  # PR #325's adapters and gates
    titles = _titles(ex.figure)
    for key in extras:
        assert any(t.startswith(key) for t in titles), (key, titles)


def test_a_pr1204_file_gets_its_quantization_error_per_virtual_layer():
    """PR #1204's model has no layer schedule, only its virtual -> physical map (`v2p`)."""
    path = fixture_dir("upstream_pr1204") / "state_dict.pt"
    config = "VE_LAYERS=5,6 XSA_LAST_N=7 PARALLEL_START_LAYER=4"  # as in its command
    ex = explore.Explorer.from_parameters(checkpoint=str(path), upstream_config=config)
    assert len(ex.tables["lanes"]) > 0 and len(ex.tables["skip_weights"]) > 0
    err, v2p = ex.tables["quant_error"], ex.a.model.v2p()
    assert list(err["virtual_layer"]) == list(range(len(v2p)))
    assert list(err["physical_block"]) == v2p
    assert list(err["cycle"]) == [v2p[:i].count(p) for i, p in enumerate(v2p)]
    assert list(err["shared"]) == [v2p.count(p) > 1 for p in v2p]
    assert (err["rel_error"] > 0).all() and "loss_gap" in err.attrs
    (panel,) = [ax for ax in ex.figure.axes if ax.get_title().startswith("int6 error")]
    assert not panel.texts  # drawn, not the "not available" note


def test_a_model_the_error_diagnostic_cannot_run_keeps_its_other_panels(runs, monkeypatch):
    def broken(*_args, **_kw):
        raise RuntimeError("Error(s) in loading state_dict")

    monkeypatch.setattr("golf_core.explore.snapshots.recurrence_error", broken)
    snap = explore.load_snapshot(explore.run_source(runs["looped"]))
    tables = explore.snapshot_tables(snap)
    assert tables["quant_error"].empty and len(tables["resid_mix"]) == 15
    assert tables["quant_error"].attrs["unavailable"].startswith("RuntimeError: Error(s)")
    fig = explore.snapshot_figure(tables)
    (panel,) = [ax for ax in fig.axes if ax.get_title().startswith("quantization")]
    assert "not available for this model" in panel.texts[0].get_text()


# ----------------------------------------------------------------------------- widgets


@pytest.fixture
def explorer(runs, golf_root):
    mini, looped = explore.run_source(runs["mini"]), explore.run_source(runs["looped"])
    return explore.Explorer([mini, looped], source=mini, compare=None)


def test_moving_the_step_slider_redraws_the_figure_for_that_checkpoint(explorer):
    first = explorer.figure
    assert explorer.a.step == FINAL and explorer.b is None
    explorer.step.value = 0
    assert explorer.a.step == 0 and explorer.figure is not first
    assert np.allclose(explorer.tables["skip_weights"]["mean"], 1.0)
    (out,) = explorer.figure_out.outputs
    assert base64.b64decode(out["data"]["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "step 0 (init)" in explorer.status.value


def test_switching_runs_offers_that_runs_steps(explorer, runs):
    looped = [s for _, s in explorer.source.options if s.path == runs["looped"]][0]
    explorer.step.value = 5
    explorer.source.value = looped
    assert [v for _, v in explorer.step.options] == [0, 5, 10, FINAL]
    assert explorer.a.source == looped and explorer.a.step == 5  # the step is kept
    assert len(explorer.tables["embeddings"]) == 3


def test_a_second_picker_overlays_another_checkpoint_as_a_difference(explorer):
    mini = explorer.source.value
    explorer.compare.value = mini
    assert not explorer.compare_step.disabled and explorer.b.step == FINAL
    explorer.compare_step.value = 0
    assert explorer.b.step == 0 and explorer.diff
    assert explorer.changes()["a_minus_b"].abs().max() > 0
    assert "largest changes A - B" in explorer.tables_out.outputs[0]["data"]["text/html"]
    explorer.compare.value = "(none)"
    assert explorer.b is None and explorer.diff == {} and explorer.compare_step.disabled
    assert explorer.compare.label == "(none)"  # shown, not a blank dropdown
    explorer.compare.value = mini
    explorer.compare.value = None  # no selection, set from code: the "(none)" choice
    assert explorer.b is None and explorer.compare.value == explorer.compare.label == "(none)"


def test_a_typed_path_opens_that_file_and_a_bad_one_keeps_the_selection(explorer,
                                                                        baseline_file):
    explorer.path.value = "/no/such/weights.pt"
    assert explorer.error.startswith("open path: '/no/such/weights.pt' is neither")
    assert explorer.a.source.kind == "run"
    explorer.path.value = str(baseline_file)
    assert explorer.a.source.path == baseline_file and explorer.error == ""
    assert [v for _, v in explorer.step.options] == [FINAL]


def test_a_family_the_run_was_not_trained_as_is_shown_as_a_one_line_error(explorer):
    explorer.family.value = "pr54"
    assert explorer.error.startswith("ExploreError: family: run mini was trained as family "
                                     "'pr1204'")
    assert explorer.a.source.path.name == "mini"  # the last good selection stays


BAD = ("not available", "Traceback", "Error", "could not open")


def _shown(ex) -> list[str]:
    """Every text the explorer shows: the status line, the figure's titles and notes, the
    table under it."""
    texts = [ex.status.value, ex.error,
             *(o["data"]["text/html"] for o in ex.tables_out.outputs)]
    texts += [t.get_text() for t in ex.figure.texts]
    for ax in ex.figure.axes:
        texts += [ax.get_title(), *(t.get_text() for t in ax.texts)]
    return texts


def _check_view(ex, what: str) -> None:
    """Every panel drawn, no error anywhere, the quantization error there for A and B, and
    no ratio over a ~0 reference among the largest changes."""
    bad = [t for t in _shown(ex) if any(b in t for b in BAD)]
    assert not bad and ex.error == "", (what, bad)
    (png,) = ex.figure_out.outputs
    assert base64.b64decode(png["data"]["image/png"])[:4] == b"\x89PNG", what
    titles = _titles(ex.figure)
    assert len(titles) == len(explore.panel_keys(ex.tables)), (what, titles)
    for snap in (ex.a, ex.b) if ex.b is not None else (ex.a,):
        err = snap.tables["quant_error"]
        assert len(err) == len(snap.tables["resid_mix"]) > 0, (what, snap.name)
        assert (err["rel_error"] > 0).all(), (what, snap.name)
    if ex.b is not None:
        top = ex.changes()
        assert not top.empty and np.isfinite(top[["a", "b", "a_minus_b"]]).all().all(), what
        ratios = top[top["quantity"].map(explore.is_ratio)]
        assert (ratios[["a", "b"]].abs() <= explore.RATIO_LIMIT).all().all(), (what, ratios)
        assert not top.attrs["left_out"], (what, top.attrs["left_out"])


@pytest.mark.parametrize("family", [  # ~10-20 s each: PR #1204 and ours in the fast set
    "golf", "pr1204", *(pytest.param(f, marks=pytest.mark.slow) for f in FAMILY_RUNS
                        if f not in ("golf", "pr1204"))])
def test_every_panel_of_each_familys_run_draws_as_a_user_drives_the_pickers(
        family_run, runs, family, monkeypatch):
    run = family_run(family)
    monkeypatch.setenv("GOLF_ROOT", str(runs["mini"].parent.parent))  # A's other choices
    ex = explore.Explorer.from_parameters(run=str(run))  # the notebook's default view
    assert (ex.a.step, ex.b.step) == (FINAL, 0) and ex.b.source == ex.a.source
    _check_view(ex, "final vs init")
    ex.step.value = ex.a.source.steps()[1]
    _check_view(ex, "A at the first checkpoint")
    ex.compare_step.value = ex.a.source.steps()[-2]
    _check_view(ex, "B at the last checkpoint")
    ex.compare.value = "(none)"
    assert ex.b is None and ex.compare_step.disabled
    assert ex.compare.value == ex.compare.label == "(none)"  # the choice stays visible
    _check_view(ex, "no B")
    ex.compare.value = ex.source.value
    assert ex.b is not None and ex.b.source == ex.a.source and not ex.compare_step.disabled
    _check_view(ex, "B back")
    other = next(s for _, s in ex.source.options if s.path != run)
    ex.source.value = other
    assert ex.a.source == other and ex.compare.label == ex.b.source.label
    _check_view(ex, f"A switched to {other.label}")
    ex.source.value = ex.b.source
    assert ex.a.source.path == run
    _check_view(ex, "A back")


def test_a_repeat_mlp_against_a_zero_bank_slice_reports_an_absolute_difference():
    """PR #1204's down slices start at zero and its repeat MLPs (64 wide and up) orthogonal:
    no reference to be relative to, so no ratio (it was ||W|| / 1e-12 = 8e+12 at width 64)."""
    from golf_core.model import build_model, preset

    cfg = preset("pr1204", num_layers=3, model_dim=64, num_heads=4, num_kv_heads=2, rope_dims=4,
                 vocab_size=64, bigram_vocab_size=16, bigram_dim=8, xsa_last_n=2, ve_dim=8,
                 ve_layers=(2, 3), recur_layers=(1,), repeat_untie_mlp_layers=(1,),
                 parallel_start_layer=2)
    model = build_model(cfg)
    proj, fc = model.repeat_mlp[0].proj.weight, model.repeat_mlp[0].fc.weight
    table = model.routing_tables()["repeat_mlp"]
    row = table.iloc[0]
    assert proj.norm().item() == pytest.approx(8.0)  # orthogonal 64 x 128
    assert np.isnan(row["proj_rel_diff"]) and row["proj_abs_diff"] == pytest.approx(8.0)
    up = model.mlp_up_bank[1].detach()
    assert row["fc_abs_diff"] == pytest.approx((fc.detach() - up).norm().item(), rel=1e-5)
    assert row["fc_rel_diff"] == pytest.approx(row["fc_abs_diff"] / up.norm().item(), rel=1e-5)
    with torch.no_grad():
        model.mlp_down_bank[1].fill_(0.01)  # a slice that has moved: a ratio again
    row = model.routing_tables()["repeat_mlp"].iloc[0]
    base = model.mlp_down_bank[1].detach()
    assert row["proj_rel_diff"] == pytest.approx((proj.detach() - base).norm().item()
                                                 / base.norm().item(), rel=1e-5)


def test_the_largest_changes_rank_no_ratio_over_a_zero_reference():
    diff = {
        "repeat_mlp": pd.DataFrame({"index": [0, 0, 0], "quantity": [
            "proj_rel_diff", "proj_abs_diff", "fc_rel_diff"], "a": [0.5, 8.1, 0.2],
            "b": [8e12, 8.0, float("inf")]}),
        "resid_mix": pd.DataFrame({"physical": [1, 2], "quantity": ["x_coef_mean"] * 2,
                                   "a": [1.5, float("nan")], "b": [1.0, 1.0]}),
    }
    diff = {k: d.assign(a_minus_b=d["a"] - d["b"]) for k, d in diff.items()}
    top = explore.changes(diff)
    assert list(zip(top["table"], top["quantity"])) == [("resid_mix", "x_coef_mean"),
                                                        ("repeat_mlp", "proj_abs_diff")]
    (left,) = top.attrs["left_out"]
    assert (left["quantity"], left["b"]) == ("proj_rel_diff", 8e12)


# ----------------------------------------------------------------------------- parameters


def test_the_notebook_parameters_open_a_run_and_compare_it_with_its_initialisation(runs):
    ex = explore.Explorer.from_parameters(run=str(runs["mini"]), step=5)
    assert (ex.a.step, ex.b.step) == (5, 0) and ex.b.source == ex.a.source
    none = explore.Explorer.from_parameters(run=str(runs["mini"]), compare="")
    assert none.b is None


def test_a_checkpoint_parameter_with_an_upstream_config_opens_that_file(baseline_file):
    ex = explore.Explorer.from_parameters(checkpoint=str(baseline_file),
                                          upstream_config=json.dumps({"NUM_LAYERS": 5}))
    assert ex.a.source.kind == "file" and ex.b is None  # a file has no initialisation
    assert ex.a.config.num_layers == 5


@pytest.mark.parametrize("params, message", [
    ({"run": "no-such-run"}, r"^run: 'no-such-run' is neither a weights file nor a run "),
    ({"checkpoint": "/nope.pt"}, r"^checkpoint: '/nope.pt' is neither"),
    ({"run": "mini", "upstream_config": "{NUM_LAYERS: 5"},
     r"^upstream_config: not JSON \(Expecting property name"),
    ({"run": "mini", "upstream_config": "[1]"}, r"^upstream_config: want KEY=VALUE items or "
                                                r"a JSON object"),
    ({"checkpoint": "mini", "upstream_config": "NUM_LAYERS"},
     r"^upstream_config: expected KEY=VALUE items, got 'NUM_LAYERS'"),
    ({"run": "mini", "family": "pr99"}, r"^family: unknown 'pr99'; choose one of auto, golf"),
    ({"run": "mini", "step": 3}, r"^step: run mini has no step 3; it has 0 \(init\), 5, 10, "
                                 r"final$"),
    ({"run": "mini", "compare": "elsewhere"}, r"^compare: 'elsewhere' is neither"),
    ({"scale": "ci"}, r"^run: empty, and the ci scale's \S+ run .* has not been trained; "
                      r"pass run= or checkpoint="),
])
def test_bad_parameters_are_refused_in_one_line_naming_the_parameter(runs, monkeypatch,
                                                                     params, message):
    monkeypatch.setenv("GOLF_ROOT", str(runs["mini"].parent.parent))  # run names resolve
    with pytest.raises(explore.ExploreError, match=message) as info:
        explore.Explorer.from_parameters(**params)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_the_explorer_notebook_runs_under_papermill_and_draws_the_selection(runs, tmp_path):
    import nbformat

    from golf_core import report

    out = report.execute_notebook("07_explore_routing", {"scale": "ci", "run": str(runs["mini"]),
                                                         "step": 5}, tmp_path, stream=False)
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o["output_type"] == "error"]
    data = [o.get("data", {}) for o in outputs]
    assert any("application/vnd.jupyter.widget-view+json" in d for d in data)  # the pickers
    svgs = [d["image/svg+xml"] for d in data if "image/svg+xml" in d]
    assert svgs and "mini @ step 5" in "".join(svgs)  # the static figure of the selection
    assert REPO.joinpath("notebooks", "07_explore_routing.ipynb").is_file()

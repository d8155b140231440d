"""`make report` end to end at the ci scale (every notebook under papermill, the HTML render),
plus the run matrix, the launcher and the runner's failure paths."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from conftest import report_env as _env
from golf_core import experiments, launch, report, verdicts

# figures each notebook draws (save_figure names)
FIGURES = {
    "01_train": ["train_loss"],
    "02_skip_weights_resid_mix": ["skip_weights_evolution", "skip_weights_final", "resid_mix"],
    "03_parallel_lanes": ["lane_routing"],
    "04_flat_vs_looped": ["flat_vs_looped_step", "flat_vs_looped_seconds",
                          "bpb_vs_unique_params", "bpb_vs_artifact_bytes"],
    "05_quantization_recurrence": ["recurrence_error", "roundtrip_gap"],
    "06_test_time_depth": ["test_time_depth"],
}
STUDY = Path(__file__).resolve().parent.parent / "results" / "study"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_make_report_at_ci_scale_runs_every_notebook_and_prints_their_wall_times(ci_report):
    root, proc = ci_report
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in report.NOTEBOOKS:
        assert re.search(rf"\[report\]\s+{name}\s+[\d.]+ s", proc.stdout), name
        executed = root / "runs" / "notebooks" / "ci" / f"{name}.ipynb"
        nb = json.loads(executed.read_text())
        errors = [o for c in nb["cells"] for o in c.get("outputs", [])
                  if o["output_type"] == "error"]
        assert not errors, f"{name}: {errors}"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", sorted(FIGURES))
def test_each_notebook_wrote_its_figures_with_a_sidecar_naming_real_runs(ci_report, notebook):
    root, proc = ci_report
    assert proc.returncode == 0
    for fig in FIGURES[notebook]:
        assert (root / "figures" / f"{fig}.png").read_bytes()[:8] == PNG_MAGIC
        assert (root / "figures" / f"{fig}.svg").stat().st_size > 1000
        meta = json.loads((root / "figures" / f"{fig}.json").read_text())
        ours = [r for r in meta["runs"] if not r.endswith(".log")]
        assert ours and all((root / "runs" / r / "summary.json").is_file() for r in ours), meta


@pytest.mark.slow
def test_the_writeup_inlines_every_figure_as_svg_with_its_code_hidden(ci_report):
    root, proc = ci_report
    assert proc.returncode == 0
    page = (root / "report" / "report.html").read_text()
    # figures are SVG markup, crisp at any zoom (a heatmap inside one is its own raster)
    assert not re.search(r"<img[^>]+src=.data:image/png", page)
    for fig in [f for figs in FIGURES.values() for f in figs]:
        # save_figure writes the name into the SVG's metadata; the writeup pastes that file
        assert f"<dc:title>{fig}</dc:title>" in page, f"{fig} not inlined in report.html"
    ids = re.findall(r'<svg[^>]*>', page)
    assert len(ids) >= sum(map(len, FIGURES.values()))
    assert all('width="100%"' in tag for tag in ids)  # fluid, at most the figure's own width
    assert re.search(r"<th[^>]*>verdict</th>", page)  # the findings table rendered as HTML
    assert "print(" not in page and "nbparams.check_parameters" not in page  # code hidden
    # hovering a curve names its run's seed and last value
    assert re.search(r"<title>[\w.+-]+ seed \d+: train_loss [\d.]+ at step \d+</title>", page)


@pytest.mark.slow
def test_the_index_states_the_findings_wall_times_and_the_command_and_links_every_page(
        ci_report):
    root, proc = ci_report
    assert proc.returncode == 0
    index = (root / "report" / "index.html").read_text()
    links = re.findall(r'<a href=["\']([^"\']+)["\']', index)
    pages = {"report.html"} | {f"{n}.html" for n in report.NOTEBOOKS if n != report.WRITEUP}
    cited = {h for h in links if h.startswith("https://")}  # sources: the PRs they cite
    assert all(re.fullmatch(r"https://github\.com/openai/parameter-golf/pull/\d+", h)
               for h in cited), cited
    assert set(links) - cited == pages | {"index.html"}
    for link in pages:
        page = (root / "report" / link).read_text()
        assert re.search(r'<link (href="style.css" rel="stylesheet"|rel="stylesheet" '
                         r'href="style.css")', page), link
        assert "<svg" in page or link == "00_prepare_data.html", link
    assert (root / "report" / "style.css").stat().st_size > 500
    ours = index[index.index("Findings at the ci scale"):]  # after the study's table
    table = ours[ours.index("class='golf-findings'"):]
    table = table[:table.index("</table>")]
    findings = re.findall(r"<tr><td><a href='([^']+)'>[^<]+</a></td>", table)
    # one line per claim the ci matrix can pair (equal FLOPs, or both arms at equal steps)
    # and three descriptive ones, each linked to its notebook
    specs = experiments.run_matrix("ci")
    steps = {s.label for s in specs if s.budget == "steps"}
    paired = [c for c in verdicts.scale_claims({s.label for s in specs})
              if c.budget == "flops" or {c.arm_a, c.arm_b, *(c.minus or ())} <= steps]
    assert len(findings) == len(paired) + 3 and set(findings) <= pages
    for name in report.NOTEBOOKS:
        assert re.search(rf"notebooks/{name}\.ipynb</code></td><td class='num'>\d+ s<", index)
    assert "make report REPORT_SCALE=ci" in index
    assert "training runs</strong> at the <code>ci</code> scale" in index  # from the writeup
    explorer = (root / "report" / "07_explore_routing.html").read_text()
    assert "golf-widget-note" in explorer  # the pickers need a kernel: a note says so
    assert "application/vnd.jupyter.widget-view" not in explorer


@pytest.mark.slow
def test_no_page_loads_anything_from_the_network(ci_report):
    root, proc = ci_report
    assert proc.returncode == 0
    for page in (root / "report").glob("*.html"):
        remote = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(https?:[^"]+)"',
                            page.read_text())
        assert not remote, f"{page.name} loads {remote[:3]}"


@pytest.mark.slow
def test_a_second_launch_skips_every_complete_run(ci_report, monkeypatch):
    root, proc = ci_report
    assert proc.returncode == 0
    monkeypatch.setenv("GOLF_ROOT", str(root))
    specs = experiments.run_matrix("ci")
    lines: list[str] = []
    table = launch.launch(specs, echo=lines.append)
    assert set(table["status"]) == {"skipped: complete"}
    assert len(lines) == len(specs)


@pytest.mark.slow
def test_routing_runs_keep_every_checkpoint_for_the_evolution_plots(ci_report, monkeypatch):
    root, proc = ci_report
    monkeypatch.setenv("GOLF_ROOT", str(root))
    (spec,) = experiments.select(experiments.run_matrix("ci"), labels=["unet"])
    kept = sorted(p.name for p in (spec.run_dir / "checkpoints").glob("*.pt"))
    # more than train.py's default of the newest two: the matrix sets keep_checkpoints=0
    assert kept == ["ckpt_000002.pt", "ckpt_000004.pt", "ckpt_000006.pt", "ckpt_000008.pt"]


# ----------------------------------------------------------------------------- failures


def test_an_unknown_parameter_is_refused_before_a_kernel_starts(tmp_path):
    with pytest.raises(report.ReportError, match=r"notebook 06_test_time_depth: "
                                                 r"06_test_time_depth.ipynb: unknown "
                                                 r"parameter\(s\) 'max_K'"):
        report.execute_notebook("06_test_time_depth", {"scale": "ci", "max_K": 2}, tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_the_notebook_itself_refuses_an_unknown_parameter_papermill_only_warns_about(
        tmp_path, golf_root):
    with pytest.raises(report.ReportError, match=r"notebook 06_test_time_depth failed in cell "
                                                 r"\d+: ParameterError: .*unknown parameter"
                                                 r"\(s\) 'max_K'"):
        report.execute_notebook("06_test_time_depth", {"scale": "ci", "max_K": 2}, tmp_path,
                                check=False, stream=False)
    assert (tmp_path / "06_test_time_depth.ipynb").is_file()  # kept, with the error banner


@pytest.mark.slow
def test_a_failing_cell_fails_make_report_naming_the_notebook(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "golf_core.report", "--scale", "ci",
                           "--only", "06_test_time_depth"], cwd=REPO, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "make report failed: notebook 06_test_time_depth failed in cell" in proc.stderr
    assert "FileNotFoundError: run(s) not finished" in proc.stderr
    assert not (tmp_path / "report").exists()


def test_an_unknown_scale_is_refused():
    with pytest.raises(ValueError, match="unknown report scale 'cpux'"):
        report.run_report("cpux")


# ----------------------------------------------------------------------------- run matrix


def test_run_names_are_deterministic_and_change_with_the_settings(golf_root):
    a = [s.name for s in experiments.run_matrix("cpu")]
    assert a == [s.name for s in experiments.run_matrix("cpu")]
    assert len(set(a)) == len(a)
    b = [s.name for s in experiments.run_matrix("cpu", extra={"iterations": 7})]
    assert not set(a) & set(b)
    assert all(re.fullmatch(r"cpu-[\w+.-]+-s\d+-[0-9a-f]{6}", n) for n in a)


def test_every_group_has_runs_and_groups_select_them(golf_root):
    specs = experiments.run_matrix("cpu")
    for group in experiments.GROUPS:  # the 2x2 ("stack") runs at the study scale only
        assert experiments.select(specs if group != "stack" else
                                  experiments.run_matrix("study"), group=group)
    flat = experiments.run_matrix("cpu", groups="flat_vs_looped")
    assert {s.label for s in flat} == {"pr363-flat", "pr363-3x3", "pr363-2x5"}
    assert {s.seed for s in flat} == set(experiments.SCALES["cpu"]["seeds"])
    assert {s.budget for s in flat} == {"steps", "flops"}  # PR #363's equal-compute claims
    with pytest.raises(ValueError, match="unknown run group"):
        experiments.run_matrix("cpu", groups="flat_vs_loop")


def test_the_train_command_uses_torchrun_for_several_processes(golf_root):
    spec = experiments.run_matrix("ci", groups="depth")[0]
    one = launch.train_command(spec, python="py")
    assert one[:3] == ["py", "-m", "golf_core.train"]
    assert one[3:7] == ["--scale", "cpu", "--preset", "pr54"]  # PR #54's own model
    assert f"run_name={spec.name}" in one and f"runs_dir={golf_root / 'runs'}" in one
    two = launch.train_command(spec, nproc=2, python="py", resume=True)
    assert two[:6] == ["py", "-m", "torch.distributed.run", "--standalone",
                       "--nproc_per_node=2", "-m"]
    assert two[-1] == "--resume"


def test_the_gpu_scale_trains_the_presets_at_upstream_size_on_the_given_shards(golf_root):
    specs = experiments.run_matrix("gpu", data_path="/fineweb", tokenizer_path="/tok.model")
    assert {s.train_scale for s in specs} == {"upstream"}
    assert all("model_dim" not in s.overrides for s in specs)
    assert all(s.overrides["data_path"] == "/fineweb" for s in specs)


def test_a_failed_run_raises_with_its_last_output_lines(golf_root):
    spec = experiments.run_matrix("ci", groups="depth", data_path=str(golf_root / "nowhere"))[0]
    with pytest.raises(launch.LaunchError, match=rf"(?s)training run {re.escape(spec.name)} "
                                                 r"failed \(exit code 2\).*last lines:.*nowhere"):
        launch.launch([spec], echo=lambda line: None)


def test_paired_findings_come_from_the_stats_rule_and_equal_flops_reuse_the_reference():
    import pandas as pd

    from golf_core import stats
    from golf_core.verdicts import _paired_row, _with_flops_references

    specs = experiments.run_matrix("cpu", groups="flat_vs_looped")
    seeds = [1, 2, 3]
    summary = pd.DataFrame(
        [{"label": lab, "seed": sd, "budget": bud, "val_bpb": v + 0.001 * sd, "steps": st}
         for lab, bud, v, st in (("pr363-3x3", "steps", 2.10, 150),
                                 ("pr363-2x5", "steps", 2.12, 150),
                                 ("pr363-2x5", "flops", 2.13, 111),
                                 ("pr363-flat", "steps", 2.08, 150),
                                 ("pr363-flat", "flops", 2.09, 117))
         for sd in seeds])
    table = _with_flops_references(summary, specs)
    # the 3x3's own runs are its equal-FLOPs budget: they appear once more under "flops"
    assert len(table.query("label == 'pr363-3x3' and budget == 'flops'")) == 3
    claims = [c for c in stats.CLAIMS if c.name.startswith(("3x3", "looped-vs-flat/"))]
    rows = stats.findings_table(table, claims, details=True).set_index("claim")
    flops = rows.loc["3x3-vs-2x5/flops"]
    assert flops["n"] == 3 and flops["diff"] == pytest.approx(-0.03)
    assert flops["verdict"] == "reproduced"  # identical differences: a zero-width interval
    row = _paired_row(rows.reset_index().to_dict("records")[1])
    assert row[4] == 3 and row[-2] == "reproduced" and row[-1] == "04_flat_vs_looped"
    assert "150 vs 111 steps" in row[3]

def test_two_copies_of_a_figure_on_one_page_share_no_ids_and_keep_their_references():
    import copy

    import nbformat
    import pandas as pd

    from golf_core import plots, site

    df = pd.DataFrame({"label": ["a"] * 4, "seed": [1, 1, 2, 2], "step": [0, 4, 0, 4],
                       "val_bpb": [3.0, 2.5, 3.1, 2.4]})
    svg = plots.figure_svg(plots.val_bpb_curves(df))
    out = {"output_type": "display_data", "metadata": {}, "data": {"image/svg+xml": svg}}
    twin = copy.deepcopy(out)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[out, twin])])
    first, second = (o["data"]["image/svg+xml"]
                     for o in site.inline_figures(nb).cells[0].outputs)
    ids = [re.findall(r'\bid="([^"]+)"', s) for s in (first, second)]
    assert ids[0] and not set(ids[0]) & set(ids[1])
    for page_svg, own in zip((first, second), ids):
        refs = re.findall(r'url\(#([^)]+)\)|href="#([^"]+)"', page_svg)
        assert {a or b for a, b in refs} <= set(own)  # every reference points inside
    assert first.startswith("<svg") and 'width="100%"' in first.split(">")[0]
    assert "<title>a seed 1: val_bpb 2.5 at step 4</title>" in first  # hover names the seed


def test_the_index_reads_the_findings_table_the_writeup_printed():
    from golf_core import site

    table = ("| claim | source | verdict | notebook |\n|---|---|---|---|\n"
             "| a \\| b | PR #1 | reproduced | 04_flat_vs_looped |\n")
    assert site.markdown_rows(table) == [{"claim": "a | b", "source": "PR #1",
                                          "verdict": "reproduced",
                                          "notebook": "04_flat_vs_looped"}]


def test_the_reproduce_command_carries_the_gpu_arguments():
    assert report.reproduce_command("ci") == "make report REPORT_SCALE=ci"
    assert report.reproduce_command("gpu", data_path="/d", tokenizer_path="/t.model",
                                    nproc=8) == ('make report REPORT_SCALE=gpu REPORT_ARGS='
                                                 '"--data-path /d --tokenizer-path /t.model '
                                                 '--nproc 8"')


@pytest.mark.slow
def test_the_index_states_the_committed_studys_verdicts_with_their_intervals(ci_report):
    """notebooks/08_study.ipynb and the index read results/study/ (copied into the test's
    root as a checkout has it) without retraining: one row per decided claim."""
    root, proc = ci_report
    assert proc.returncode == 0
    if not any(STUDY.glob("*/summary.json")):
        pytest.skip(f"no committed study under {STUDY}")
    index = (root / "report" / "index.html").read_text()
    head, _, rest = index.partition("Findings at the study scale")
    study_part = rest.partition("Findings at the ci scale")[0]
    assert "<table class='golf-findings'>" in study_part
    assert "[3x3-vs-2x5/flops]" in study_part and "95% CI" in index
    seeds = {re.search(r"-s(\d+)-[0-9a-f]+$", p.parent.name).group(1)
             for p in STUDY.glob("*/summary.json")}
    assert f"{len(seeds)} paired seeds per arm." in study_part  # counted, not a stale number
    page = (root / "report" / "08_study.html").read_text()
    assert "study runs finished" in page and "Verdict rule." in page
    assert (root / "figures" / "study_claims.svg").is_file()

"""`make report` end to end at the ci scale (every notebook under papermill, the HTML render),
plus the run matrix, the launcher and the runner's failure paths."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO
from golf_core import experiments, launch, report

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
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _env(root) -> dict[str, str]:
    env = dict(os.environ, GOLF_ROOT=str(root), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.setdefault("MPLCONFIGDIR", str(root / ".mpl"))
    return env


@pytest.fixture(scope="module")
def ci_report(tmp_path_factory):
    """`python -m golf_core.report --scale ci` once, into a throwaway project root."""
    root = tmp_path_factory.mktemp("golf_root")
    proc = subprocess.run([sys.executable, "-m", "golf_core.report", "--scale", "ci"],
                          cwd=REPO, env=_env(root), capture_output=True, text=True, timeout=900)
    return root, proc


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
def test_the_html_report_embeds_every_figure_as_a_png(ci_report):
    root, proc = ci_report
    assert proc.returncode == 0
    page = (root / "report" / "report.html").read_text()
    images = re.findall(r'<img[^>]*? src="data:image/png;base64,([A-Za-z0-9+/=\s]+)"', page)
    assert base64.b64decode(images[0])[:8] == PNG_MAGIC
    embedded = {re.sub(r"\s", "", b) for b in images}
    for fig in [f for figs in FIGURES.values() for f in figs]:
        png = (root / "figures" / f"{fig}.png").read_bytes()
        assert base64.b64encode(png).decode() in embedded, f"{fig} not embedded in report.html"
    assert re.search(r"<th[^>]*>verdict</th>", page)  # the findings table rendered as HTML
    assert "print(" not in page and "nbparams.check_parameters" not in page  # code hidden


@pytest.mark.slow
def test_the_index_links_the_writeup_and_every_notebook_page(ci_report):
    root, proc = ci_report
    assert proc.returncode == 0
    index = (root / "report" / "index.html").read_text()
    links = re.findall(r'href="([^"]+)"', index)
    assert links[0] == "report.html"
    assert sorted(links[1:]) == sorted(f"{n}.html" for n in report.NOTEBOOKS
                                       if n != report.WRITEUP)
    for link in links:
        assert "data:image/png;base64," in (root / "report" / link).read_text() or \
            link == "00_prepare_data.html"


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
    for group in experiments.GROUPS:
        assert experiments.select(specs, group=group)
    flat = experiments.run_matrix("cpu", groups="flat_vs_looped")
    assert {s.label for s in flat} == {"flat", "looped-3x3", "looped-2x5"}
    assert {s.seed for s in flat} == set(experiments.SEEDS)
    with pytest.raises(ValueError, match="unknown run group"):
        experiments.run_matrix("cpu", groups="flat_vs_loop")


def test_the_train_command_uses_torchrun_for_several_processes(golf_root):
    spec = experiments.run_matrix("ci", groups="depth")[0]
    one = launch.train_command(spec, python="py")
    assert one[:3] == ["py", "-m", "golf_core.train"]
    assert one[3:7] == ["--scale", "cpu", "--preset", "rqz"]
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


def test_single_seed_verdicts_are_held_against_the_seed_spread_of_seeded_variants():
    import pandas as pd

    from golf_core.report import _verdict, seed_noise

    summary = pd.DataFrame({"label": ["flat", "flat", "loop", "loop", "one"],
                            "val_bpb": [2.120, 2.126, 2.130, 2.138, 2.2]})
    noise = seed_noise(summary)
    assert noise == pytest.approx(0.008)
    one = pd.Series([2.15994]), pd.Series([2.15995])
    assert _verdict(*one, noise).startswith("no difference beyond seed noise (+0.00001 bpb")
    far = pd.Series([2.10]), pd.Series([2.15])
    assert _verdict(*far, noise).startswith("same direction (+0.0500 bpb; 1 seed")
    assert _verdict(*far[::-1], noise).startswith("opposite direction")
    seeded = pd.Series([2.10, 2.11]), pd.Series([2.12, 2.13])
    assert _verdict(*seeded) == "reproduced"
    assert _verdict(pd.Series([2.10, 2.125]), pd.Series([2.12, 2.13])) == \
        "same direction, within seed spread"
    assert seed_noise(summary[summary["label"] == "one"]) == 0.0

"""The notebooks' setup sentences (golf_core.prose) state the counts the run matrix has, and
the hand-written prose of notebooks 03, 04 and 06 states none of its own."""

from __future__ import annotations

import contextlib
import re

import nbformat
import pytest
import torch

from conftest import FIXTURES, REPO
from golf_core import experiments, prose, settings
from golf_core.model import build_model

SCALES = ("cpu", "ci", "study")
MAX_K = 6


@contextlib.contextmanager
def _one_thread():
    """Model builds (orthogonal init: a QR per matrix) on one thread: the fastest for these
    small matrices, and never slowed by a busy machine's other cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def matrix():
    """run_matrix of each scale, once, for the groups of notebooks 03, 04 and 06 (an
    equal-FLOPs arm builds two models to count their FLOPs)."""
    with _one_thread():
        return {scale: experiments.run_matrix(scale, groups="flat_vs_looped,lanes,depth")
                for scale in SCALES}


@pytest.fixture(scope="module")
def text(matrix):
    """Each generated paragraph of each scale, once, from those specs (as the notebooks pass
    theirs); `delayed_vs_always_on` also reads the study's matrix itself."""
    return {scale: {"flat": prose.flat_vs_looped_setup(scale, specs),
                    "lanes": prose.lanes_setup(scale, specs),
                    "delay": prose.delayed_vs_always_on(scale, specs),
                    "depth": prose.test_time_depth_setup(scale, MAX_K, specs)}
            for scale, specs in matrix.items()}


def test_without_specs_the_prose_reads_the_matrix_itself(text):
    assert prose.lanes_setup("ci") == text["ci"]["lanes"]


def _by_label(specs, group):
    out = {}
    for spec in experiments.select(specs, group=group):
        out.setdefault(spec.label, []).append(spec)
    return out


def _line(paragraph: str, label: str) -> str:
    (line,) = [ln for ln in paragraph.splitlines() if ln.startswith(f"- `{label}`")]
    return line


def _states_seeds(line: str, seeds: list[int]) -> bool:
    if len(seeds) == 1:
        return f"seed {seeds[0]} only" in line
    return f"{len(seeds)} seeds (" in line and all(str(s) in line for s in seeds)


# ----------------------------------------------------------------------------- notebook 04

# PR #363's shapes (its writeup; golf_core/model/pr325.py presets): stem / core x repeats /
# tail, virtual depth; the flat control is 11 layers
SHAPES = {"pr363-3x3": ("3 stem / 3 core x 3 repeats / 3 tail blocks", 15),
          "pr363-2x5": ("2 stem / 2 core x 5 repeats / 2 tail blocks", 14),
          "pr363-flat": ("11 blocks", 11)}


@pytest.mark.parametrize("scale", SCALES)
def test_flat_vs_looped_states_each_arms_shape_steps_budget_and_seeds(scale, matrix, text):
    arms = _by_label(matrix[scale], "flat_vs_looped")
    assert set(arms) == set(SHAPES)
    for label, specs in arms.items():
        (spec,) = {s.budget: s for s in specs}.values()  # one budget per label off the gpu
        line = _line(text[scale]["flat"], label)
        shape, depth = SHAPES[label]
        assert shape in line and f"{depth} virtual layers" in line, line
        assert f"{spec.overrides['iterations']:,} steps" in line, line
        assert f"({spec.budget} budget)" in line
        assert _states_seeds(line, [s.seed for s in specs]), line
        if spec.budget == "flops":
            ref = arms[spec.match][0].overrides["iterations"]
            assert f"training FLOPs of `{spec.match}`'s {ref:,} steps" in line, line
    tokens = matrix[scale][0].overrides["train_batch_tokens"]
    assert f"{tokens:,} tokens" in text[scale]["flat"]


def test_flat_vs_looped_parameter_counts_are_those_of_the_built_models(matrix, text):
    for label, specs in _by_label(matrix["cpu"], "flat_vs_looped").items():
        s = specs[0]
        mcfg, _ = settings.resolve(scale=s.train_scale, preset=s.preset, environ={},
                                 sets=dict(s.overrides))
        with _one_thread():
            n = sum(p.numel() for p in build_model(mcfg).parameters())  # a real one, not meta
        assert f"{n:,} parameters stored" in _line(text["cpu"]["flat"], label)


# ----------------------------------------------------------------------------- notebook 03


@pytest.mark.parametrize("scale", SCALES)
def test_lanes_lists_only_the_arms_the_scale_has(scale, matrix, text):
    arms = _by_label(matrix[scale], "lanes")
    setup = text[scale]["lanes"]
    assert ("always-on" in setup) == ("pr1204-always-on" in arms)
    assert ("no always-on arm" in text[scale]["delay"]) == ("pr1204-always-on" not in arms)
    for label, specs in arms.items():
        assert _states_seeds(_line(setup, label), [s.seed for s in specs])


@pytest.mark.parametrize("scale", SCALES)
def test_lanes_states_the_recurrence_step_the_matrix_sets(scale, matrix, text):
    (spec, *_) = _by_label(matrix[scale], "lanes")["pr1204"]
    frac, iters = spec.overrides["recur_start_frac"], spec.overrides["iterations"]
    line = _line(text[scale]["lanes"], "pr1204")
    start, of = (int(x.replace(",", "")) for x in
                 re.search(r"switched on at step ([\d,]+) of ([\d,]+)", line).groups())
    assert of == iters and abs(start - frac * iters) <= 0.5, line
    assert f"Why {round(100 * frac)}%" in text[scale]["lanes"]
    assert f"recur_start_frac={frac:g}" in text[scale]["lanes"]


def test_the_48_percent_is_the_records_switch_step_over_its_steps(matrix, text):
    log = (FIXTURES / "upstream_logs" / "parallel_resid_mini_recur_seed1337.log").read_text()
    switch = int(re.search(r"recurrence:activated step:(\d+)", log).group(1))
    stopped = int(re.search(r"stopping_early: .* step:(\d+)/", log).group(1))
    assert prose.RECORD_STEPS == stopped
    (spec, *_) = _by_label(matrix["cpu"], "lanes")["pr1204"]
    assert round(switch / stopped, 2) == spec.overrides["recur_start_frac"]
    assert f"RECUR_START_STEP={switch}" in text["cpu"]["lanes"]
    assert f"{stopped:,} steps" in text["cpu"]["lanes"]


@pytest.mark.parametrize("scale", SCALES)
def test_delayed_vs_always_on_points_to_the_studys_paired_seeds(scale, matrix, text):
    n = len(_by_label(matrix["study"], "lanes")["pr1204-always-on"])
    assert f"{n} paired seeds" in text[scale]["delay"] and "08_study" in text[scale]["delay"]


# ----------------------------------------------------------------------------- notebook 06


@pytest.mark.parametrize("scale", SCALES)
def test_depth_states_the_run_its_shape_and_that_the_iteration_embeddings_are_fixed(
        scale, matrix, text):
    setup = text[scale]["depth"]
    arms = [s for s in matrix[scale] if "depth" in s.groups]
    if not arms:
        assert "trains no PR #54 run" in setup
        return
    (spec,) = arms
    assert f"`{spec.label}`: seed {spec.seed} only" in setup
    assert f"{spec.overrides['iterations']:,} steps" in setup
    # PR #54's published shape: 7 unique blocks, one block run K = 3 times (8 physical, 10
    # virtual)
    for phrase in ("7 unique blocks", "K = 3", "8 physical blocks", "10 virtual layers",
                   f"K' = 1 to {MAX_K}"):
        assert phrase in setup, phrase
    mcfg, _ = settings.resolve(scale=spec.train_scale, preset=spec.preset, environ={},
                             sets=dict(spec.overrides))
    with torch.device("meta"):
        model = build_model(mcfg)
    assert not model.iter_embeds.requires_grad  # what the code does, the prose says
    assert "fixed: `iter_embeds`" in setup and "learned" not in setup


# ----------------------------------------------------------------------------- notebooks

NOTEBOOKS = {"03_parallel_lanes": ("lanes_setup(scale, specs)",
                                   "delayed_vs_always_on(scale, specs)"),
             "04_flat_vs_looped": ("flat_vs_looped_setup(scale, specs)",),
             "06_test_time_depth": ("test_time_depth_setup(scale, max_k, [spec])",)}
# setup phrases with a count in them: these belong to golf_core.prose, not to hand-written text
_N = r"(?<![\d.])\d[\d,]*\s+"  # a whole number (not the tail of a decimal)
_KIND = r"(?:(?:physical|virtual|unique|shared|stem|core|tail|encoder|decoder|recurrent|" \
    r"refinement|attention|flat|looped|paired|training|validation|more|fewer)\s+)?"
COUNT_PHRASES = (
    _N + _KIND + r"(?:layers?|blocks?)\b",  # "11 physical layers", "5 physical blocks"
    r"\b\d+-layers?\b", r"\b\d+L\b",  # "11-layer stack", "flat 11L"
    _N + _KIND + r"(?:steps|seeds|tokens|runs|repeats|passes|iterations)\b",
    r"\bK\s*=\s*\d", r"\b\d+(?:\.\d+)?\s?%", r"\bsteps? \d",
    r"\blearned iteration embeddings?\b", r"\bhalf the (?:unique )?param",
)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_setup_counts_are_generated_not_written(name):
    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    stale = [m.group(0) for c in nb.cells if c.cell_type == "markdown"
             for pattern in COUNT_PHRASES for m in re.finditer(pattern, c.source, re.I)]
    assert not stale, f"{name}: hand-written counts {stale}; generate them (golf_core.prose)"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for call in NOTEBOOKS[name]:
        assert f"display(Markdown(prose.{call}))" in code, call

"""The explorer's widgets (ipywidgets): pickers for snapshot A and B that redraw the figure
and the tables; what notebooks/07_explore_routing.ipynb displays."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from golf_core import experiments, plots
from golf_core.explore.figure import snapshot_figure
from golf_core.explore.snapshots import (
    FAMILY_LABELS,
    FINAL,
    ExploreError,
    Snapshot,
    Source,
    changes,
    check_family,
    check_step,
    difference,
    list_sources,
    load_snapshot,
    resolve_source,
    run_source,
    snapshot_tables,
)
from golf_core.loading import parse_env_config

_CACHE_SIZE = 6  # snapshots kept by an Explorer (a scrub back and forth reloads nothing)
# B's "no second snapshot" choice: a real option value (ipywidgets shows a Dropdown whose
# value is None as blank, no selection), mapped to "no B" by `Explorer.compare_source`
NO_COMPARE = "(none)"


# ----------------------------------------------------------------------------- the widgets


def _parse_config(text: str) -> dict[str, Any]:
    """`upstream_config`: env vars as in the training command (`"RECUR_LAYERS=4,5
    PARALLEL_START_LAYER=7"`, what notebooks 02 and 03 take) or a JSON object of config
    fields / env names; bad text raises ExploreError naming the parameter."""
    if not text.strip():
        return {}
    if not text.lstrip().startswith(("{", "[")):
        try:
            return dict(parse_env_config(text))
        except ValueError as e:
            raise ExploreError(str(e)) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ExploreError(f"upstream_config: not JSON ({e.msg} at char {e.pos}): "
                           f"{text!r}") from None
    if not isinstance(value, dict):
        raise ExploreError(f"upstream_config: want KEY=VALUE items or a JSON object such as "
                           f'{{"NUM_LAYERS": 11}}, got {text!r}')
    return value


def _png_output(fig: Figure) -> dict[str, Any]:
    """A display_data bundle of the figure as PNG (what an Output widget's `outputs` hold):
    JupyterLab scales a PNG to the output's width (an SVG there is an <img> of fixed size)."""
    buf = io.BytesIO()
    with matplotlib.rc_context(plots.STYLE):
        fig.savefig(buf, format="png", dpi=110)
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"),
                     "text/plain": repr(fig)}}


def _html_output(text: str) -> dict[str, Any]:
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/html": text, "text/plain": text}}


class Explorer:
    """Pickers for snapshot A (run or file, family, step) and B (run or file, step; none by
    default) over `sources`; every change reloads (cached) and redraws `figure`, fills
    `tables` (A), `other` (B), `diff` (`difference(A, B)`) and the status line. `widget` is
    what the notebook displays. Errors in a callback show in the status line and keep the
    previous selection."""

    def __init__(self, sources: Sequence[Source], *, source: Source, step: int = FINAL,
                 family: str = "auto", config: Mapping[str, Any] | None = None,
                 compare: Source | None = None, compare_step: int = FINAL,
                 bits: int = 6) -> None:
        import ipywidgets as w

        check_step(source, step)
        if compare is not None:
            check_step(compare, compare_step, "compare_step")
        self.config, self.bits = dict(config or {}), bits
        self._cache: dict[tuple, Snapshot] = {}
        self._sources = list(dict.fromkeys([source, *([compare] if compare else []),
                                            *sources]))
        self.a: Snapshot | None = None
        self.b: Snapshot | None = None
        self.tables: dict[str, pd.DataFrame] = {}
        self.other: dict[str, pd.DataFrame] | None = None
        self.diff: dict[str, pd.DataFrame] = {}
        self.figure: Figure | None = None
        self.error = ""
        self._quiet = False  # set while a callback rewrites a slider's options
        wide = {"layout": w.Layout(width="48em"), "style": {"description_width": "7em"}}
        self.source = w.Dropdown(options=self._options(), value=source,
                                 description="A: run / file", **wide)
        self.family = w.Dropdown(options=[(v, k) for k, v in FAMILY_LABELS.items()],
                                 value=family, description="family",
                                 style={"description_width": "4em"})
        self.path = w.Text(placeholder="a run directory or weights file; Enter opens it as A",
                           description="open path", continuous_update=False, **wide)
        self.step = w.SelectionSlider(options=self._step_options(source), value=step,
                                      description="A: step", continuous_update=False, **wide)
        self.compare = w.Dropdown(options=self._compare_options(),
                                  value=compare if compare is not None else NO_COMPARE,
                                  description="B: compare", **wide)
        self.compare_step = w.SelectionSlider(
            options=self._step_options(compare) if compare else [("-", FINAL)],
            value=compare_step if compare else FINAL, description="B: step",
            continuous_update=False, disabled=compare is None, **wide)
        self.status = w.HTML()
        self.figure_out, self.tables_out = w.Output(), w.Output()
        self.widget = w.VBox([w.HBox([self.source, self.family]), self.path, self.step,
                              self.compare, self.compare_step, self.status, self.figure_out,
                              self.tables_out])
        self.update(raise_errors=True)
        self.source.observe(self._on_source, "value")
        self.compare.observe(self._on_compare, "value")
        self.path.observe(self._on_path, "value")
        for picker in (self.step, self.family, self.compare_step):
            picker.observe(self._on_change, "value")

    # ---- construction from the notebook's parameters

    @classmethod
    def from_parameters(cls, *, scale: str = "cpu", data_path: str = "",
                        tokenizer_path: str = "", run: str = "", checkpoint: str = "",
                        upstream_config: str = "", family: str = "auto", step: int = FINAL,
                        compare: str = "init", compare_step: int = FINAL,
                        bits: int = 6) -> Explorer:
        """The explorer notebook's parameters -> an Explorer showing that selection; a bad
        parameter raises ExploreError naming it."""
        check_family(family)
        config = _parse_config(upstream_config)
        if checkpoint:
            source = resolve_source(checkpoint, what="checkpoint")
            if source.kind != "file":
                source = resolve_source(str(source.path / "final_model.pt"), what="checkpoint")
        elif run:
            source = resolve_source(run, what="run")
        else:
            source = _default_run(scale, data_path, tokenizer_path)
        if step == FINAL and FINAL not in source.steps():
            step = source.steps()[-1]  # a run still training: its newest checkpoint
        if compare == "init":
            other = source if source.kind == "run" else None
            compare_step = 0 if other is not None else FINAL
        else:
            other = resolve_source(compare, what="compare") if compare else None
        if other is not None and compare_step == FINAL and FINAL not in other.steps():
            compare_step = other.steps()[-1]
        return cls(list_sources(), source=source, step=step, family=family, config=config,
                   compare=other, compare_step=compare_step, bits=bits)

    # ---- state

    def _options(self) -> list[tuple[str, Source]]:
        return [(s.label, s) for s in self._sources]

    def _compare_options(self) -> list[tuple[str, Source | str]]:
        return [(NO_COMPARE, NO_COMPARE), *self._options()]

    @property
    def compare_source(self) -> Source | None:
        """B's source, None for the "(none)" choice."""
        value = self.compare.value
        return None if value is None or value == NO_COMPARE else value

    @staticmethod
    def _step_options(source: Source) -> list[tuple[str, int]]:
        return [(source.step_label(s), s) for s in source.steps()]

    def _snapshot(self, source: Source, step: int, family: str) -> Snapshot:
        key = (str(source.path), step, family, json.dumps(self.config, sort_keys=True))
        if key not in self._cache:
            config = self.config if source.kind == "file" else None
            snap = load_snapshot(source, step, family=family, config=config)
            snapshot_tables(snap, bits=self.bits)
            while len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = snap
        return self._cache[key]

    def update(self, raise_errors: bool = False) -> None:
        """Load the selection (cached), redraw the figure and the tables."""
        family = self.family.value
        try:
            a = self._snapshot(self.source.value, self.step.value, family)
            other = self.compare_source
            b = (self._snapshot(other, self.compare_step.value,
                                family if other.kind == "file" else "auto")
                 if other is not None else None)
        except (ExploreError, FileNotFoundError, ValueError, RuntimeError, KeyError) as e:
            if raise_errors:
                raise
            return self._fail(f"{type(e).__name__}: {e}")
        self.error = ""
        self.a, self.b = a, b
        self.tables, self.other = a.tables, b.tables if b else None
        self.diff = difference(a.tables, b.tables) if b else {}
        self.figure = snapshot_figure(a.tables, self.other, title=a.name,
                                      other_title=b.name if b else "")
        self.status.value = html.escape(self.summary_text()).replace("\n", "<br>")
        self.figure_out.outputs = (_png_output(self.figure),)
        shown = changes(self.diff) if b else self.tables.get("params", pd.DataFrame())
        caption = "<b>largest changes A - B</b>" if b else "<b>parameters of A</b>"
        left_out = shown.attrs.get("left_out", []) if b else []
        if left_out:  # ratios over a ~0 reference: named, not ranked
            caption += html.escape(
                f" (not ranked, a ratio over a ~0 reference: "
                f"{', '.join(sorted({r['table'] + ' ' + r['quantity'] for r in left_out}))})")
        self.tables_out.outputs = (_html_output(
            f"<p>{caption}</p>" + shown.to_html(index=False, float_format="%.4g")),)

    def summary_text(self) -> str:
        """A line on A (and one on B, after a Markdown line break): name, family, variant,
        unique parameters, virtual depth."""
        def one(tag: str, snap: Snapshot) -> str:
            p = snap.tables.get("params", pd.DataFrame())
            row = p.iloc[0].to_dict() if len(p) else {}
            fam = getattr(snap.config, "family", "?")
            bits = [f"{tag}: {snap.name}", f"family {fam}"]
            if "variant" in row:
                bits.append(f"variant {row['variant']}")
            if "unique" in row:
                bits.append(f"{int(row['unique']):,} unique params")
            if "effective_depth" in row:
                bits.append(f"virtual depth {int(row['effective_depth'])}")
            return ", ".join(bits)

        if self.a is None:
            return ""
        return one("A", self.a) + (f"  \n{one('B', self.b)}" if self.b else "")

    def changes(self, top: int = 12) -> pd.DataFrame:
        """The largest A - B differences (empty without B)."""
        return changes(self.diff, top=top)

    # ---- callbacks

    def _select(self, picker: Any, source: Source) -> None:
        if source not in self._sources:
            self._sources.append(source)
            # new options reset a Dropdown to its first choice: keep both selections
            keep = self.source.value, self.compare.value
            self._quiet = True
            try:
                self.source.options = self._options()
                self.compare.options = self._compare_options()
                self.source.value, self.compare.value = keep
            finally:
                self._quiet = False
        picker.value = source

    def _on_change(self, _change: dict) -> None:
        if not self._quiet:
            self.update()

    def _set_steps(self, slider: Any, source: Source | None) -> None:
        """Give `slider` the steps of `source`, keeping its step where the source has it."""
        steps = self._step_options(source) if source is not None else [("-", FINAL)]
        values = [v for _, v in steps]
        self._quiet = True
        try:
            keep = slider.value if slider.value in values else values[-1]
            slider.options = steps
            slider.value = keep
        finally:
            self._quiet = False

    def _on_source(self, change: dict) -> None:
        if self._quiet:
            return
        self._set_steps(self.step, change["new"])
        self.update()

    def _on_compare(self, change: dict) -> None:
        if self._quiet:
            return
        if change["new"] is None:  # no selection (set from code): show the "(none)" choice
            self.compare.value = NO_COMPARE  # which calls back here
            return
        other = self.compare_source
        self.compare_step.disabled = other is None
        self._set_steps(self.compare_step, other)
        self.update()

    def _on_path(self, change: dict) -> None:
        if not change["new"].strip():
            return
        try:
            source = resolve_source(change["new"].strip(), what="open path")
        except (ExploreError, FileNotFoundError, ValueError) as e:
            return self._fail(str(e))
        self._select(self.source, source)

    def _fail(self, message: str) -> None:
        """Show the first line of an error (a state-dict mismatch lists every key) in the
        status line; the figure and tables keep the last good selection."""
        lines = message.strip().splitlines() or [""]
        self.error = lines[0][:300] + (" ..." if len(lines) > 1 or len(lines[0]) > 300 else "")
        self.status.value = f"<b style='color:#b00'>could not open</b>: {html.escape(self.error)}"


def _default_run(scale: str, data_path: str, tokenizer_path: str) -> Source:
    """The scale's run that is in both the `lanes` and `routing` groups of the report's matrix
    (PR #1204's shape: skips, resid_mix with a repeat, lanes, checkpoints kept): what the
    notebook opens without `run` or `checkpoint`."""
    specs = experiments.run_matrix(scale, data_path=data_path, tokenizer_path=tokenizer_path)
    both = [s for s in specs if {"lanes", "routing"} <= set(s.groups)]
    spec = (both or experiments.select(specs, group="routing"))[0]
    if not (spec.run_dir / "config.json").is_file():
        raise ExploreError(f"run: empty, and the {scale} scale's {spec.label} run "
                           f"({spec.run_dir}) has not been trained; pass run= or checkpoint= "
                           "(or execute notebooks/01_train.ipynb)")
    return run_source(spec.run_dir)

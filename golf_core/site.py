"""The HTML report: one page per executed notebook, the index, one stylesheet for all.

`golf_core.report` executes the notebooks and calls these. Every page is rendered with
nbconvert's HTMLExporter from the papermill-executed copy (never re-executed: each number is
the recorded one) through the template in golf_core/templates/golf_report/:
JupyterLab's look, nothing fetched from a CDN (the pages are read offline), a bar linking the
index, the shared `style.css` (golf_core/templates/report.css, copied next to the pages),
figures as inline SVG markup (`golf_core.plots.inline_svg`: crisp at any zoom, ids prefixed
per output so figures on one page cannot clash, hover titles on per-seed curves) and widget
views as a note (papermill saves no widget state), every "PR #N" of the prose a link to the
pull request, intervals kept on one line, and no directory of the machine (paths under the
project root or the repository shown relative to it). The index states the question, the scale
and hardware, the findings (one line each, linked to the notebook behind it), each
notebook's wall time and the command that reproduces the report; the first three are read
from the executed writeup, not recomputed.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from golf_core.paths import project_root
from golf_core.plots import inline_svg

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE = "golf_report"
STYLESHEET = "style.css"  # the copy next to the pages; the source is templates/report.css
TIMES_FILE = "wall_times.json"  # per-notebook wall seconds, beside the executed copies
QUESTION = (
    "When does re-using depth (U-Net skips, looped blocks, mini depth recurrence, parallel "
    "residual lanes) buy a better model per byte in the tiny GPTs of OpenAI's parameter-golf "
    "challenge, and what do the learned routing parameters say about why?"
)
WIDGET_NOTE = ("Interactive pickers (ipywidgets) go here when the notebook is open in "
               "JupyterLab (jupyter lab notebooks/); below, the selection it opened with.")


def _write(out: Path, text: str) -> Path:
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out


def copy_stylesheet(report_dir: Path) -> Path:
    """report_dir/style.css from the package's templates/report.css."""
    out = report_dir / STYLESHEET
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.copyfile(TEMPLATE_DIR / "report.css", tmp)
    os.replace(tmp, out)
    return out


def inline_figures(nb: Any) -> Any:
    """Each SVG output becomes inline markup with ids prefixed per cell and output; its PNG
    twin (when a kernel wrote both) is dropped. Changes and returns `nb`."""
    for i, cell in enumerate(nb.cells):
        for j, out in enumerate(cell.get("outputs", [])):
            data = out.get("data", {})
            if "image/svg+xml" in data:
                svg = data["image/svg+xml"]
                svg = "".join(svg) if isinstance(svg, list) else svg
                data["image/svg+xml"] = inline_svg(svg, f"c{i}o{j}")
                data.pop("image/png", None)
    return nb


PR_URL = "https://github.com/openai/parameter-golf/pull/{}"
# what pr_links and page_markdown leave alone: code (fenced or inline), links (Markdown or
# HTML), spans already kept on one line, HTML tags
_NOT_PROSE = re.compile(r"(```.*?```|`[^`\n]*`|\[[^\]\n]*\]\([^)\s]*\)|<a\b.*?</a>|"
                        r"<span class=.golf-nowrap.>.*?</span>|<[^>\n]*>)", re.S)


_NUMBER = r"[+\-\u2212]?\d[\d.,]*(?:e[+\-]?\d+)?"
_INTERVAL = re.compile(rf"\[({_NUMBER}), ({_NUMBER})\](?!\()")


def _in_prose(markdown: str, change: Any) -> str:
    """`change` applied to the prose parts of `markdown` only (not `_NOT_PROSE`)."""
    parts = _NOT_PROSE.split(markdown)
    return "".join(change(p) if i % 2 == 0 else p for i, p in enumerate(parts))


def pr_links(markdown: str) -> str:
    """Markdown with each "PR #N" of its prose a link to pull request N of
    openai/parameter-golf (the sources the report cites); code and links are left alone."""
    return _in_prose(markdown, lambda text: re.sub(
        r"\bPR #(\d+)\b", lambda m: f"[PR #{m.group(1)}]({PR_URL.format(m.group(1))})", text))


def page_markdown(markdown: str) -> str:
    """Markdown as a page shows it: PRs linked (`pr_links`), each interval "[low, high]" of
    its prose in a span that keeps it on one line."""
    return pr_links(_in_prose(markdown, lambda text: _INTERVAL.sub(
        r'<span class="golf-nowrap">[\1, \2]</span>', text)))


def markdown_for_pages(nb: Any) -> Any:
    """A page's Markdown (cells and Markdown outputs) through `page_markdown`: PRs linked,
    intervals unbroken. Changes and returns `nb`."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = page_markdown(cell.source)
        for out in cell.get("outputs", []):
            md = out.get("data", {}).get("text/markdown")
            if md is not None:
                out["data"]["text/markdown"] = page_markdown("".join(md) if isinstance(md, list)
                                                             else md)
    return nb


def _roots() -> list[str]:
    """The directories a rendered path is shown relative to: the project root (GOLF_ROOT or
    the repository) and the repository, as prefixes ending in a separator, longest first."""
    repo = Path(__file__).resolve().parent.parent
    roots = {str(r) for r in (project_root(), repo, project_root().resolve())}
    return sorted((r.rstrip(os.sep) + os.sep for r in roots), key=len, reverse=True)


def relative_paths(nb: Any, roots: list[str] | None = None) -> Any:
    """The machine's directories out of a page: absolute paths under the project root or the
    repository become relative to it (`<repo>/tests/golden/x.log` -> `tests/golden/x.log`)
    in the parameters papermill injected and in every output. Changes and returns `nb`."""
    roots = _roots() if roots is None else roots

    def rel(value: Any) -> Any:
        if isinstance(value, list):
            return [rel(v) for v in value]
        if not isinstance(value, str):
            return value
        for root in roots:
            value = value.replace(root, "")
        return value

    for cell in nb.cells:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            cell.source = rel(cell.source)
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = rel(out["text"])
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/") or mime == "image/svg+xml":
                    out["data"][mime] = rel(value)
    return nb


def completed(executed: Path) -> bool:
    """Whether an executed copy ran to the end (no error output: papermill keeps the copy of
    a failed run with its error banner)."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    return not any(o.get("output_type") == "error" for c in nb.cells
                   for o in c.get("outputs", []))


def render_html(executed: Path, out: Path, *, title: str = "", scale: str = "",
                hide_code: bool = False) -> Path:
    """An executed notebook -> `out`, one page (figures inline, style.css beside it)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = markdown_for_pages(relative_paths(inline_figures(nbformat.read(executed, as_version=4))))
    nb.metadata["title"] = f"{title} - golf-recurrence" if title else executed.stem
    exporter = HTMLExporter(template_name=TEMPLATE, extra_template_basedirs=[str(TEMPLATE_DIR)],
                            embed_images=True, exclude_input=hide_code,
                            exclude_input_prompt=hide_code, exclude_output_prompt=hide_code)
    golf = {"title": title or executed.stem, "scale": scale, "writeup": hide_code,
            "stylesheet": STYLESHEET, "widget_note": WIDGET_NOTE}
    body, _ = exporter.from_notebook_node(nb, resources={"golf": golf})
    return _write(out, body)


# ----------------------------------------------------------------------------- wall times


def load_times(executed_dir: Path) -> dict[str, float]:
    path = executed_dir / TIMES_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def save_times(executed_dir: Path, times: Mapping[str, float]) -> dict[str, float]:
    """Merge `times` into the wall times kept beside the executed copies (a `--only` run
    keeps the others'); returns them all."""
    merged = {**load_times(executed_dir), **{k: round(v, 2) for k, v in times.items()}}
    _write(executed_dir / TIMES_FILE, json.dumps(merged, indent=2) + "\n")
    return merged


# ----------------------------------------------------------------------------- the writeup


def _cell_outputs(nb: Any, needle: str) -> list[Any]:
    for cell in nb.cells:
        if cell.cell_type == "code" and needle in cell.source:
            return list(cell.get("outputs", []))
    return []


def _text(output: Any, mime: str) -> str:
    value = output.get("data", {}).get(mime, "")
    return "".join(value) if isinstance(value, list) else value


def markdown_rows(text: str) -> list[dict[str, str]]:
    """The rows of a Markdown pipe table (`golf_core.verdicts.markdown_table`'s output), as
    plain text (a cell's inline HTML tags dropped; Markdown links kept)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return []

    def cells(line: str) -> list[str]:  # inline HTML (a no-wrap span) dropped, its text kept
        return [re.sub(r"<[^>]+>", "", c).strip().replace("\\|", "|")
                for c in re.split(r"(?<!\\)\|", line)[1:-1]]

    header = cells(lines[0])
    return [dict(zip(header, cells(line))) for line in lines[2:]]


def writeup_sections(executed: Path | None) -> dict[str, Any]:
    """What the index quotes from the executed writeup: `scale` (HTML of its scale
    paragraph), `hardware` (the hardware table's HTML) and `findings` (rows of the findings
    table); empty where the writeup has not run."""
    out: dict[str, Any] = {"scale": "", "hardware": "", "findings": [], "study": [],
                           "answer": "", "answer_figure": ""}
    if executed is None or not executed.is_file():
        return out
    import nbformat
    from nbconvert.filters import markdown2html

    nb = nbformat.read(executed, as_version=4)
    for o in _cell_outputs(nb, "verdicts.scale_markdown("):
        if "text/markdown" in o.get("data", {}):
            out["scale"] = markdown2html(page_markdown(_text(o, "text/markdown")))
        elif "text/html" in o.get("data", {}):
            out["hardware"] = _text(o, "text/html")
    for o in _cell_outputs(nb, "writeup.abstract_markdown("):
        if "text/markdown" in o.get("data", {}) and not out["answer"]:
            out["answer"] = markdown2html(page_markdown(_text(o, "text/markdown")))
        elif "image/svg+xml" in o.get("data", {}) and not out["answer_figure"]:
            out["answer_figure"] = _text(o, "image/svg+xml")
    for key, needle in (("findings", "verdicts.findings("), ("study", "writeup.with_regime(")):
        for o in _cell_outputs(nb, needle):
            if "text/markdown" in o.get("data", {}):
                out[key] = markdown_rows(_text(o, "text/markdown"))
    return out


# ----------------------------------------------------------------------------- the index


def _verdict_class(verdict: str) -> str:
    v = verdict.lower()
    if v.startswith(("reproduced", "equivalent")):
        return "golf-verdict-yes"
    if v.startswith(("not reproduced", "opposite")):
        return "golf-verdict-no"
    return "golf-verdict-maybe" if v.startswith(("inconclusive", "insufficient", "partly",
                                                 "descriptive")) else ""


def _links(escaped: str) -> str:
    """Markdown links [text](https://...) in already escaped text as HTML anchors (the
    findings' sources cite their pull requests)."""
    return re.sub(r"\[([^\]]+)\]\((https?://[^)\s]+)\)", r"<a href='\2'>\1</a>", escaped)


def _interval(row: Mapping[str, str]) -> str:
    """The row's "[low, high]" (markdown_table's "95% CI" column, or ci_low/ci_high)."""
    if row.get("95% CI"):
        return row["95% CI"]
    return f"[{row['ci_low']}, {row['ci_high']}]" if row.get("ci_low") else ""


def _findings_html(rows: list[dict[str, str]], pages: Mapping[str, Path], *,
                   what: str = "") -> str:
    if not rows:
        if what:
            return f"<p class='golf-muted'>No finding yet from {html.escape(what)}.</p>"
        return ("<p class='golf-muted'>The findings table comes from the writeup "
                "(notebooks/99_report.ipynb), which has not run at this scale yet.</p>")
    body = []
    for r in rows:
        e = {k: html.escape(v) for k, v in r.items()}
        page = pages.get(r.get("notebook", ""))
        claim = f"<a href='{html.escape(page.name)}'>{e['claim']}</a>" if page else e["claim"]
        verdict = e.get("verdict", "")
        interval = ""
        if e.get("diff"):  # no interval from fewer than two paired seeds
            ci = html.escape(_interval(r))
            ci = f"<br><span class='golf-nowrap'>{ci}</span>" if ci else ""
            interval = (f"<span class='golf-nowrap'>{e['diff']}</span>{ci}<br><span "
                        f"class='golf-muted'>n={e.get('n', '')}, "
                        f"&delta;={e.get('delta', '')}</span>")
        body.append(f"<tr><td>{claim}</td><td>{_links(e.get('source', ''))}</td>"
                    f"<td>{e.get('published', '')}</td><td>{e.get('ours', '')}</td>"
                    f"<td>{interval}</td>"
                    f"<td class='golf-verdict {_verdict_class(r.get('verdict', ''))}'>"
                    f"{verdict}</td></tr>")
    return ("<div class='golf-table-scroll'><table class='golf-findings'><thead><tr>"
            "<th>claim (links to its notebook)</th><th>source</th><th>published</th>"
            "<th>ours</th><th>a &minus; b [95% CI]</th><th>verdict</th></tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _notebooks_html(pages: Mapping[str, Path], times: Mapping[str, float],
                    titles: Mapping[str, str]) -> str:
    rows = "".join(
        f"<tr><td><a href='{html.escape(p.name)}'>{html.escape(titles.get(n, n))}</a></td>"
        f"<td><code>notebooks/{html.escape(n)}.ipynb</code></td>"
        f"<td class='num'>{times[n]:.0f} s</td></tr>" if n in times else
        f"<tr><td><a href='{html.escape(p.name)}'>{html.escape(titles.get(n, n))}</a></td>"
        f"<td><code>notebooks/{html.escape(n)}.ipynb</code></td><td class='num'>-</td></tr>"
        for n, p in pages.items())
    total = sum(times.get(n, 0.0) for n in pages)
    return ("<div class='golf-table-scroll'><table class='golf-notebooks'><thead><tr>"
            "<th>page</th><th>notebook</th><th>wall time</th></tr></thead>"
            f"<tbody>{rows}</tbody><tfoot><tr><td>all</td><td></td>"
            f"<td class='num'>{total / 60:.1f} min</td></tr></tfoot></table></div>")


def _seeds_phrase(rows: list[dict[str, str]]) -> str:
    """ "7 paired seeds per arm. " from the study rows' n (the most any claim has), or ""."""
    ns = [int(r["n"]) for r in rows if r.get("n", "").strip().isdigit()]
    return f"{max(ns)} paired seeds per arm. " if ns else ""


def write_index(pages: Mapping[str, Path], times: Mapping[str, float], scale: str, out: Path,
                *, titles: Mapping[str, str] | None = None, writeup: Path | None = None,
                command: str = "") -> Path:
    """index.html: the question, scale and hardware, the findings (one line each, linked to
    its notebook), a table of the pages with each notebook's wall time, and `command` (what
    reproduces it). `pages`: notebook name -> its HTML page, the writeup's first."""
    titles = titles or {}
    quoted = writeup_sections(writeup)
    first = next(iter(pages.values()), None)
    lead = (f"<p>Read <a href='{html.escape(first.name)}'>the writeup</a> first: which "
            "published findings reproduce at this scale, with every figure. Each page is "
            "rendered from the papermill-executed notebook, so every number on it is the "
            "recorded one.</p>" if first is not None else "")
    hardware = (f"<div class='golf-table-scroll'>{quoted['hardware']}</div>"
                if quoted["hardware"] else "")
    scale_html = (quoted["scale"] + hardware) or (
        "<p class='golf-muted'>(from the writeup, which has not run at this scale)</p>")
    answer_html = (f"<h2>The answer</h2>\n{quoted['answer']}\n"
                   f"<figure class='golf-figure'>{quoted['answer_figure']}</figure>"
                   if quoted["answer"] else "")
    cmd = command or f"make report REPORT_SCALE={scale}"
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>golf-recurrence: depth recurrence in parameter-golf GPTs ({html.escape(scale)})</title>
<link rel="stylesheet" href="{STYLESHEET}"></head>
<body class="golf-index">
<nav class="golf-nav"><a href="index.html">golf-recurrence report</a><span
class="golf-nav-scale">{html.escape(scale)} scale</span></nav>
<main>
<h1>Depth recurrence in parameter-golf GPTs</h1>
<p class="golf-lede">{html.escape(QUESTION)}</p>
{lead}
{answer_html}
<h2>Scale and hardware</h2>
{scale_html}
<h2>Findings at the study scale</h2>
<p>{_seeds_phrase(quoted["study"])}Equal training FLOPs where the published claim was made at equal
wallclock, every run's small outputs committed under <code>results/study/</code>
(<code>make study</code> retrains them); the page <em>The study</em> has the figures.</p>
{_findings_html(quoted["study"], pages, what="the study (results/study/)")}
<h2>Findings at the {html.escape(scale)} scale (this run)</h2>
{_findings_html(quoted["findings"], pages)}
<h2>Notebooks</h2>
{_notebooks_html(pages, times, titles)}
<h2>Reproduce</h2>
<pre><code>{html.escape(cmd)}</code></pre>
<p>Runs that already finished are reused; executed notebooks land in
<code>runs/notebooks/{html.escape(scale)}/</code>, figures (PNG + SVG, each with a sidecar naming
its runs and commit) in <code>figures/</code>. Every notebook also opens in JupyterLab
(<code>jupyter lab notebooks/</code>); the routing explorer there has pickers for any run,
checkpoint or upstream file.</p>
</main>
</body></html>
"""
    return _write(out, body)

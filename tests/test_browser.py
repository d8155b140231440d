"""The rendered report in a real browser: headless Chromium (Debian's `chromium` package;
.ci/run installs it with apt when it is missing) opens every page of a ci-scale report at a
laptop's width (1280 px) and a phone's (390 px), driven over the Chrome DevTools protocol with
websocket-client (already installed: jupyter server depends on it; nothing is downloaded at
test time). A page fails on a JavaScript exception, a console error, a request that fails or
leaves the machine (no CDN: the report is read offline), an image or inline SVG figure that
does not render, a table or figure wider than the page or cut off by its container (one that
scrolls sideways inside its own box is fine), a page that scrolls sideways, an error shown in
its outputs or prose ("Traceback", "Error", "ValueError", "Exception": the code of a notebook
page is not read), an absolute path of the machine anywhere in its text (/work/, /root/,
/tmp/, /home/, /Users/) and an internal reference a reader cannot follow (DESIGN.md, STYLE.md,
"(issue 12)"). A full-page screenshot of each page at each width is saved under the report
(`report/screenshots/<page>-<width>.png`, and in $GOLF_SCREENSHOT_DIR when set) for a person
to look at. Without Chromium the tests skip, saying why."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

# headless, and nothing that reaches out on its own (without the background-networking flags
# Chromium's own update/sync connections are refused and logged as errors)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio")
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:")
SHOT_WIDTH, SHOT_MAX_HEIGHT = 1280, 16000  # Chromium captures at most ~16k px in one shot
WIDTHS = (1280, 390)  # a laptop, a phone (CSS px); every report page is checked at both
# what a page reports back after its load event
PAGE_STATE = r"""(() => {
  const box = e => e.getBoundingClientRect();
  const svgs = [...document.querySelectorAll('svg')];
  const vw = document.documentElement.clientWidth;
  const name = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
    (typeof e.className === 'string' && e.className.trim() ?
     '.' + e.className.trim().split(/\s+/).slice(0, 3).join('.') : '');
  const where = e => { const c = e.closest('.jp-Cell');
    const h = [...document.querySelectorAll('h1, h2, h3')].filter(
      x => x.compareDocumentPosition(e) & Node.DOCUMENT_POSITION_FOLLOWING).pop();
    return (c && c.id ? ' in cell ' + c.id : '') + (h ? ' under "' + h.textContent.trim()
      .slice(0, 60) + '"' : ''); };
  // a table or figure fits when it lies inside the page, or inside a box that scrolls
  // sideways and itself fits; a box with overflow hidden/clip that is narrower cuts it off
  const overflow = [];
  const wide = [...document.querySelectorAll('table, svg, img, figure, .golf-figure')]
    .filter(e => !(e.tagName.toLowerCase() === 'svg' && e.parentElement.closest('svg')));
  for (const el of wide) {
    let r = box(el), inner = el, problem = null;
    if (el.checkVisibility ? !el.checkVisibility() : !r.width && !r.height)
      continue;  // not rendered (in a closed <details>)
    for (let a = el.parentElement; a && a !== document.documentElement; a = a.parentElement) {
      const ox = getComputedStyle(a).overflowX;
      if (ox === 'visible') continue;
      const ar = box(a);
      if (ox === 'auto' || ox === 'scroll') { r = ar; inner = a; continue; }
      if (r.right > ar.right + 1 || r.left < ar.left - 1) {
        problem = `${name(el)} cut off by ${name(a)} (${Math.round(r.right - ar.right)} px)`;
        break;
      }
    }
    if (!problem && (r.right > vw + 1 || r.left < -1))
      problem = `${name(el)} overflows the page: ${name(inner)} spans ` +
                `${Math.round(r.left)}-${Math.round(r.right)} px of ${vw}`;
    if (problem) overflow.push(problem + where(el));
  }
  // what the reader reads: outputs and prose (not the code of a notebook page)
  const read = [...document.querySelectorAll(
    '.jp-OutputArea-output, .jp-MarkdownCell, body.golf-index main')];
  const shown = read.map(e => e.innerText).join('\n');
  const errors = [...new Set(shown.match(
    /\bTraceback\b|\b[A-Z]\w*(?:Error|Exception)\b|\bError\b|\bException\b/g) || [])];
  // every text node, shown or not (hover titles, a closed <details>), but no style or script
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
    acceptNode: n => n.parentElement.closest('style, script') ? NodeFilter.FILTER_REJECT
                                                              : NodeFilter.FILTER_ACCEPT});
  const texts = [];
  while (walker.nextNode()) texts.push(walker.currentNode.nodeValue);
  const abs_paths = [...new Set(texts.join('\n').match(
    /(?<![\w.~-])\/(?:work|root|tmp|home|Users)\/[^\s'"<>)\]]*/g) || [])];
  // the project's internal files and tracker numbers: a reader has neither
  const internal = [...new Set(texts.join('\n').match(
    /\b(?:DESIGN|STYLE|CONTRACTS|DEVELOPERS)\.md\b|\(issue \d+\)|\bissue \d+'s\b/g) || [])];
  return {
    title: document.title,
    width: vw,
    height: document.documentElement.scrollHeight,
    scroll_width: document.documentElement.scrollWidth,
    broken_images: [...document.images].filter(i => !i.complete || i.naturalWidth === 0)
                                        .map(i => i.src.slice(0, 100)),
    svgs: svgs.length,
    blank_svgs: svgs.filter(s => box(s).width < 50 || box(s).height < 30).length,
    tooltips: document.querySelectorAll('svg g > title').length,
    nav: (() => { const n = document.querySelector('nav.golf-nav');
                  return n ? getComputedStyle(n).position : null; })(),
    links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
    overflow: overflow,
    errors: errors,
    error_lines: shown.split('\n').filter(l => errors.some(w => l.includes(w)))
                      .slice(0, 3).map(l => l.slice(0, 160)),
    abs_paths: abs_paths,
    internal: internal,
    tables: document.querySelectorAll('table').length,
    details: [...document.querySelectorAll('details')].map(
      d => [d.open, (d.querySelector('summary') || {}).textContent]),
  };
})()"""


def chromium_path() -> str | None:
    """$GOLF_CHROMIUM, else `chromium` on PATH, else Debian's /usr/bin/chromium."""
    found = os.environ.get("GOLF_CHROMIUM") or shutil.which("chromium")
    return found or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page_problems(state: dict) -> list[str]:
    """What PAGE_STATE saw wrong with a page's content at its width."""
    w = state["width"]
    out = [f"image not rendered: {s}" for s in state["broken_images"]]
    out += [f"at {w} px: {o}" for o in state["overflow"]]
    if state["scroll_width"] > w + 1:
        out.append(f"at {w} px: the page scrolls sideways ({state['scroll_width']} px wide)")
    out += [f"shows an error ({', '.join(state['errors'])}): {line}"
            for line in state["error_lines"] or [""]] if state["errors"] else []
    out += [f"absolute path in the page: {p}" for p in state["abs_paths"]]
    out += [f"internal reference in the page: {p}" for p in state["internal"]]
    return out


class Browser:
    """One headless Chromium with one page, spoken to over the DevTools protocol."""

    def __init__(self, executable: str, profile: Path, timeout: float = 60.0) -> None:
        import websocket

        self.timeout, self.port, self.width = timeout, _free_port(), SHOT_WIDTH
        self.log = profile.with_suffix(".log")
        self.proc = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={profile}",
             f"--remote-debugging-port={self.port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))  # noqa: SIM115
        page = self._first_page()
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout,
                                              suppress_origin=True)
        self._id, self.events = 0, []
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable")
        # lay pages out at a laptop's width; screenshots then capture the whole height
        self.set_width(SHOT_WIDTH)

    def set_width(self, width: int) -> None:
        """Lay pages out `width` CSS px wide: a laptop's window, or below 600 a phone's
        (mobile emulation: the pages' viewport meta tag applies)."""
        self.width = width
        self.call("Emulation.setDeviceMetricsOverride", width=width,
                  height=900 if width >= 600 else 844, deviceScaleFactor=1,
                  mobile=width < 600)

    def _first_page(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited ({self.proc.returncode}): "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            try:
                url = f"http://127.0.0.1:{self.port}/json/list"
                with urllib.request.urlopen(url, timeout=2) as r:
                    pages = [t for t in json.load(r) if t["type"] == "page"]
                if pages:
                    return pages[0]
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"chromium gave no DevTools page in {self.timeout:.0f} s")

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout  # events alone must not keep us waiting
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)
        raise TimeoutError(f"no reply to {method} within {self.timeout:.0f} s")

    def _wait_for(self, event: str) -> None:
        if any(e.get("method") == event for e in self.events):
            return
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            self.events.append(msg)
            if msg.get("method") == event:
                return
        raise TimeoutError(f"no {event} within {self.timeout:.0f} s")

    def visit(self, url: str, screenshot: Path | None = None) -> tuple[list[str], dict]:
        """Load `url`; returns (problems, PAGE_STATE) and writes a full-page screenshot."""
        self.events = []
        self.call("Page.navigate", url=url)
        self._wait_for("Page.loadEventFired")
        self.call("Runtime.evaluate", expression="new Promise(r => setTimeout(r, 300))",
                  awaitPromise=True)  # let late errors and layout settle
        state = self.call("Runtime.evaluate", expression=PAGE_STATE,
                          returnByValue=True)["result"]["value"]
        problems = self._problems() + page_problems(state)
        if screenshot is not None:
            clip = {"x": 0, "y": 0, "width": self.width, "scale": 1,
                    "height": min(int(state["height"]), SHOT_MAX_HEIGHT)}
            shot = self.call("Page.captureScreenshot", format="png", clip=clip,
                             captureBeyondViewport=True)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        return problems, state

    def _problems(self) -> list[str]:  # from the DevTools events of the last visit
        out = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                text = d.get("exception", {}).get("description") or d.get("text")
                out.append(f"javascript error: {text} ({d.get('url', '')}:{d.get('lineNumber')})")
            elif method == "Runtime.consoleAPICalled" and p.get("type") == "error":
                out.append("console error: " + " ".join(str(a.get("value", a.get(
                    "description", ""))) for a in p.get("args", [])))
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log error: {p['entry']['text']} {p['entry'].get('url', '')}")
            elif method == "Network.requestWillBeSent":
                url = p["request"]["url"]
                if not url.startswith(LOCAL_SCHEMES):
                    out.append(f"request leaves the machine: {url[:120]}")
            elif method == "Network.loadingFailed" and not p.get("canceled"):
                out.append(f"request failed: {p.get('errorText')} ({p.get('type')})")
        return out

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = chromium_path()
    if exe is None:
        pytest.skip("Chromium not found (no $GOLF_CHROMIUM, no `chromium` on PATH, no "
                    "/usr/bin/chromium): install Debian's chromium package (.ci/run does "
                    "it with apt-get when it can)")
    b = Browser(exe, tmp_path_factory.mktemp("chromium") / "profile")
    yield b
    b.close()


# ----------------------------------------------------------------------------- the checker


def test_the_checker_catches_a_script_error_a_missing_image_and_a_remote_request(
        browser, tmp_path):
    browser.set_width(SHOT_WIDTH)
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><h1>bad</h1><img src='missing.png'>"
                   "<script>undefinedFunction();</script>"
                   "<script src='https://cdn.example.invalid/lib.js'></script></body></html>")
    problems, state = browser.visit(bad.as_uri(), tmp_path / "bad.png")
    text = "\n".join(problems)
    assert "javascript error: ReferenceError: undefinedFunction is not defined" in text
    assert "image not rendered: file://" in text and "missing.png" in text
    assert "request leaves the machine: https://cdn.example.invalid/lib.js" in text
    assert (tmp_path / "bad.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    good = tmp_path / "good.html"
    good.write_text("<!DOCTYPE html><html><body><svg width='200' height='100'><rect "
                    "width='200' height='100'/></svg></body></html>")
    problems, state = browser.visit(good.as_uri())
    assert problems == [] and state["svgs"] == 1 and state["blank_svgs"] == 0


WIDE = "<table><tr>" + "<td>0.0001708&nbsp;[-0.0002836,&nbsp;0.0006251]</td>" * 8 + "</tr></table>"
HEAD = ("<!DOCTYPE html><html><head><meta name='viewport' content='width=device-width, "
        "initial-scale=1'></head><body class='golf-index'><main>")


@pytest.mark.parametrize("width", WIDTHS)
def test_the_checker_catches_overflow_errors_and_absolute_paths(browser, tmp_path, width):
    browser.set_width(width)
    bad = tmp_path / "bad.html"
    bad.write_text(HEAD + f"<h2>findings</h2>{WIDE}"
                   "<div style='overflow: hidden; width: 300px'><svg width='600' height='100'>"
                   "<rect width='600' height='100'/></svg></div>"
                   "<pre>Traceback (most recent call last):\nValueError: no runs</pre>"
                   "<p>data in /work/main/data/sotu and /tmp/pytest-1/root</p>"
                   "<p>as DESIGN.md section 3 says (issue 12)</p></main></html>")
    problems, state = browser.visit(bad.as_uri(), tmp_path / f"bad-{width}.png")
    text = "\n".join(problems)
    assert f"at {width} px: table overflows the page" in text and 'under "findings"' in text
    assert f"at {width} px: the page scrolls sideways" in text
    assert "svg cut off by div" in text
    assert "shows an error (Traceback, ValueError): Traceback (most recent call last):" in text
    assert "absolute path in the page: /work/main/data/sotu" in text
    assert "absolute path in the page: /tmp/pytest-1/root" in text
    assert "internal reference in the page: DESIGN.md" in text
    assert "internal reference in the page: (issue 12)" in text

    good = tmp_path / "good.html"  # the same table in a box that scrolls: fine
    good.write_text(HEAD + f"<div style='overflow-x: auto'>{WIDE}</div><p>quantization error "
                    "grows; see results/study/ and https://github.com/openai/parameter-golf/"
                    "pull/363</p><details><summary>provenance</summary>" + WIDE +
                    "</details></main></html>")
    problems, state = browser.visit(good.as_uri(), tmp_path / f"good-{width}.png")
    assert problems == [] and state["width"] == width, problems
    assert state["details"] == [[False, "provenance"]]


# ----------------------------------------------------------------------------- the report


@pytest.mark.slow
def test_every_report_page_renders_in_chromium_without_errors(browser, ci_report):
    root, proc = ci_report
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report_dir = root / "report"
    shots = report_dir / "screenshots"
    pages = sorted(report_dir.glob("*.html"), key=lambda p: (p.name != "index.html", p.name))
    assert len(pages) >= 10
    failures, states = {}, {}
    for width in WIDTHS:
        browser.set_width(width)
        for page in pages:
            problems, state = browser.visit(page.as_uri(), shots / f"{page.stem}-{width}.png")
            states[page.name, width] = state
            if problems:
                failures[f"{page.name} at {width} px"] = problems
    assert not failures, json.dumps(failures, indent=1)[:6000]
    for (name, width), state in states.items():
        assert state["width"] == width, (name, width, state["width"])
        assert state["nav"] == "sticky", f"{name}: style.css not applied"
        missing = [h for h in state["links"] if not h.startswith(("http", "#"))
                   and not (report_dir / h).is_file()]
        assert not missing, f"{name} links to missing pages {missing}"
        if name not in ("index.html", "00_prepare_data.html"):
            assert state["svgs"] > 0 and state["blank_svgs"] == 0, (name, state)
    writeup = states["report.html", WIDTHS[0]]
    assert writeup["tooltips"] > 0  # hover names the seed of a curve
    # each figure's runs and commit sit in a collapsed provenance block
    assert writeup["details"] and all(d == [False, "provenance"] for d in writeup["details"])
    assert set(states["index.html", WIDTHS[0]]["links"]) >= {"report.html",
                                                             "07_explore_routing.html"}
    for shot in shots.glob("*.png"):
        assert shot.stat().st_size > 10_000, f"{shot} looks blank"
    keep = os.environ.get("GOLF_SCREENSHOT_DIR")
    if keep:
        shutil.copytree(shots, Path(keep), dirs_exist_ok=True)
    print(f"screenshots of {len(pages)} pages at {WIDTHS} px: {shots}")

"""The HTML report (helpers.report), checked in a real browser: headless Chromium loads
``index.html`` and every notebook page from disk, and the test checks that every link and
image resolves and that no image is broken.

Chromium is Debian's ``chromium`` package (``./kit.sh test`` installs it where it can). Under
CI (``CI=true``) it is required: a missing browser fails these tests. On a machine where it
cannot be installed they are skipped, with a reason that says how to install it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import nbformat
import pytest

from helpers import main_job
from helpers.report import (
    ReportError,
    embed_local_images,
    find_figures,
    find_tables,
    render_report,
)

CHROMIUM = Path("/usr/bin/chromium")
INSTALL_HINT = (
    "Headless Chromium is needed for the report test and is not installed at /usr/bin/chromium. "
    "Install Debian's package: `apt-get update && apt-get install -y chromium` (as root; in CI "
    "add it to the set-up script)."
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # hermetic: the notebook pages name CDN scripts (MathJax, require.js); resolve nothing
    "--host-resolver-rules=MAP * ~NOTFOUND",
]
# Appended to a copy of a page: after every image has loaded or failed, list the broken ones
# in a <pre> that --dump-dom then shows.
CHECKER = """
<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !i.complete || i.naturalWidth === 0)
                       .map(i => i.getAttribute("src").slice(0, 120));
  const out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = JSON.stringify({images: images.length, broken: broken,
                                    scripts: document.scripts.length});
  document.body.appendChild(out);
});
</script>
"""
MARKER = "Tavern marker 7f3a"  # text in a notebook cell that must reach the rendered page


def require_chromium() -> None:
    """Fail under CI, skip elsewhere, when headless Chromium is not installed."""
    if CHROMIUM.exists():
        return
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(INSTALL_HINT, pytrace=False)
    pytest.skip(INSTALL_HINT)


def chromium(*args: str, profile: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    require_chromium()
    result = subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"chromium failed ({result.returncode}):\n{result.stderr[-2000:]}"
    )
    return result


def image_check(page: Path, profile: Path) -> dict:
    """Load a copy of ``page`` (same folder, so relative paths resolve the same) with the
    checker script; returns ``{"images": n, "broken": [...], "scripts": n}`` and the DOM."""
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECKER + "</body>"))
    try:
        dom = chromium(
            "--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), profile=profile
        ).stdout
    finally:
        probe.unlink()
    found = re.search(r'<pre id="image-check">(.*?)</pre>', dom, re.S)
    assert found, (
        f"the checker did not run in {page.name}; the page may not have loaded:\n{dom[:500]}"
    )
    return json.loads(html.unescape(found.group(1))) | {"dom": dom}


class Links(HTMLParser):
    """Every ``<a href>`` and ``<img src>`` of a page, and the text of its table cells."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            self.hrefs.append(values["href"] or "")
        elif tag == "img" and values.get("src"):
            self.srcs.append(values["src"] or "")
        elif tag == "script":
            self.scripts += 1


def png(color: str) -> bytes:
    fig, ax = plt.subplots(figsize=(4, 3), dpi=80)
    ax.plot([0, 1, 2], [0, 1, 0], color=color)
    ax.set_title(color)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def executed_notebook(path: Path, title: str, *, failed: bool = False) -> None:
    """A notebook as papermill leaves it: a markdown cell that shows a figure from disk, a code
    cell with printed output and an inline PNG, and (``failed``) an error output."""
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell(f"# {title}\n\n![drift](../figures/drift.png)"))
    outputs = [
        nbformat.v4.new_output("stream", name="stdout", text=f"{MARKER} <b>not bold</b>\n"),
        nbformat.v4.new_output(
            "display_data", data={"image/png": base64.b64encode(png("tab:blue")).decode()}
        ),
    ]
    if failed:
        outputs.append(nbformat.v4.new_output("error", ename="ValueError", evalue="boom",
                                              traceback=["ValueError: boom"]))  # fmt: skip
    nb.cells.append(nbformat.v4.new_code_cell("print('hello')", execution_count=1, outputs=outputs))
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A run folder like the main job leaves it, with its report rendered."""
    run = tmp_path_factory.mktemp("report") / "run 1"  # a space: links must be URL-quoted
    (run / "notebooks").mkdir(parents=True)
    (run / "figures" / "sweep runs").mkdir(parents=True)
    (run / "loops" / "x").mkdir(parents=True)
    executed_notebook(run / "notebooks" / "01_first.ipynb", "First notebook")
    executed_notebook(run / "notebooks" / "02_second.ipynb", "Second & <last>", failed=True)
    (run / "figures" / "drift.png").write_bytes(png("tab:orange"))
    (run / "figures" / "sweep runs" / "umap a&b.png").write_bytes(png("tab:green"))
    (run / "loops" / "x" / "ignored.png").write_bytes(png("tab:red"))  # ledgers are not shown
    (run / "experiments_by_policy.csv").write_text(
        'policy,human_fraction,dispersion,note\naccumulate,1.0,0.712345,"<script>alert(1)</script>"\n'
        'replace,0.0,0.5,"a & b"\n',
        encoding="utf-8",
    )
    (run / "experiments.csv").write_text("policy,seed,raw\nreplace,1,0.987654\n", encoding="utf-8")
    summary = [
        {"notebook": "01_first.ipynb", "ok": True, "seconds": 3.2, "output": "x"},
        {"notebook": "02_second.ipynb", "ok": False, "seconds": 1.0, "output": "y"},
    ]
    (run / "main_job.json").write_text(json.dumps(summary))
    yield render_report(run)


def test_report_files_and_links_resolve_on_disk(report: Path) -> None:
    run = report.parent
    assert report.name == "index.html"
    assert sorted(p.name for p in (run / "report").glob("*.html")) == [
        "01_first.html",
        "02_second.html",
    ]
    page = Links()
    page.feed(report.read_text(encoding="utf-8"))
    assert page.scripts == 0  # the CSV's <script> is text, not an element
    text = report.read_text(encoding="utf-8")
    for link in page.hrefs + page.srcs:
        if link.startswith("#"):  # an anchor on the page itself
            assert f'id="{link[1:]}"' in text, f"no anchor for {link}"
            continue
        parsed = urlparse(link)
        assert not parsed.scheme and not link.startswith("/"), f"not a relative link: {link}"
        assert (run / unquote(parsed.path)).is_file(), f"broken link {link}"
    linked = {unquote(h) for h in page.hrefs}
    assert {"report/01_first.html", "report/02_second.html"} <= linked
    assert {"notebooks/01_first.ipynb", "experiments.csv", "experiments_by_policy.csv"} <= linked
    assert sorted(unquote(s) for s in page.srcs) == [
        "figures/drift.png",
        "figures/sweep runs/umap a&b.png",
    ]
    text = report.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "a &amp; b" in text
    assert "0.7123" in text  # numbers to 4 significant digits
    assert '<span class="failed">failed</span>' in text and "3 s" in text
    assert "0.9877" not in text  # the raw table is linked, not dumped into the page
    assert find_tables(run) == [run / "experiments.csv", run / "experiments_by_policy.csv"]
    assert [p.name for p in find_figures(run)] == ["drift.png", "umap a&b.png"]


def test_report_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    profile = tmp_path / "profile"
    check = image_check(report, profile)
    assert check["images"] == 2 and check["broken"] == [], check["broken"]
    assert check["scripts"] == 1  # only the checker: nothing from the data became a script
    assert "First notebook" not in check["dom"]  # index only links the notebooks
    assert "Second &amp; &lt;last&gt;" not in check["dom"]
    for name in ("01_first.html", "02_second.html"):
        page = image_check(report.parent / "report" / name, profile)
        # the inline output PNG and the markdown image from ../figures, both embedded
        assert page["images"] == 2 and page["broken"] == [], (name, page["broken"])
        assert MARKER in page["dom"] and "&lt;b&gt;not bold&lt;/b&gt;" in page["dom"]
        assert "data:image/png;base64," in page["dom"]
    assert "boom" in image_check(report.parent / "report" / "02_second.html", profile)["dom"]
    shot = tmp_path / "index.png"
    chromium("--window-size=1200,2000", f"--screenshot={shot}", report.as_uri(), profile=profile)
    assert shot.is_file() and shot.stat().st_size > 20_000
    height, width = plt.imread(shot).shape[:2]
    assert (width, height) == (1200, 2000)


LAYOUT_PROBE = """
<script>
window.addEventListener("load", () => {
  const first = document.querySelector("figure img");
  const out = document.createElement("pre");
  out.id = "layout-check";
  out.textContent = JSON.stringify({
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    innerHeight: window.innerHeight,
    firstFigureTop: first ? first.getBoundingClientRect().top : null,
    firstFigure: first ? first.getAttribute("alt") : null,
    headings: Array.from(document.querySelectorAll("h2")).map(h => h.textContent),
  });
  document.body.appendChild(out);
});
</script>
"""


def real_size_figure(title: str) -> bytes:
    """A PNG the size helpers/plots.py writes (10 x 4.5 in at 120 dpi)."""
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=120)
    ax.plot(range(8), [0.3, 0.32, 0.29, 0.35, 0.31, 0.36, 0.3, 0.33])
    ax.set_title(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def test_the_report_leads_with_figures_and_fits_a_1280px_window(tmp_path: Path) -> None:
    """What a reader meets first: the key figures above the fold, the summary table, no
    horizontal scrolling at 1280 px even with a sweep table 160 rows long and 40 columns wide."""
    run = tmp_path / "run"
    (run / "notebooks").mkdir(parents=True)
    (run / "figures").mkdir()
    executed_notebook(run / "notebooks" / "01_first.ipynb", "First")
    for stem in ("umap_trajectories", "drift_per_iteration", "dispersion_per_iteration",
                 "lexical_diversity_per_iteration"):  # fmt: skip
        (run / "figures" / f"{stem}.png").write_bytes(real_size_figure(stem))
    columns = [f"metric_with_a_long_name_{i}" for i in range(40)]
    rows = [",".join(f"{(r * 7 + c) % 97 / 97:.6f}" for c in range(40)) for r in range(160)]
    wide = "\n".join([",".join(columns), *rows]) + "\n"
    (run / "experiments.csv").write_text(wide, encoding="utf-8")
    (run / "experiments_by_policy.csv").write_text(wide, encoding="utf-8")
    index = render_report(run)
    probe = index.with_name("probe.html")
    probe.write_text(index.read_text(encoding="utf-8").replace("</body>", LAYOUT_PROBE + "</body>"))
    dom = chromium("--window-size=1280,800", "--virtual-time-budget=10000", "--dump-dom",
                   probe.as_uri(), profile=tmp_path / "profile").stdout  # fmt: skip
    found = re.search(r'<pre id="layout-check">(.*?)</pre>', dom, re.S)
    assert found, dom[:500]
    layout = json.loads(html.unescape(found.group(1)))
    assert layout["innerWidth"] == 1280
    assert layout["scrollWidth"] <= 1280, f"the page scrolls sideways: {layout}"
    assert layout["firstFigure"] == "drift per iteration"  # key figures in their order
    assert 0 < layout["firstFigureTop"] < layout["innerHeight"], f"below the fold: {layout}"
    assert layout["headings"][:3] == ["What the run found", "Experiment summary", "Notebooks"]
    text = index.read_text(encoding="utf-8")
    assert "First 40 of 160 rows" in text  # the summary is capped; the raw table only linked
    assert text.count("<table") == 2  # the summary and the notebooks, not the raw sweep
    shot = tmp_path / "index.png"
    chromium("--window-size=1280,800", f"--screenshot={shot}", index.as_uri(),
             profile=tmp_path / "profile")  # fmt: skip
    assert plt.imread(shot).shape[:2] == (800, 1280)


def test_notebook_pages_are_self_contained(report: Path) -> None:
    for page in (report.parent / "report").glob("*.html"):
        sources = Links()
        sources.feed(page.read_text(encoding="utf-8"))
        assert sources.srcs and all(s.startswith("data:image/") for s in sources.srcs), page.name


def test_main_job_renders_the_report_and_prints_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    (run / "notebooks").mkdir(parents=True)
    executed_notebook(run / "notebooks" / "01_only.ipynb", "Only")
    assert main_job.write_report(run)
    out = capsys.readouterr().out
    assert f"{run / 'index.html'}" in out and (run / "report" / "01_only.html").is_file()
    assert not main_job.write_report(tmp_path / "missing")
    assert "could not be rendered" in capsys.readouterr().err
    with pytest.raises(ReportError, match="not a folder"):
        render_report(tmp_path / "missing")
    with pytest.raises(ReportError, match="outside the run folder"):
        render_report(run, figures=[tmp_path / "elsewhere.png"])


def test_a_damaged_notebook_is_listed_not_fatal(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "notebooks").mkdir(parents=True)
    executed_notebook(run / "notebooks" / "01_good.ipynb", "Good")
    (run / "notebooks" / "02_bad.ipynb").write_text("{ not json", encoding="utf-8")
    index = render_report(run)
    text = index.read_text(encoding="utf-8")
    assert "02_bad.ipynb" in text and "could not be converted" in text
    assert (run / "report" / "01_good.html").is_file()
    assert "No figure" in text


def test_only_local_images_inside_the_allowed_roots_are_embedded(tmp_path: Path) -> None:
    root = tmp_path / "run"
    (root / "notebooks").mkdir(parents=True)
    (root / "figures").mkdir()
    (root / "figures" / "a b.png").write_bytes(png("tab:blue"))
    (tmp_path / "outside.png").write_bytes(png("tab:red"))
    (root / "notes.txt").write_text("not an image")
    page = (
        '<p><img alt="x" src="../figures/a%20b.png"></p>'
        '<img src="../../outside.png"><img src="../notes.txt">'
        '<img src="https://example.org/x.png"><img src="data:image/png;base64,AAAA">'
        '<img src="missing.png">'
    )
    out = embed_local_images(page, [root / "notebooks"], [root])
    srcs = re.findall(r'src="([^"]*)"', out)
    assert srcs[0].startswith("data:image/png;base64,")
    assert base64.b64decode(srcs[0].split(",", 1)[1]) == (root / "figures" / "a b.png").read_bytes()
    assert srcs[1:] == [
        "../../outside.png",  # outside the run folder: never pulled into the page
        "../notes.txt",  # not an image
        "https://example.org/x.png",
        "data:image/png;base64,AAAA",
        "missing.png",
    ]


def assert_report_resolves(index: Path, profile: Path) -> Links:
    """Every link and image of a real report resolves on disk, and Chromium shows every image
    of the index and of each notebook page (none broken). Returns the index's links."""
    run = index.parent
    page = Links()
    page.feed(index.read_text(encoding="utf-8"))
    for link in page.hrefs + page.srcs:
        if link.startswith("#"):  # an anchor on the page itself
            continue
        parsed = urlparse(link)
        assert not parsed.scheme and (run / unquote(parsed.path)).is_file(), f"broken {link}"
    check = image_check(index, profile)
    assert check["images"] == len(page.srcs) and check["broken"] == [], check["broken"]
    for notebook_page in (run / "report").glob("*.html"):
        inner = image_check(notebook_page, profile)
        assert inner["broken"] == [], (notebook_page.name, inner["broken"])
    return page


def test_the_real_main_job_leaves_a_report_that_chromium_shows(tmp_path: Path) -> None:
    """The README's main command itself (one cheap notebook), not a hand-made run folder."""
    env = {**os.environ, "GFL_RUN_DIR": str(tmp_path / "runs")}
    result = subprocess.run(
        [sys.executable, "-m", "helpers.main_job", "--only", "02", "--run-id", "real"],
        capture_output=True, text=True, env=env, timeout=600, cwd=main_job.REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    index = tmp_path / "runs" / "real" / "index.html"
    assert "Report (" in result.stdout and str(index) in result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("Done in ") and f"report: {index}" in last, last
    page = assert_report_resolves(index, tmp_path / "profile")
    assert "report/02_schema_and_collection.html" in {unquote(h) for h in page.hrefs}


def test_the_main_job_closes_with_time_slowest_notebook_and_report() -> None:
    results = [
        main_job.NotebookResult("01_a.ipynb", Path("a"), 9.4, True),
        main_job.NotebookResult("08_b.ipynb", Path("b"), 167.2, True),
        main_job.NotebookResult("03_c.ipynb", Path("c"), 37.0, True),
    ]
    line = main_job.closing_line(results, Path("runs/x/index.html"), 385.0, True)
    assert line == (
        "Done in 6 min 25 s: 3 notebooks ok; longest 08_b (167 s); report: runs/x/index.html"
    )
    results[2].ok = False
    line = main_job.closing_line(results, Path("runs/x/index.html"), 42.0, False)
    assert line.startswith("Done in 42 s: 1 of 3 notebooks FAILED; longest 08_b (167 s)")
    assert line.endswith("no report (see the error above)")

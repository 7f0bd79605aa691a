"""The HTML report of a main-job run: every executed notebook as a self-contained HTML page,
and an ``index.html`` that links them and shows the figures and the experiment table.

Why a static report: a run folder of ``.ipynb`` files needs Jupyter to read; an HTML folder
opens in any browser, from disk or from a CI artifact, with nothing to install.

Layout, inside the run folder::

    index.html              key figures and summary tables first, then the notebooks, the other
                            figures and links to every table (relative paths only)
    report/<notebook>.html  each executed notebook (nbconvert, images embedded)
    notebooks/*.ipynb       the executed notebooks (written by helpers.main_job)
    main_job.json           status and time of each notebook (written by helpers.main_job)
    figures/*.png           ... and any other PNG under the run folder is shown
    experiments.csv         ... and any other CSV whose name contains "experiment"

Use: ``render_report(run_dir)`` returns the path of ``index.html``; ``helpers.main_job`` calls
it after the notebooks ran. ``python -m helpers.report RUN_DIR`` renders an existing folder again.

Every name, caption and table cell is HTML-escaped, and every link is a relative, URL-quoted
path, so the folder can be moved or zipped and still works.
"""

from __future__ import annotations

import base64
import html
import json
import mimetypes
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from helpers.settings import REPO_ROOT

NOTEBOOKS_SUBDIR = "notebooks"
NOTEBOOK_SOURCE_DIR = REPO_ROOT / "notebooks"  # where the course notebooks are written
HTML_SUBDIR = "report"
INDEX_FILE = "index.html"
SUMMARY_FILE = "main_job.json"
# Folders never searched for figures or tables: the report itself, Milvus data, loop ledgers.
SKIP_DIRS = frozenset({HTML_SUBDIR, "loops", "milvus", "milvus_data", ".ipynb_checkpoints"})
MAX_TABLE_ROWS = 200

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } .meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f3f3f3; }
.ok { color: #007a4d; font-weight: bold; } .failed { color: #b3261e; font-weight: bold; }
figure { margin: 0 0 2rem; } figure img { max-width: 100%; height: auto;
         border: 1px solid #ddd; } figcaption { color: #444; font-size: 0.9rem; }
.table-wrap { overflow-x: auto; max-width: 100%; }
.key { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 1rem; }
.key figure { margin: 0; }
code { overflow-wrap: anywhere; }
"""


class ReportError(RuntimeError):
    """The report cannot be rendered; the message says which folder or file and why."""


@dataclass
class NotebookPage:
    """One notebook of the run and what became of it."""

    name: str
    source: Path
    html: Path | None
    ok: bool | None  # None: the run did not record a status (no main_job.json entry)
    seconds: float | None
    error: str = ""


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a URL: POSIX separators, each segment quoted."""
    return "/".join(quote(part) for part in path.relative_to(root).parts)


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _skipped(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts[:-1]
    return any(p in SKIP_DIRS or p.startswith(".") for p in parts)


def find_figures(run_dir: Path) -> list[Path]:
    """Every PNG under ``run_dir`` (not in the report folder, Milvus data or hidden folders):
    ``figures/`` first, then by folder; inside a folder in the order they were written, which
    is the order of the notebooks that made them."""
    found = [p for p in run_dir.rglob("*.png") if p.is_file() and not _skipped(p, run_dir)]
    return sorted(
        found,
        key=lambda p: (
            p.parent != run_dir / "figures",
            str(p.parent),
            p.stat().st_mtime_ns,
            p.name,
        ),
    )


def find_tables(run_dir: Path) -> list[Path]:
    """Every CSV under ``run_dir`` whose name contains ``experiment`` (e.g. ``experiments.csv``
    written by notebook 08), in path order."""
    found = [
        p
        for p in run_dir.rglob("*.csv")
        if p.is_file() and "experiment" in p.name.lower() and not _skipped(p, run_dir)
    ]
    return sorted(found)


def _statuses(run_dir: Path) -> dict[str, dict[str, object]]:
    path = run_dir / SUMMARY_FILE
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ReportError(f"{path} is not valid JSON ({exc}); re-run the main job.") from None
    return {str(e.get("notebook")): e for e in entries if isinstance(e, dict)}


def convert_notebook(
    notebook: Path,
    out_dir: Path,
    *,
    image_dirs: Sequence[Path] = (),
    allowed_roots: Sequence[Path] = (),
) -> Path:
    """``notebook`` as one self-contained HTML page in ``out_dir``; returns its path.

    Output images are data URIs already. nbconvert's ``embed_images`` embeds the images a
    markdown cell links from disk, but only below the notebook's own folder (a guard against a
    notebook pulling in any file); ``../figures/x.png`` would stay a link, and break once the
    page is in ``report/``. So any ``<img>`` still pointing at a local file is embedded here,
    looked up relative to the notebook's folder and then each of ``image_dirs`` (the course's
    ``notebooks/`` folder, where the notebook was written), and only when the file lies under
    one of ``allowed_roots`` and is an image.

    nbconvert's lab template still loads MathJax and require.js from a CDN: offline, the page
    reads fine but TeX stays raw.
    """
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(embed_images=True)
    body, _resources = exporter.from_filename(str(notebook))
    body = embed_local_images(body, [notebook.parent, *image_dirs], allowed_roots)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{notebook.stem}.html"
    target.write_text(body, encoding="utf-8")
    return target


_IMG_SRC = re.compile(r"""(<img\b[^>]*?\bsrc=)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)


def embed_local_images(
    page: str, search_dirs: Sequence[Path], allowed_roots: Sequence[Path]
) -> str:
    """``page`` with every ``<img src>`` that names a local image file (relative path, found in
    one of ``search_dirs``, inside one of ``allowed_roots``) replaced by a data URI. Links to
    the web, data URIs and files not found or not allowed are left as they are."""
    roots = [r.resolve() for r in allowed_roots]

    def replace(match: re.Match[str]) -> str:
        src = html.unescape(match.group(3))
        parsed = urlsplit(src)
        if parsed.scheme or parsed.netloc or not parsed.path or src.startswith("/"):
            return match.group(0)
        for folder in search_dirs:
            path = (folder / unquote(parsed.path)).resolve()
            mime, _ = mimetypes.guess_type(path.name)
            allowed = any(path.is_relative_to(root) for root in roots)
            if allowed and path.is_file() and mime and mime.startswith("image/"):
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                return f"{match.group(1)}{match.group(2)}data:{mime};base64,{data}{match.group(2)}"
        return match.group(0)

    return _IMG_SRC.sub(replace, page)


def convert_notebooks(run_dir: Path, html_dir: Path) -> list[NotebookPage]:
    """Convert every ``notebooks/*.ipynb`` of the run. A notebook that nbconvert cannot read is
    listed with the error instead of stopping the report (the others are still worth seeing)."""
    statuses = _statuses(run_dir)
    pages = []
    for source in sorted((run_dir / NOTEBOOKS_SUBDIR).glob("*.ipynb")):
        status = statuses.get(source.name, {})
        ok = status.get("ok")
        seconds = status.get("seconds")
        page = NotebookPage(
            name=source.name,
            source=source,
            html=None,
            ok=bool(ok) if ok is not None else None,
            seconds=float(seconds) if isinstance(seconds, int | float) else None,
        )
        try:
            page.html = convert_notebook(
                source,
                html_dir,
                image_dirs=[NOTEBOOK_SOURCE_DIR],
                allowed_roots=[run_dir, REPO_ROOT],
            )
        except Exception as exc:  # nbformat/nbconvert raise many types for a damaged file
            page.error = f"could not be converted: {type(exc).__name__}: {exc}"
        pages.append(page)
    return pages


def _caption(path: Path) -> str:
    return path.stem.replace("_", " ").replace("-", " ")


def table_html(path: Path, max_rows: int = MAX_TABLE_ROWS) -> str:
    """A CSV as an escaped HTML table (at most ``max_rows`` rows; numbers to 4 digits)."""
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except Exception as exc:  # empty or malformed file: say so in the report
        return f"<p>{_esc(path.name)} could not be read: {_esc(exc)}</p>"
    note = ""
    if len(frame) > max_rows:
        note = f"<p>First {max_rows} of {len(frame)} rows.</p>"
        frame = frame.head(max_rows)
    table = frame.to_html(
        index=False, escape=True, na_rep="", border=0, float_format=lambda v: f"{v:.4g}"
    )
    return f'<div class="table-wrap">{table}</div>{note}'


# The figures a reader wants first, in this order (file stems written by helpers/plots.py).
KEY_FIGURES = (
    "drift_per_iteration",
    "dispersion_per_iteration",
    "retrieval_per_iteration",
    "source_share_per_iteration",
    "umap_trajectories",
)
# Tables shown inline (small summaries); every other table is linked, not dumped.
SUMMARY_TABLE_MARKERS = ("by_policy", "summary", "verdict", "checks")
SUMMARY_MAX_ROWS = 40


def key_figures(figures: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Split ``figures`` into the key figures (in :data:`KEY_FIGURES` order, the first file of
    each name) and the rest (in their given order)."""
    key: list[Path] = []
    for stem in KEY_FIGURES:
        match = next((f for f in figures if f.stem == stem and f not in key), None)
        if match is not None:
            key.append(match)
    return key, [f for f in figures if f not in key]


def is_summary_table(path: Path) -> bool:
    """A table small enough to show inline: a per-policy summary or the checks of a sweep."""
    name = path.stem.lower()
    return any(marker in name for marker in SUMMARY_TABLE_MARKERS)


def _figure_html(path: Path, run_dir: Path) -> str:
    src = _esc(_rel(path, run_dir))
    caption = _esc(_caption(path))
    return (
        f'<figure><a href="{src}"><img src="{src}" alt="{caption}"></a>'
        f"<figcaption>{caption} <small>({_esc(_rel_text(path, run_dir))})</small>"
        "</figcaption></figure>"
    )


def _rows(path: Path) -> str:
    try:
        with path.open(encoding="utf-8") as handle:
            return f"{max(sum(1 for _ in handle) - 1, 0)} rows"
    except OSError:
        return "unreadable"


def _notebook_table(pages: Sequence[NotebookPage], run_dir: Path) -> list[str]:
    if not pages:
        return [f"<p>No executed notebook in <code>{_esc(NOTEBOOKS_SUBDIR)}/</code>.</p>"]
    out = ["<table><tr><th>notebook</th><th>status</th><th>time</th><th>source</th></tr>"]
    for page in pages:
        link = (
            f'<a href="{_esc(_rel(page.html, run_dir))}">{_esc(page.name)}</a>'
            if page.html is not None
            else _esc(page.name)
        )
        if page.ok is None:
            status = "<span>not recorded</span>"
        else:
            status = (
                '<span class="ok">ok</span>' if page.ok else '<span class="failed">failed</span>'
            )
        if page.error:
            status += f"<br><small>{_esc(page.error)}</small>"
        seconds = f"{page.seconds:.0f} s" if page.seconds is not None else ""
        source = f'<a href="{_esc(_rel(page.source, run_dir))}">.ipynb</a>'
        out.append(
            f"<tr><td>{link}</td><td>{status}</td><td>{_esc(seconds)}</td><td>{source}</td></tr>"
        )
    out.append("</table>")
    return out


def index_html(
    run_dir: Path,
    pages: Sequence[NotebookPage],
    figures: Sequence[Path],
    tables: Sequence[Path],
    *,
    title: str,
) -> str:
    """The text of ``index.html`` (every value escaped, every link relative to ``run_dir``).

    What the run found comes first: the key figures, then the experiment's summary tables;
    then the notebooks; then every other figure; raw tables are linked in a collapsed list, so
    the page stays readable (and within a 1280-px window) however large the sweep was.
    """
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    key, other_figures = key_figures(figures)
    summaries = [t for t in tables if is_summary_table(t)]
    raw = [t for t in tables if t not in summaries]
    failed = sum(1 for p in pages if p.ok is False)
    status = f"{len(pages)} notebooks, {failed} failed" if pages else "no notebook"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f'<p class="meta">{_esc(status)}; report written {_esc(now)}. '
        '<a href="#notebooks">Notebooks</a> · <a href="#figures">all figures</a>'
        + (' · <a href="#tables">tables</a>' if tables else "")
        + "</p>",
    ]
    if key:
        out.append('<h2 id="key-figures">What the run found</h2><div class="key">')
        out.extend(_figure_html(path, run_dir) for path in key)
        out.append("</div>")
    if summaries:
        out.append("<h2>Experiment summary</h2>")
        for path in summaries:
            out.append(
                f'<h3><a href="{_esc(_rel(path, run_dir))}">{_esc(_rel_text(path, run_dir))}</a></h3>'
            )
            out.append(table_html(path, max_rows=SUMMARY_MAX_ROWS))
    out.append('<h2 id="notebooks">Notebooks</h2>')
    out.extend(_notebook_table(pages, run_dir))
    out.append('<h2 id="figures">Figures</h2>')
    if not figures:
        out.append("<p>No figure (PNG) in the run folder.</p>")
    elif not other_figures:
        out.append("<p>Every figure of the run is shown above.</p>")
    out.extend(_figure_html(path, run_dir) for path in other_figures)
    if tables:
        out.append('<h2 id="tables">Tables</h2>')
        out.append(f"<details><summary>{len(tables)} CSV files of the run</summary><ul>")
        for path in [*summaries, *raw]:
            out.append(
                f'<li><a href="{_esc(_rel(path, run_dir))}">{_esc(_rel_text(path, run_dir))}</a>'
                f" <small>({_esc(_rows(path))})</small></li>"
            )
        out.append("</ul></details>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _rel_text(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def render_report(
    run_dir: Path | str,
    *,
    title: str | None = None,
    figures: Sequence[Path | str] | None = None,
    tables: Sequence[Path | str] | None = None,
) -> Path:
    """Convert the run's executed notebooks to HTML and write ``index.html``; returns its path.

    ``figures`` / ``tables`` default to :func:`find_figures` / :func:`find_tables`; given
    explicitly, they must lie inside ``run_dir`` (links stay relative, so the folder can move).
    """
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir} is not a folder; pass the run folder the main job printed.")
    figure_paths = find_figures(run_dir) if figures is None else _inside(figures, run_dir)
    table_paths = find_tables(run_dir) if tables is None else _inside(tables, run_dir)
    pages = convert_notebooks(run_dir, run_dir / HTML_SUBDIR)
    index = run_dir / INDEX_FILE
    index.write_text(
        index_html(run_dir, pages, figure_paths, table_paths, title=title or f"Run {run_dir.name}"),
        encoding="utf-8",
    )
    return index


def _inside(paths: Sequence[Path | str], root: Path) -> list[Path]:
    out = []
    for p in paths:
        path = Path(p).resolve()
        if not path.is_relative_to(root):
            raise ReportError(f"{path} is outside the run folder {root}; copy it in first.")
        if not path.is_file():
            raise ReportError(f"{path} does not exist.")
        out.append(path)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m helpers.report",
        description="Render index.html and the notebook pages of a main-job run folder.",
    )
    parser.add_argument("run_dir", help="the run folder (it holds notebooks/*.ipynb)")
    args = parser.parse_args(argv)
    try:
        index = render_report(args.run_dir)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Report: {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

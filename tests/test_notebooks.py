"""Execute the course notebooks with papermill, with small parameters, and check what they show.

(`pytest --nbval-lax` separately re-runs the committed notebooks and compares checked cells.)
"""

from __future__ import annotations

import json
import shutil
from urllib.parse import unquote

import nbformat
import pandas as pd
import pytest

from helpers.main_job import NOTEBOOK_DIR, parameters_for
from helpers.milvus_server import server_processes
from helpers.report import render_report
from tests.notebook_runner import all_text, execute, has_image
from tests.test_report import assert_report_resolves

pytestmark = pytest.mark.slow

NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_has_one_parameters_cell_and_the_kit_kernel(name: str) -> None:
    nb = json.loads((NOTEBOOK_DIR / name).read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{name}: papermill needs exactly one cell tagged 'parameters'"
    # Every assignment must be one papermill can read (it silently skips lines it cannot parse).
    from papermill.translators import PythonTranslator

    assigned = [
        line.split(":")[0].split("=")[0].strip()
        for line in "".join(tagged[0]["source"]).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    cell = nbformat.v4.new_code_cell("".join(tagged[0]["source"]))
    inferred = [p.name for p in PythonTranslator.inspect(cell)]
    assert inferred == assigned, (
        f"{name}: papermill cannot read some parameters: {set(assigned) - set(inferred)}"
    )
    assert nb["metadata"]["kernelspec"]["name"] == "gfl-kit"
    # the main job's quick and full values must name parameters this notebook has
    for full in (False, True):
        unknown = set(parameters_for(name, full)) - set(inferred)
        assert not unknown, f"helpers/main_job.py gives {name} unknown parameters {unknown}"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(
        c.get("outputs") for c in code[1:] if "NBVAL_CHECK_OUTPUT" in "".join(c["source"])
    ), f"{name}: a checked cell was committed without outputs"


@pytest.mark.parametrize("backend", ["lite", "lite-server", "milvus"])
def test_01_starts_and_stops_every_local_backend(backend: str, tmp_path) -> None:
    nb = execute("01_start_embedded_milvus.ipynb", tmp_path, BACKEND=backend)
    text = all_text(nb)
    assert f"backend: {backend}" in text
    expected = "v2.3.5-lite" if backend == "milvus" else "milvus_lite-3.2.2"
    assert f"server version: {expected}" in text
    assert "server version: v2.3.5-lite" in text  # the article's default_server, second way
    assert "servers this notebook started that are still running: []" in text
    assert not _servers_under(tmp_path), "a server started by the notebook outlived it"


def _servers_under(folder, wait_s: float = 10.0) -> list[dict]:
    """Server processes whose data lives under ``folder`` (so other sessions' servers on this
    machine do not count), after giving a killed one up to ``wait_s`` to disappear."""
    import time

    import psutil

    deadline = time.monotonic() + wait_s
    while True:
        mine = []
        for proc in server_processes():
            try:
                where = (
                    " ".join(psutil.Process(proc["pid"]).cmdline())
                    + " "
                    + psutil.Process(proc["pid"]).cwd()
                )
            except psutil.Error:
                continue
            if str(folder) in where:
                mine.append(proc)
        if not mine or time.monotonic() > deadline:
            return mine
        time.sleep(0.5)


def test_02_creates_the_article_schema(tmp_path) -> None:
    nb = execute("02_schema_and_collection.ipynb", tmp_path)
    text = all_text(nb)
    assert "vector_embedding FLOAT_VECTOR" in text and "384" in text
    assert "created again: False" in text
    assert "name is empty" in text and "has 2 dimensions" in text and "limit is 255 bytes" in text


def test_03_builds_hnsw_and_measures_it(tmp_path) -> None:
    nb = execute(
        "03_hnsw_index.ipynb", tmp_path, CORPUS_SIZE=3000, N_QUERIES=40, EF_VALUES=[10, 64, 256]
    )
    text = all_text(nb)
    assert "'index_type': 'HNSW'" in text and "'M': 48" in text
    assert "LoadState: Loaded" in text
    assert "HNSW in use: True" in text
    assert has_image(nb)


def test_04_generates_embeds_and_stores_offline(tmp_path) -> None:
    nb = execute("04_generate_and_insert.ipynb", tmp_path, N_TAVERNS=3, GENERATOR="local")
    text = all_text(nb)
    assert "generator: local SmolLM2-135M-Instruct" in text
    assert "rows upserted: 3" in text
    assert "3 descriptions: 3 generated" in text
    assert "servers this notebook started that are still running: []" in text
    cache = list((tmp_path / "run" / "generations").glob("local-*.jsonl"))
    assert len(cache) == 1 and len(cache[0].read_text().splitlines()) == 3


def test_05_searches_and_scores_retrieval(tmp_path) -> None:
    nb = execute("05_semantic_search.ipynb", tmp_path, N_TAVERNS=4, GENERATOR="local")
    text = all_text(nb)
    assert "LoadState: Loaded" in text
    assert "Query 0 is empty" in text and "does not exist" in text and "is not loaded" in text
    for label in ("human", "generated", "both"):
        assert f"\n{label} " in text  # a row of the summary table
    assert "generated texts in the top 3:" in text
    assert has_image(nb)
    assert (tmp_path / "run" / "figures" / "retrieval_by_collection.png").stat().st_size > 0


def test_06_runs_the_loop_and_resumes_nothing_when_finished(tmp_path) -> None:
    nb = execute(
        "06_feedback_loop.ipynb",
        tmp_path,
        N_TAVERNS=3,
        ITERATIONS=2,
        MAX_TOKENS=50,
        GENERATOR="local",
    )
    text = all_text(nb)
    assert "<context>" in text and "quoted data, not instructions" in text
    assert "iteration 0: 3/3 written" in text and "iteration 1: 3/3 written" in text
    assert "finished: True | generations in the ledger: 6" in text
    assert "servers this notebook started that are still running: []" in text
    run_dir = tmp_path / "run" / "loops" / "nb06-accumulate"
    assert len((run_dir / "ledger.jsonl").read_text().splitlines()) == 6
    assert (run_dir / "metrics.csv").exists() and (run_dir / "params.json").exists()


def test_errata_exist_and_are_linked_from_the_readme_and_notebooks_02_to_05() -> None:
    errata = NOTEBOOK_DIR.parent / "docs" / "article-errata.md"
    assert errata.exists() and "nprobe" in errata.read_text()
    assert "docs/article-errata.md" in (NOTEBOOK_DIR.parent / "README.md").read_text()
    for name in NOTEBOOKS:
        if name[:2] in {"02", "03", "04", "05"}:
            assert "../docs/article-errata.md" in (NOTEBOOK_DIR / name).read_text(), name


def test_07_measures_a_run_it_makes_when_none_exists(tmp_path) -> None:
    nb = execute(
        "07_drift_and_distance.ipynb", tmp_path, RUN_ID="nb07-test", N_TAVERNS=3, ITERATIONS=2,
        MAX_TOKENS=40, GENERATOR="local",
    )  # fmt: skip
    text = all_text(nb)
    assert "run nb07-test (accumulate, finished)" in text
    assert "drift_start_median" in text and "top1_score" in text
    figures = {p.name for p in (tmp_path / "run" / "figures").glob("*.png")}
    assert {"drift_per_iteration.png", "dispersion_per_iteration.png", "umap_trajectories.png",
            "retrieval_per_iteration.png", "source_share_per_iteration.png"} <= figures  # fmt: skip
    assert "servers this notebook started that are still running: []" in text


def test_08_sweeps_policies_and_checks_the_literature(tmp_path) -> None:
    nb = execute(
        "08_loop_policy_experiments.ipynb", tmp_path, SEEDS=[1, 2], HUMAN_FRACTIONS=[1.0, 0.0],
        ITERATIONS=3, N_TAVERNS=2, MAX_TOKENS=12, GENERATOR="local",
    )  # fmt: skip
    text = all_text(nb)
    assert "12 runs x 3 iterations x 2 taverns" in text
    run = tmp_path / "run"
    table = pd.read_csv(run / "experiments.csv")
    # 12 runs, each with the store before the loop (-1) and 3 iterations
    assert table.groupby("run_id")["iteration"].apply(lambda s: sorted(s) == [-1, 0, 1, 2]).all()
    assert table["run_id"].nunique() == 12 and set(table["seed"]) == {1, 2}
    checks = pd.read_csv(run / "experiments_literature_checks.csv")
    assert {"Shumailov", "Gerstgrasser", "Chen"} <= {s.split()[0] for s in checks["study"]}
    assert (
        checks["verdict"].str.match(r"(reproduced|opposite|mixed|no change|not measurable)").all()
    )
    # hf 0.5 is not in this grid: the claim that needs it says so instead of inventing a number
    assert "not measurable" in set(checks["verdict"])
    assert (run / "experiments_by_policy.csv").is_file()
    assert {f"sweep_{m}.png" for m in ("dispersion", "generated_share", "human_rank")} <= {
        p.name for p in (run / "figures").glob("*.png")
    }
    assert "answered from earlier runs" in text
    assert "servers this notebook started that are still running: []" in text
    # what the main job does next: the report shows the tables and every figure, none broken
    (run / "notebooks").mkdir()
    shutil.copy(tmp_path / "08_loop_policy_experiments.ipynb", run / "notebooks")
    page = assert_report_resolves(render_report(run), tmp_path / "profile")
    linked = {unquote(h) for h in page.hrefs}
    assert {"experiments.csv", "experiments_literature_checks.csv"} <= linked
    assert {f"figures/sweep_{m}.png" for m in ("dispersion", "human_rank")} <= {
        unquote(s) for s in page.srcs
    }

"""The notebooks say only what their run shows.

Every sentence in a notebook that states a direction or a comparison is computed by
:mod:`helpers.wording`, printed next to its numbers and recorded in
``<run folder>/claims/<notebook>.json``. These tests execute the notebooks with small parameters
and check each recorded word against the recorded numbers (and, where the run folder keeps them,
the numbers against the run's own files); they also scan every committed notebook for machine
paths in its outputs.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest

from helpers.experiment_results import load_results
from helpers.main_job import NOTEBOOK_DIR
from helpers.report import render_report
from tests.notebook_runner import all_text, execute, has_image
from tests.test_report import assert_report_resolves

ALL_NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))

# An absolute path on a Unix or Windows machine, not part of a URL ("http://x/y") or of "../".
MACHINE_PATH = re.compile(r"(?<![\w.:/~-])/(?:home|work|tmp|root|Users|var|opt|mnt|srv)/[\w.-]+|"
                          r"\b[A-Z]:\\[\w.-]+")  # fmt: skip


def check_claim(claim: dict) -> None:
    """The word of one recorded statement follows from its numbers."""
    kind, word, text = claim["kind"], claim.get("word", ""), claim["text"]
    assert word in text, f"the printed sentence lost its word: {claim}"
    if kind == "trend":
        values = [v for v in claim["values"] if v is not None and math.isfinite(v)]
        change = values[-1] - values[0]
        expected = {"rose": change > claim["tol"], "fell": change < -claim["tol"],
                    "did not change": abs(change) <= claim["tol"]}  # fmt: skip
        assert expected[word], f"{word!r} contradicts {values}: {text}"
    elif kind == "compare":
        diff = claim["value"] - claim["baseline"]
        expected = {"above": diff > claim["tol"], "below": diff < -claim["tol"],
                    "level with": abs(diff) <= claim["tol"]}  # fmt: skip
        assert expected[word], f"{word!r} contradicts {claim['value']} vs {claim['baseline']}"
    elif kind == "noise":
        assert (word == "noise") == (claim["across"] <= claim["within"]), text
    elif kind == "count":
        assert 0 <= claim["part"] <= claim["whole"], text
    else:
        raise AssertionError(f"unknown claim kind {kind!r}")


def claims_of(run_dir: Path, notebook: str, nb: dict) -> list[dict]:
    """The recorded statements of one execution, each checked and found in the outputs."""
    path = run_dir / "claims" / f"{notebook}.json"
    assert path.is_file(), f"notebook {notebook} recorded no computed statement"
    claims = json.loads(path.read_text())
    text = all_text(nb)
    for claim in claims:
        check_claim(claim)
        assert claim["text"] in text, f"computed but not shown next to its numbers: {claim}"
    return claims


def by_what(claims: list[dict], start: str) -> dict:
    found = [c for c in claims if c["what"].startswith(start)]
    assert found, f"no statement about {start!r} in {[c['what'] for c in claims]}"
    return found[0]


@pytest.mark.parametrize("word,values", [("rose", [1, 2]), ("fell", [2, 1])])
def test_the_checker_refuses_a_wrong_word(word: str, values: list) -> None:
    wrong = {"kind": "trend", "word": word, "values": values[::-1], "tol": 0.0,
             "text": f"x {word}"}  # fmt: skip
    with pytest.raises(AssertionError):
        check_claim(wrong)
    check_claim({**wrong, "values": values})


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_show_no_machine_path(path: Path) -> None:
    nb = json.loads(path.read_text())
    for number, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            texts = [out.get("text", ""), *out.get("data", {}).values()]
            for chunk in texts:
                chunk = "".join(chunk) if isinstance(chunk, list) else str(chunk)
                if chunk.startswith("iVBOR"):  # a PNG
                    continue
                hit = MACHINE_PATH.search(chunk)
                assert not hit, f"{path.name} cell {number} shows a machine path: {hit.group()}"


STOPPED = "servers this notebook started that are still running: []"


@pytest.mark.slow
def test_03_builds_hnsw_and_states_latency_recall_and_memory_from_its_numbers(tmp_path) -> None:
    nb = execute("03_hnsw_index.ipynb", tmp_path, CORPUS_SIZE=1500, N_QUERIES=20,
                 EF_VALUES=[10, 64], REPEATS=2)  # fmt: skip
    text = all_text(nb)
    assert "'index_type': 'HNSW'" in text and "'M': 48" in text
    assert "LoadState: Loaded" in text and "HNSW in use: True" in text
    assert has_image(nb)
    claims = claims_of(tmp_path / "run", "03", nb)
    assert {"noise", "trend", "compare"} <= {c["kind"] for c in claims}
    size = by_what(claims, "index size at M=48")
    assert size["value"] > 0 and size["baseline"] > 0
    assert "p95_ms" in text and "p99" not in text


@pytest.mark.slow
def test_04_generates_stores_and_counts_the_cut_descriptions(tmp_path) -> None:
    nb = execute("04_generate_and_insert.ipynb", tmp_path, N_TAVERNS=3, GENERATOR="local",
                 MAX_TOKENS=40)  # fmt: skip
    text = all_text(nb)
    assert "generator: local SmolLM2-135M-Instruct" in text
    assert "rows upserted: 3" in text and "3 descriptions: 3 generated" in text
    assert "generating: 3/3 taverns" in text and STOPPED in text
    cache = list((tmp_path / "run" / "generations").glob("local-*.jsonl"))
    assert len(cache) == 1 and len(cache[0].read_text().splitlines()) == 3
    claims = claims_of(tmp_path / "run", "04", nb)
    assert by_what(claims, "descriptions reached the cap of 40 tokens")["whole"] == 3
    assert by_what(claims, "mean words per generated description")["kind"] == "compare"
    # notebook 05 at the same cap reads these descriptions back instead of writing them again
    nb = execute("05_semantic_search.ipynb", tmp_path, N_TAVERNS=3, GENERATOR="local",
                 MAX_TOKENS=40, N_BOOT=200)  # fmt: skip
    assert "3 descriptions: 0 generated, 3 read back from the run folder" in all_text(nb)
    assert len(cache[0].read_text().splitlines()) == 3


def _metrics(run_dir: Path, run_id: str) -> pd.DataFrame:
    return pd.read_csv(run_dir / "loops" / run_id / "metrics.csv")


@pytest.mark.slow
def test_06_writes_one_iteration_by_hand_like_the_engine_and_resumes_nothing(tmp_path) -> None:
    nb = execute("06_feedback_loop.ipynb", tmp_path, N_TAVERNS=2, ITERATIONS=2, MAX_TOKENS=30,
                 GENERATOR="local")  # fmt: skip
    text = all_text(nb)
    assert "<context>" in text and "quoted data, not instructions" in text
    assert "same ids True, same texts True, same contexts True" in text
    assert "iteration 0: 2/2 written" in text and "iteration 1: 2/2 written" in text
    assert "finished: True | generations in the ledger: 4" in text and STOPPED in text
    run_dir = tmp_path / "run" / "loops" / "nb06-accumulate"
    assert len((run_dir / "ledger.jsonl").read_text().splitlines()) == 4
    assert (run_dir / "params.json").exists()
    claims = claims_of(tmp_path / "run", "06", nb)
    metrics = _metrics(tmp_path / "run", "nb06-accumulate")
    copy = by_what(claims, "copied share of the text")
    assert copy["values"] == [round(v, 3) for v in metrics["copy_share"]]
    assert by_what(claims, "texts of run nb06-accumulate have a human rating")["whole"] == 4


@pytest.mark.slow
def test_07_measures_a_run_it_makes_and_its_directions_match_its_tables(tmp_path) -> None:
    nb = execute("07_drift_and_distance.ipynb", tmp_path, RUN_ID="nb07-test", N_TAVERNS=3,
                 ITERATIONS=3, MAX_TOKENS=30, GENERATOR="local")  # fmt: skip
    text = all_text(nb)
    assert "run nb07-test (accumulate, finished)" in text and STOPPED in text
    assert "drift_start_median" in text and "top1_score" in text
    figures = {p.name for p in (tmp_path / "run" / "figures").glob("*.png")}
    assert {"drift_per_iteration.png", "dispersion_per_iteration.png", "umap_trajectories.png",
            "retrieval_per_iteration.png", "source_share_per_iteration.png"} <= figures  # fmt: skip
    claims = claims_of(tmp_path / "run", "07", nb)
    drift = by_what(claims, "median drift from iteration 0")
    assert len(drift["values"]) == 2  # iterations 1 and 2 (iteration 0 is 0 by definition)
    assert by_what(claims, "dispersion at the last iteration")["kind"] == "compare"
    share = by_what(claims, "generated share of the top")
    last = _metrics(tmp_path / "run", "nb07-test").iloc[-1]
    assert share["baseline"] == round(1 - 3 / last["searchable_rows"], 3)


@pytest.mark.slow
def test_08_sweeps_shows_the_method_without_verdicts(tmp_path) -> None:
    nb = execute(
        "08_loop_policy_experiments.ipynb", tmp_path, SEEDS=[1, 2], HUMAN_FRACTIONS=[1.0],
        ITERATIONS=3, N_TAVERNS=2, MAX_TOKENS=12, GENERATOR="local",
    )  # fmt: skip
    text = all_text(nb)
    assert "8 runs x 3 iterations x 2 taverns" in text and "answered from earlier runs" in text
    assert "smoke-sized sweep" in text and "docs/experiments.md" in text
    # the smoke sweep (sections 1-6) prints no verdict; section 7 shows the committed full one
    sources = ["".join(c["source"]) for c in nb["cells"]]  # a cell's source may be a list
    cut = next(i for i, src in enumerate(sources) if src.startswith("## 7. The full"))
    smoke = all_text({"cells": nb["cells"][:cut]})
    assert not re.search(r"reproduced|opposite|mixed \(", smoke), "a smoke sweep printed a verdict"
    full = load_results("full")
    assert f"the papers' claims: {full.verdicts('checks')}" in text
    assert f"against the no-feedback control: {full.verdicts('control')}" in text
    claims = claims_of(tmp_path / "run", "08", nb)
    assert len(claims) >= 5  # a sentence under each figure
    run = tmp_path / "run"
    table = pd.read_csv(run / "experiments.csv")
    # 8 runs, each with the store before the loop (-1) and 3 iterations
    assert table.groupby("run_id")["iteration"].apply(lambda s: sorted(s) == [-1, 0, 1, 2]).all()
    assert table["run_id"].nunique() == 8 and set(table["seed"]) == {1, 2}
    checks = pd.read_csv(run / "experiments_literature_checks.csv")
    assert {"Shumailov", "Gerstgrasser", "Chen"} <= {s.split()[0] for s in checks["study"]}
    assert (run / "experiments_by_policy.csv").is_file()
    assert {f"sweep_{m}.png" for m in ("dispersion", "generated_share", "human_rank")} <= {
        p.name for p in (run / "figures").glob("*.png")
    }
    assert STOPPED in text
    # what the main job does next: the report shows the tables and every figure, none broken
    (run / "notebooks").mkdir()
    shutil.copy(tmp_path / "08_loop_policy_experiments.ipynb", run / "notebooks")
    page = assert_report_resolves(render_report(run), tmp_path / "profile")
    linked = {unquote(h) for h in page.hrefs}
    assert {"experiments.csv", "experiments_literature_checks.csv"} <= linked
    assert {f"figures/sweep_{m}.png" for m in ("dispersion", "human_rank")} <= {
        unquote(s) for s in page.srcs
    }

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
from pathlib import Path

import pandas as pd
import pytest

from helpers.main_job import NOTEBOOK_DIR
from tests.notebook_runner import all_text, execute

ALL_NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))

# An absolute path on a Unix or Windows machine, not part of a URL ("http://x/y") or of "../".
MACHINE_PATH = re.compile(r"(?<![\w.:/~-])/(?:home|work|tmp|root|Users|var|opt|mnt|srv)/[\w.-]+|"
                          r"\b[A-Z]:\\[\w.-]+")  # fmt: skip


def check_claim(claim: dict) -> None:
    """The word of one recorded statement follows from its numbers."""
    kind, word, text = claim["kind"], claim["word"], claim["text"]
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


@pytest.mark.slow
def test_03_states_latency_noise_recall_and_memory_from_its_numbers(tmp_path) -> None:
    nb = execute("03_hnsw_index.ipynb", tmp_path, CORPUS_SIZE=1500, N_QUERIES=20,
                 EF_VALUES=[10, 64], REPEATS=2)  # fmt: skip
    claims = claims_of(tmp_path / "run", "03", nb)
    kinds = {c["kind"] for c in claims}
    assert {"noise", "trend", "compare"} <= kinds
    size = by_what(claims, "index size at M=48")
    assert size["value"] > 0 and size["baseline"] > 0
    assert "p95_ms" in all_text(nb) and "p99" not in all_text(nb)


@pytest.mark.slow
def test_04_counts_the_cut_descriptions(tmp_path) -> None:
    nb = execute("04_generate_and_insert.ipynb", tmp_path, N_TAVERNS=3, GENERATOR="local",
                 MAX_TOKENS=40)  # fmt: skip
    claims = claims_of(tmp_path / "run", "04", nb)
    cut = by_what(claims, "descriptions reached the cap of 40 tokens")
    assert cut["whole"] == 3
    assert "generating: 3/3 taverns" in all_text(nb)
    words = by_what(claims, "mean words per generated description")
    assert words["word"] in {"above", "below", "level with"}


def _metrics(run_dir: Path, run_id: str) -> pd.DataFrame:
    return pd.read_csv(run_dir / "loops" / run_id / "metrics.csv")


@pytest.mark.slow
def test_06_writes_one_iteration_by_hand_like_the_engine(tmp_path) -> None:
    nb = execute("06_feedback_loop.ipynb", tmp_path, N_TAVERNS=2, ITERATIONS=2, MAX_TOKENS=30,
                 GENERATOR="local")  # fmt: skip
    text = all_text(nb)
    assert "by hand and by the engine: same ids True, same texts True" in text
    claims = claims_of(tmp_path / "run", "06", nb)
    metrics = _metrics(tmp_path / "run", "nb06-accumulate")
    copy = by_what(claims, "copied share of the text")
    assert copy["values"] == [round(v, 3) for v in metrics["copy_share"]]


@pytest.mark.slow
def test_07_directions_match_the_drift_table(tmp_path) -> None:
    nb = execute("07_drift_and_distance.ipynb", tmp_path, RUN_ID="nb07-test", N_TAVERNS=3,
                 ITERATIONS=3, MAX_TOKENS=30, GENERATOR="local")  # fmt: skip
    claims = claims_of(tmp_path / "run", "07", nb)
    drift = by_what(claims, "median drift from iteration 0")
    assert len(drift["values"]) == 2  # iterations 1 and 2 (iteration 0 is 0 by definition)
    assert by_what(claims, "dispersion at the last iteration")["kind"] == "compare"
    assert by_what(claims, "generated share of the top")["kind"] == "compare"

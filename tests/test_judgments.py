"""The graded judgements file (``judgments.csv``) and how ``load_queries`` uses it.

Each test writes a small data folder (taverns, queries, judgements) and breaks one thing, then
checks that the error names the file, the spreadsheet row and the column, or for a mismatch
between the two files, the query and the taverns, so whoever edits the data finds the cell.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from helpers.data import QUERY_COLUMNS, DataError, load_queries, load_taverns
from helpers.judgments import JUDGMENT_COLUMNS, grades_by_query, load_judgments
from tests.test_data import queries_file, raises_at, taverns_file, write_csv

QUERIES = [
    ["q01", "An inn in Bree", "prancing-pony", "easy", "Bree"],
    ["q02", "Hobbit inns", "prancing-pony;green-dragon", "ambiguous", "both"],
]
JUDGMENTS = [
    ["q01", "prancing-pony", "2", "A big inn"],
    ["q02", "green-dragon", "2", "Hobbits drink there"],
    ["q02", "prancing-pony", "1", "A big inn | Bree"],  # two excerpts, one from `location`
]


def judgments_file(tmp_path: Path, rows=None) -> Path:
    return write_csv(
        tmp_path / "judgments.csv", JUDGMENT_COLUMNS, JUDGMENTS if rows is None else rows
    )


def folder(tmp_path: Path, judgments=None, queries=None) -> Path:
    """taverns.csv, queries.csv and judgments.csv side by side, as in data/."""
    taverns_file(tmp_path)
    queries_file(tmp_path, QUERIES if queries is None else queries)
    judgments_file(tmp_path, judgments)
    return tmp_path


def judgments_error(
    tmp_path: Path, rows, row: int | None, column: str | None, *, via_queries: bool = True
) -> str:
    """Write the folder with these judgement rows, load it (through ``load_queries`` or
    ``load_judgments``) and return the error, which must name judgments.csv, row and column."""
    data = folder(tmp_path, rows)
    taverns = load_taverns(data / "taverns.csv")
    if via_queries:
        return raises_at(
            lambda: load_queries(data / "queries.csv", taverns=taverns),
            "judgments.csv",
            row,
            column,
        )
    return raises_at(
        lambda: load_judgments(data / "judgments.csv", taverns=taverns),
        "judgments.csv",
        row,
        column,
    )


def test_grades_attach_to_queries(tmp_path: Path) -> None:
    data = folder(tmp_path)
    taverns = load_taverns(data / "taverns.csv")
    queries = load_queries(data / "queries.csv", taverns=taverns)
    assert queries.loc[1, "grades"] == {"prancing-pony": 1, "green-dragon": 2}
    assert queries.loc[0, "grades"] == {"prancing-pony": 2}
    assert load_judgments(data / "judgments.csv", taverns=taverns)["grade"].tolist() == [2, 2, 1]


def test_bad_grade(tmp_path: Path) -> None:
    rows = [list(r) for r in JUDGMENTS]
    rows[1][2] = "3"
    message = judgments_error(tmp_path, rows, 3, "grade")
    assert "'3'" in message


def test_evidence_must_be_in_the_row(tmp_path: Path) -> None:
    rows = [list(r) for r in JUDGMENTS]
    rows[2][3] = "A big inn | Hobbiton"  # Hobbiton is not in the Prancing Pony's facts
    message = judgments_error(tmp_path, rows, 4, "evidence", via_queries=False)
    assert "'Hobbiton'" in message and "'A big inn'" not in message


def test_description_edited_after_judging(tmp_path: Path) -> None:
    data = folder(tmp_path)
    taverns = load_taverns(data / "taverns.csv")
    taverns.loc[taverns["tavern_id"] == "green-dragon", "description"] = "A quiet inn."
    message = raises_at(
        lambda: load_queries(data / "queries.csv", taverns=taverns), "judgments.csv", 3, "evidence"
    )
    assert "green-dragon" in message and "re-judge" in message


def test_listed_but_not_judged(tmp_path: Path) -> None:
    # q02 lists prancing-pony, nothing judges it
    message = judgments_error(tmp_path, JUDGMENTS[:2], None, None)
    assert "q02" in message and "prancing-pony" in message and "not judged" in message


def test_judged_but_not_listed(tmp_path: Path) -> None:
    rows = [
        *JUDGMENTS,
        ["q01", "black-arrow", "1", "An inn in Dale"],
        ["q09", "black-arrow", "2", "Dale"],
    ]
    message = judgments_error(tmp_path, rows, None, None)
    assert "q01: black-arrow" in message and "'q09'" in message


def test_duplicate_judgement_and_unknown_tavern(tmp_path: Path) -> None:
    rows = [*JUDGMENTS, ["q01", "prancing-pony", "1", "Bree"], ["q01", "ivy-bush", "1", "x"]]
    message = judgments_error(tmp_path, rows, 5, "tavern_id", via_queries=False)
    assert "row 2" in message and "row 6" in message and "'ivy-bush'" in message


def test_explicit_judgments_path_must_exist(tmp_path: Path) -> None:
    data = folder(tmp_path)
    taverns = load_taverns(data / "taverns.csv")
    message = raises_at(
        lambda: load_queries(data / "queries.csv", taverns=taverns, judgments=data / "missing.csv"),
        "missing.csv",
        None,
        None,
    )
    assert "not found" in message


def test_world_knowledge_flag(tmp_path: Path) -> None:
    header = [*QUERY_COLUMNS, "world_knowledge"]
    rows = [[*QUERIES[0], "no"], [*QUERIES[1], "YES"]]
    taverns_file(tmp_path)
    judgments_file(tmp_path)
    write_csv(tmp_path / "queries.csv", header, rows)
    taverns = load_taverns(tmp_path / "taverns.csv")
    retrieval = load_queries(tmp_path / "queries.csv", taverns=taverns)
    everything = load_queries(
        tmp_path / "queries.csv", taverns=taverns, include_world_knowledge=True
    )
    assert retrieval["query_id"].tolist() == ["q01"]
    assert everything["world_knowledge"].tolist() == [False, True]
    rows[0][-1] = "maybe"
    write_csv(tmp_path / "queries.csv", header, rows)
    raises_at(
        lambda: load_queries(tmp_path / "queries.csv", taverns=taverns),
        "queries.csv",
        2,
        "world_knowledge",
    )


def test_grades_by_query_keeps_the_relevant_order() -> None:
    table = pd.DataFrame(
        {"query_id": ["q1", "q1"], "tavern_id": ["b", "a"], "grade": [1, 2], "evidence": ["x", "y"]}
    )
    assert list(grades_by_query(table, {"q1": ("a", "b")}, "j.csv")["q1"].items()) == [
        ("a", 2),
        ("b", 1),
    ]
    with pytest.raises(DataError):
        grades_by_query(table, {"q1": ("a",)}, "j.csv")


def test_ndcg_of_the_before_after_script() -> None:
    """nDCG@k with graded gains, as scripts/retrieval_before_after.py reports it."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "retrieval_before_after.py"
    spec = importlib.util.spec_from_file_location("retrieval_before_after", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ndcg = module.ndcg_at_k
    grades = {"answer": 2, "partial": 1}
    assert ndcg(["answer", "partial", "x"], grades, 10) == pytest.approx(1.0)
    # partial match first: (1 + 2/log2 3) / (2 + 1/log2 3)
    assert ndcg(["partial", "answer"], grades, 10) == pytest.approx(
        (1 + 2 / 1.5849625) / (2 + 1 / 1.5849625)
    )
    assert ndcg(["x", "y"], grades, 10) == 0.0
    assert ndcg(["x", "answer"], grades, 1) == 0.0  # the answer is cut off at k = 1
    with pytest.raises(ValueError):
        ndcg(["x"], {}, 10)

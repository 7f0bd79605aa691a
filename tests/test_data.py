"""Tests for the shipped data files and for the loaders' error messages.

The first half checks that ``data/taverns.csv``, ``data/queries.csv`` and
``data/judgments.csv`` meet the kit's promises (enough taverns and queries, every difficulty
represented, reference descriptions of 2-4 sentences, canon facts in place, every judgement
graded and backed by the tavern's own words, a README whose counts match the files). The second half writes small broken CSVs and checks
that the error names the file, the spreadsheet row and the column, so a student editing the
data in a spreadsheet can find the mistake.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest

from helpers.data import (
    CANON_VALUES,
    DATA_VERSION,
    DESCRIPTION_MAX_BYTES,
    DIFFICULTIES,
    QUERY_COLUMNS,
    SHORT_TEXT_MAX_BYTES,
    TAVERN_COLUMNS,
    DataError,
    load_queries,
    load_taverns,
    parse_relevant,
    tavern_records,
)
from helpers.judgments import EVIDENCE_FIELDS, EVIDENCE_SEPARATOR, GRADES, load_judgments
from helpers.settings import Settings, get_settings

ARTICLE_QUERY = "A cozy place frequented by famous hobbits"

# The shipped files, whatever GFL_DATA_DIR says: Settings() has the repository defaults.
SHIPPED = Settings()

# Phrases of the books that version 1 reproduced almost word for word; the data paraphrases.
BOOK_PHRASES = ("best beer in the eastfarthing", "small inn on the bywater road", "head clean off")

# Canon inns named in the brief: tavern_id -> (name, text its location must contain).
CANON_PLACES = {
    "prancing-pony": ("The Prancing Pony", "Bree"),
    "green-dragon": ("The Green Dragon", "Bywater"),
    "golden-perch": ("The Golden Perch", "Stock"),
    "ivy-bush": ("The Ivy Bush", "Bywater"),
    "floating-log": ("The Floating Log", "Frogmorton"),
}


def sentences(text: str) -> list[str]:
    """Split on ., ! or ? followed by whitespace (the descriptions avoid abbreviations)."""
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


@pytest.fixture(scope="module")
def taverns() -> pd.DataFrame:
    return load_taverns(settings=SHIPPED)


@pytest.fixture(scope="module")
def queries(taverns: pd.DataFrame) -> pd.DataFrame:
    return load_queries(settings=SHIPPED, taverns=taverns)


@pytest.fixture(scope="module")
def all_queries(taverns: pd.DataFrame) -> pd.DataFrame:
    return load_queries(settings=SHIPPED, taverns=taverns, include_world_knowledge=True)


@pytest.fixture(scope="module")
def judgments(taverns: pd.DataFrame) -> pd.DataFrame:
    return load_judgments(settings=SHIPPED, taverns=taverns)


# ---------------------------------------------------------------------------------------------
# The shipped files


def test_shipped_files_exist() -> None:
    data_dir = SHIPPED.data_dir
    assert (data_dir / "taverns.csv").is_file()
    assert (data_dir / "queries.csv").is_file()
    assert (data_dir / "README.md").is_file()
    assert (data_dir / "judgments.csv").is_file()


def test_taverns_count_and_columns(taverns: pd.DataFrame) -> None:
    assert len(taverns) >= 40
    assert list(taverns.columns[: len(TAVERN_COLUMNS)]) == list(TAVERN_COLUMNS)
    assert taverns["tavern_id"].is_unique
    assert taverns["name"].str.casefold().is_unique


def test_reference_descriptions_are_two_to_four_sentences(taverns: pd.DataFrame) -> None:
    bad = {}
    for tid, text in zip(taverns["tavern_id"], taverns["description"], strict=True):
        n = len(sentences(text))
        if not (2 <= n <= 4) or len(text) > 3000:
            bad[tid] = (n, len(text))
    assert not bad, f"descriptions outside 2-4 sentences or over 3000 characters: {bad}"


def test_reference_descriptions_are_short_references(taverns: pd.DataFrame) -> None:
    words = taverns["description"].str.split().str.len()
    assert words.between(40, 90).all(), taverns.loc[~words.between(40, 90), "tavern_id"].tolist()


def test_canon_places_present_with_canon_facts(taverns: pd.DataFrame) -> None:
    by_id = taverns.set_index("tavern_id")
    for tid, (name, place) in CANON_PLACES.items():
        assert tid in by_id.index, f"{tid} missing"
        row = by_id.loc[tid]
        assert row["name"] == name
        assert place in row["location"], (tid, row["location"])
        assert row["canon"] == "canon"
        assert "invented" not in row["source_note"]
    assert "Butterbur" in by_id.loc["prancing-pony", "description"]
    assert "Strider" in by_id.loc["prancing-pony", "description"]
    assert "Ted Sandyman" in by_id.loc["green-dragon", "description"]
    assert "Stock" in by_id.loc["golden-perch", "description"]
    assert "Pippin" in by_id.loc["golden-perch", "description"]
    assert "Gaffer" in by_id.loc["ivy-bush", "description"]


def test_no_near_quotations_of_the_books(taverns: pd.DataFrame, all_queries: pd.DataFrame) -> None:
    texts = list(taverns["description"]) + list(all_queries["query"]) + list(all_queries["note"])
    quoted = {p for p in BOOK_PHRASES for t in texts if p in t.casefold()}
    assert not quoted


def test_no_real_world_pub(taverns: pd.DataFrame) -> None:
    # The Bird and Baby (the Eagle and Child) is an Oxford pub, not a Middle-earth inn.
    assert not taverns["name"].str.contains("Bird and Baby|Eagle and Child", case=False).any()


def test_canon_flag_matches_source_note(taverns: pd.DataFrame) -> None:
    assert set(taverns["canon"]) <= set(CANON_VALUES)
    invented = taverns[taverns["canon"] == "invented"]
    canon = taverns[taverns["canon"] == "canon"]
    assert (invented["source_note"] == "invented for this kit").all()
    assert (
        canon["source_note"].str.contains("Fellowship|Two Towers|Return of the King|Hobbit").all()
    )
    assert set(CANON_PLACES) <= set(canon["tavern_id"])
    assert len(invented) >= 30  # the bulk is invented, so it can be described freely


def test_queries_count_difficulties_and_article_query(queries: pd.DataFrame) -> None:
    assert len(queries) >= 30
    assert set(QUERY_COLUMNS) <= set(queries.columns)
    counts = queries["difficulty"].value_counts()
    for difficulty in DIFFICULTIES:
        assert counts.get(difficulty, 0) >= 8, counts.to_dict()
    q01 = queries.set_index("query_id").loc["q01"]
    assert q01["query"] == ARTICLE_QUERY


def test_queries_relevance_is_parsed_and_known(
    queries: pd.DataFrame, taverns: pd.DataFrame
) -> None:
    known = set(taverns["tavern_id"])
    for ids in queries["relevant"]:
        assert isinstance(ids, tuple) and ids
        assert set(ids) <= known
    ambiguous = queries[queries["difficulty"] == "ambiguous"]
    assert (ambiguous["relevant"].map(len) >= 2).all()
    assert queries["note"].str.len().gt(0).all()


def test_every_relevant_pair_is_judged_with_evidence_from_the_row(
    all_queries: pd.DataFrame, judgments: pd.DataFrame, taverns: pd.DataFrame
) -> None:
    facts = taverns.set_index("tavern_id")[list(EVIDENCE_FIELDS)]
    listed = zip(all_queries["query_id"], all_queries["relevant"], strict=True)
    pairs = {(q, t) for q, ids in listed for t in ids}
    judged = set(zip(judgments["query_id"], judgments["tavern_id"], strict=True))
    assert judged == pairs
    for rec in judgments.itertuples():
        assert rec.grade in GRADES
        row = facts.loc[rec.tavern_id].tolist()
        for part in rec.evidence.split(EVIDENCE_SEPARATOR):
            assert any(part in field for field in row), (rec.query_id, rec.tavern_id, part)


def test_grades_follow_the_rules(all_queries: pd.DataFrame) -> None:
    for q in all_queries.itertuples():
        assert list(q.grades) == list(q.relevant), q.query_id
        assert max(q.grades.values()) == 2, f"{q.query_id} has no answer of grade 2"
        if q.difficulty in ("easy", "hard"):
            assert list(q.grades.values()) == [2], q.query_id


def test_world_knowledge_queries_are_reported_apart(
    queries: pd.DataFrame, all_queries: pd.DataFrame
) -> None:
    flagged = all_queries[all_queries["world_knowledge"]]
    assert len(flagged) >= 1
    assert not queries["world_knowledge"].any()
    assert set(queries["query_id"]) == set(all_queries["query_id"]) - set(flagged["query_id"])
    assert flagged["note"].str.contains("world knowledge", case=False).all()


def test_readme_states_version_counts_and_judges(
    taverns: pd.DataFrame, all_queries: pd.DataFrame, judgments: pd.DataFrame
) -> None:
    readme = (SHIPPED.data_dir / "README.md").read_text(encoding="utf-8")
    canon = int((taverns["canon"] == "canon").sum())
    difficulty = all_queries["difficulty"].value_counts()
    grades = judgments["grade"].value_counts()
    claims = [
        f"Data version {DATA_VERSION}",
        f'DATA_VERSION == "{DATA_VERSION}"',
        "2026-12-01",
        f"{len(taverns)} taverns and inns ({canon} canon, {len(taverns) - canon} invented)",
        f"{len(all_queries)} search queries ({difficulty['easy']} easy, {difficulty['hard']} hard, "
        f"{difficulty['ambiguous']} ambiguous; {int(all_queries['world_knowledge'].sum())} of them "
        "need world knowledge)",
        f"{len(judgments)} judgements ({grades[2]} of grade 2, {grades[1]} of grade 1)",
        ARTICLE_QUERY,
        "Tolkien Estate",
    ]
    missing = [c for c in claims if c not in " ".join(readme.split())]
    assert not missing, missing


def test_tavern_records_shape(taverns: pd.DataFrame) -> None:
    records = tavern_records(taverns)
    assert len(records) == len(taverns)
    assert set(records[0]) == {"tavern_id", "name", "location", "famous_visitor", "description"}
    assert all(isinstance(v, str) for rec in records for v in rec.values())


def test_parse_relevant() -> None:
    assert parse_relevant(" a ; b;;a ") == ("a", "b")


# ---------------------------------------------------------------------------------------------
# Broken files: the message must lead a spreadsheet user to the cell


GOOD_TAVERNS = [
    [
        "prancing-pony",
        "The Prancing Pony",
        "Bree",
        "Aragorn",
        "A big inn. It has a pony.",
        "canon",
        "The Fellowship of the Ring, I.9",
    ],
    [
        "green-dragon",
        "The Green Dragon",
        "Bywater",
        "Sam",
        "An inn. Hobbits drink there.",
        "canon",
        "The Fellowship of the Ring, I.2",
    ],
    [
        "black-arrow",
        "The Black Arrow",
        "Dale",
        "Bard",
        "An inn in Dale. It has an arrow.",
        "invented",
        "invented for this kit",
    ],
]
GOOD_QUERIES = [
    ["q01", "An inn in Bree", "prancing-pony", "easy", "Bree"],
    ["q02", "Hobbit inns", "prancing-pony;green-dragon", "ambiguous", "both"],
]


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def taverns_file(tmp_path: Path, rows=None, header=TAVERN_COLUMNS) -> Path:
    return write_csv(tmp_path / "taverns.csv", header, GOOD_TAVERNS if rows is None else rows)


def queries_file(tmp_path: Path, rows=None) -> Path:
    return write_csv(
        tmp_path / "queries.csv", QUERY_COLUMNS, GOOD_QUERIES if rows is None else rows
    )


def raises_at(call, filename: str, row: int | None, column: str | None) -> str:
    """Run ``call``, expect a DataError naming the file, row and column; return the message."""
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert filename in message, message
    if row is not None:
        assert re.search(rf"\brow {row}\b", message), message
    if column is not None:
        assert f"'{column}'" in message, message
    return message


def test_small_good_files_load(tmp_path: Path) -> None:
    taverns = load_taverns(taverns_file(tmp_path))
    queries = load_queries(queries_file(tmp_path), taverns=taverns)
    assert queries.loc[1, "relevant"] == ("prancing-pony", "green-dragon")
    # no judgments.csv next to the file: binary relevance, every listed tavern grade 1
    assert queries.loc[1, "grades"] == {"prancing-pony": 1, "green-dragon": 1}
    assert not queries["world_knowledge"].any()  # no such column: no query needs it


def test_default_paths_follow_settings_data_dir(tmp_path: Path) -> None:
    taverns_file(tmp_path)
    queries_file(tmp_path)
    settings = get_settings().replace(data_dir=tmp_path)
    assert len(load_taverns(settings=settings)) == 3
    assert len(load_queries(settings=settings)) == 2  # checked against tmp taverns.csv


def test_missing_file(tmp_path: Path) -> None:
    message = raises_at(lambda: load_taverns(tmp_path / "taverns.csv"), "taverns.csv", None, None)
    assert "not found" in message


def test_missing_column(tmp_path: Path) -> None:
    header = [c for c in TAVERN_COLUMNS if c != "famous_visitor"]
    rows = [
        [v for c, v in zip(TAVERN_COLUMNS, r, strict=True) if c != "famous_visitor"]
        for r in GOOD_TAVERNS
    ]
    path = write_csv(tmp_path / "taverns.csv", header, rows)
    message = raises_at(lambda: load_taverns(path), "taverns.csv", 1, "famous_visitor")
    assert "missing" in message


def test_misspelt_column_gets_a_hint(tmp_path: Path) -> None:
    header = ["Name" if c == "name" else c for c in TAVERN_COLUMNS]
    path = taverns_file(tmp_path, header=header)
    message = raises_at(lambda: load_taverns(path), "taverns.csv", 1, "name")
    assert "'Name'" in message


def test_empty_name(tmp_path: Path) -> None:
    rows = [list(r) for r in GOOD_TAVERNS]
    rows[1][1] = "   "
    message = raises_at(
        lambda: load_taverns(taverns_file(tmp_path, rows)), "taverns.csv", 3, "name"
    )
    assert "empty" in message


def test_duplicate_tavern_id(tmp_path: Path) -> None:
    rows = [list(r) for r in GOOD_TAVERNS]
    rows[2][0] = "prancing-pony"
    message = raises_at(
        lambda: load_taverns(taverns_file(tmp_path, rows)), "taverns.csv", 4, "tavern_id"
    )
    assert "row 2" in message  # points at the first occurrence too


def test_duplicate_name_ignores_case(tmp_path: Path) -> None:
    rows = [list(r) for r in GOOD_TAVERNS]
    rows[2][1] = "the prancing  pony"
    raises_at(lambda: load_taverns(taverns_file(tmp_path, rows)), "taverns.csv", 4, "name")


def test_bad_tavern_id(tmp_path: Path) -> None:
    rows = [list(r) for r in GOOD_TAVERNS]
    rows[0][0] = "Prancing Pony"
    message = raises_at(
        lambda: load_taverns(taverns_file(tmp_path, rows)), "taverns.csv", 2, "tavern_id"
    )
    assert "prancing-pony" in message


def test_bad_canon_value(tmp_path: Path) -> None:
    rows = [list(r) for r in GOOD_TAVERNS]
    rows[2][5] = "fanon"
    message = raises_at(
        lambda: load_taverns(taverns_file(tmp_path, rows)), "taverns.csv", 4, "canon"
    )
    assert "invented" in message


def test_over_long_description(tmp_path: Path) -> None:
    rows = [list(r) for r in GOOD_TAVERNS]
    rows[0][4] = "x" * 3001
    message = raises_at(
        lambda: load_taverns(taverns_file(tmp_path, rows)), "taverns.csv", 2, "description"
    )
    assert "3000" in message


def test_description_limit_counts_bytes_like_milvus(tmp_path: Path) -> None:
    rows = [list(r) for r in GOOD_TAVERNS]
    rows[0][4] = "é" * 1600  # 1600 characters but 3200 UTF-8 bytes: Milvus would refuse it
    raises_at(lambda: load_taverns(taverns_file(tmp_path, rows)), "taverns.csv", 2, "description")
    rows[0][4] = "x" * 3000
    assert len(load_taverns(taverns_file(tmp_path, rows))) == 3


def test_several_problems_reported_together(tmp_path: Path) -> None:
    rows = [list(r) for r in GOOD_TAVERNS]
    rows[0][5] = "yes"
    rows[2][3] = ""
    message = raises_at(
        lambda: load_taverns(taverns_file(tmp_path, rows)), "taverns.csv", 2, "canon"
    )
    assert "row 4" in message and "'famous_visitor'" in message


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "taverns.csv"
    rows = [list(r) for r in GOOD_TAVERNS]
    rows[1][3] = "Éomer"
    lines = [",".join(TAVERN_COLUMNS)] + [",".join(f'"{v}"' for v in r) for r in rows]
    path.write_bytes("\n".join(lines).encode("cp1252"))
    message = raises_at(lambda: load_taverns(path), "taverns.csv", 3, "famous_visitor")
    assert "UTF-8" in message


def test_utf8_with_bom_is_accepted(tmp_path: Path) -> None:
    path = taverns_file(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert list(load_taverns(path).columns) == list(TAVERN_COLUMNS)


def test_row_numbers_survive_blank_lines_and_multiline_cells(tmp_path: Path) -> None:
    rows = [list(r) for r in GOOD_TAVERNS]
    rows[0][4] = "First line.\nSecond line."  # a quoted cell spanning two lines
    rows.insert(1, [""] * len(TAVERN_COLUMNS))  # an empty spreadsheet row (row 3)
    rows[3][5] = "maybe"  # the Black Arrow, now spreadsheet row 5
    raises_at(lambda: load_taverns(taverns_file(tmp_path, rows)), "taverns.csv", 5, "canon")


def test_extra_cells_in_a_row(tmp_path: Path) -> None:
    rows = [list(r) for r in GOOD_TAVERNS]
    rows[1].append("stray")
    message = raises_at(lambda: load_taverns(taverns_file(tmp_path, rows)), "taverns.csv", 3, None)
    assert "quote" in message


def test_unknown_relevant_id(tmp_path: Path) -> None:
    taverns = load_taverns(taverns_file(tmp_path))
    rows = [list(r) for r in GOOD_QUERIES]
    rows[1][2] = "prancing-pony;green-dragn"
    message = raises_at(
        lambda: load_queries(queries_file(tmp_path, rows), taverns=taverns),
        "queries.csv",
        3,
        "relevant",
    )
    assert "green-dragn" in message and "green-dragon" in message


def test_bad_difficulty_and_empty_query(tmp_path: Path) -> None:
    taverns = load_taverns(taverns_file(tmp_path))
    rows = [list(r) for r in GOOD_QUERIES]
    rows[0][3] = "medium"
    rows[1][1] = ""
    message = raises_at(
        lambda: load_queries(queries_file(tmp_path, rows), taverns=taverns),
        "queries.csv",
        2,
        "difficulty",
    )
    assert "row 3" in message and "'query'" in message


def test_duplicate_query_id(tmp_path: Path) -> None:
    taverns = load_taverns(taverns_file(tmp_path))
    rows = [list(r) for r in GOOD_QUERIES]
    rows[1][0] = "q01"
    raises_at(
        lambda: load_queries(queries_file(tmp_path, rows), taverns=taverns),
        "queries.csv",
        3,
        "query_id",
    )


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "queries.csv"
    path.write_text("", encoding="utf-8")
    message = raises_at(
        lambda: load_queries(path, taverns=pd.DataFrame()), "queries.csv", None, None
    )
    assert "empty" in message


def test_header_only_file(tmp_path: Path) -> None:
    path = taverns_file(tmp_path, rows=[])
    message = raises_at(lambda: load_taverns(path), "taverns.csv", None, None)
    assert "no tavern rows" in message


def test_limits_match_the_milvus_schema() -> None:
    schema = pytest.importorskip("helpers.schema")
    assert DESCRIPTION_MAX_BYTES == schema.DESCRIPTION_MAX
    assert SHORT_TEXT_MAX_BYTES == schema.SHORT_MAX


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)

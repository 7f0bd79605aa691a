"""Load and check the two data files of the kit: ``taverns.csv`` and ``queries.csv``.

Why a module of its own: the notebooks, the benchmark and the tests all read the same two
files, and the files are meant to be edited by hand, often in a spreadsheet. A typo there
should surface once, here, as a message that names the file, the row number the spreadsheet
shows (the header is row 1), the column, what is wrong and how to fix it, rather than as a
``KeyError`` in an embedding loop or a ``MilvusException`` halfway through an insert.

The loaders only enforce what would break the kit (missing or empty values, duplicate ids,
values the Milvus schema cannot hold, unknown ids in the relevance judgements, judgements whose
evidence is no longer in the tavern's text). Style rules for the reference descriptions, such as
"2-4 sentences", are data-quality tests in ``tests/test_data.py``: a student's own longer
description must still load. The graded judgements (``judgments.csv``) are read by
:mod:`helpers.judgments`; :func:`load_queries` attaches them.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from helpers.settings import Settings, get_settings

# The version of the shipped data files (data/README.md says what changed). Results computed on
# the data should record it, since relevance judgements change between versions.
DATA_VERSION = "2"

TAVERNS_FILE = "taverns.csv"
QUERIES_FILE = "queries.csv"
JUDGMENTS_FILE = "judgments.csv"  # graded judgements with evidence: helpers/judgments.py

TAVERN_COLUMNS: tuple[str, ...] = (
    "tavern_id",
    "name",
    "location",
    "famous_visitor",
    "description",
    "canon",
    "source_note",
)
QUERY_COLUMNS: tuple[str, ...] = ("query_id", "query", "relevant", "difficulty", "note")
# `note` explains a judgement; a query without one is still usable, so it may be empty.
QUERY_REQUIRED: tuple[str, ...] = ("query_id", "query", "relevant", "difficulty")
# Optional column: "yes" marks a query that needs facts no reference description states (Tolkien
# knowledge rather than retrieval); such queries are reported separately. Empty or absent = "no".
WORLD_KNOWLEDGE_COLUMN = "world_knowledge"
YES_NO: tuple[str, ...] = ("yes", "no")

CANON_VALUES: tuple[str, ...] = ("canon", "invented")
DIFFICULTIES: tuple[str, ...] = ("easy", "hard", "ambiguous")

# Limits of the article's collection schema (VARCHAR max_length), the same numbers as
# helpers.schema.DESCRIPTION_MAX / SHORT_MAX (a test keeps them equal); repeated here so that
# loading the data does not import pymilvus. Milvus counts max_length
# in UTF-8 *bytes*, not characters (milvus-io/milvus#26806, closed "by design"), so a
# description of 2,990 characters with a few accented names can still be rejected at insert
# time. We check bytes, which also guarantees the character limit.
DESCRIPTION_MAX_BYTES = 3000
SHORT_TEXT_MAX_BYTES = 255
SHORT_TEXT_COLUMNS: tuple[str, ...] = ("name", "location", "famous_visitor")

RELEVANT_SEPARATOR = ";"
_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_MAX_LISTED = 25  # problems listed in one error; more would bury the first (often the cause)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a data file, located the way a spreadsheet user would look for it."""

    row: int | None  # 1-based, header = row 1; None for a problem with the whole file
    column: str | None
    message: str

    def where(self) -> str:
        parts = []
        if self.row is not None:
            parts.append(f"row {self.row}" + (" (header)" if self.row == 1 else ""))
        if self.column is not None:
            parts.append(f"column '{self.column}'")
        return ", ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        return f"{where}: {self.message}" if where else self.message


class DataError(ValueError):
    """A data file cannot be used as it is.

    ``str(error)`` names the file and lists every problem with its row (as numbered in a
    spreadsheet, header = row 1), column, what is wrong and what to do. ``path`` and
    ``problems`` are kept for code that wants to show them differently.
    """

    def __init__(self, path: Path | str | None, problems: Sequence[Problem]) -> None:
        self.path = Path(path) if path is not None else None
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__(self._format())

    def _format(self) -> str:
        source = str(self.path) if self.path is not None else "the table"
        if len(self.problems) == 1:
            return f"{source}: {self.problems[0]}"
        lines = [f"{source}: {len(self.problems)} problems"]
        lines += [f"  - {p}" for p in self.problems[:_MAX_LISTED]]
        if len(self.problems) > _MAX_LISTED:
            lines.append(f"  ... and {len(self.problems) - _MAX_LISTED} more; fix these first.")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Public loaders


def default_path(filename: str, settings: Settings | None = None) -> Path:
    """Where the kit looks for a data file: ``settings.data_dir / filename``.

    Going through the settings (rather than a path relative to the working directory) means a
    notebook run by papermill from another folder, or a test with its own data folder, finds
    the same files the command line does.
    """
    settings = settings if settings is not None else get_settings()
    return Path(settings.data_dir) / filename


def load_taverns(path: Path | str | None = None, settings: Settings | None = None) -> pd.DataFrame:
    """Read and check ``taverns.csv``; return one row per tavern, all values as ``str``.

    Checks: the file exists and is UTF-8; every column of :data:`TAVERN_COLUMNS` is present
    and filled in; ``tavern_id`` is a unique lower-case slug (it is the key queries refer to);
    names are unique (ignoring case and surrounding spaces, since a search result is shown
    by name); ``canon`` is ``canon`` or ``invented``; text fits the Milvus schema
    (description <= 3000 UTF-8 bytes, name/location/famous_visitor <= 255).

    Surrounding whitespace is stripped from every cell and fully empty rows are skipped, as a
    spreadsheet user would expect. Extra columns are kept. Raises :class:`DataError`.
    """
    path = Path(path) if path is not None else default_path(TAVERNS_FILE, settings)
    df, rows = read_table(path, "tavern")
    problems = missing_columns(df, TAVERN_COLUMNS, path)
    if problems:
        raise DataError(path, problems)

    problems += empty_values(df, rows, TAVERN_COLUMNS)
    problems += duplicates(df, rows, "tavern_id", "tavern", key=lambda v: v)
    problems += duplicates(df, rows, "name", "tavern", key=lambda v: " ".join(v.casefold().split()))
    for i, row in zip(df.index, rows, strict=True):
        tid = df.at[i, "tavern_id"]
        if tid and not _SLUG.match(tid):
            problems.append(
                Problem(
                    row,
                    "tavern_id",
                    f"'{tid}' is not a slug. Use only lower-case letters, digits and single "
                    f"hyphens, for example '{_suggest_slug(tid)}'.",
                )
            )
        canon = df.at[i, "canon"]
        if canon and canon not in CANON_VALUES:
            problems.append(
                Problem(
                    row,
                    "canon",
                    f"'{canon}' is not allowed. Write 'canon' for a place from Tolkien's books or "
                    "'invented' for one made up for this kit.",
                )
            )
        problems += _too_long(df.at[i, "description"], DESCRIPTION_MAX_BYTES, row, "description")
        for column in SHORT_TEXT_COLUMNS:
            problems += _too_long(df.at[i, column], SHORT_TEXT_MAX_BYTES, row, column)

    if problems:
        raise DataError(path, sorted(problems, key=problem_order))
    df = df.reset_index(drop=True)
    df.attrs["source_path"] = str(path)  # lets load_queries say which tavern file it checked
    return df


def load_queries(
    path: Path | str | None = None,
    settings: Settings | None = None,
    taverns: pd.DataFrame | None = None,
    *,
    include_world_knowledge: bool = False,
    judgments: Path | str | None = None,
) -> pd.DataFrame:
    """Read and check ``queries.csv``; ``relevant`` becomes a tuple of tavern ids.

    Two columns are added: ``world_knowledge`` (bool, from the optional column of that name) and
    ``grades`` (a dict tavern id -> 2 for "the answer" or 1 for "partly relevant"). Queries that
    need world knowledge are left out unless ``include_world_knowledge``: they test what a model
    knows about Tolkien, not retrieval, and are reported separately.

    The grades and the evidence for each judgement come from ``judgments`` (default: the
    ``judgments.csv`` next to the queries file, if there is one; see
    :func:`helpers.judgments.load_judgments`). Its (query, tavern) pairs must be exactly those
    of the ``relevant`` column, so the two files cannot drift apart. Without a judgements file
    every relevant tavern gets grade 1 (binary relevance).

    The relevance judgements are only meaningful against a tavern table, so every id in
    ``relevant`` must exist in ``taverns`` (by default the kit's ``taverns.csv``, loaded with
    the same settings; pass your own table when you benchmark a different set). Also checks:
    columns present, ``query_id``/``query``/``relevant``/``difficulty`` filled in, unique
    ``query_id``, ``difficulty`` one of :data:`DIFFICULTIES`. ``note`` may be empty.

    Ids in ``relevant`` are separated by ``;``; spaces around them and a repeated id are
    tolerated (the set of relevant ids is what counts). Raises :class:`DataError`.
    """
    path = Path(path) if path is not None else default_path(QUERIES_FILE, settings)
    df, rows = read_table(path, "query")
    problems = missing_columns(df, QUERY_COLUMNS, path)
    if problems:
        raise DataError(path, problems)
    if taverns is None:
        taverns = load_taverns(settings=settings)
    if "tavern_id" not in taverns.columns:
        raise DataError(
            None,
            [
                Problem(
                    None,
                    "tavern_id",
                    "the tavern table passed as `taverns` has no 'tavern_id' column; pass the result "
                    "of load_taverns().",
                )
            ],
        )
    source = taverns.attrs.get("source_path", "the tavern table")
    known = [str(t) for t in taverns["tavern_id"]]
    known_set = set(known)

    problems += empty_values(df, rows, QUERY_REQUIRED)
    problems += duplicates(df, rows, "query_id", "query", key=lambda v: v)
    parsed: list[tuple[str, ...]] = []
    has_wk = WORLD_KNOWLEDGE_COLUMN in df.columns
    for i, row in zip(df.index, rows, strict=True):
        wk = df.at[i, WORLD_KNOWLEDGE_COLUMN].casefold() if has_wk else ""
        if wk and wk not in YES_NO:
            problems.append(
                Problem(
                    row,
                    WORLD_KNOWLEDGE_COLUMN,
                    f"'{df.at[i, WORLD_KNOWLEDGE_COLUMN]}' is not allowed. Write 'yes' if the query "
                    "needs facts that no reference description states, else 'no' (or leave it empty).",
                )
            )
        difficulty = df.at[i, "difficulty"]
        if difficulty and difficulty not in DIFFICULTIES:
            problems.append(
                Problem(
                    row,
                    "difficulty",
                    f"'{difficulty}' is not allowed. Use one of: {', '.join(DIFFICULTIES)}.",
                )
            )
        ids = parse_relevant(df.at[i, "relevant"])
        parsed.append(ids)
        if df.at[i, "relevant"] and not ids:
            problems.append(
                Problem(
                    row,
                    "relevant",
                    f"no tavern id found in '{df.at[i, 'relevant']}'. List ids from "
                    f"{TAVERNS_FILE}, separated by '{RELEVANT_SEPARATOR}'.",
                )
            )
        unknown = [t for t in ids if t not in known_set]
        if unknown:
            hints = []
            for t in unknown:
                close = difflib.get_close_matches(t, known, n=1)
                hints.append(f"'{t}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            ids_word = "id" if len(unknown) == 1 else "ids"
            problems.append(
                Problem(
                    row,
                    "relevant",
                    f"unknown tavern {ids_word} {', '.join(hints)}: not in the tavern_id column of "
                    f"{source}. Correct the spelling or add the tavern first.",
                )
            )

    if problems:
        raise DataError(path, sorted(problems, key=problem_order))
    df = df.copy()
    df["relevant"] = pd.Series(parsed, index=df.index, dtype=object)
    flags = df[WORLD_KNOWLEDGE_COLUMN].str.casefold() if has_wk else pd.Series("", index=df.index)
    df[WORLD_KNOWLEDGE_COLUMN] = flags.eq("yes")
    df["grades"] = _grades(df, path, taverns, judgments)
    if not include_world_knowledge:
        df = df[~df[WORLD_KNOWLEDGE_COLUMN]]
    return df.reset_index(drop=True)


def _grades(
    df: pd.DataFrame, queries_path: Path, taverns: pd.DataFrame, judgments: Path | str | None
) -> pd.Series:
    """The graded judgement of each query's relevant taverns, checked against ``relevant``."""
    from helpers.judgments import grades_by_query, load_judgments  # it imports this module

    path = Path(judgments) if judgments is not None else queries_path.parent / JUDGMENTS_FILE
    if judgments is None and not path.is_file():
        return pd.Series([dict.fromkeys(ids, 1) for ids in df["relevant"]], index=df.index)
    table = load_judgments(path, taverns=taverns)
    grades = grades_by_query(table, dict(zip(df["query_id"], df["relevant"], strict=True)), path)
    return pd.Series([grades[q] for q in df["query_id"]], index=df.index, dtype=object)


def parse_relevant(value: str) -> tuple[str, ...]:
    """``"a; b;a"`` -> ``("a", "b")``: split on ``;``, strip, drop empties and repeats."""
    seen: dict[str, None] = {}
    for part in str(value).split(RELEVANT_SEPARATOR):
        part = part.strip()
        if part:
            seen.setdefault(part, None)
    return tuple(seen)


def tavern_records(df: pd.DataFrame) -> list[dict[str, str]]:
    """The taverns as plain dicts with keys tavern_id, name, location, famous_visitor and
    description, the shape the notebooks pass to the generator and to Milvus inserts.

    Plain ``str`` values (not pandas objects) so the records can be JSON-logged and sent to
    pymilvus without conversion.
    """
    keys = ("tavern_id", "name", "location", "famous_visitor", "description")
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise DataError(
            None,
            [
                Problem(
                    None,
                    k,
                    "column missing from the table passed to tavern_records(); pass the result of "
                    "load_taverns().",
                )
                for k in missing
            ],
        )
    return [{k: str(rec[k]) for k in keys} for rec in df.to_dict("records")]


# ---------------------------------------------------------------------------------------------
# Reading


def read_table(
    path: Path, kind: str, columns: Sequence[str] | None = None
) -> tuple[pd.DataFrame, list[int]]:
    """Read a CSV into strings and return it with the spreadsheet row number of each row.

    pandas numbers *records*, which is what a spreadsheet shows as rows even when a quoted
    cell spans several lines, so row = position + 2. Blank lines are read (not skipped) so the
    numbering stays right, then fully empty rows are dropped.
    """
    if path.is_dir():
        raise DataError(
            path,
            [
                Problem(
                    None,
                    None,
                    f"this is a folder, not a file. Point to the {kind} CSV file itself.",
                )
            ],
        )
    if not path.exists():
        shipped = path.name in (TAVERNS_FILE, QUERIES_FILE, JUDGMENTS_FILE)
        restore = f"restore it with `git checkout -- data/{path.name}`, " if shipped else ""
        raise DataError(
            path,
            [
                Problem(
                    None,
                    None,
                    f"file not found. The kit reads its {kind} file from the data folder "
                    f"(settings.data_dir, set with GFL_DATA_DIR); {restore}point GFL_DATA_DIR at "
                    "the folder that holds it, or pass the right path.",
                )
            ],
        )
    raw = path.read_bytes()
    text = _decode(path, raw)
    if not text.strip():
        raise DataError(
            path,
            [
                Problem(
                    None,
                    None,
                    "the file is empty. It needs a header row with the columns "
                    f"{', '.join(columns or (TAVERN_COLUMNS if kind == 'tavern' else QUERY_COLUMNS))}.",
                )
            ],
        )

    header = next(csv.reader(io.StringIO(text)))
    stripped = [h.strip() for h in header]
    dupes = sorted({h for h in stripped if h and stripped.count(h) > 1})
    if dupes:
        raise DataError(
            path,
            [
                Problem(
                    1,
                    h,
                    "this column name appears more than once in the header. Rename or delete the copy.",
                )
                for h in dupes
            ],
        )

    try:
        df = pd.read_csv(
            io.StringIO(text),
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
        )
    except pd.errors.ParserError as exc:
        raise DataError(path, [_locate_parse_error(text, len(header), exc)]) from None

    df.columns = [str(c).strip() for c in df.columns]
    df = df.apply(lambda col: col.str.strip())
    rows_all = [i + 2 for i in range(len(df))]
    keep = (df != "").any(axis=1).to_numpy()
    df = df.loc[keep]
    rows = [r for r, k in zip(rows_all, keep, strict=True) if k]
    if not rows:
        raise DataError(
            path,
            [
                Problem(
                    None,
                    None,
                    f"the file has a header but no {kind} rows below it. Add at least one row.",
                )
            ],
        )
    return df, rows


def _decode(path: Path, raw: bytes) -> str:
    """UTF-8 (a byte-order mark, as Excel writes it, is accepted). Anything else is refused
    with the row and column of the first bad byte: guessing an encoding would silently turn
    'Éomer' into 'Ã‰omer' in the database."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        row, column = _find_replacement(raw.decode("utf-8-sig", errors="replace"))
        if row is None:
            row = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            path,
            [
                Problem(
                    row,
                    column,
                    f"the file is not UTF-8 (byte 0x{bad} at offset {exc.start} cannot be decoded; "
                    "it was probably saved as Windows-1252/Latin-1). Save it again as 'CSV UTF-8' "
                    "(Excel: File > Save As > CSV UTF-8; LibreOffice: Character set 'Unicode (UTF-8)').",
                )
            ],
        ) from None


def _find_replacement(text: str) -> tuple[int | None, str | None]:
    """Row and column of the first U+FFFD left by decoding with errors='replace'."""
    try:
        records = list(csv.reader(io.StringIO(text)))
    except csv.Error:
        return None, None
    header = records[0] if records else []
    for r, record in enumerate(records, start=1):
        for c, cell in enumerate(record):
            if "\ufffd" in cell:
                column = header[c].strip() if c < len(header) else f"#{c + 1}"
                return r, column
    return None, None


def _locate_parse_error(text: str, n_columns: int, exc: Exception) -> Problem:
    """Turn pandas' 'Expected 7 fields in line 12, saw 8' into a spreadsheet row."""
    try:
        for r, record in enumerate(csv.reader(io.StringIO(text)), start=1):
            if len(record) > n_columns:
                return Problem(
                    r,
                    None,
                    f"this row has {len(record)} cells but the header has {n_columns} columns. "
                    "A text with a comma must be in double quotes; remove stray cells or quote "
                    "the text.",
                )
    except csv.Error:
        pass
    return Problem(
        None, None, f"the file is not valid CSV ({exc}). Check for an unclosed double quote."
    )


# ---------------------------------------------------------------------------------------------
# Checks


def missing_columns(df: pd.DataFrame, expected: Iterable[str], path: Path) -> list[Problem]:
    have = list(df.columns)
    problems = []
    for column in expected:
        if column in have:
            continue
        close = difflib.get_close_matches(column, have, n=1, cutoff=0.6)
        hint = f" A column '{close[0]}' exists; rename it to '{column}'." if close else ""
        problems.append(
            Problem(
                1,
                column,
                f"required column is missing from the header.{hint} The header has: "
                f"{', '.join(have) or '(nothing)'}. Add a column named '{column}' to {path.name}.",
            )
        )
    return problems


def empty_values(df: pd.DataFrame, rows: list[int], columns: Iterable[str]) -> list[Problem]:
    problems = []
    for column in columns:
        for row, value in zip(rows, df[column], strict=True):
            if value == "":
                problems.append(
                    Problem(
                        row,
                        column,
                        "value is empty. Fill it in, or delete the row if it should not be there.",
                    )
                )
    return problems


def duplicates(
    df: pd.DataFrame, rows: list[int], column: str, kind: str, key: Callable[[str], str]
) -> list[Problem]:
    first: dict[str, int] = {}
    problems = []
    for row, value in zip(rows, df[column], strict=True):
        if value == "":
            continue
        k = key(value)
        if k in first:
            problems.append(
                Problem(
                    row,
                    column,
                    f"'{value}' already appears in row {first[k]}. Each {kind} needs its own "
                    f"{column}; rename one of them or delete the duplicate row.",
                )
            )
        else:
            first[k] = row
    return problems


def _too_long(value: str, limit: int, row: int, column: str) -> list[Problem]:
    size = len(value.encode("utf-8"))
    if size <= limit:
        return []
    return [
        Problem(
            row,
            column,
            f"text is too long: {size} UTF-8 bytes ({len(value)} characters), but the Milvus "
            f"schema holds at most {limit} bytes (accented letters take 2 bytes). Shorten it.",
        )
    ]


def _suggest_slug(value: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", value.casefold()).strip("-")
    return slug or "my-tavern"


def problem_order(p: Problem) -> tuple[int, str]:
    return (p.row if p.row is not None else 0, p.column or "")

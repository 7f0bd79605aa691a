"""Graded relevance judgements with evidence: ``data/judgments.csv``.

Why a file of its own: a relevance list alone ("q32: these five taverns") cannot be checked, and
the benchmark's numbers (success@k, MRR, nDCG) are only as good as those lists. Each row here
says which tavern answers which query, how well (grade 2 = the answer, 1 = partly relevant), and
quotes the words of the tavern's reference facts that make it relevant. The loader checks that
the quote is still in the tavern's text, so editing a description without re-judging the queries
that rely on it fails loudly instead of silently skewing every metric.

Columns: ``query_id``, ``tavern_id``, ``grade`` (1 or 2), ``evidence`` (one or more verbatim
excerpts of the tavern's ``name``, ``location``, ``famous_visitor`` or ``description``, joined
by `` | ``). :func:`helpers.data.load_queries` attaches the grades to each query and requires
the judged pairs to be exactly those of its ``relevant`` column.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from helpers.data import (
    JUDGMENTS_FILE,
    DataError,
    Problem,
    default_path,
    empty_values,
    load_taverns,
    missing_columns,
    problem_order,
    read_table,
)
from helpers.settings import Settings

log = logging.getLogger(__name__)

JUDGMENT_COLUMNS: tuple[str, ...] = ("query_id", "tavern_id", "grade", "evidence")
GRADES: tuple[int, ...] = (1, 2)  # 1 = partly relevant, 2 = the answer
EVIDENCE_SEPARATOR = " | "
# The reference facts a judgement may quote: the columns the README says relevance is judged on.
EVIDENCE_FIELDS: tuple[str, ...] = ("name", "location", "famous_visitor", "description")


def load_judgments(
    path: Path | str | None = None,
    settings: Settings | None = None,
    taverns: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Read and check ``judgments.csv``: one row per (query, relevant tavern), ``grade`` as int.

    Checks: the columns are present and filled in; ``grade`` is 1 or 2; each (query_id,
    tavern_id) pair appears once; ``tavern_id`` exists in ``taverns`` (default: the kit's
    ``taverns.csv``); every part of ``evidence`` occurs word for word in one of the tavern's
    reference facts (skipped when ``taverns`` lacks those columns). Raises :class:`DataError`
    naming the spreadsheet row and column.
    """
    path = Path(path) if path is not None else default_path(JUDGMENTS_FILE, settings)
    df, rows = read_table(path, "judgment", JUDGMENT_COLUMNS)
    problems = missing_columns(df, JUDGMENT_COLUMNS, path)
    if problems:
        raise DataError(path, problems)
    if taverns is None:
        taverns = load_taverns(settings=settings)
    facts = _facts(taverns)
    known = set(map(str, taverns["tavern_id"]))

    problems += empty_values(df, rows, JUDGMENT_COLUMNS)
    first: dict[tuple[str, str], int] = {}
    for i, row in zip(df.index, rows, strict=True):
        pair = (df.at[i, "query_id"], df.at[i, "tavern_id"])
        if pair in first:
            problems.append(
                Problem(
                    row,
                    "tavern_id",
                    f"{pair[0]} / {pair[1]} is already judged in row {first[pair]}. Keep one "
                    "judgement per query and tavern.",
                )
            )
        first.setdefault(pair, row)
        grade, tid, evidence = df.at[i, "grade"], df.at[i, "tavern_id"], df.at[i, "evidence"]
        if grade and grade not in {str(g) for g in GRADES}:
            problems.append(
                Problem(
                    row,
                    "grade",
                    f"'{grade}' is not a grade. Write 2 if the tavern is the answer, 1 if it is "
                    "partly relevant; delete the row (and the id in queries.csv) if it is neither.",
                )
            )
        if tid and tid not in known:
            problems.append(
                Problem(
                    row, "tavern_id", f"unknown tavern '{tid}'. Use a tavern_id of taverns.csv."
                )
            )
        elif tid and evidence and facts is not None:
            problems += _check_evidence(evidence, facts[tid], row, tid)

    if problems:
        raise DataError(path, sorted(problems, key=problem_order))
    out = df.reset_index(drop=True)
    out["grade"] = out["grade"].astype(int)
    return out


def grades_by_query(
    judgments: pd.DataFrame, relevant: Mapping[str, Sequence[str]], path: Path | str
) -> dict[str, dict[str, int]]:
    """``{query_id: {tavern_id: grade}}`` for the queries in ``relevant``, after checking that
    ``judgments`` covers exactly the pairs of ``relevant`` (queries.csv's lists): a tavern listed
    without a judgement, or judged without being listed, is an error naming both files."""
    judged: dict[str, dict[str, int]] = {}
    for rec in judgments.itertuples():
        judged.setdefault(rec.query_id, {})[rec.tavern_id] = int(rec.grade)
    problems = []
    for qid in sorted(set(judged) - set(relevant)):
        problems.append(
            Problem(None, "query_id", f"'{qid}' is judged here but is not in queries.csv.")
        )
    for qid, ids in relevant.items():
        have = judged.get(qid, {})
        unjudged = [t for t in ids if t not in have]
        unlisted = [t for t in have if t not in ids]
        if unjudged:
            problems.append(
                Problem(
                    None,
                    "tavern_id",
                    f"{qid}: {', '.join(unjudged)} listed as relevant in queries.csv but not judged "
                    "here. Add a row with its grade and evidence.",
                )
            )
        if unlisted:
            problems.append(
                Problem(
                    None,
                    "tavern_id",
                    f"{qid}: {', '.join(unlisted)} judged here but not listed in the 'relevant' "
                    "column of queries.csv. Add it there or delete the judgement.",
                )
            )
    if problems:
        raise DataError(path, problems)
    return {qid: {t: judged[qid][t] for t in ids} for qid, ids in relevant.items()}


def _facts(taverns: pd.DataFrame) -> dict[str, list[str]] | None:
    """Each tavern's reference facts, or None when the table does not carry them."""
    if not set(EVIDENCE_FIELDS) <= set(taverns.columns):
        log.debug("tavern table lacks %s: evidence not checked", EVIDENCE_FIELDS)
        return None
    return {
        str(rec["tavern_id"]): [str(rec[c]) for c in EVIDENCE_FIELDS]
        for rec in taverns.to_dict("records")
    }


def _check_evidence(evidence: str, facts: Sequence[str], row: int, tid: str) -> list[Problem]:
    missing = [
        part
        for part in (p.strip() for p in evidence.split(EVIDENCE_SEPARATOR.strip()))
        if part and not any(part in text for text in facts)
    ]
    if not missing:
        return []
    quoted = "; ".join(f"'{m}'" for m in missing)
    return [
        Problem(
            row,
            "evidence",
            f"not found word for word in {tid}'s name, location, famous_visitor or description: "
            f"{quoted}. The description changed since this was judged: re-judge the query and "
            "quote the words that make the tavern relevant.",
        )
    ]

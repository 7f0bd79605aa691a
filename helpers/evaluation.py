"""Scoring generated tavern descriptions: cheap offline scores, an optional LLM judge, human ratings.

The article's loop says outputs are "evaluated based on a predefined set of criteria ... human
experts assessing their quality and accuracy or comparing them to ground-truth data", and never
shows how. This module is that step for the feedback loop (:mod:`helpers.loop`); the judge is in
:mod:`helpers.judge`, the human ratings in :mod:`helpers.ratings` (both re-exported here):

Offline scores, each in [0, 1] unless stated (all computed from the text, its embedding, the
tavern's facts and the context it was generated from; no network, a few milliseconds each):

``coverage``
    Share of the three facts the prompt asks for (name, location, famous visitor) that the text
    mentions. Matching is case- and accent-insensitive and tolerant: a leading "The" may be left
    out ("Prancing Pony"), a nickname in parentheses or quotes counts on its own ("Aragorn
    (Strider)" is matched by "Aragorn" or by "Strider"), a person may be named by the first word
    of the name unless it is a title or a common word ("Frodo", not "Prince" or "Will"), and a
    location is mentioned when any proper name in it is ("Bucklebury Ferry, Buckland" by
    "Buckland"). Why: a description that forgets where the inn is or who visited it fails the
    article's prompt, whatever else it does well.
``reference_similarity``
    Cosine similarity (clipped at 0) of the text's all-MiniLM-L6-v2 embedding with the embedding
    of the tavern's human reference description in ``data/taverns.csv``. The loop reuses the
    embedding it computes anyway for the insert. Why: the ground-truth comparison of the
    article; its fall over iterations is the "drift" of the model-collapse literature.
``length_score`` (and ``words``)
    1 when the word count is within ``length_bounds`` (default 30-220 words), falling linearly
    to 0 at 0 words and at twice the upper bound. Why: a one-line or a run-on answer is a
    failure the other scores can miss.
``distinct_1``, ``distinct_2``
    Unique word unigrams (bigrams) divided by all of them. Low values mean loops and repeated
    phrases ("a place to hide and hide..."), the first visible sign of a degenerating small model.
``longest_copy`` (words, not in [0, 1]) and ``copy_share``
    The longest run of words the text shares with any one context description, and the share of
    the text's words that lie in a shared run of at least ``copy_min_span`` (default 6) words.
    Why: with earlier descriptions in its prompt a small model copies whole sentences (docs/measured-facts.md);
    copying is how errors and phrasing spread through the loop.
``auto_score``
    The weighted sum of the above (see :class:`ScoreWeights`): coverage 0.35, reference
    similarity 0.25, length 0.10, distinct-2 0.15, novelty (1 - copy_share) 0.15.

Optional scores, merged into the final ``score`` when present (weights in :class:`ScoreWeights`):

``judge_score``
    An LLM's 1-10 rating (Claude when a key is set; any :class:`~helpers.generators.Generator`
    works), mapped to [0, 1]. Never needed offline.
``human_rating`` / ``human_score``
    The mean 1-5 rating human raters gave this (run, tavern, iteration) in ``data/feedback/*.csv``
    (see ``data/feedback/README.md``), and the same mapped to [0, 1].

``score``
    The weighted mean of ``auto_score``, ``judge_score`` and ``human_score``, leaving out the
    ones that are missing. With neither judge nor ratings it equals ``auto_score``.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from helpers.embeddings import encode_documents
from helpers.judge import JUDGE_PROMPT, LLMJudge, make_judge, parse_judge_score, quote_safe
from helpers.ratings import (
    FEEDBACK_DIR,
    OPTIONAL_RATING_COLUMNS,
    RATING_COLUMNS,
    Rating,
    Ratings,
    RatingsError,
    load_ratings,
    read_ratings_file,
)

__all__ = [
    "FEEDBACK_DIR", "JUDGE_PROMPT", "OPTIONAL_RATING_COLUMNS", "RATING_COLUMNS", "Evaluator",
    "FactCoverage", "LLMJudge", "Rating", "Ratings", "RatingsError", "ScoreWeights", "combine",
    "copied_share", "cosine", "dispersion", "distinct_n", "evaluate_text", "fact_coverage",
    "fact_variants", "gate_score", "length_score", "load_ratings", "longest_shared_span", "make_judge",
    "mentions", "normalize", "parse_judge_score", "quote_safe", "read_ratings_file", "words",
]  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Text normalisation and fact matching

_NON_WORD = re.compile(r"[^0-9a-z]+")
_PARENS = re.compile(r"\(([^)]*)\)")
_QUOTED = re.compile(r"[\"'‘’“”]([^\"'‘’“”]{2,})[\"'‘’“”]")
# Titles and common English words that are not, on their own, a mention of a person.
_NOT_A_NAME_ALONE = frozenset(
    {
        "the", "old", "young", "prince", "princess", "king", "queen", "lord", "lady", "farmer",
        "master", "mister", "mr", "mrs", "sir", "captain", "will", "bill", "bard", "may", "rose",
        "hob", "tom", "ted", "lay", "mark", "saint",
    }
)  # fmt: skip
_CONNECTORS = frozenset({"of", "the"})


def normalize(text: str) -> str:
    """Lower case, accents removed, every run of non-alphanumerics one space: ``" words "``.

    Padded with spaces so that ``" bree " in normalize(text)`` is a whole-word test.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()
    return " " + " ".join(_NON_WORD.sub(" ", plain).split()) + " "


def words(text: str) -> list[str]:
    """The text's words, normalised (lower case, no accents, no punctuation)."""
    return normalize(text).split()


def _strip_article(phrase: str) -> str:
    return re.sub(r"^(the|a|an)\s+", "", phrase.strip(), flags=re.IGNORECASE)


def _nicknames(value: str) -> tuple[str, list[str]]:
    """``"Hamfast Gamgee (the Gaffer)"`` -> ``("Hamfast Gamgee", ["the Gaffer"])``, quotes too."""
    nicks = [m.strip() for m in _PARENS.findall(value)]
    nicks += [m.strip() for m in _QUOTED.findall(value)]
    base = _PARENS.sub(" ", value)
    base = _QUOTED.sub(" ", base) if _QUOTED.search(base) else base
    return " ".join(base.split()), [n for n in nicks if n]


def _proper_phrases(value: str) -> list[str]:
    """Runs of capitalised words, joined across 'of'/'the': 'near the Ford of Bruinen, on the
    road to Rivendell' -> ['Ford of Bruinen', 'Rivendell']."""
    tokens = re.findall(r"[\w'’-]+", value)
    phrases: list[list[str]] = []
    current: list[str] = []
    pending: list[str] = []
    for tok in tokens:
        if tok[:1].isupper():
            if current:
                current.extend(pending)
            current.append(tok)
            pending = []
        elif current and tok.lower() in _CONNECTORS:
            pending.append(tok)
        else:
            if current:
                phrases.append(current)
            current, pending = [], []
    if current:
        phrases.append(current)
    return [_strip_article(" ".join(p)) for p in phrases]


def fact_variants(kind: str, value: str) -> tuple[str, ...]:
    """The normalised phrases any one of which counts as mentioning the fact.

    ``kind`` is ``name``, ``location`` or ``famous_visitor`` (see the module docstring for the
    rules). Every variant is normalised, has at least 3 characters and is not a common word.
    """
    if kind not in ("name", "location", "famous_visitor"):
        raise ValueError(f"kind must be name, location or famous_visitor, not {kind!r}.")
    base, nicks = _nicknames(value)
    raw: list[str] = [value, base, _strip_article(base)]
    raw += [_strip_article(n) for n in nicks]
    if kind == "location":
        for part in [base, *nicks]:
            for piece in part.split(","):  # 'Bucklebury Ferry, Buckland': either place counts
                raw += [_strip_article(piece), *_proper_phrases(piece)]
    elif kind == "famous_visitor":
        main = re.split(r"\s+the\s+", base, maxsplit=1)[0]  # 'Círdan the Shipwright' -> 'Círdan'
        raw.append(main)
        parts = main.split()
        while parts and parts[0].lower() in _NOT_A_NAME_ALONE:  # 'Prince Imrahil' -> 'Imrahil'
            parts = parts[1:]
        if parts:
            raw += [" ".join(parts), parts[0]]
    out: dict[str, None] = {}
    for phrase in raw:
        norm = normalize(phrase).strip()
        if len(norm) >= 3 and norm not in _NOT_A_NAME_ALONE:
            out.setdefault(norm, None)
    return tuple(out)


def mentions(text: str, variants: Iterable[str]) -> bool:
    """Whether ``text`` contains any of the (normalised) ``variants`` as whole words."""
    padded = normalize(text)
    return any(f" {v} " in padded for v in variants)


@dataclass(frozen=True)
class FactCoverage:
    """Which of the three prompted facts a text mentions."""

    name: bool
    location: bool
    famous_visitor: bool

    @property
    def score(self) -> float:
        return (self.name + self.location + self.famous_visitor) / 3


def fact_coverage(text: str, name: str, location: str, famous_visitor: str) -> FactCoverage:
    """Does ``text`` mention the tavern's name, its location and its famous visitor?"""
    return FactCoverage(
        name=mentions(text, fact_variants("name", name)),
        location=mentions(text, fact_variants("location", location)),
        famous_visitor=mentions(text, fact_variants("famous_visitor", famous_visitor)),
    )


# ---------------------------------------------------------------------------------------------
# Repetition, copying, length


def distinct_n(text: str, n: int) -> float:
    """Unique word n-grams / all word n-grams (0.0 for a text shorter than ``n`` words)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    toks = words(text)
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _longest_common_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common contiguous run of words of ``a`` and ``b`` (dynamic
    programming over one row; texts here are a few hundred words)."""
    if not a or not b:
        return 0
    best = 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                if cur[j] > best:
                    best = cur[j]
        prev = cur
    return best


def longest_shared_span(text: str, sources: Iterable[str]) -> int:
    """The longest run of words ``text`` shares with any one of ``sources`` (0 if none)."""
    toks = words(text)
    return max((_longest_common_run(toks, words(src)) for src in sources), default=0)


def copied_share(text: str, sources: Iterable[str], min_span: int = 6) -> float:
    """Share of ``text``'s words inside a run of >= ``min_span`` words found in a source.

    ``min_span`` words in a row is the threshold because shorter shared runs ("the tavern was a")
    happen between any two texts on one topic; six in a row are a copy.
    """
    if min_span < 1:
        raise ValueError(f"min_span must be >= 1, got {min_span}.")
    toks = words(text)
    if len(toks) < min_span:
        return 0.0
    grams: set[tuple[str, ...]] = set()
    for src in sources:
        st = words(src)
        grams.update(tuple(st[i : i + min_span]) for i in range(len(st) - min_span + 1))
    covered = [False] * len(toks)
    for i in range(len(toks) - min_span + 1):
        if tuple(toks[i : i + min_span]) in grams:
            for j in range(i, i + min_span):
                covered[j] = True
    return sum(covered) / len(toks)


def length_score(n_words: int, bounds: tuple[int, int] = (30, 220)) -> float:
    """1 within ``bounds`` (inclusive), linear to 0 at 0 words and at twice the upper bound."""
    lo, hi = bounds
    if not 0 < lo <= hi:
        raise ValueError(f"length bounds must satisfy 0 < low <= high, got {bounds}.")
    if n_words < lo:
        return max(0.0, n_words / lo)
    if n_words > hi:
        return max(0.0, 1.0 - (n_words - hi) / hi)
    return 1.0


def cosine(a: Any, b: Any) -> float:
    """Cosine similarity of two vectors, computed exactly (``math.fsum``) so it is the same in
    every process; the loop relies on that for deterministic ranking."""
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    dot = math.fsum(x * y)
    norm = math.sqrt(math.fsum(x * x)) * math.sqrt(math.fsum(y * y))
    return dot / norm if norm else 0.0


def dispersion(vectors: Sequence[Any]) -> float:
    """Mean pairwise cosine distance of a set of embeddings (NaN for fewer than two).

    The loop reports it per iteration: when it falls, the texts grow alike (homogenisation, the
    stand-in for the lost tails of the model-collapse papers).
    """
    if len(vectors) < 2:
        return float("nan")
    m = np.asarray(vectors, dtype=np.float64)
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    sims = m @ m.T
    n = len(m)
    return float((n * n - sims.sum()) / (n * (n - 1)))


# ---------------------------------------------------------------------------------------------
# Weights and the combined score


@dataclass(frozen=True)
class ScoreWeights:
    """How the offline scores add up to ``auto_score``, and how it merges with the others.

    The offline weights sum to 1, so ``auto_score`` is in [0, 1]. Facts come first (0.35): the
    prompt asks for them and a reader checks them first. Closeness to the human reference (0.25)
    is the ground-truth check. Repetition and copying (0.15 each) are how the loop degrades.
    Length (0.10) only catches the extremes.

    ``judge`` and ``human`` are the weights of the LLM judge and the human ratings against
    ``auto`` when the final ``score`` is averaged; a human rating counts as much as all the
    offline scores together, the judge half as much.
    """

    coverage: float = 0.35
    reference_similarity: float = 0.25
    length: float = 0.10
    distinct_2: float = 0.15
    novelty: float = 0.15
    auto: float = 1.0
    judge: float = 0.5
    human: float = 1.0

    def __post_init__(self) -> None:
        parts = (
            self.coverage,
            self.reference_similarity,
            self.length,
            self.distinct_2,
            self.novelty,
        )
        if any(w < 0 for w in (*parts, self.auto, self.judge, self.human)):
            raise ValueError("score weights must not be negative.")
        if not math.isclose(sum(parts), 1.0, abs_tol=1e-9):
            raise ValueError(
                f"the five offline weights must sum to 1 (they sum to {sum(parts):.3f}), so that "
                "auto_score stays in [0, 1]."
            )


def combine(scores: Mapping[str, Any], weights: ScoreWeights = ScoreWeights()) -> float:
    """The final ``score``: weighted mean of auto, judge and human scores that are present."""
    parts = [(weights.auto, scores.get("auto_score"))]
    parts.append((weights.judge, scores.get("judge_score")))
    parts.append((weights.human, scores.get("human_score")))
    present = [(w, float(v)) for w, v in parts if v is not None and w > 0]
    total = sum(w for w, _ in present)
    return sum(w * v for w, v in present) / total if total else 0.0


def gate_score(scores: Mapping[str, Any], weights: ScoreWeights = ScoreWeights()) -> float:
    """The score the ``gated`` policy decides by, built only from inputs that do not read the
    human reference: the offline part is the weighted mean of ``coverage`` (the tavern's own
    name, location and visitor), ``length_score``, ``distinct_2`` and novelty
    (``1 - copy_share``), with :class:`ScoreWeights`' weights for them; the judge's score, when
    present, is merged as in :func:`combine`. ``reference_similarity`` and human ratings never
    enter. A missing input raises ``KeyError``.
    """
    w = weights
    total = w.coverage + w.length + w.distinct_2 + w.novelty
    offline = (
        w.coverage * float(scores["coverage"])
        + w.length * float(scores["length_score"])
        + w.distinct_2 * float(scores["distinct_2"])
        + w.novelty * (1.0 - float(scores["copy_share"]))
    ) / total
    return combine({"auto_score": offline, "judge_score": scores.get("judge_score")}, w)


# ---------------------------------------------------------------------------------------------
# The evaluator


@dataclass
class Evaluator:
    """The loop's evaluation step: offline scores, plus judge and ratings when given.

    ``evaluate`` takes the embeddings when the caller has them (the loop does: it embeds every
    text for the insert anyway) and computes them otherwise, so a notebook can score any text.
    """

    weights: ScoreWeights = field(default_factory=ScoreWeights)
    length_bounds: tuple[int, int] = (30, 220)
    copy_min_span: int = 6
    judge: LLMJudge | None = None
    ratings: Ratings = field(default_factory=Ratings)

    def offline_scores(
        self,
        text: str,
        tavern: Mapping[str, str],
        *,
        text_vector: Any = None,
        reference_vector: Any = None,
        context_texts: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The offline scores and their weighted sum ``auto_score`` (see the module docstring)."""
        facts = fact_coverage(text, tavern["name"], tavern["location"], tavern["famous_visitor"])
        reference = tavern.get("reference") or tavern.get("description") or ""
        if text_vector is None or (reference_vector is None and reference):
            if text_vector is None:
                text_vector = encode_documents([text])[0]
            if reference_vector is None and reference:
                reference_vector = encode_documents([reference])[0]
        similarity = (
            max(0.0, cosine(text_vector, reference_vector)) if reference_vector is not None else 0.0
        )
        n_words = len(words(text))
        out: dict[str, Any] = {
            "coverage": facts.score,
            "has_name": facts.name,
            "has_location": facts.location,
            "has_visitor": facts.famous_visitor,
            "reference_similarity": similarity,
            "words": n_words,
            "length_score": length_score(n_words, self.length_bounds),
            "distinct_1": distinct_n(text, 1),
            "distinct_2": distinct_n(text, 2),
            "longest_copy": longest_shared_span(text, context_texts),
            "copy_share": copied_share(text, context_texts, self.copy_min_span),
        }
        w = self.weights
        out["auto_score"] = (
            w.coverage * out["coverage"]
            + w.reference_similarity * out["reference_similarity"]
            + w.length * out["length_score"]
            + w.distinct_2 * out["distinct_2"]
            + w.novelty * (1.0 - out["copy_share"])
        )
        return out

    def evaluate(
        self,
        text: str,
        tavern: Mapping[str, str],
        *,
        text_vector: Any = None,
        reference_vector: Any = None,
        context_texts: Sequence[str] = (),
        run_id: str = "",
        iteration: int | None = None,
    ) -> dict[str, Any]:
        """All scores of one text, ``score`` last. ``tavern`` needs name, location,
        famous_visitor and (for the reference similarity) ``reference`` or ``description``,
        the human reference text; ``tavern_id`` is needed to look up human ratings."""
        scores = self.offline_scores(
            text,
            tavern,
            text_vector=text_vector,
            reference_vector=reference_vector,
            context_texts=context_texts,
        )
        if self.judge is not None:
            scores.update(self.judge.judge(text, tavern))
        if iteration is not None and len(self.ratings):
            mean = self.ratings.mean(run_id, str(tavern.get("tavern_id", "")), iteration)
            if mean is not None:
                scores["human_rating"] = mean
                scores["human_score"] = (mean - 1.0) / 4.0
        scores["gate_score"] = gate_score(scores, self.weights)
        scores["score"] = combine(scores, self.weights)
        return {k: _plain(v) for k, v in scores.items()}


def _plain(value: Any) -> Any:
    """JSON-friendly: numpy scalars become Python numbers, floats are rounded to 6 places (the
    ledger and the stored row show the same number)."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return round(float(value), 6)
    return value


def evaluate_text(
    text: str,
    tavern: Mapping[str, str],
    *,
    context_texts: Sequence[str] = (),
    evaluator: Evaluator | None = None,
) -> dict[str, Any]:
    """Score one text with the default offline evaluator (embeddings computed here).

    For a notebook: ``evaluate_text(text, taverns.iloc[0].to_dict())``.
    """
    return (evaluator or Evaluator()).evaluate(text, tavern, context_texts=context_texts)

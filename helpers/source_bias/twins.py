"""Twins: generated rewrites of the human texts, matched in length (helpers/source_bias)."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

LENGTH_TOLERANCE = 0.10  # the twin's word count may differ from the human text's by 10 %
MAX_ATTEMPTS = 6  # seeds tried per tavern before it is recorded as unmatched
MAX_COPY_SHARE = 0.6  # a twin copying more of its word 4-grams from the human text is no rewrite
MIN_NAME_RETENTION = 0.6  # ... and one keeping fewer of its names has lost the facts
TOKENS_PER_WORD = 1.6  # generous: SmolLM2 spends about 1.3 tokens per English word

REWRITE_SYSTEM = "You rewrite texts. Keep every name, place and fact. Do not add new facts."
REWRITE_PROMPT = (
    "Rewrite this description of a tavern in your own words, in about {n_words} words. "
    "Keep every name, place and fact; add nothing.\n\n{text}"
)
# Temperature of attempt 1, 2, 3, then again 4, 5, 6 (new seeds): greedy decoding copies the
# text nearly word for word, at 0.7 the facts are lost (tried), so each retry moves a step
# further from the text; the cycle gives a lost-names failure another low-temperature try.
REWRITE_TEMPERATURES = (0.3, 0.45, 0.6)


def rewrite_temperature(attempt: int) -> float:
    """The temperature of attempt 1, 2, ... (:data:`REWRITE_TEMPERATURES`, cycled)."""
    return REWRITE_TEMPERATURES[(attempt - 1) % len(REWRITE_TEMPERATURES)]


# ---------------------------------------------------------------------------------------------
# Length matching

_SENTENCE_SPLIT = re.compile(r"(?:(?<=[.!?…])|(?<=[.!?…][\"'”’)\]]))\s+")


def word_count(text: str) -> int:
    return len(text.split())


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (split after . ! ? or …, maybe followed by a closing quote)."""
    return [s.strip() for s in _SENTENCE_SPLIT.split(text.strip()) if s.strip()]


def length_ok(n_words: int, target: int, tolerance: float = LENGTH_TOLERANCE) -> bool:
    """True when ``n_words`` is within ``tolerance`` (a fraction) of ``target`` words."""
    return abs(n_words - target) <= tolerance * target


def fit_length(text: str, target: int, tolerance: float = LENGTH_TOLERANCE) -> str | None:
    """The longest run of whole leading sentences of ``text`` whose length is within
    ``tolerance`` of ``target`` words, or None when no such prefix exists (too short, or a
    first sentence that already overshoots). Cutting whole sentences keeps the twin readable."""
    sentences = split_sentences(text)
    best = None
    for i in range(1, len(sentences) + 1):
        prefix = " ".join(sentences[:i])
        n = word_count(prefix)
        if length_ok(n, target, tolerance):
            best = prefix
        if n > target * (1 + tolerance):
            break
    return best


def token_cap(target: int, tolerance: float = LENGTH_TOLERANCE) -> int:
    """A max_tokens that leaves room for the longest acceptable twin (then cut to sentences)."""
    return int(np.ceil(target * (1 + tolerance) * TOKENS_PER_WORD)) + 8


# ---------------------------------------------------------------------------------------------
# Twin quality: how much is copied, how many names are kept

_WORD = re.compile(r"[\w'’-]+")


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def copy_share(twin: str, human: str, n: int = 4) -> float:
    """Share of the twin's word n-grams that occur verbatim in the human text (0 = none)."""
    tw, hw = _words(twin), _words(human)
    grams = [tuple(tw[i : i + n]) for i in range(len(tw) - n + 1)]
    if not grams:
        return 0.0
    human_grams = {tuple(hw[i : i + n]) for i in range(len(hw) - n + 1)}
    return sum(g in human_grams for g in grams) / len(grams)


def name_retention(twin: str, human: str) -> float:
    """Share of the human text's capitalised words (names, places; sentence-initial words too)
    that the twin also contains: a cheap proxy for "the same facts"."""
    names = {w for w in _WORD.findall(human) if w[:1].isupper()}
    if not names:
        return 1.0
    kept = set(_WORD.findall(twin))
    return len(names & kept) / len(names)


def is_rewrite(twin: str, human: str) -> bool:
    """The twin is a rewrite that keeps the facts: at most :data:`MAX_COPY_SHARE` of its word
    4-grams copied, at least :data:`MIN_NAME_RETENTION` of the human text's names kept."""
    return (
        copy_share(twin, human) <= MAX_COPY_SHARE
        and name_retention(twin, human) >= MIN_NAME_RETENTION
    )


# ---------------------------------------------------------------------------------------------
# Twins


@dataclass(frozen=True)
class Twin:
    """One tavern's generated rewrite and how it was obtained."""

    tavern_id: str
    matched: bool  # within the length tolerance and not a near copy
    seed: int  # seed of the accepted (or, when unmatched, the last) attempt
    attempts: int
    human_words: int
    twin_words: int
    copy_share: float
    name_retention: float
    text: str


def make_twin(
    generator: Any,
    tavern_id: str,
    human: str,
    *,
    seed: int,
    max_attempts: int = MAX_ATTEMPTS,
    tolerance: float = LENGTH_TOLERANCE,
    first_attempt: int = 1,
) -> Twin:
    """Rewrite ``human`` with seeds ``seed``, ``seed + 1``, ... (and rising temperatures) until
    a rewrite, cut back to whole sentences, is within ``tolerance`` of its length and passes
    :func:`is_rewrite`. After ``max_attempts`` the tavern is unmatched (the last attempt is kept
    for inspection, but excluded from the test). ``first_attempt`` > 1 resumes after attempts
    that failed before: attempt ``a`` always uses seed ``seed + a - 1`` and the same
    temperature, so the result equals a run that tried them all."""
    target = word_count(human)
    prompt = REWRITE_PROMPT.format(n_words=target, text=human)
    text = ""
    for attempt in range(first_attempt, max_attempts + 1):
        s = seed + attempt - 1
        raw = generator.generate(
            prompt,
            system=REWRITE_SYSTEM,
            max_tokens=token_cap(target, tolerance),
            temperature=rewrite_temperature(attempt),
            seed=s,
        ).text
        fitted = fit_length(raw, target, tolerance)
        text = fitted or raw.strip()
        log.info(
            "%s attempt %d: %d words raw (target %d), fitted %s, copied %.2f, names %.2f",
            tavern_id,
            attempt,
            word_count(raw),
            target,
            fitted is not None,
            copy_share(text, human),
            name_retention(text, human),
        )
        if fitted and is_rewrite(fitted, human):
            return _twin(tavern_id, True, s, attempt, human, text)
    return _twin(tavern_id, False, seed + max_attempts - 1, max_attempts, human, text)


def _twin(tavern_id: str, matched: bool, seed: int, attempts: int, human: str, text: str) -> Twin:
    return Twin(
        tavern_id=tavern_id,
        matched=matched,
        seed=seed,
        attempts=attempts,
        human_words=word_count(human),
        twin_words=word_count(text),
        copy_share=round(copy_share(text, human), 4),
        name_retention=round(name_retention(text, human), 4),
        text=text,
    )


def generate_twins(
    generator: Any,
    taverns: pd.DataFrame,
    cache: Path,
    *,
    seed: int,
    max_attempts: int = MAX_ATTEMPTS,
) -> pd.DataFrame:
    """Twins of every tavern in ``taverns`` (columns tavern_id, description). Each finished twin
    is appended to ``cache`` (JSON lines) at once, so an interrupted run resumes where it
    stopped; a cached twin made with another seed or from another length of the human text
    (data/taverns.csv changed) is made again, and an unmatched one that had fewer than
    ``max_attempts`` attempts goes on from its next attempt."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    done = read_cache([cache])
    rows = []
    for n, (i, tid, human) in enumerate(
        zip(taverns.index, taverns["tavern_id"], taverns["description"], strict=True)
    ):
        tavern_seed = seed + 1000 * int(i)  # by row label: a shard gets the whole run's seeds
        twin = done.get(tid)
        first = 1
        if twin is not None and (
            twin.seed != tavern_seed + twin.attempts - 1 or twin.human_words != word_count(human)
        ):
            twin = None  # made with another seed, or from an older version of the human text
        if twin is not None and not twin.matched and twin.attempts < max_attempts:
            first, twin = twin.attempts + 1, None
        if twin is None:
            twin = make_twin(
                generator, tid, human, seed=tavern_seed, max_attempts=max_attempts,
                first_attempt=first,
            )  # fmt: skip
            with cache.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(asdict(twin)) + "\n")
            log.info("twin %d/%d %s: matched=%s", n + 1, len(taverns), tid, twin.matched)
        rows.append(asdict(twin))
    return pd.DataFrame(rows, columns=[f for f in Twin.__dataclass_fields__])


def read_cache(paths: list[Path]) -> dict[str, Twin]:
    """Twins by tavern id from JSON-lines caches (later lines and files win)."""
    done: dict[str, Twin] = {}
    for path in paths:
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    twin = Twin(**json.loads(line))
                    done[twin.tavern_id] = twin
    return done


def cached_twins(taverns: pd.DataFrame, paths: list[Path]) -> pd.DataFrame:
    """The twins made so far, one row per tavern; a tavern not reached yet gets ``attempts`` 0
    and ``matched`` False, so a run stopped for time is reported, not hidden."""
    done = read_cache(paths)
    rows = []
    for tid, human in zip(taverns["tavern_id"], taverns["description"], strict=True):
        twin = done.get(tid) or Twin(tid, False, -1, 0, word_count(human), 0, 0.0, 0.0, "")
        rows.append(asdict(twin))
    return pd.DataFrame(rows, columns=[f for f in Twin.__dataclass_fields__])


def load_twins(path: Path) -> pd.DataFrame:
    """Twins saved by :func:`generate_twins` as CSV (the committed results)."""
    if not path.exists():
        raise FileNotFoundError(
            f"No twins at {path}; run `python scripts/source_bias.py` to generate them."
        )
    df = pd.read_csv(path, keep_default_na=False)
    missing = set(Twin.__dataclass_fields__) - set(df.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}; regenerate it.")
    df["matched"] = df["matched"].astype(str).str.lower().isin(["true", "1"])
    return df

"""Pure helpers that need neither pymilvus nor a model: stable ids and UTF-8 limits.

They live apart from :mod:`helpers.schema` (which imports pymilvus) so that modules needing only
an id or a byte limit (the loop's parameters and prompt, the metrics) can import them at the top
without pulling in the Milvus client.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["fit_utf8", "stable_id", "truncate_utf8"]


def stable_id(*parts: object) -> int:
    """A deterministic positive INT64 primary key from a stable key (e.g. the tavern id)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


_SENTENCE_END = re.compile(r"[.!?…][\"')\]]*(?=\s|$)")


def truncate_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8 without splitting a character.

    For short labels (a model name in a VARCHAR field): the C++ server counts bytes, so a cut in
    characters (``text[:128]``) can still overflow the field with non-ASCII text.
    """
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def fit_utf8(text: str, max_bytes: int) -> str:
    """Cut ``text`` to at most ``max_bytes`` of UTF-8, at the last full sentence if there is one.

    Used for generated descriptions, which can run past the VARCHAR limit: a shorter text that
    ends on a sentence reads better and embeds more faithfully than a cut mid-word.
    """
    if len(text.encode("utf-8")) <= max_bytes:
        return text
    head = truncate_utf8(text, max_bytes)
    # Sentence ends are found in the whole text: the "2." of a "2.50" cut in half is not one.
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if m.end() <= len(head)]
    if ends:
        return head[: ends[-1]].rstrip()
    cut = head.rsplit(None, 1)[0] if " " in head else head
    return cut.rstrip()

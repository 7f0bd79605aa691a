"""The papers' metrics (helpers/paper_metrics.py, helpers/perplexity.py) on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import paper_metrics as pm

TAVERN = {
    "name": "The Prancing Pony",
    "location": "Bree",
    "famous_visitor": "Aragorn (Strider)",
    "description": "The Prancing Pony stands in Bree. Barliman Butterbur keeps it. "
    "In the evenings Gandalf visits.",
}


def test_reference_facts_skip_words_capitalised_only_by_position() -> None:
    assert pm.reference_facts(TAVERN["description"]) == [
        "Prancing Pony", "Bree", "Barliman Butterbur", "Gandalf"
    ]  # fmt: skip


def test_fact_retention_by_hand() -> None:
    text = "Strider sat in the common room of an inn in Bree, where Barliman Butterbur poured ale."
    r = pm.fact_retention(text, TAVERN)
    # fields: name no, location yes, visitor yes (the nickname) -> 2/3
    assert r.fields == pytest.approx(2 / 3)
    # reference facts: Prancing Pony no, Bree yes, Barliman Butterbur yes, Gandalf no
    assert r.kept == ("Bree", "Barliman Butterbur") and r.lost == ("Prancing Pony", "Gandalf")
    assert r.reference == pytest.approx(2 / 4)
    assert r.overall == pytest.approx((2 + 2) / (3 + 4))
    none = pm.fact_retention("A quiet room.", TAVERN)
    assert (none.fields, none.reference, none.overall) == (0.0, 0.0, 0.0)


def test_within_tavern_spread_by_hand() -> None:
    square = np.array([[1.0, 0], [0, 1.0], [-1.0, 0], [0, -1.0]])
    # 6 pairs: 4 orthogonal (distance 1) and 2 opposite (distance 2) -> 8/6
    spread = pm.within_tavern_spread({"a": square, "b": np.tile([[1.0, 1.0]], (4, 1))})
    assert spread["a"] == pytest.approx(8 / 6) and spread["b"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match=">= 4"):
        pm.within_tavern_spread({"c": square[:3]})


def test_knn_precision_and_recall_by_hand() -> None:
    # real: 5 directions in a tight cone around (1, 0, 0); k = 1 for a hand computation
    real = np.array([[1, 0.00, 0], [1, 0.10, 0], [1, 0.20, 0], [1, 0.30, 0], [1, 0.40, 0]])
    inside = np.array([[1, 0.05, 0], [1, 0.15, 0], [1, 0.25, 0]])
    far = np.array([[0, 0, 1.0], [0, 1.0, 0]])
    gen = np.vstack([inside, far])
    p, r = pm.knn_precision_recall(real, gen, k=1)
    assert p == pytest.approx(3 / 5)  # the three in the cone, not the two far ones
    # generated radii (k=1): an 'inside' point's nearest other generated point is ~0.1 away,
    # and every real point lies within ~0.05 of an inside point
    assert r == pytest.approx(1.0)
    p2, _ = pm.knn_precision_recall(real, np.vstack([far, [[0, 0.7, 0.7]], [[0, -1.0, 0]]]), k=1)
    assert p2 == 0.0
    with pytest.raises(ValueError, match="more than k"):
        pm.knn_precision_recall(real, inside, k=3)


def test_vendi_score_counts_effective_distinct_items() -> None:
    assert pm.vendi_score(np.eye(4)) == pytest.approx(4.0)
    assert pm.vendi_score(np.ones((5, 3))) == pytest.approx(1.0)
    # two identical + one orthogonal: K/n eigenvalues 2/3 and 1/3
    v = np.array([[1.0, 0], [1.0, 0], [0, 1.0]])
    expected = math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert pm.vendi_score(v) == pytest.approx(expected)


def test_k_occurrence_hubness_and_gini_by_hand() -> None:
    hits = [["a", "b", "c"], ["a", "c", "b"], ["a", "b", "d"]]
    counts = pm.k_occurrence(hits, ["a", "b", "c", "d", "e"], k=2)
    assert list(counts) == [3, 2, 1, 0, 0]
    mu, sd = 6 / 5, np.std([3, 2, 1, 0, 0])
    skew = np.mean((np.array([3, 2, 1, 0, 0]) - mu) ** 3) / sd**3
    assert pm.hubness(counts) == pytest.approx(skew)
    # Gini: sum |xi - xj| over ordered pairs = 2 * (1+2+3+3 + 1+2+2 + 1+1 + 0) = 32
    assert pm.gini(counts) == pytest.approx(32 / (2 * 25 * mu))
    assert pm.gini([1, 1, 1]) == 0.0 and pm.gini([0, 0, 4]) == pytest.approx(2 / 3)
    assert math.isnan(pm.hubness([2, 2, 2]))
    with pytest.raises(KeyError, match="not among"):
        pm.k_occurrence([["z"]], ["a"], k=1)


# --- perplexity under the real local model ------------------------------------------------------


@pytest.fixture(scope="module")
def local():
    from helpers.generators import LocalGenerator

    # one thread: with two, llama.cpp's threads wait on each other when the shared machine is
    # busy (measured at load 21: 60 s instead of 3 s per text)
    return LocalGenerator(n_threads=1)


def test_the_gguf_tokenizer_round_trips_text(local) -> None:
    from helpers.perplexity import gguf_tokenizer

    tok = gguf_tokenizer(str(local.model_path))
    text = "Barliman's inn, 1,200 leagues east — “quiet”."
    ids = tok.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == text
    assert tok.encode("1200").tokens == ["1", "2", "0", "0"]  # smollm: single digits


def test_perplexity_is_exp_of_the_mean_negative_logprob(local) -> None:
    text = "The Prancing Pony is an old inn in Bree. Travellers rest there."
    lp = pm.token_logprobs(text, generator=local)
    assert len(lp) > 10 and all(x <= 0 for x in lp)
    ppl = pm.perplexity(text, generator=local)
    assert ppl == pytest.approx(math.exp(-sum(lp) / len(lp)))
    # the same words in a scrambled order are far less likely under the model
    words = text.split()
    scrambled = " ".join(words[1::2] + words[::2])
    assert pm.perplexity(scrambled, generator=local) > 2 * ppl
    with pytest.raises(pm.PerplexityError, match="empty"):
        pm.perplexity("  ", generator=local)

"""The policy sweep of notebook 08: its grid, shared generations, tables, and the checks
against the published findings (helpers/experiments.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from helpers import experiments as ex
from helpers import plots
from helpers.feedback_loop import LoopParams, LoopParamsError
from helpers.generators import make_generator
from helpers.milvus_server import start_milvus

# --- the grid ----------------------------------------------------------------------------------


def test_sweep_points_cover_every_combination_with_seeds_innermost() -> None:
    points = ex.sweep_points()
    assert len(points) == 27
    assert [p.seed for p in points[:3]] == [1, 2, 3]
    assert len({p.run_id("x") for p in points}) == 27
    assert points[0].run_id("nb08") == "nb08-accumulate-hf100-s1"
    assert ex.SweepPoint("replace", 0.5, 7).run_id("p") == "p-replace-hf050-s7"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policies": ["accumulate", "keep-all"]}, "Unknown policies"),
        ({"human_fractions": [1.5]}, "human_fractions"),
        ({"seeds": [1, 1]}, "twice"),
        ({"seeds": []}, "empty"),
        ({"seeds": [-1]}, "non-negative"),
    ],
)
def test_sweep_points_refuse_bad_values_with_a_clear_message(kwargs, message) -> None:
    with pytest.raises(LoopParamsError, match=message):
        ex.sweep_points(**kwargs)


# --- numbers on hand-made tables -------------------------------------------------------------


def test_slope_is_the_least_squares_slope() -> None:
    assert ex.slope([0, 1, 2], [1.0, 3.0, 5.0]) == pytest.approx(2.0)
    assert ex.slope([0, 1, 2, 3], [0.0, 1.0, 1.0, 2.0]) == pytest.approx(0.6)
    assert math.isnan(ex.slope([0], [1.0]))
    assert math.isnan(ex.slope([0, 1], [1.0, float("nan")]))


def _table(values: dict[tuple[str, float, int], list[float]], metric: str) -> pd.DataFrame:
    rows = []
    for (policy, fraction, seed), series in values.items():
        for it, v in enumerate(series):
            rows.append({"run_id": f"{policy}-{fraction}-{seed}", "policy": policy,
                         "human_fraction": fraction, "seed": seed, "iteration": it,
                         metric: v})  # fmt: skip
    return pd.DataFrame(rows)


def test_checks_give_the_verdict_the_numbers_support() -> None:
    claims = (
        ex.Claim("A", "falls", "m", "replace", 0.0, -1),
        ex.Claim("B", "rises", "m", "replace", 0.0, +1),
        ex.Claim("C", "paired", "m", "replace", 0.0, -1, versus=("accumulate", 0.0)),
        ex.Claim("D", "flat", "m", "accumulate", 1.0, +1),
        ex.Claim("E", "missing", "m", "gated", 0.5, +1),
        ex.Claim("F", "above 1", "m", "accumulate", 0.0, +1, level=1.0),
    )
    table = _table(
        {
            ("replace", 0.0, 1): [1.0, 0.8, 0.6],  # slope -0.2
            ("replace", 0.0, 2): [1.0, 0.9, 0.8],  # slope -0.1
            ("accumulate", 0.0, 1): [1.0, 1.0, 1.0],  # slope 0, level 0
            ("accumulate", 0.0, 2): [1.0, 1.1, 1.2],  # slope +0.1, level +0.1
            ("accumulate", 1.0, 1): [0.5, 0.5, 0.5],
            ("accumulate", 1.0, 2): [0.5, 0.5, 0.5],
        },
        "m",
    )
    checks = ex.literature_checks(table, claims).set_index("study")
    assert checks.loc["A", "verdict"] == "reproduced (2/2 seeds)"
    assert checks.loc["A", "mean"] == pytest.approx(-0.15)
    assert checks.loc["B", "verdict"] == "opposite (2/2 seeds)"
    # paired by seed: seed 1: -0.2 - 0 = -0.2; seed 2: -0.1 - 0.1 = -0.2
    assert checks.loc["C", "per_seed"] == "-0.2000, -0.2000"
    assert checks.loc["C", "verdict"] == "reproduced (2/2 seeds)"
    assert checks.loc["D", "verdict"] == "no change (2/2 seeds)"
    assert checks.loc["E", "verdict"] == "not measurable"
    assert checks.loc["F", "verdict"] == "mixed (1/2 seeds agree)"
    assert checks.loc["F", "mean"] == pytest.approx(0.05)
    text = ex.checks_markdown(checks.reset_index())
    assert "-0.1500 per iteration" in text and "**not measurable**" in text


def test_seed_summary_and_side_by_side() -> None:
    table = _table(
        {("replace", 0.0, 1): [1.0, 0.8], ("replace", 0.0, 2): [1.0, 0.6],
         ("accumulate", 0.0, 1): [1.0, 1.0]},
        "dispersion",
    )  # fmt: skip
    summary = ex.seed_summary(table, ["dispersion"])
    last = summary[(summary["policy"] == "replace") & (summary["iteration"] == 1)].iloc[0]
    assert last["dispersion_mean"] == pytest.approx(0.7)
    assert last["dispersion_std"] == pytest.approx(np.std([0.8, 0.6], ddof=1))
    assert (last["dispersion_min"], last["dispersion_max"], last["seeds"]) == (0.6, 0.8, 2)
    side = ex.side_by_side(summary, ["dispersion"])
    assert side.loc[(0.0, "replace"), "dispersion"] == "0.700 ± 0.141"
    assert side.loc[(0.0, "accumulate"), "dispersion"] == "1.000 ± 0.000"
    with pytest.raises(KeyError, match="not in the summary"):
        ex.side_by_side(summary, ["recall"])


def test_plot_policy_sweep_draws_one_panel_per_fraction(tmp_path) -> None:
    table = _table(
        {(p, f, s): [0.9, 0.8 - 0.1 * s] for p in ("accumulate", "replace")
         for f in (1.0, 0.0) for s in (1, 2)},
        "dispersion",
    )  # fmt: skip
    fig = plots.plot_policy_sweep(ex.seed_summary(table, ["dispersion"]), "dispersion",
                                  ylabel="distance", out_dir=tmp_path)  # fmt: skip
    assert len(fig.axes) == 2
    assert len(fig.axes[0].get_lines()) == 2  # one line per policy
    assert (tmp_path / "sweep_dispersion.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="seed_summary"):
        plots.plot_policy_sweep(table, "dispersion", ylabel="x")


# --- a real sweep: SmolLM2 and milvus-lite -------------------------------------------------------


@pytest.fixture(scope="module")
def local_generator():
    return make_generator(__import__("helpers.settings").settings.get_settings(generator="local"),
                          announce=None)  # fmt: skip


def test_shared_generations_answer_a_repeated_request_from_the_file(tmp_path, local_generator):
    path = tmp_path / "shared.jsonl"
    shared = ex.SharedGenerations(local_generator, path)
    request = {"max_tokens": 8, "temperature": 0.8, "seed": 5}
    first = shared.generate("Describe an inn in Bree.", **request)
    calls = local_generator.usage.calls
    again = shared.generate("Describe an inn in Bree.", **request)
    assert again == first and (shared.hits, shared.misses) == (1, 1)
    assert local_generator.usage.calls == calls  # nothing generated for the repeat
    reopened = ex.SharedGenerations(local_generator, path)
    assert reopened.generate("Describe an inn in Bree.", **request) == first
    other = reopened.generate("Describe an inn in Bree.", **{**request, "seed": 6})
    assert reopened.misses == 1 and other.seed == 6
    assert (reopened.name, reopened.model) == (local_generator.name, local_generator.model)


def test_a_sweep_shares_the_iterations_the_policies_have_in_common(settings, local_generator):
    milvus = start_milvus(settings)
    try:
        # replace-keep-human: the humans stay in its view, so the two stores agree before
        # iteration 2 (Gerstgrasser's replace drops them after iteration 0)
        points = ex.sweep_points(["accumulate", "replace-keep-human"], [1.0], [1])
        base = LoopParams(iterations=2, n_taverns=2, max_tokens=10, generator="local")
        shared = ex.SharedGenerations(local_generator, tmp := settings.run_dir / "g.jsonl")
        runs = ex.run_sweep(points, base, settings, milvus=milvus, generator=shared,
                            prefix="t", progress=False)  # fmt: skip
        # before iteration 2 both policies see the same store: the second run generates nothing
        assert (shared.misses, shared.hits) == (4, 4)
        texts = [r.texts().sort_values(["iteration", "tavern_id"])["text"].tolist() for r in runs]
        assert texts[0] == texts[1]
        # running the sweep again continues nothing and generates nothing
        ex.run_sweep(points, base, settings, milvus=milvus, generator=shared, prefix="t",
                     progress=False)  # fmt: skip
        assert shared.misses == 4 and tmp.is_file()
        table = ex.experiment_table(runs, k=2, milvus=milvus)
        assert sorted(table["run_id"].unique()) == [
            "t-accumulate-hf100-s1",
            "t-replace-keep-human-hf100-s1",
        ]
        assert set(table["iteration"]) == {-1, 0, 1}
        before = table[table["iteration"] == -1]
        assert before["generated_share"].eq(0).all() and before["dispersion"].isna().all()
        after = table[table["iteration"] >= 0]
        assert after["dispersion"].between(0, 2).all() and after["generated_share"].gt(0).all()
    finally:
        milvus.stop()

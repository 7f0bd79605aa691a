"""The policy sweep of notebook 08: its grid, shared generations, tables, and the checks
against the published findings (helpers/experiments.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers import claims as cl
from helpers import experiment_results as er
from helpers import experiments as ex
from helpers import plots
from helpers.feedback_loop import LoopParams, LoopParamsError, load_run
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


# --- claims judged on hand-made sweep tables -------------------------------------------------


def _table(values: dict[tuple[str, float, int], list[float]], metric: str) -> pd.DataFrame:
    rows = []
    for (policy, fraction, seed), series in values.items():
        for it, v in enumerate(series):
            rows.append({"run_id": f"{policy}-{fraction}-{seed}", "policy": policy,
                         "human_fraction": fraction, "seed": seed, "iteration": it,
                         metric: v})  # fmt: skip
    return pd.DataFrame(rows)


def _units(arms, slopes, *, seeds=(1, 2, 3), taverns=12, iterations=6, noise=0.01, rng_seed=0):
    """A per-tavern unit table shaped like claims.tavern_units: ``metric = slope * t + tavern
    level + noise`` for each arm (policy, fraction) with its planted slope."""
    rng = np.random.default_rng(rng_seed)
    level = rng.normal(0.7, 0.05, size=taverns)
    rows = []
    for (policy, fraction), b in zip(arms, slopes, strict=True):
        for s in seeds:
            for c in range(taverns):
                for t in range(iterations):
                    rows.append({"run_id": f"{policy}-{fraction}-{s}", "policy": policy,
                                 "human_fraction": fraction, "seed": s, "iteration": t,
                                 "cluster": f"t{c}",
                                 "m": level[c] + b * t + noise * rng.normal()})  # fmt: skip
    return pd.DataFrame(rows)


def test_claims_are_effects_with_intervals_and_holm_corrected_verdicts() -> None:
    arms = [("replace", 0.0), ("accumulate", 0.0), ("accumulate", 1.0)]
    units = _units(arms, [-0.02, 0.0, 0.0])
    run_table = units.groupby([*cl.ARM_COLUMNS, "iteration"], as_index=False)["m"].mean()
    claims = (
        ex.Claim("A", "falls", "m", "replace", 0.0, -1, 0.005),
        ex.Claim("B", "rises", "m", "replace", 0.0, +1, 0.005),
        ex.Claim("C", "paired", "m", "replace", 0.0, -1, 0.005, versus=("accumulate", 0.0)),
        ex.Claim("D", "flat", "m", "accumulate", 1.0, +1, 0.005),
        ex.Claim("E", "missing", "m", "gated", 0.5, +1, 0.005),
        ex.Claim("F", "too small", "m", "replace", 0.0, -1, 0.05),
    )
    checks = ex.literature_checks(run_table, claims, units=[units], n_boot=500).set_index("study")
    assert checks.loc["A", "verdict"] == "reproduced"
    assert checks.loc["A", "estimate"] == pytest.approx(-0.02, abs=0.002)
    assert checks.loc["A", "ci_low"] < -0.02 < checks.loc["A", "ci_high"] < 0
    assert (checks.loc["A", "seeds"], checks.loc["A", "clusters"]) == (3, 12)
    assert checks.loc["A", "unit"] == "tavern"
    assert checks.loc["B", "verdict"] == "opposite"
    assert checks.loc["C", "verdict"] == "reproduced"
    assert checks.loc["C", "p_permutation"] == pytest.approx(0.25)  # 3 seeds: 2 of 8 patterns
    assert checks.loc["D", "verdict"] == "not detected"
    assert abs(checks.loc["D", "estimate"]) < checks.loc["D", "mde"]
    assert checks.loc["E", "verdict"] == "not measurable"
    # significant, but below the claim's minimum effect
    assert checks.loc["F", "p_holm"] < 0.05 and checks.loc["F", "verdict"] == "not detected"
    # Holm: the adjusted p is never below the raw one, and the Holm interval is the wider one
    assert (checks["p_holm"].dropna() >= checks["p"].dropna()).all()
    assert checks.loc["A", "holm_low"] <= checks.loc["A", "ci_low"]
    # the same numbers again: deterministic given the seed
    again = ex.literature_checks(run_table, claims, units=[units], n_boot=500).set_index("study")
    pd.testing.assert_frame_equal(checks, again)
    # without unit tables the run table carries the claim, with the seed as the only unit
    by_run = ex.literature_checks(run_table, claims[:1], n_boot=500).iloc[0]
    assert (by_run["clusters"], by_run["unit"]) == (1, "run")
    assert by_run["estimate"] == pytest.approx(checks.loc["A", "estimate"])
    text = ex.checks_markdown(checks.reset_index())
    assert "**reproduced**" in text and "**not measurable**" in text
    assert f"detectable at this size: |effect| >= {checks.loc['D', 'mde']:.3g}" in text


def test_a_level_claim_compares_with_the_neutral_expectation() -> None:
    # over-representation 1.0 everywhere = a neutral retriever: no preference, whatever the volume
    table = _table({("accumulate", 1.0, s): [1.0 + 0.001 * s, 1.0, 1.0 - 0.001 * s]
                    for s in (1, 2, 3)}, "over_representation")  # fmt: skip
    claim = ex.Claim("Chen", "over", "over_representation", "accumulate", 1.0, +1, 0.1, level=1.0)
    row = ex.literature_checks(table, [claim], n_boot=300).iloc[0]
    assert row["estimate"] == pytest.approx(0.0, abs=1e-12)
    assert row["verdict"] == "not detected"


def test_the_human_percentile_claim_uses_the_within_tavern_null() -> None:
    rows = []
    for s in (1, 2, 3):
        for c in range(10):
            for t in range(4):  # the human text always last of its tavern's t + 2 texts
                rows.append({"run_id": f"a-{s}", "policy": "accumulate", "human_fraction": 1.0,
                             "seed": s, "iteration": t, "cluster": f"t{c}", "query_id": "q",
                             "human_position": t + 2, "tavern_rows": t + 2,
                             "human_percentile": 1.0})  # fmt: skip
    ranks = pd.DataFrame(rows)
    claim = next(c for c in ex.CLAIMS if c.metric == "human_percentile")
    row = ex.literature_checks(ranks[[*cl.ARM_COLUMNS, "iteration"]].drop_duplicates(), [claim],
                               units=[ranks], n_boot=300).iloc[0]  # fmt: skip
    assert row["estimate"] == pytest.approx(0.5) and row["p_permutation"] < 0.001
    assert row["verdict"] == "reproduced"


def test_power_table_sizes_each_claim_from_the_pilot_variance() -> None:
    arms = [("replace", 0.0), ("accumulate", 0.0)]
    pilot = _units(arms, [-0.004, 0.0], noise=0.05, taverns=6)
    run_table = pilot.groupby([*cl.ARM_COLUMNS, "iteration"], as_index=False)["m"].mean()
    claims = (ex.Claim("A", "falls", "m", "replace", 0.0, -1, 0.004),
              ex.Claim("B", "falls more", "m", "replace", 0.0, -1, 0.0038),
              ex.Claim("C", "tiny", "m", "replace", 0.0, -1, 0.0001))  # fmt: skip
    sizes = ex.power_table(run_table, claims, units=[pilot], n_boot=500).set_index("study")
    assert list(sizes["feasible"]) == [True, True, False]  # C: not even 47 x 100 would do
    assert (sizes.loc[["A", "B"], "mde"] <= sizes.loc[["A", "B"], "min_effect"]).all()
    assert np.isnan(sizes.loc["C", "seeds"])
    # a smaller minimum effect needs at least as large a design
    assert sizes.loc["B", "seeds"] >= sizes.loc["A", "seeds"]  # seeds are runs: fewest first
    assert sizes.loc["B", "clusters"] <= 47
    assert (sizes["pilot_seeds"] == 3).all() and (sizes["pilot_clusters"] == 6).all()
    # the pilot's spread, recomputed: sigma_cluster^2 = C * v_cluster of a fresh estimate
    from helpers import stats as st

    d = st.effect_matrix(cl.claim_units(claims[0], run_table, [pilot]))
    e = st.estimate_effect(d, np.random.default_rng(1), n_boot=4000)
    assert sizes.loc["A", "sigma_cluster"] ** 2 == pytest.approx(6 * e.var_cluster, rel=0.25)


def test_dispersion_terms_average_to_the_dispersion() -> None:
    from helpers.metrics import embedding_dispersion

    v = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    terms = cl.dispersion_terms(v)
    # hand: d(0,1) = 1, d(0,2) = d(1,2) = 1 - 1/sqrt(2)
    assert terms[0] == pytest.approx((1 + 1 - 2**-0.5) / 2)
    assert terms[2] == pytest.approx(1 - 2**-0.5)
    assert terms.mean() == pytest.approx(embedding_dispersion(v))
    assert np.isnan(cl.dispersion_terms(v[:1])).all()


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
        # the unit tables: per-tavern and per-query values whose means are the run table's
        taverns, over, ranks = ex.unit_tables(runs, k=2, milvus=milvus)
        keys = ["run_id", "iteration"]
        means = taverns.groupby(keys)[["dispersion", "drift_reference_mean"]].mean()
        per_run = table.set_index(keys).loc[means.index]
        assert np.allclose(means["dispersion"], per_run["dispersion"])
        assert np.allclose(means["drift_reference_mean"], per_run["drift_reference_mean"])
        over_means = over.groupby(keys)["over_representation"].mean()
        assert np.allclose(over_means, table.set_index(keys).loc[over_means.index,
                                                                 "over_representation"])  # fmt: skip
        assert len(ranks) and ranks["human_percentile"].between(0, 1).all()
        assert (ranks["human_position"] <= ranks["tavern_rows"]).all()
        checks = ex.literature_checks(table, units=[taverns, over, ranks], n_boot=200)
        assert set(checks["verdict"]) <= {"reproduced", "opposite", "not detected",
                                          "not measurable"}  # fmt: skip
        chen = checks[checks["study"].str.startswith("Chen")]
        assert chen["estimate"].notna().all()  # accumulate hf 1 is in this sweep
        # the papers' metrics, per run and iteration, and per tavern
        per_run, facts = er.paper_metric_tables(runs, k=1)
        assert len(per_run) == 4 and set(per_run["iteration"]) == {0, 1}
        assert per_run["vendi"].between(1, 2).all()  # 2 texts: between 1 and 2 distinct
        assert per_run["context_gini"].between(0, 1).all()
        assert len(facts) == 8 and facts["fact_retention"].between(0, 1).all()
        # the extras: perplexity of each text, spread over the ledgered text and 3 new samples
        from helpers import text_samples as ts
        from helpers.perplexity import perplexity

        ppl = ts.perplexity_units(runs[:1], local_generator, iterations=[1])
        last = [r for r in runs[0].records() if r["iteration"] == 1]
        assert list(ppl["cluster"]) == [r["tavern_id"] for r in last]
        assert ppl["perplexity"].tolist() == pytest.approx(
            [perplexity(r["text"], generator=local_generator) for r in last]
        )
        spread = ts.spread_units(runs[:1], local_generator, iterations=[1])
        assert len(spread) == 2 and spread["within_tavern_spread"].between(0, 2).all()
        assert spread["within_tavern_spread"].gt(0).all()  # new seeds, other texts
        curves = er.arm_curves(table, [taverns, ppl, spread], n_boot=100)
        assert {"perplexity", "within_tavern_spread"} <= set(curves["metric"])
        # the texts leave the repo without prompts, and come back as runs that give the same
        # tables without generating anything
        exported = er.export_runs(runs, settings.run_dir / "export")
        assert [f.name for f in exported] == [r.run_id for r in runs]
        import lzma

        with lzma.open(exported[0] / er.LEDGER_FILE, "rt", encoding="utf-8") as fh:
            lines = [json.loads(line) for line in fh]
        assert len(lines) == 4 and all("prompt" not in rec and rec["text"] for rec in lines)
    finally:
        milvus.stop()
    other = settings.replace(run_dir=settings.run_dir / "restored")
    ids = er.restore_runs(settings.run_dir / "export", other.run_dir / "loops")
    assert ids == [r.run_id for r in runs]
    with pytest.raises(ValueError, match="no prompt"):  # the committed ledgers drop the prompts
        ts.spread_units([load_run(ids[0], other)], local_generator, iterations=[1])
    frozen = er.FrozenGenerator(local_generator.model)
    milvus = start_milvus(other)
    try:
        again = ex.run_sweep(points, base, other, milvus=milvus, generator=frozen, prefix="t",
                             progress=False, share_generations=False)  # fmt: skip
        table2 = ex.experiment_table(again, k=2, milvus=milvus)
        pd.testing.assert_frame_equal(table.reset_index(drop=True), table2.reset_index(drop=True))
        with pytest.raises(RuntimeError, match="incomplete"):
            frozen.generate("Describe an inn.")
    finally:
        milvus.stop()


def test_no_feedback_has_no_over_representation_and_curves_have_intervals() -> None:
    # a store with no generated row cannot over-represent generated rows: NaN, not a crash
    rows = []
    for s in (1, 2, 3):
        for c in ("a", "b", "c", "d"):
            for t in range(3):
                rows.append({"run_id": f"r{s}", "policy": "accumulate", "human_fraction": 1.0,
                             "seed": s, "iteration": t, "cluster": c,
                             "dispersion": 0.8 - 0.01 * t + 0.001 * s})  # fmt: skip
    units = pd.DataFrame(rows)
    table = units.groupby([*er.ARM_KEYS, "iteration"], as_index=False)["dispersion"].mean()
    table = table.rename(columns={"dispersion": "vendi"})
    curves = er.arm_curves(table, [units], metrics=("dispersion", "vendi"), n_boot=200)
    assert set(curves["metric"]) == {"dispersion", "vendi"}
    d = curves[curves["metric"] == "dispersion"].set_index("iteration")
    expected = units.groupby("iteration")["dispersion"].mean()
    assert np.allclose(d["estimate"], expected)
    assert (d["ci_low"] <= d["estimate"]).all() and (d["estimate"] <= d["ci_high"]).all()
    assert (d["clusters"] == 4).all() and (d["seeds"] == 3).all()
    v = curves[curves["metric"] == "vendi"]
    assert (v["clusters"] == 1).all() and v["ci_high"].gt(v["ci_low"]).all()
    fig = er.plot_arm_curves(curves)
    assert len([ax for ax in fig.axes if ax.lines]) == 2


def test_context_counts_include_rows_never_retrieved() -> None:
    records = [{"iteration": 1, "context_ids": [1, 2, 3]}, {"iteration": 1, "context_ids": [1, 2, 4]},
               {"iteration": 0, "context_ids": [9, 9, 9]}]  # fmt: skip
    counts = er._context_counts(records, 1, searchable=6)
    assert sorted(counts.tolist()) == [0, 0, 1, 1, 2, 2]


# --- docs/experiments.md is generated from docs/results/ -----------------------------------------


def _doc_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "make_experiments_doc.py"
    spec = importlib.util.spec_from_file_location("make_experiments_doc", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_doc_is_what_the_results_regenerate() -> None:
    doc = _doc_script()
    assert doc.DOC.read_text(encoding="utf-8") == doc.render(), (
        "docs/experiments.md differs from its tables: run scripts/make_experiments_doc.py"
    )
    assert doc.main(["--check"]) == 0


def test_the_doc_states_only_numbers_from_the_tables(tmp_path) -> None:
    import json

    doc = _doc_script()
    units = _units([("replace", 0.0), ("accumulate", 0.0)], [-0.02, 0.0])
    run_table = units.groupby([*cl.ARM_COLUMNS, "iteration"], as_index=False)["m"].mean()
    claims = (ex.Claim("A", "falls", "m", "replace", 0.0, -1, 0.005),
              ex.Claim("B", "flat", "m", "accumulate", 0.0, -1, 0.005))  # fmt: skip
    folder = tmp_path / "results" / "synthetic"
    folder.mkdir(parents=True)
    checks = ex.literature_checks(run_table, claims, units=[units], n_boot=300)
    checks.to_csv(folder / "checks.csv", index=False)
    ex.power_table(run_table, claims, units=[units], n_boot=300).to_csv(
        folder / "power.csv", index=False
    )
    manifest = {
        "name": "synthetic", "commit": "0123456789abcdef", "started_utc": "2026-12-01T00:00:00",
        "minutes": 1.5, "generated": 10, "answered_from_shared": 2,
        "parameters": {"arms": ["replace:0", "accumulate:0"], "seeds": [1, 2, 3],
                       "loop": {"iterations": 6, "n_taverns": 12, "max_tokens": 40,
                                "context_chars": 400, "k": 3},
                       "model": "m", "llama_threads": 1, "n_boot": 300, "backend": "lite"},
        "machine": {"platform": "p", "python": "3.11", "cpus": 2,
                    "load_average_at_start": [1.0, 1.0, 1.0]},
    }  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    text = doc.render(tmp_path / "results")
    a, b = checks.iloc[0], checks.iloc[1]
    assert f"| {a['estimate']:+.3g} | [{a['ci_low']:+.3g}, {a['ci_high']:+.3g}] |" in text
    assert "**reproduced**" in text and "**not detected**" in text
    assert "Of 2 claims: 1 reproduced, 1 not detected." in text
    assert f"this size detects |effect| >= {b['mde']:.3g}" in text
    assert "Commit `0123456789ab`" in text and "### Power" in text
    # the check mode catches a stale doc
    stale = tmp_path / "experiments.md"
    stale.write_text(text + "a hand edit\n", encoding="utf-8")
    assert doc.main(["--check", "--results", str(tmp_path / "results"), "--doc", str(stale)]) == 1
    assert doc.main(["--results", str(tmp_path / "results"), "--doc", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == text

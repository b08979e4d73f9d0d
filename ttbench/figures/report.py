"""The one-page markdown report: the paper's headline numbers recomputed from the results
table (shares within 13% / 20%, cost ratio, per-dataset table, band coverage)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ttbench.figures import tables as tb
from ttbench.figures.accuracy import fig1_rows
from ttbench.figures.style import label, require
from ttbench.points import GD_TOLERANCE, SGD_TOLERANCE, left_out

# The predictor whose numbers the paper quotes for each optimiser (Fig. 1 a and b).
# The predictor whose numbers the paper quotes for each optimiser (Fig. 1 a and b), then the
# one refined from the first real steps, when the table has it.
HEADLINE = (
    ("gd", "ode", GD_TOLERANCE),
    ("sgd", "sde", SGD_TOLERANCE),
    ("gd", "relin", GD_TOLERANCE),
)
REFINED = ("relin",)


def report_numbers(results: pd.DataFrame, kind: str = "loss") -> dict[str, pd.DataFrame]:
    """Every number of the report, as frames: shares within tolerance per optimiser and
    predictor (Fig. 1's points), cost summary, band coverage, per-dataset table."""
    parts = []
    for optim in ("gd", "sgd"):
        rows = fig1_rows(results, optim, kind)
        if len(rows):
            parts.append(tb.share_within(rows).assign(optim=optim))
    shares = (
        pd.concat(parts, ignore_index=True)[["optim", "predictor", "within_13", "within_20", "n"]]
        if parts
        else pd.DataFrame(columns=["optim", "predictor", "within_13", "within_20", "n"])
    )
    return {
        "shares": shares,
        "costs": tb.cost_summary(results),
        "confusion": tb.confusion(results),
        "coverage": tb.coverage(results),
        "per_dataset": tb.per_dataset(results, kind),
    }


def left_out_count(results: pd.DataFrame) -> int:
    return int(left_out(results).drop(columns="predictor").to_numpy().sum())


def headline_lines(shares: pd.DataFrame) -> list[str]:
    lines = []
    for optim, name, tol in HEADLINE:
        row = shares[(shares["optim"] == optim) & (shares["predictor"] == name)]
        if not len(row):
            if name not in REFINED:
                lines.append(f"- {optim.upper()}: no {label(name)} points.")
            continue
        r = row.iloc[0]
        other = 20 if round(tol * 100) == 13 else 13  # the tolerance the line has not said
        lines.append(
            f"- {optim.upper()}, {label(name)}: {r[f'within_{round(tol * 100)}']:.0%} of "
            f"{int(r['n'])} predicted T_eps within {tol:.0%} of the real one "
            f"(paper: 95% within {tol:.0%}); within {other}%: {r[f'within_{other}']:.0%}."
        )
    return lines


def cost_lines(costs: pd.DataFrame) -> list[str]:
    lines = []
    for _, r in costs.iterrows():
        if not (pd.notna(r["predict_s"]) and pd.notna(r["finetune_s"])):
            continue  # a predictor without its own wall-clock (`constant`): nothing to compare
        lines.append(
            f"- {r['device']}, {label(r['predictor'])}: prediction {r['predict_s']:.3g} s vs "
            f"fine-tuning {r['finetune_s']:.3g} s; fine-tuning / prediction = {r['ratio']:.3g} "
            f"(paper: 30-40), {r['ratio_signals']:.3g} with the {r['signals_s']:.3g} s of "
            f"signals its validity reads (medians over {int(r['runs'])} run(s))."
        )
    return lines


def build_report(tables: tb.Tables, artefacts: list[str] | None = None, kind: str = "loss"):
    """The report's markdown text."""
    results = tables.results
    require(results, "results table", ("t_real", "t_pred", "predictor"))
    num = report_numbers(results, kind)
    runs = results["run"].nunique()
    datasets = ", ".join(sorted(results["dataset"].astype(str).unique()))
    devices = ", ".join(sorted(results["device"].astype(str).unique()))
    out = [
        "# ttbench results report",
        "",
        f"Source: `{tables.source}`: {runs} runs, {len(results)} rows; datasets {datasets}; "
        f"devices {devices}. T_eps of the {kind} curve unless stated; a prediction is within "
        "r when |t_pred - t_real| <= r * t_real, a missing prediction never is; on a run "
        "whose real fine-tuning exploded, a prediction is right only when it says "
        '"diverges", and a finite T_eps is a miss.',
        "",
        "## Headline",
        "",
        *headline_lines(num["shares"]),
        f"- {left_out_count(results)} points left out of every share: the real run had no "
        "or a zero T_eps, or (refined predictors) the real time, or the explosion, fell within "
        "the steps the prediction observed; per predictor in fidelity.md.",
        "",
        "Share of points within the paper's tolerances (Fig. 1's points):",
        "",
        tb.markdown(num["shares"], percent=("within_13", "within_20")),
        "## Divergence",
        "",
        "Runs per predictor by what it said (a T_eps, or diverges) against what the real run "
        "did; `misses` counts a finite T_eps for a run that exploded and diverges for one "
        "that did not:",
        "",
        tb.markdown(num["confusion"]) if len(num["confusion"]) else "No outcomes recorded.\n",
        "## Cost",
        "",
        *(cost_lines(num["costs"]) or ["- no runs with wall-clock."]),
        "",
        "## Band coverage",
        "",
        "Share of scorable points whose real T_eps lies inside the predictor's 5-95% band: "
        "`run_*` the band the run reported (ttbench's shipped calibration), `sweep_*` the one "
        "calibrated leave-one-out on the sweep's other runs, `paths_*` the stochastic "
        "predictors' batch-noise band; widths in steps (median). See fidelity.md per regime.",
        "",
        tb.markdown(
            num["coverage"], percent=[c for c in num["coverage"] if c.endswith("_coverage")]
        )
        if len(num["coverage"])
        else "No bands in the table.\n",
        "## Per dataset",
        "",
        "Mean absolute error in steps, median relative error, and shares within 13% / 20%:",
        "",
        tb.markdown(num["per_dataset"], ".3g", percent=("median_rel", "within_13", "within_20")),
    ]
    if artefacts:
        stems = dict.fromkeys(Path(a).stem for a in artefacts)
        links = [
            f"- {stem}: " + ", ".join(f"[{a}]({a})" for a in artefacts if Path(a).stem == stem)
            for stem in stems
        ]
        out += ["## Artefacts", "", *links, ""]
    return "\n".join(out)


def write_report(tables: tb.Tables, out_path: Path, artefacts: list[str] | None = None) -> None:
    """report.md; artefacts (file names beside it) are linked at the end."""
    out = Path(out_path).with_suffix(".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_report(tables, artefacts))

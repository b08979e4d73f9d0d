"""`python -m ttbench.collect DIR... [--out DIR]`: every run record under the given folders as
one table, one row per (run, predictor, curve kind, eps), every config value a column
(`cfg.<key>`), plus one table of all curves. Incomplete or corrupt run directories are listed,
never fatal.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from ttbench import record


def run_dirs(roots: list[Path]) -> list[Path]:
    """Run directories below the roots: those Hydra made (.hydra) or holding a record."""
    found = set()
    for root in roots:
        for marker in (".hydra", record.RESULT):
            found.update(p.parent for p in Path(root).rglob(marker))
    return sorted(found)


def _rows(run: Path, result: dict) -> list[dict]:
    cfg = pd.json_normalize(result["config"], sep=".").iloc[0].to_dict()
    base = {"run": str(run), **{f"cfg.{k}": v for k, v in cfg.items()}, **result["task"]}
    base["classes"] = ",".join(map(str, base["classes"]))
    base["device"] = result["device"]
    base["finetune_s"] = result["stages"]["finetune"]["wall_s"]
    base["real_diverged"] = result["real"]["diverged"]
    rows = []
    for name, pred in result["predictors"].items():
        for kind, by_eps in result["real"]["t_eps"].items():
            for e, t_real in by_eps.items():
                err = pred["errors"][kind][e]
                q = pred.get("quantiles", {}).get(kind, {}).get(e, {})
                rows.append(
                    {
                        **base,
                        "predictor": name,
                        "kind": kind,
                        "eps": float(e),
                        "t_real": t_real,
                        "t_pred": pred["t_eps"][kind][e],
                        "abs_err": err["abs"],
                        "rel_err": err["rel"],
                        "q05": q.get("q05"),
                        "q50": q.get("q50"),
                        "q95": q.get("q95"),
                        "covered": q.get("covered"),
                        "predict_s": pred["timing"]["total_s"],
                    }
                )
    return rows


def collect(roots: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(results, curves, problems) for every run directory below the roots."""
    rows, curves, problems = [], [], []
    for run in run_dirs(roots):
        if not record.is_done(run):
            problems.append(f"{run}: incomplete (no done marker)")
            continue
        try:
            result = record.read_result(run / record.RESULT)
            rows.extend(_rows(run, result))
            frame = pd.read_parquet(run / record.CURVES)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            problems.append(f"{run}: corrupt ({type(e).__name__}: {e})")
            continue
        curves.append(frame.assign(run=str(run)))
    results = pd.DataFrame(rows)
    return results, (pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()), problems


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("outputs/tables"))
    a = p.parse_args(argv)
    results, curves, problems = collect(a.dirs)
    a.out.mkdir(parents=True, exist_ok=True)
    results.to_parquet(a.out / "results.parquet", index=False)
    curves.to_parquet(a.out / "curves.parquet", index=False)
    runs = results["run"].nunique() if len(results) else 0
    tables = f"{a.out / 'results.parquet'}, {a.out / 'curves.parquet'}"
    print(f"{runs} runs, {len(results)} rows -> {tables}")
    for line in problems:
        print(f"skipped {line}")


if __name__ == "__main__":
    main()

"""`python -m ttbench.collect DIR... [--out DIR]`: every run record under the given folders as
one table, one row per (run, predictor, curve kind, eps), every config value a column
(`cfg.<key>`), every run signal a column (`signal.<name>`), with the pooled predictor
`constant` (the other seeds' median) added, each run's identity (`run_id`, `config_id`:
ttbench.runid) a column; one table of all curves; and one table per probe
(probe_<name>.parquet) and per predictor spectra (spectra_<name>.parquet) found, concatenated
over runs with a `run` column and the runs' main settings (RUN_COLUMNS). Incomplete or corrupt
run directories, and missing or unreadable probe and spectra files, are listed, never fatal.
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ttbench import cli, record
from ttbench.bands import loo_bands
from ttbench.files import MANIFEST, atomic_write_all
from ttbench.points import exploded
from ttbench.runid import RunId

# The settings that tell a probe's or spectra table's runs apart, copied onto its rows.
RUN_COLUMNS = ("dataset.name", "seed", "lr", "momentum", "task.n", "preset")


@dataclass
class Collected:
    results: pd.DataFrame
    curves: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # by file stem
    problems: list[str] = field(default_factory=list)


def _extra_files(run: Path, rec: record.Record) -> dict[str, str]:
    """{stem: file name} of a run's probe tables (as its record lists them) and spectra."""
    files = {f"probe_{name}": file for name, file in rec.probes.items()}
    files.update({p.stem: p.name for p in sorted(run.glob("spectra_*.parquet"))})
    return files


def _run_columns(run: Path, cfg: dict) -> dict:
    return {"run": str(run), **{f"cfg.{k}": cfg.get(k) for k in RUN_COLUMNS}}


# A predictor's own columns, which a `constant` row does not take from the row it copies.
_NOT_INHERITED = (
    *("q05", "q50", "q95", "covered", "validity", "k"),
    *("path_q05", "path_q50", "path_q95", "path_covered"),
)


def constant_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The pooled predictor `constant`: per run, curve kind and eps, what the other completed
    runs of the same configuration (other seeds, i.e. other tasks) did: "diverges" when most of
    them exploded, else the median real T_eps of those that did not; none when there is no
    other. Leave-one-out: no run predicts itself."""
    if not len(results):
        return results
    real = results.drop_duplicates(["run", "kind", "eps"]).copy()
    out = []
    for _, group in real.groupby(["config_id", "kind", "eps"], sort=False):
        for _, row in group.iterrows():
            others = group[group["run_id"] != row["run_id"]]
            diverges = len(others) > 0 and exploded(others).mean() > 0.5
            times = others.loc[~exploded(others), "t_real"].dropna()
            t_pred = float(times.median()) if len(times) and not diverges else None
            t_real = row["t_real"]
            known = t_pred is not None and pd.notna(t_real)
            out.append(
                row.to_dict()
                | {
                    "predictor": "constant",
                    "t_pred": t_pred,
                    "pred_diverged": bool(diverges),
                    "abs_err": abs(t_pred - t_real) if known else None,
                    "rel_err": abs(t_pred - t_real) / t_real if known and t_real > 0 else None,
                    **dict.fromkeys(_NOT_INHERITED),
                    "predict_s": float("nan"),  # no computation: it needs completed runs
                    "signals_s": float("nan"),
                }
            )
    return pd.DataFrame(out, columns=results.columns)


def gather(roots: list[Path]) -> Collected:
    """Every table of every run directory below the roots, and the problems met."""
    rows, curves, problems = [], [], []
    extra: dict[str, list[pd.DataFrame]] = {}
    seen: dict[str, Path] = {}  # run_id -> its first directory
    for run in record.run_dirs(roots):
        if not record.is_done(run):
            problems.append(f"{run}: incomplete (no done marker)")
            continue
        try:
            rec = record.read(run)
            rid = RunId.of(rec.config)
            cfg = pd.json_normalize(rec.config, sep=".").iloc[0].to_dict()  # dotted keys
            base = {"run": str(run), "run_id": rid.digest, "config_id": rid.config}
            base |= {f"cfg.{k}": v for k, v in cfg.items()}
            run_rows = [base | row for row in rec.rows()]
            frame = record.check_curves(pd.read_parquet(run / record.CURVES))
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            # one bad record is listed, never fatal: the others still make the tables
            problems.append(f"{run}: corrupt ({type(e).__name__}: {e})")
            continue
        if rid.digest in seen:  # one run in two directories (copied, or older names)
            problems.append(f"{run}: the same run as {seen[rid.digest]} (counted once)")
            continue
        seen[rid.digest] = run
        rows.extend(run_rows)
        curves.append(frame.assign(run=str(run)))
        columns = _run_columns(run, cfg)
        for stem, name in _extra_files(run, rec).items():
            if not (run / name).is_file():
                problems.append(f"{run}: missing {name} (the run's other tables are kept)")
                continue
            try:
                table = pd.read_parquet(run / name)
            except (OSError, ValueError) as e:
                problems.append(f"{run}: unreadable {name} ({type(e).__name__}: {e})")
                continue
            extra.setdefault(stem, []).append(table.assign(**columns)[[*columns, *table]])
    results = pd.DataFrame(rows)
    if rows:
        results = pd.concat([results, constant_rows(results)], ignore_index=True)
        results = results.join(loo_bands(results))
    return Collected(
        results,
        pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(),
        {stem: pd.concat(frames, ignore_index=True) for stem, frames in sorted(extra.items())},
        problems,
    )


def _one_type_per_column(table: pd.DataFrame) -> pd.DataFrame:
    """A config value that is a bool in some runs and a string in others (model.pretrained:
    true, or "ttbench") as strings in that column: parquet holds one type per column."""
    mixed = [
        c
        for c in table.columns
        if table[c].dtype == object and len({type(v) for v in table[c].dropna()}) > 1
    ]
    return table.astype({c: "string" for c in mixed}) if mixed else table


def write_tables(out: Path, c: Collected) -> list[str]:
    """Every table into `out` (ttbench.files.atomic_write_all), with the manifest that lets a
    reader tell one collect's set from a mix; the probe and spectra tables an earlier collect
    left there and this one has not are removed. Returns the stems written."""
    tables = {"results": c.results, "curves": c.curves, **c.tables}
    blobs = {}
    for stem, table in tables.items():
        buf = io.BytesIO()
        _one_type_per_column(table).to_parquet(buf, index=False)
        blobs[out / f"{stem}.parquet"] = buf.getvalue()
    atomic_write_all(blobs, out / MANIFEST)
    for pattern in ("probe_*.parquet", "spectra_*.parquet"):
        for old in out.glob(pattern):
            if old.stem not in tables:
                old.unlink()
    return list(tables)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("outputs/tables"))
    p.add_argument(
        "--allow-empty", action="store_true", help="write empty tables when no run is complete"
    )
    a = p.parse_args(argv)
    missing = [d for d in a.dirs if not d.is_dir()]
    if missing:
        return cli.error(f"no such directory: {missing[0]}")
    c = gather(a.dirs)
    if not len(c.results) and not a.allow_empty:
        where = ", ".join(map(str, a.dirs))
        return cli.error(
            f"no complete run below {where}: nothing written (--allow-empty writes it)"
        )
    try:
        names = write_tables(a.out, c)
    except OSError as e:
        return cli.error(f"cannot write the tables into {a.out} ({e}); the earlier ones are intact")
    runs = c.results["run"].nunique() if len(c.results) else 0
    print(f"{runs} runs, {len(c.results)} rows -> {a.out}/{{{','.join(names)}}}.parquet")
    for line in c.problems:
        print(f"skipped {line}")
    for line in pooling_warnings(c.results):
        print(f"warning: {line}")
    return 0


def pooling_warnings(results: pd.DataFrame) -> list[str]:
    """What a pooled table mixes that its readers should not average over: runs of different
    step budgets (T_eps and errors in steps of different T)."""
    if "cfg.steps" not in results or results["cfg.steps"].nunique() < 2:
        return []
    budgets = sorted(int(t) for t in results["cfg.steps"].dropna().unique())
    return [
        f"the runs have different step budgets (steps = {', '.join(map(str, budgets))}): "
        "compare T_eps and errors within one (column cfg.steps), not pooled"
    ]


if __name__ == "__main__":
    cli.command(main)

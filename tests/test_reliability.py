"""Records you can trust: each failure a hostile try found, with what ttbench does now.
In-process wherever the process boundary is not the point."""

import fcntl
import os
import stat

import pandas as pd
import pytest

from tests.conftest import TINY, cli_error, run_in_process
from ttbench import cli, collect, record
from ttbench.figures.__main__ import main as figures_main
from ttbench.files import MANIFEST, Busy, atomic_write_all, locked, stale
from ttbench.points import valid
from ttbench.train import finetune_run


# 1. a done marker is trusted only when the record behind it reads back
@pytest.mark.parametrize("damage", ["garbled", "missing", "no curves", "truncated curves"])
def test_a_broken_record_marked_done_is_done_again(tmp_path, cache_dir, damage):
    out = tmp_path / "r"
    first = run_in_process(TINY, out, cache_dir)
    target = out / (record.CURVES if "curves" in damage else record.RESULT)
    if damage == "garbled":
        target.write_text('{"format_version": 2, "conf')
    elif damage == "truncated curves":
        target.write_bytes(target.read_bytes()[:200])
    else:
        target.unlink()
    assert record.is_done(out) and record.complete(out) is None
    again = run_in_process(TINY, out, cache_dir)
    assert record.complete(out) == again and again.real.t_eps == first.real.t_eps


@pytest.mark.parametrize("full", ["curves.png", "curves.parquet", "result.json"])
def test_a_full_disk_is_one_line_or_costs_only_the_figure(
    tmp_path, cache_dir, capsys, monkeypatch, full
):
    """A file-size limit (`ulimit -f`) or a full disk: the record's files give one line and no
    done marker; the figure, drawn after the record, costs only itself."""
    import ttbench.run

    def too_large(*args, **kwargs):
        raise OSError(27, "File too large")

    if full == "curves.png":
        monkeypatch.setattr(ttbench.run, "plot_curves", too_large)
        rec = run_in_process(TINY, tmp_path / "run", cache_dir)
        assert record.complete(tmp_path / "run") == rec
        return
    write = record.atomic_write
    monkeypatch.setattr(
        record, "atomic_write", lambda p, d: too_large() if p.name == full else write(p, d)
    )
    line = cli_error([*TINY, f"cache_dir={cache_dir}"], tmp_path, capsys)
    assert line.startswith("ttbench: error: cannot write") and "File too large" in line
    assert not record.is_done(tmp_path / "run")


# 2. collect never destroys tables, and the analysis says in one line what is wrong
def test_collect_refuses_nothing_and_writes_all_or_nothing(
    tmp_path, cache_dir, capsys, monkeypatch
):
    out = tmp_path / "tables"
    run_in_process(
        [*TINY, "probes=[spectrum]", "probe.sizes=[10]"], tmp_path / "runs" / "a", cache_dir
    )
    assert collect.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    good = pd.read_parquet(out / "results.parquet")
    assert len(good) and (out / "probe_spectrum.parquet").is_file()
    capsys.readouterr()
    assert collect.main([str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert collect.main([str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "no complete run" in capsys.readouterr().err
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), good)  # intact
    # another collect into the same folder replaces the whole set: no stale probe tables
    run_in_process(TINY, tmp_path / "other" / "b", cache_dir)
    assert collect.main([str(tmp_path / "other"), "--out", str(out)]) == 0
    assert not (out / "probe_spectrum.parquet").exists()
    # all or nothing: a failing write leaves every earlier file as it was
    before = (out / "results.parquet").read_bytes()
    (tmp_path / "file").write_text("")  # makes the second target's folder impossible
    with pytest.raises(OSError):
        atomic_write_all({out / "results.parquet": b"new", tmp_path / "file" / "x": b"y"})
    assert (out / "results.parquet").read_bytes() == before
    assert not list(out.glob(".*.tmp"))
    # a kill between the renames (the second never happens) leaves results new, curves old:
    # the manifest, written last, tells, and the analysis refuses the mix in one line
    replace, renamed = os.replace, []

    def killed_after_one(src, dst):
        if renamed:
            raise KeyboardInterrupt
        renamed.append(dst)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_after_one)
    new = {out / "results.parquet": b"new", out / "curves.parquet": b"new"}
    with pytest.raises(KeyboardInterrupt):
        atomic_write_all(new, out / MANIFEST)
    monkeypatch.setattr(os, "replace", replace)
    assert stale(out / MANIFEST) == ["results.parquet"]  # the manifest is the earlier one
    capsys.readouterr()
    assert figures_main([str(out), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "stopped while writing" in err and len(err.strip().splitlines()) == 1, err
    # the analysis on an empty or unreadable table: one line
    (tmp_path / "t0").mkdir()
    pd.DataFrame({"run": []}).to_parquet(tmp_path / "t0" / "results.parquet")
    capsys.readouterr()
    assert figures_main([str(tmp_path / "t0"), "--out", str(tmp_path / "f")]) == 2
    assert "has no rows" in capsys.readouterr().err
    (tmp_path / "t0" / "results.parquet").write_bytes(b"PAR1 torn")
    assert figures_main([str(tmp_path / "t0"), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "cannot read the tables" in err and len(err.strip().splitlines()) == 1


# 3. degenerate runs do not inflate the headline
def test_one_class_is_refused_and_flat_curves_are_left_out(tmp_path, capsys):
    assert "task.k=1 is invalid" in cli_error([*TINY, "task.k=1"], tmp_path, capsys)
    rows = pd.DataFrame(
        {"predictor": "ode", "t_real": [0, 5, None], "t_pred": [0, 5, 3], "real_diverged": False}
    )
    assert list(valid(rows)["t_real"]) == [5]


# 4. checks that came late, or in Hydra's many lines
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["lrr=0.1"], "lrr='0.1' is invalid: is not a setting ttbench has: did you mean lr"),
        (["+foo=1"], "+foo='1' is invalid: ttbench reads only the keys its config has"),
        (["optim.batchsize=3"], "is not a setting ttbench has: did you mean optim."),
        (["out_root=/proc/x"], "out_root='/proc/x' is invalid: must be a writable directory"),
    ],
)
def test_unknown_keys_and_bad_directories_are_one_line(tmp_path, capsys, args, expected):
    assert expected in cli_error([*TINY, *args], tmp_path, capsys)
    assert not (tmp_path / "run").exists()


def test_a_cache_dir_that_is_a_file_is_refused_before_pretraining(tmp_path, capsys):
    (tmp_path / "cache").write_text("")
    line = cli_error([*TINY, f"cache_dir={tmp_path / 'cache'}"], tmp_path, capsys)
    assert "cache_dir" in line and "must be a directory" in line


# 5. writes that fail, files others can read, and two processes on one job
def test_a_failed_checkpoint_write_warns_and_training_goes_on(tmp_path, cache_dir, caplog):
    from tests.conftest import spec_of
    from ttbench.build import setup

    spec = spec_of([*TINY, "steps=6", f"cache_dir={cache_dir}"])
    s = setup(spec)
    (tmp_path / "full").write_text("")  # a state file whose folder cannot exist
    curves = finetune_run(
        spec, s.model(), s.x, s.y, state_file=tmp_path / "full" / "state", save_every_s=0
    )
    assert not curves.diverged and len(curves.loss) == 7
    assert "could not save the fine-tuning state" in caplog.text


def test_records_follow_the_umask(tmp_path, cache_dir):
    old = os.umask(0o022)
    try:
        run_in_process(TINY, tmp_path / "r", cache_dir)
    finally:
        os.umask(old)
    for name in (record.RESULT, record.CURVES, record.DONE):
        assert stat.S_IMODE((tmp_path / "r" / name).stat().st_mode) == 0o644


def test_a_run_directory_held_by_another_process_is_skipped(tmp_path, cache_dir, capsys):
    """flock locks an open file, so a second open of .lock here is refused as another
    process's would be: the run is skipped, says so, and writes nothing."""
    out = tmp_path / "r"
    out.mkdir()
    with open(out / ".lock", "a") as fh:  # as another process holding the lock would
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(Busy, match="is being run by another process"), locked(out):
            pass
        assert run_in_process(TINY, out, cache_dir) is None
        assert f"ttbench: {out} is being run by another process: skipped" in capsys.readouterr().out
        assert not record.is_done(out) and not (out / record.RESULT).exists()
    rec = run_in_process(TINY, out, cache_dir)  # free again: it runs
    assert record.complete(out) == rec


def test_pretraining_ahead_of_time_leaves_the_runs_alone(tmp_path, monkeypatch):
    import sys

    from ttbench import pretrain

    called = []
    monkeypatch.setattr(sys, "argv", ["pretrain", *TINY, f"out_root={tmp_path}"])
    cli.main(lambda: called.append(list(sys.argv)), run_dir="${out_root}/pretrain")
    assert called[0][-2:] == ["hydra.run.dir=${out_root}/pretrain", "hydra.output_subdir=null"]
    assert callable(pretrain.app)


# 8. threads: a setting, recorded, and one per job of the joblib launcher
def test_joblib_jobs_start_with_one_thread_unless_told():
    from ttbench.build import launcher_threads

    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher_threads(joblib, None) == 1 and launcher_threads(joblib, 3) == 3
    assert (
        launcher_threads("hydra._internal.core_plugins.basic_launcher.BasicLauncher", None) is None
    )


def test_threads_are_a_setting_and_recorded(tmp_path, cache_dir):
    import torch

    before = torch.get_num_threads()
    try:
        rec = run_in_process([*TINY, "threads=1"], tmp_path / "r", cache_dir)
    finally:
        torch.set_num_threads(before)
    assert rec.cpu_threads == 1 and rec.config["threads"] == 1

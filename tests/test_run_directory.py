"""The run directory: diffana touches only what it wrote, one run at a time, and an error of
the operating system is one line (exit 2) with nothing half-written left behind."""

from __future__ import annotations

import builtins
import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import default_config_dict, error_line, write_config
from matplotlib.figure import Figure

from diffana import cli, files, report
from diffana.exceptions import OutputError

EVENTS = 5_000  # the events test_run.py and test_reliability.py use: generated once per session
USER_FILES = {"notes.part.txt": "to do: the W+jets scale\n", "wjets.part.1.root": "root\x00..."}


@pytest.fixture
def cfg(tmp_path):
    return write_config(tmp_path / "c.yaml", default_config_dict(EVENTS))


def user_folder(path, **extra):
    """A folder of a user's files (none of them written by diffana)."""
    path.mkdir()
    for name, text in {**USER_FILES, **extra}.items():
        (path / name).write_text(text)
    return path


def snapshot(path) -> dict:
    """Every entry of ``path``: its content and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in path.iterdir()}


def leftovers(path) -> list[str]:
    return [p.name for p in path.iterdir()
            if p.name.startswith(files.TEMPORARY_PREFIX)
            or (".part" in p.name and p.name not in USER_FILES)]


def diffana_run(cfg, out, *args) -> int:
    return cli.main(["run", str(cfg), "--out", str(out), "--steps", "1", "--quiet", *args])


def one_line(capsys) -> str:
    return error_line(capsys.readouterr().err)


def test_users_files_survive_force_and_rerun(cfg, tmp_path, capsys):
    """--force writes beside a user's files; a rerun into the run directory (now one) keeps
    them too, and starts over: the previous results.json is gone until the run finishes."""
    out = user_folder(tmp_path / "analysis")
    users = snapshot(out)
    assert diffana_run(cfg, out, "--force") == 0
    manifest = json.loads((out / report.MANIFEST).read_text())
    assert set(manifest["files"]) == set(report.RUN_FILES)
    assert {n: v for n, v in snapshot(out).items() if n in users} == users
    assert (out / "results.json").is_file() and not leftovers(out)

    (out / "results.json").write_text("{}")  # the previous run's result
    before = snapshot(out)
    assert diffana_run(cfg, out) == 2  # a finished run: only with --force
    assert one_line(capsys) == (f"diffana: error: {out}: holds a finished run (results.json); "
                                f"choose another --out, or --force to run again into it")
    assert {n: v for n, v in snapshot(out).items() if n != report.LOCK} == {
        n: v for n, v in before.items() if n != report.LOCK}
    assert diffana_run(cfg, out, "--force") == 0
    assert {n: v for n, v in snapshot(out).items() if n in users} == users
    assert json.loads((out / "results.json").read_text())["steps_done"] == 1
    assert not leftovers(out)
    capsys.readouterr()


def test_refuses_a_folder_diffana_did_not_write(cfg, tmp_path, capsys):
    """Without --force, a non-empty folder that is not a run directory; with it, a folder
    holding a file named like one diffana writes: exit 2, one line, nothing touched."""
    out = user_folder(tmp_path / "analysis")
    before = snapshot(out)
    assert diffana_run(cfg, out) == 2
    assert one_line(capsys) == (
        f"diffana: error: {out}: not empty and not a diffana run directory (no "
        f".diffana-run.json); choose another --out, or --force to write beside its files")
    assert snapshot(out) == before

    (out / "results.json").write_text('{"mine": true}\n')
    before = snapshot(out)
    assert diffana_run(cfg, out, "--force") == 2
    assert one_line(capsys).startswith(f"diffana: error: {out / 'results.json'}: not written by "
                                       f"diffana")
    assert snapshot(out) == before


def test_a_locked_run_directory_refuses_until_its_process_is_gone(cfg, tmp_path, capsys):
    """A second run into a directory a live process holds: exit 2, "in use by process N", and
    the first run's results.json stays; once that process is killed, its lock does not block."""
    out = tmp_path / "run"
    with report.RunDirectory() as held:
        held.open(out)
    (out / "results.json").write_text('{"steps_done": 3}\n')
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.ftruncate(fd, 0)\n"
         "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
         "print('locked', flush=True)\n"
         "time.sleep(300)\n", str(out / report.LOCK)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert diffana_run(cfg, out) == 2
        assert one_line(capsys).startswith(f"diffana: error: {out}: in use by process "
                                           f"{holder.pid} ")
        assert (out / "results.json").read_text() == '{"steps_done": 3}\n'
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with report.RunDirectory() as held:  # the dead process's lock file is still there
        held.open(out, force=True)  # the finished run's results.json: --force
        assert (out / report.LOCK).read_text() == f"{os.getpid()}\n"
    assert not (out / "results.json").exists()  # a rerun starts over


def test_out_under_a_regular_file(cfg, tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder\n")
    assert diffana_run(cfg, tmp_path / "afile" / "run") == 2
    assert one_line(capsys) == (f"diffana: error: {tmp_path / 'afile' / 'run'}: cannot create "
                                f"([Errno 20] Not a directory)")
    assert (tmp_path / "afile").read_text() == "not a folder\n"


def test_read_only_out(cfg, tmp_path, monkeypatch, capsys):
    """A folder the run may not write into (chmod, or a read-only file system where the
    tests run as root, whom chmod does not stop)."""
    out = tmp_path / "run"
    out.mkdir()
    if os.geteuid() == 0:
        os_open, builtin_open = os.open, builtins.open

        def refuse(path):
            if str(path).startswith(str(out)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

        def read_only_os_open(path, flags, *args, **kw):
            if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
                refuse(path)
            return os_open(path, flags, *args, **kw)

        def read_only_open(path, mode="r", *args, **kw):
            if set(mode) & set("wax+"):
                refuse(path)
            return builtin_open(path, mode, *args, **kw)

        monkeypatch.setattr(os, "open", read_only_os_open)
        monkeypatch.setattr(builtins, "open", read_only_open)
        reason = f"[Errno {errno.EROFS}] {os.strerror(errno.EROFS)}"
    else:
        out.chmod(stat.S_IRUSR | stat.S_IXUSR)
        reason = f"[Errno {errno.EACCES}] {os.strerror(errno.EACCES)}"
    try:
        assert diffana_run(cfg, out) == 2
    finally:
        out.chmod(stat.S_IRWXU)
    assert one_line(capsys) == f"diffana: error: {out}: cannot write ({reason})"
    assert list(out.iterdir()) == []


def test_cache_is_a_regular_file(cfg, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    cache.write_text("not a folder\n")
    monkeypatch.setenv("DIFFANA_CACHE", str(cache))
    assert diffana_run(cfg, tmp_path / "run") == 2
    line = one_line(capsys)
    assert line.startswith(f"diffana: error: {cache}") and "[Errno" in line, line
    assert cache.read_text() == "not a folder\n"


def test_full_disk_while_plotting(cfg, tmp_path, monkeypatch, capsys):
    """The disk fills up while histograms.png is written: one line naming it, exit 2, no
    partial file, no results.json."""
    savefig = Figure.savefig

    def full_disk(fig, path, **kw):
        if "histograms" in Path(path).name:  # histograms.png, under its temporary name
            with open(path, "wb") as f:
                f.write(b"\x89PNG half a figure")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return savefig(fig, path, **kw)

    monkeypatch.setattr(Figure, "savefig", full_disk)
    out = tmp_path / "run"
    assert diffana_run(cfg, out) == 2
    assert one_line(capsys) == (f"diffana: error: {out / 'histograms.png'}: cannot write "
                                f"([Errno 28] No space left on device)")
    assert not leftovers(out)
    assert not (out / "histograms.png").exists() and not (out / "results.json").exists()
    assert (out / "objective_history.png").is_file()


def test_a_checkpoint_that_cannot_be_written_leaves_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / report.CHECKPOINT
    report.write_checkpoint(path, None, {"config_sha256": "0" * 64})
    before = path.read_bytes()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OutputError, match=r"checkpoint.npz: cannot write \(\[Errno 28\] "):
        report.write_checkpoint(path, None, {"config_sha256": "1" * 64})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [report.CHECKPOINT]


def test_atomic_write_syncs_the_file_and_the_directory(tmp_path, monkeypatch):
    synced = []
    fsync = os.fsync

    def counting(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", counting)
    report.write_json(tmp_path / "results.json", {"objective_final": 1.0})
    assert synced == [False, True]  # the file before the rename, then its directory
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]

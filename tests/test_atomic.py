"""Output files: atomic, readable by colleagues under the user's umask, and no temporaries left by killed runs."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.atomic import append_csv_rows, atomic_write, new_run_dir, remove_stale_temporaries, write_csv

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_and_folders_get_the_users_umask(tmp_path, umask_022):
    write_csv(tmp_path / "a.csv", ["x"], [[1]])
    with atomic_write(tmp_path / "deep" / "b.txt") as tmp:
        tmp.write_text("b")
    append_csv_rows(tmp_path / "c.csv", ["x"], [[1]])
    run = new_run_dir(tmp_path / "out")
    assert _mode(tmp_path / "a.csv") == _mode(tmp_path / "deep" / "b.txt") == _mode(tmp_path / "c.csv") == 0o644
    assert _mode(tmp_path / "deep") == _mode(run) == 0o755
    os.umask(0o077)  # a private umask stays private
    write_csv(tmp_path / "private.csv", ["x"], [[1]])
    assert _mode(tmp_path / "private.csv") == 0o600


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    """A writer killed between creating its temporary and renaming it (kill -9) leaves `.<name>-<pid>-*`; the next
    process's first write into the folder removes it (whatever it writes), but never a live writer's, nor a user's
    file that only looks alike."""
    target = tmp_path / "x_ifim.png"
    code = ("import sys, time; sys.path.insert(0, 'bundle'); from scripts.atomic import atomic_write\n"
            f"with atomic_write({str(target)!r}) as tmp:\n    tmp.write_bytes(b'half'); print(tmp, flush=True); "
            "time.sleep(60)")
    writer = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    leftover = Path(writer.stdout.readline().strip())
    assert leftover.exists() and leftover.name.startswith(f".x_ifim.png-{writer.pid}-")
    live = tmp_path / f".x_ifim.png-{os.getpid()}-abcd.png"  # this process is alive: not stale
    live.write_bytes(b"in progress")
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert leftover.exists()  # the kill left it behind
    lookalike = tmp_path / f".x_ifim.png-{writer.pid}-notes.txt"  # not a temporary of x_ifim.png
    lookalike.write_text("mine")
    with atomic_write(tmp_path / "other.csv") as tmp:
        tmp.write_bytes(b"whole")
    assert not leftover.exists() and live.exists() and lookalike.exists()
    assert (tmp_path / "other.csv").read_bytes() == b"whole"
    remove_stale_temporaries(tmp_path, ".x_ifim.png")
    assert live.exists()


def test_an_unused_run_folder_is_removed_at_exit(tmp_path):
    code = ("import sys; sys.path.insert(0, 'bundle'); from scripts.atomic import new_run_dir\n"
            f"a = new_run_dir({str(tmp_path / 'out')!r}); b = new_run_dir({str(tmp_path / 'out')!r})\n"
            "(b / 'ifim.csv').write_text('x'); print(a.name, b.name)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    first, second = run.stdout.split()
    assert first != second and first.startswith("run-") and second.startswith("run-")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [second]  # the empty one is gone, the used one kept


def test_an_output_folder_that_is_a_file_is_refused_up_front(tmp_path):
    from scripts.atomic import require_writable_dir

    (tmp_path / "report").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=r"report_dir .*report is a file, not a folder: pass --report_dir"):
        require_writable_dir(tmp_path / "report", "report_dir")
    assert require_writable_dir(tmp_path / "new" / "report", "report_dir").is_dir()


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import errno
    import os

    from scripts.atomic import atomic_write

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match=r"cannot write .*maps\.nii\.gz: No space left on device; free space"):
        with atomic_write(tmp_path / "maps.nii.gz") as tmp:
            tmp.write_bytes(b"x")
    assert list(tmp_path.iterdir()) == []  # no temporary left behind

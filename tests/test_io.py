"""Output files: readable by others under the usual umask, and a full disk leaves nothing half-written."""

import errno
import os
import stat
import subprocess
import sys

import pytest

from invgrad import io


def test_outputs_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = io.save_text("x\n", tmp_path / "a.txt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_full_disk_raises_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(tmp_path), "write_text", full)
    with pytest.raises(io.DiskFullError, match=r"cannot write .*a\.txt: no space left") as error:
        io.save_text("x\n", tmp_path / "a.txt")
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary file


def test_a_held_folder_lock_refuses_a_second_holder(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from invgrad.io import folder_lock\n"
            f"with folder_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            io.FolderBusyError, match=rf"output folder {tmp_path} is in use by process {holder.pid}"
        ):
            with io.folder_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with io.folder_lock(tmp_path):  # released with its process
        pass

"""What the kernel the repair runs on can mount: a filesystem whose module is not loaded yet counts."""

from __future__ import annotations

import os

from agent.repair import guest


def test_a_filesystem_module_not_yet_loaded_is_loaded_first(tmp_path, monkeypatch):
    filesystems = tmp_path / "filesystems"
    filesystems.write_text("nodev\tproc\n\text4\n")
    monkeypatch.setattr(guest, "PROC_FILESYSTEMS", filesystems)
    # A modprobe that "loads" vfat only: it appears in the kernel's list, as the real one does.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    modprobe = bin_dir / "modprobe"
    modprobe.write_text(f'#!/bin/sh\n[ "$2" = vfat ] && printf "\\tvfat\\n" >> {filesystems}\nexit 0\n')
    modprobe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    assert guest.kernel_knows("ext4")
    assert guest.kernel_knows("vfat")
    assert not guest.kernel_knows("nosuchfs")
    assert filesystems.read_text().count("vfat") == 1

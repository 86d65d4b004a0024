"""The repair's work directory goes away with what the repair staged in it, but never through a
guest that is still mounted there. It used to keep every staged copy of the Windows tools and
drivers: /tmp (RAM on the live ISO) gained a directory per repair."""

from __future__ import annotations

import subprocess
from contextlib import ExitStack

from agent.repair import guest


def test_staged_files_go_and_a_guest_still_mounted_stays_whole():
    with ExitStack() as stack:
        work = guest.workdir(stack)
        (work / "windows-tools/xenbus/x64").mkdir(parents=True)
        (work / "windows-tools/xenbus/x64/xenbus.sys").write_bytes(b"driver")
        (work / "windows").mkdir()
        (work / "root").mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "guest", str(work / "root")], check=True)
        (work / "root/etc").mkdir()
        (work / "root/etc/fstab").write_text("the guest's own file\n")
    try:
        assert not (work / "windows-tools").exists() and not (work / "windows").exists()
        assert (work / "root/etc/fstab").read_text() == "the guest's own file\n"
    finally:
        subprocess.run(["umount", str(work / "root")], check=True)
        (work / "root").rmdir()
        work.rmdir()

    with ExitStack() as stack:
        work = guest.workdir(stack)
        (work / "windows-tools/Linux").mkdir(parents=True)
        (work / "windows-tools/Linux/xe-guest-utilities_8.4.0-1_all.tgz").write_bytes(b"tgz")
        (work / "probe").mkdir()
    assert not work.exists()

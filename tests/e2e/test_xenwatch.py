"""make e2e-xen's guest watcher (xenhost.WATCH, run in dom0): its phases, read back by xenhost.phases.

Runs the watcher's shell script here, on a console file that grows as a guest's would, with a
stand-in `xl` that says the guest is there.
"""

import os
import subprocess
import sys
import threading
import time

import xenhost


def test_watch_says_when_each_phase_first_shows_and_phases_reads_it_back(tmp_path):
    consoles, payload, bin_ = tmp_path / "console", tmp_path / "x", tmp_path / "bin"
    for d in (consoles, payload, bin_):
        d.mkdir()
    script = xenhost.WATCH.replace(xenhost.CONSOLE_DIR, str(consoles)).replace(xenhost.PAYLOAD, str(payload))
    (payload / "watch.sh").write_text(script)
    (payload / "phases.txt").write_text("".join(f"{words}\n" for _, words in xenhost.PHASES))
    (bin_ / "xl").write_text("#!/bin/sh\nexit 0\n")
    (bin_ / "xl").chmod(0o755)
    serial = consoles / "g.serial"
    serial.write_text("\x1b[H\x1b[J  Booting `Debian GNU/Linux'\nLoading Linux 6.1.0 ...\n")

    def boot_on():
        time.sleep(4)
        with serial.open("a") as f:
            f.write("Loading initial ramdisk ...\n[    0.000000] Linux version 6.1.0\n[    2.1] Run /init as init process\n")
        time.sleep(4)
        with serial.open("a") as f:
            f.write("Welcome to Debian GNU/Linux 12 (bookworm)!\nXENP2V-BOOT-OK root=/dev/xvda1 net=enX0:10.0.2.15\n")

    writer = threading.Thread(target=boot_on)
    writer.start()
    out = subprocess.run(["sh", str(payload / "watch.sh"), "g", "60"], capture_output=True, text=True, timeout=60,
                         env={"PATH": f"{bin_}:/usr/bin:/bin"}).stdout
    writer.join()
    assert out.strip().splitlines()[-1] == "GUEST-UP", out
    # Each phase once, when it first showed (the second and third writes come 4 s apart).
    assert [line.split(" ", 2)[2] for line in out.splitlines() if line.startswith("PHASE ")] == \
        [words for _, words in xenhost.PHASES], out
    seen = xenhost.phases(out, offset=10)
    assert list(seen) == [phase for phase, _ in xenhost.PHASES]
    assert seen["GRUB"] == 10
    assert 13 <= seen["kernel read"] == seen["kernel"] == seen["initramfs"] < seen["systemd"] <= 25, out
    run = xenhost.GuestRun(True, "/dev/xvda1", "enX0:10.0.2.15", 30.0, "marker seen", "", "4", seen)
    assert run.timeline().startswith("GRUB 10 s, kernel read ") and run.timeline().endswith("end 30 s")


# A Xen host whose dom0 answers commands until it is given the watcher, then stops: only Xen
# answers, to its debug key r (after CTRL-a three times).
# With WAKES set, the host goes on once the driver gives Xen an interrupt (CTRL-a six times).
STOPPED_HOST = r"""
import os, sys
WAKES = len(sys.argv) > 1
os.write(1, b"XENP2V-DOM0# ")
line, stopped = b"", False
while True:
    byte = os.read(0, 1)
    if not byte:
        break
    line += byte
    if line.endswith(b"\x01\x01\x01r"):
        os.write(1, b"(XEN) RUNQ:\r\n(XEN) \t  0: [0.0] flags=0 cpu=1 credit=-10000000\r\n")
    elif stopped and WAKES and line.endswith(b"\x01" * 6):
        os.write(1, b"GUEST-UP\r\n@@XE 0@@\r\nXENP2V-DOM0# ")
        stopped, line = False, b""
    elif byte == b"\n":
        stopped = stopped or b"watch.sh" in line
        if not stopped:
            os.write(1, b"@@XE 0@@\r\nXENP2V-DOM0# ")
        line = b""
"""


def stopped_host(tmp_path, *args):
    log = tmp_path / "xen-host.serial"
    host = xenhost.XenHost(xenhost.Dom0(*[tmp_path] * 4), [], log, {})
    host._log = open(log, "wb")
    host.proc = subprocess.Popen([sys.executable, "-c", STOPPED_HOST, *args], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    os.set_blocking(host.proc.stdout.fileno(), False)
    return host, log


def test_a_silent_xen_host_is_given_an_interrupt_and_goes_on(tmp_path, monkeypatch):
    host, _ = stopped_host(tmp_path, "wakes")
    monkeypatch.setattr(xenhost, "NUDGE_AFTER", 2)
    try:
        run = host.guest("g", timeout=120)
    finally:
        host.stop()
    assert host.nudges == 1 and not host.stalled, run.why
    assert run.why == "no marker within 120 s"    # the watcher came back; the stand-in logs no console


def test_a_silent_xen_host_is_called_stalled_with_its_run_queues_in_the_log(tmp_path, monkeypatch):
    host, log = stopped_host(tmp_path)
    monkeypatch.setattr(xenhost, "DOM0_SILENCE", 3)
    monkeypatch.setattr(xenhost, "NUDGE_AFTER", 1)
    monkeypatch.setattr(host, "xen_keys", lambda keys: xenhost.XenHost.xen_keys(host, keys, wait=3))
    try:
        started = time.monotonic()
        run = host.guest("g", timeout=120)
        assert time.monotonic() - started < 30
    finally:
        host.stop()
    assert not run.ok and host.stalled
    assert run.why.startswith("the Xen host said nothing for 3 s"), run.why
    assert "credit=-10000000" in log.read_text()

"""`p2v-agent` with no subcommand: unattended when the settings say so, plain lines, exit status."""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import requests

from agent import unattended
from agent.probe import probe_machine
from agent.transfer import restore as restore_mod
from agent.transfer.progress import Progress
from agent.settings import Settings
from agent.unattended import imported_here, post_action, situation
from support import rescan, run

MiB = 1 << 20
AGENT = [sys.executable, "-m", "agent.cli"]


def agent(cmdline: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*AGENT, "--config", str(tmp_path / "none.cfg"), "--cmdline", cmdline],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])


def test_unattended_capture_from_the_boot_line(loopdev, p2v_server, tmp_path):
    dev = loopdev(64 * MiB, "unattended")
    run("sfdisk", "-q", dev, input="label: dos\nstart=2048, type=83\n")
    run("mkfs.ext4", "-q", rescan(dev)[0])
    line = (f"quiet p2v.server={p2v_server.url} p2v.token={p2v_server.token} "
            f"p2v.fingerprint={p2v_server.fingerprint} p2v.mode=capture p2v.disks={dev} "
            f"p2v.name=unattended-box")
    proc = agent(line, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{Path(dev).name}: capture" in proc.stderr          # plain progress lines
    assert f"{Path(dev).name}: sealed" in proc.stderr
    assert "the console waits for someone" in proc.stderr        # p2v.post=wait, the default
    # The manual path's boot line, complete: the job's own token (not the admin's), the pin.
    (line,) = [row for row in proc.stderr.splitlines() if row.startswith("p2v.server=")]
    assert line.endswith(" p2v.mode=restore") and "p2v.token=..." not in line
    assert p2v_server.token not in line and f"p2v.fingerprint={p2v_server.fingerprint}" in line
    jobs = requests.get(f"{p2v_server.url}/api/v1/jobs", headers=p2v_server.headers,
                        verify=False, timeout=30).json()
    assert [(j["name"], [d["state"] for d in j["disks"]]) for j in jobs] == \
        [("unattended-box", ["sealed"])]


def test_bad_settings_are_sentences_and_status_2(tmp_path):
    proc = agent("p2v.unattended p2v.mode=capture p2v.memroy=4G", tmp_path)
    assert proc.returncode == 2
    assert "did you mean p2v.memory?" in proc.stderr
    assert "needs server and token" not in proc.stderr and "Traceback" not in proc.stderr


def test_restore_without_a_job_says_what_to_add(tmp_path):
    line = "p2v.server=https://127.0.0.1:9 p2v.token=t p2v.mode=restore p2v.unattended"
    proc = agent(line, tmp_path)
    assert proc.returncode == 1
    assert "p2v.mode=restore needs p2v.job=ID" in proc.stderr


def test_where_it_runs_decides_auto():
    machines = Path(__file__).resolve().parents[1] / "machines"
    metal = probe_machine(recorded=machines / "bios-mbr.json")
    assert situation(metal, Settings(), None).mode == "capture"
    vm = probe_machine(recorded=machines / "windows.json")
    assert situation(vm, Settings(), None).mode == "ask"
    assert situation(vm, Settings(job="j1"), None).mode == "restore"


def test_post_action_powers_off_through_the_given_command():
    ran = []
    assert post_action("poweroff", ran.append) == "Powering off."
    assert post_action("reboot", ran.append) == "Rebooting."
    assert post_action("wait", ran.append).startswith("The agent is done")
    assert ran == [["systemctl", "poweroff"], ["systemctl", "reboot"]]


def exits(*failing: list[str]):
    """A fake command runner: the commands in `failing` exit 1, the others 0; .ran lists them."""
    def command(argv: list[str]) -> subprocess.CompletedProcess:
        command.ran.append(argv)
        return subprocess.CompletedProcess(argv, 1 if argv in failing else 0)
    command.ran = []
    return command


def test_a_poweroff_systemctl_cannot_ask_for_is_forced():
    """A starved guest's 'systemctl poweroff' failed ("Call to PowerOff failed: Connection timed
    out"): the agent forces it rather than leave the machine running with its job done."""
    command = exits(["systemctl", "poweroff"])
    assert post_action("poweroff", command) == \
        "'systemctl poweroff' failed, so it was forced. Powering off."
    assert command.ran == [["systemctl", "poweroff"], ["systemctl", "poweroff", "--force"]]
    command = exits(["systemctl", "reboot"], ["systemctl", "reboot", "--force"])
    assert post_action("reboot", command).endswith("so it was forced. Rebooting.")
    assert command.ran == [["systemctl", "reboot"], ["systemctl", "reboot", "--force"], ["sync"],
                           ["systemctl", "reboot", "--force", "--force"]]
    command = exits()
    assert post_action("poweroff", command) == "Powering off."
    assert command.ran == [["systemctl", "poweroff"]]


def debian_disk(loopdev, tmp_path: Path) -> tuple[str, str]:
    """(disk, its root partition): a Debian system whose fstab still names /dev/sda1."""
    source = loopdev(48 * MiB, "source")
    run("sfdisk", "-q", source, input="label: dos\n,,83\n")
    root = rescan(source)[0]
    run("mkfs.ext4", "-q", root)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run("mount", root, str(mnt))
    try:
        (mnt / "etc").mkdir()
        (mnt / "etc/os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12"\nID=debian\n')
        (mnt / "etc/fstab").write_text("/dev/sda1 / ext4 errors=remount-ro 0 1\n")
    finally:
        run("umount", str(mnt))
    return source, root


def test_repair_with_a_job_the_server_did_not_import_here_restores_first(loopdev, p2v_server, tmp_path,
                                                                          monkeypatch):
    source, root = debian_disk(loopdev, tmp_path)
    preset = dict(server=p2v_server.url, token=p2v_server.token, fingerprint=p2v_server.fingerprint)
    job = unattended.capture(Settings(**preset, disks=[source], name="manual"), Progress()).job
    target = loopdev(48 * MiB, "vmdisk")
    monkeypatch.setattr(unattended, "vm_disks", lambda: [target])   # this VM's one blank disk
    vm = probe_machine(recorded=Path(__file__).resolve().parents[1] / "machines" / "windows.json")
    out = io.StringIO()

    status = unattended.run(Settings(**preset, mode="repair", job=job, disks=[target]), out, vm,
                            command=lambda argv: None)
    assert status == 0, out.getvalue()
    assert f"Job {job} was not imported onto this VM by the server" in out.getvalue()
    assert "Repair ok: Debian GNU/Linux 12." in out.getvalue()
    uuid = run("blkid", "-p", "-s", "UUID", "-o", "value", rescan(target)[0]).stdout.strip()
    assert uuid == run("blkid", "-p", "-s", "UUID", "-o", "value", root).stdout.strip()


def test_p2v_mode_restore_writes_the_disks_p2v_disks_names_on_a_machine_with_no_free_vm_disk(
        loopdev, p2v_server, tmp_path, monkeypatch):
    """Not a Xen VM (or one whose disks vm_disks() does not see): the disks the technician named
    are the targets, not "1 disks but this VM has 0 free"."""
    source, root = debian_disk(loopdev, tmp_path)
    preset = dict(server=p2v_server.url, token=p2v_server.token, fingerprint=p2v_server.fingerprint)
    job = unattended.capture(Settings(**preset, disks=[source], name="named"), Progress()).job
    target = loopdev(64 * MiB, "named")
    monkeypatch.setattr(unattended, "vm_disks", lambda: [])
    vm = probe_machine(recorded=Path(__file__).resolve().parents[1] / "machines" / "windows.json")
    out = io.StringIO()

    status = unattended.run(Settings(**preset, mode="restore", job=job, disks=[target]), out, vm,
                            command=lambda argv: None)
    assert status == 0, out.getvalue()
    assert "Repair ok: Debian GNU/Linux 12." in out.getvalue()
    uuid = run("blkid", "-p", "-s", "UUID", "-o", "value", rescan(target)[0]).stdout.strip()
    assert uuid == run("blkid", "-p", "-s", "UUID", "-o", "value", root).stdout.strip()


class JobOnly:
    """A client that knows one job and fails on anything else: nothing may be fetched."""

    def __init__(self, *sizes: int):
        self.answer = {"id": "j1", "disks": [{"id": f"sd{'ab'[i]}", "size": size, "position": i}
                                             for i, size in enumerate(sizes)]}

    def job(self, job: str) -> dict:
        return self.answer


def stopped(settings: Settings, client: JobOnly, how: str = "p2v.disks=") -> str:
    try:
        unattended.restore(settings, Progress(), client, how=how)
    except unattended.RestoreError as e:
        return str(e)
    raise AssertionError("the restore was not refused")


def test_restore_and_repair_with_no_disk_to_write_says_to_name_them_with_target(monkeypatch):
    # restore-and-repair names its disks with --target: the sentence said p2v.disks=.
    monkeypatch.setattr(unattended, "vm_disks", lambda: [])
    said = stopped(Settings(job="j1"), JobOnly(64 * MiB), how="--target")
    assert said.endswith("or name the disks to write with --target (one for each, in that order)."), said


def test_a_restore_with_no_disk_to_write_says_what_to_attach_or_name(monkeypatch):
    monkeypatch.setattr(unattended, "vm_disks", lambda: [])
    said = stopped(Settings(job="j1"), JobOnly(64 * MiB))
    assert said.startswith("Job j1 has 1 disk (sda of 64.0 MiB) but this machine has 0 free "
                           "disks. Attach a disk at least as large for each disk of the job"), said
    assert "p2v.disks=" in said
    monkeypatch.setattr(unattended, "vm_disks", lambda: ["/dev/xvda"])
    said = stopped(Settings(job="j1"), JobOnly(64 * MiB, 2 * MiB))
    assert said.startswith("Job j1 has 2 disks (sda of 64.0 MiB, sdb of 2.0 MiB) but this "
                           "machine has 1 free disk (/dev/xvda)."), said


def test_a_restore_refuses_named_disks_too_small_holding_the_live_system_or_too_few(
        loopdev, monkeypatch):
    monkeypatch.setattr(unattended, "vm_disks", lambda: [])
    small, big, other = loopdev(16 * MiB, "small"), loopdev(64 * MiB, "big"), loopdev(64 * MiB)
    with open(small, "r+b") as f:
        f.write(b"keep me")
    said = stopped(Settings(job="j1", disks=[small]), JobOnly(48 * MiB))
    assert said.startswith(f"{small} holds 16.0 MiB ({16 * MiB} bytes) but disk sda of job j1, "
                           f"which goes onto it, is 48.0 MiB ({48 * MiB} bytes): give a disk at "
                           "least that large with p2v.disks="), said
    with open(small, "rb") as f:
        assert f.read(7) == b"keep me"
    said = stopped(Settings(job="j1", disks=[big, other]), JobOnly(48 * MiB))
    assert said == (f"Job j1 has 1 disk (sda of 48.0 MiB) but p2v.disks= names 2 disks to write "
                    f"({big}, {other}); name one disk for each, in that order.")
    # The live ISO's medium: what it runs from, mounted on /run/live/medium.
    st = os.stat(big)
    live = {f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}": "/run/live/medium"}
    monkeypatch.setattr(restore_mod, "mounted_devices", lambda: live)
    said = stopped(Settings(job="j1", disks=[Path(big).name]), JobOnly(48 * MiB))
    assert said.startswith(f"/dev/{Path(big).name} holds the live system this agent runs from"), said


def test_a_job_imported_onto_this_vm_is_repaired_in_place():
    vm = probe_machine(recorded=Path(__file__).resolve().parents[1] / "machines" / "windows.json")
    assert imported_here({"id": "j1", "target_uuid": vm.system_uuid.upper()}, vm)
    assert not imported_here({"id": "j1", "target_uuid": None}, vm)
    assert not imported_here({"id": "j1", "target_uuid": "00000000-0000-0000-0000-000000000001"}, vm)


def test_a_capture_warns_of_what_the_tui_summary_would_warn_of():
    """The same checks as the TUI's VM and Summary screens (agent.vmspec): a system on a disk
    left out of p2v.disks, too many vCPUs."""
    machine = probe_machine(recorded=Path(__file__).resolve().parents[1] / "machines"
                            / "two-disks-usb.json")
    out = io.StringIO()
    settings = Settings(mode="capture", unattended=True, disks=["sdb"], vcpus=64)
    assert unattended.run(settings, out, machine=machine, command=[].append) == 1
    said = out.getvalue()
    assert "Warning: sda holds Debian GNU/Linux 11 (bullseye) but is not chosen (--disks, " \
        "p2v.disks=)" in said
    assert "Warning: 64 vCPUs: XenServer supports at most 32" in said
    assert "p2v.mode=capture needs p2v.server and p2v.token" in said


def test_p2v_debug_shows_the_traceback_behind_a_stop_and_logs_everything(tmp_path):
    """Without p2v.debug a stop is one sentence; with it, the console and the log file (in
    TMPDIR, /tmp on the ISO) also hold the debug records and the traceback behind it."""
    def stopped(extra: str) -> tuple[str, str]:
        logs = tmp_path / extra.replace(".", "-") if extra else tmp_path / "plain"
        logs.mkdir()
        proc = subprocess.run(
            [*AGENT, "--config", str(tmp_path / "none.cfg"), "--cmdline",
             f"p2v.unattended p2v.server=https://127.0.0.1:9 p2v.token=t p2v.mode=capture "
             f"p2v.disks=/dev/xenp2v-no-such-disk {extra}"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
            cwd=Path(__file__).resolve().parents[2], env={**os.environ, "TMPDIR": str(logs)})
        assert proc.returncode == 1, proc.stderr
        assert "Stopped: There is no disk /dev/xenp2v-no-such-disk here" in proc.stderr
        return proc.stderr, (logs / "xenp2v-agent.log").read_text()

    console, log = stopped("")
    assert "Traceback" not in console and "Traceback" not in log and "DEBUG" not in log
    console, log = stopped("p2v.debug")
    assert f"logged to {tmp_path / 'p2v-debug' / 'xenp2v-agent.log'}" in console
    for text in (console, log):
        assert "Traceback (most recent call last)" in text
        assert "agent.transfer.capture.CaptureError: There is no disk" in text


def test_a_failed_run_follows_p2v_fail_and_waits_by_default_even_with_post_poweroff():
    ran = []
    out = io.StringIO()
    failing = Settings(server="https://127.0.0.1:9", token="t", mode="restore", unattended=True,
                       post="poweroff")
    assert unattended.run(failing, out, command=ran.append) == 1
    assert ran == [] and "p2v.mode=restore needs p2v.job=ID" in out.getvalue()
    assert out.getvalue().rstrip().endswith("the console waits for someone.")
    failing.fail = "reboot"
    assert unattended.run(failing, io.StringIO(), command=ran.append) == 1
    assert ran == [["systemctl", "reboot"]]


def test_p2v_fail_is_read_like_p2v_post():
    from agent.settings import SettingsError, load_settings
    assert load_settings("p2v.fail=poweroff", cfg_paths=[]).fail == "poweroff"
    assert load_settings("quiet", cfg_paths=[]).fail == "wait"
    try:
        load_settings("p2v.fail=later", cfg_paths=[])
    except SettingsError as e:
        assert "p2v.fail=later is not one of wait|shell|poweroff|reboot" in str(e)
    else:
        raise AssertionError("p2v.fail=later was accepted")


CONSOLE = Path(__file__).resolve().parents[2] / \
    "live-build/config/includes.chroot_after_packages/usr/local/sbin/xenp2v-console"


def console(tmp_path: Path, cmdline: str, status: int) -> tuple[str, list[str]]:
    """xenp2v-console with a p2v-agent that exits with `status` and a systemctl that records."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "p2v-agent").write_text(f"#!/bin/sh\necho why it stopped\nexit {status}\n")
    calls = tmp_path / "systemctl.calls"
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    script = CONSOLE.read_text().replace("export PATH=", f"export PATH={bin_dir}:") \
        .replace("/proc/cmdline", str(tmp_path / "cmdline")).replace("/bin/bash --login", "true")
    (tmp_path / "console").write_text(script)
    proc = subprocess.run(["bash", str(tmp_path / "console"), "tty1"], input="\n",
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    return proc.stdout + proc.stderr, (calls.read_text().split("\n")[:-1] if calls.exists() else [])


def test_the_console_follows_p2v_fail_after_a_failed_agent_and_p2v_post_after_success(tmp_path):
    said, calls = console(tmp_path, "p2v.post=poweroff", 1)
    assert calls == [] and "why it stopped" in said and "This is a root shell" in said
    said, calls = console(tmp_path, "p2v.post=poweroff p2v.fail=reboot", 1)
    assert calls == ["reboot"]
    (tmp_path / "systemctl.calls").unlink()
    said, calls = console(tmp_path, "p2v.post=poweroff", 0)
    assert calls == ["poweroff"]


def test_a_server_that_does_not_answer_is_said_at_once_not_after_minutes(loopdev, tmp_path):
    dev = loopdev(16 * MiB, "noserver")
    line = (f"p2v.server=https://127.0.0.1:9 p2v.token=t p2v.mode=capture p2v.disks={dev} "
            "p2v.fingerprint=sha256:" + "ab" * 32)
    proc = subprocess.Popen([*AGENT, "--config", str(tmp_path / "none.cfg"), "--cmdline", line],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 1)
            if ready:
                lines.append(proc.stderr.readline())
                if any("cannot reach https://127.0.0.1:9" in x and "retrying in" in x for x in lines):
                    break
        else:
            raise AssertionError("nothing said in 90 s:\n" + "".join(lines))
    finally:
        proc.kill()
        proc.wait()


def test_p2v_mode_restore_with_a_ca_bundle_that_is_not_there_names_it(loopdev, p2v_server,
                                                                       monkeypatch):
    # The FileNotFoundError from loading the bundle left the run as a traceback.
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent")
    monkeypatch.setattr(unattended, "vm_disks", lambda: [])
    vm = probe_machine(recorded=Path(__file__).resolve().parents[1] / "machines" / "windows.json")
    out = io.StringIO()
    settings = Settings(server=p2v_server.url, token=p2v_server.token, mode="restore", job="nope",
                        disks=[loopdev(16 * MiB, "target")])
    assert unattended.run(settings, out, vm, command=lambda argv: None) == 1
    assert ("Stopped: The CA bundle REQUESTS_CA_BUNDLE=/nonexistent cannot be read (No such file "
            "or directory): correct the path or unset REQUESTS_CA_BUNDLE, or pass the fingerprint"
            in out.getvalue()), out.getvalue()

"""`p2v-agent` with no subcommand: unattended when the settings say so, plain lines, exit status."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import requests

from agent import unattended
from agent.probe import probe_machine
from agent.progress import Progress
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


def test_repair_with_a_job_the_server_did_not_import_here_restores_first(loopdev, p2v_server, tmp_path,
                                                                          monkeypatch):
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


def test_a_job_imported_onto_this_vm_is_repaired_in_place():
    vm = probe_machine(recorded=Path(__file__).resolve().parents[1] / "machines" / "windows.json")
    assert imported_here({"id": "j1", "target_uuid": vm.system_uuid.upper()}, vm)
    assert not imported_here({"id": "j1", "target_uuid": None}, vm)
    assert not imported_here({"id": "j1", "target_uuid": "00000000-0000-0000-0000-000000000001"}, vm)

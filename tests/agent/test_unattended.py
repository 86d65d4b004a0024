"""`p2v-agent` with no subcommand: unattended when the settings say so, plain lines, exit status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import requests

from agent.probe import probe_machine
from agent.settings import Settings
from agent.unattended import post_action, situation
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

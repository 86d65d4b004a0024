"""The real `p2v-agent`, in tmux at 80x24 on TERM=linux, driven by keys as a person would:
a loop device captured to a local p2v-server, read back from the screen with capture-pane."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from support import rescan, run

MiB = 1 << 20
AGENT = Path(sys.executable).parent / "p2v-agent"
# The tree under test: the venv's p2v-agent imports the checkout it was installed from, and a
# tmux session gets the tmux server's environment, not this test's PYTHONPATH.
REPO = Path(__file__).resolve().parents[2]


class Tmux:
    def __init__(self, name: str):
        self.name = name

    def start(self, command: str) -> None:
        run("tmux", "new-session", "-d", "-s", self.name, "-x", "80", "-y", "24", command)

    def keys(self, *keys: str, literal: bool = False) -> None:
        run("tmux", "send-keys", "-t", self.name, *(["-l"] if literal else []), *keys)
        time.sleep(0.3)

    def pane(self) -> str:
        return run("tmux", "capture-pane", "-p", "-t", self.name).stdout

    def wait(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.pane()
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"'{text}' never showed; the screen:\n{screen}")
            time.sleep(0.3)

    def wait_gone(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while text in (screen := self.pane()):
            if time.monotonic() > deadline:
                raise AssertionError(f"'{text}' never went away; the screen:\n{screen}")
            time.sleep(0.3)
        return screen

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def appears(path: Path, timeout: float = 30) -> bool:
    """Whether `path` exists within `timeout` seconds (what the shell in tmux writes)."""
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.3)
    return path.exists()


@pytest.fixture
def tmux():
    session = Tmux(f"p2v-tui-{time.monotonic_ns()}")
    yield session
    session.kill()


def test_a_person_captures_a_disk_through_the_real_agent(loopdev, p2v_server, tmux, tmp_path):
    dev = loopdev(64 * MiB, "tmuxsrc")
    run("sfdisk", "-q", dev, input="label: dos\nstart=2048, type=83\n")
    run("mkfs.ext4", "-q", "-L", "tmuxsrc", rescan(dev)[0])
    status = tmp_path / "status"
    agent = (f"{AGENT} --config {tmp_path / 'none.cfg'} --cmdline "
             f"{shlex.quote(f'quiet p2v.disks={dev} p2v.name=tmux-box')}")
    tmux.start(f"cd {REPO} && PYTHONPATH={REPO} TERM=linux {agent}; "
               f"echo $? > {status}; sleep 600")

    tmux.wait("Migrate this machine", 120)
    tmux.keys("Enter")                                  # migrate
    tmux.wait("Network  step 2 of 8")
    tmux.keys("Enter")                                  # Next
    tmux.wait("Server  step 3 of 8")
    tmux.keys(p2v_server.url, literal=True)
    # As a person does: look that the URL is in, then Tab (at load 18 a Tab sent while the
    # URL's last keys were still being handled once left the token typed into the URL field).
    tmux.wait(p2v_server.url)
    time.sleep(1)
    tmux.keys("Tab")
    time.sleep(1)
    tmux.keys(p2v_server.token, literal=True)
    tmux.keys("Enter")                                  # Enter in a field tests the server
    screen = tmux.wait("press Trust it", 60)
    assert p2v_server.fingerprint[:39] in screen        # shown for the person to compare
    tmux.keys("Tab")                                    # to Trust it, never focused
    tmux.keys("Enter")                                  # Trust it
    tmux.wait("Fingerprint trusted")
    tmux.keys("Enter")                                  # Next
    screen = tmux.wait("Disks  step 4 of 8")
    assert "[x]" in screen and Path(dev).name in screen
    tmux.keys("Tab")
    tmux.keys("Enter")                                  # Next
    tmux.wait("VM  step 5 of 8")
    tmux.keys("Enter")                                  # Enter in the name field: Next
    screen = tmux.wait("Summary  step 6 of 8")
    assert "tmux-box" in screen and p2v_server.url in screen
    tmux.keys("Enter")                                  # Start the transfer
    screen = tmux.wait("The transfer is complete", 180)
    assert "sealed" in screen
    tmux.keys("C-q")                                    # finished: quits at once
    assert appears(status) and status.read_text().strip() == "0", tmux.pane()

    jobs = requests.get(f"{p2v_server.url}/api/v1/jobs", headers=p2v_server.headers,
                        verify=False, timeout=30).json()
    assert [(j["name"], [d["state"] for d in j["disks"]]) for j in jobs] == [("tmux-box", ["sealed"])]


def test_f9_gives_a_shell_and_exit_comes_back_to_the_same_screen(tmux, tmp_path):
    status = tmp_path / "status"
    agent = f"{AGENT} --config {tmp_path / 'none.cfg'} --cmdline quiet"
    tmux.start(f"cd {REPO} && PYTHONPATH={REPO} TERM=linux SHELL=/bin/bash {agent}; "
               f"echo $? > {status}; sleep 600")

    tmux.wait("Migrate this machine", 120)
    tmux.keys("F9")
    tmux.wait("a root shell. Type exit to come back")
    tmux.keys("echo from-the-shell-$((6*7)) > " + str(tmp_path / "ran"), "Enter")
    assert appears(tmp_path / "ran") and (tmp_path / "ran").read_text() == "from-the-shell-42\n", tmux.pane()
    tmux.keys("exit", "Enter")
    screen = tmux.wait_gone("a root shell", 60)         # the agent's screen drawn again
    assert "Migrate this machine" in screen
    tmux.keys("C-q")
    tmux.wait("Quit the agent?")
    tmux.keys("Enter")                                  # Stay has the focus: nothing lost by a slip
    assert "Migrate this machine" in tmux.wait_gone("Quit the agent?")
    tmux.keys("C-q")
    tmux.wait("Quit the agent?")
    tmux.keys("Tab", "Enter")                           # Quit
    assert appears(status) and status.read_text().strip() == "1", tmux.pane()   # quit before the end

"""A final sync's start-up is downtime (warm migration): `p2v-agent capture` loads what a capture
needs and nothing else: not the other subcommands' modules, not requests, not textual."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

from agent import cli
from agent.disk import blockdev
from agent.transfer import capture
from agent.settings import Settings
from support import rescan, run

MiB = 1 << 20

REPO = Path(__file__).resolve().parents[2]
# What a capture never needs: the repair, restore and pre-copy code, the TUI, the server, and the
# HTTP library the client does without.
NOT_FOR_A_CAPTURE = ("agent.repair", "agent.transfer.restore", "agent.warm.precopy", "agent.tui", "server",
                     "textual", "requests", "urllib3", "regipy")


def imported(*argv: str) -> set[str]:
    """The modules `p2v-agent ARGV` imports (python -X importtime), as a fresh process does."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "agent.cli", *argv],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    return set(re.findall(r"^import time:.*\|\s*(\S+)$", proc.stderr, re.M))


def test_capture_imports_only_what_a_capture_needs():
    loaded = imported("capture", "--cmdline", "", "--help")
    assert "agent.transfer.capture" in loaded
    unneeded = sorted(m for m in loaded if m.split(".")[0] in NOT_FOR_A_CAPTURE
                      or any(m == n or m.startswith(n + ".") for n in NOT_FOR_A_CAPTURE))
    assert unneeded == []


def test_the_subcommand_is_found_past_the_main_options():
    assert cli.subcommand(["--cmdline", "capture", "--config", "probe", "repair", "--dry-run"]) \
        == "repair"
    assert cli.subcommand(["--config=/p2v.cfg", "restore-and-repair"]) == "restore-and-repair"
    assert cli.subcommand(["--help"]) is None
    assert cli.subcommand(["nonsense", "capture"]) is None


def test_help_and_an_unknown_word_list_every_subcommand(capsys):
    for argv in (["--help"], ["nonsense"]):
        try:
            cli.main(argv)
        except SystemExit:
            pass
        out = capsys.readouterr()
        assert all(name in out.out + out.err for name in cli.COMMANDS)


def test_a_capture_reads_each_partition_table_and_signature_once(loopdev, p2v_server, tmp_path,
                                                                  monkeypatch):
    """Probe, plan and inventory each asked sfdisk and blkid about the same disk: three
    processes where one answers (every call counted by a wrapper on PATH)."""
    dev = loopdev(64 * MiB, "once")
    run("sfdisk", "-q", dev, input="label: gpt\n,24M,L\n,,L\n")
    parts = rescan(dev)
    for part in parts:
        run("mkfs.ext4", "-q", part)
    calls = tmp_path / "calls"
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    for tool in ("sfdisk", "blkid"):
        real = shutil.which(tool)
        (wrappers / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\nexec {real} "$@"\n')
        (wrappers / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")

    capture.run(Settings(server=p2v_server.url, token=p2v_server.token,
                         fingerprint=p2v_server.fingerprint, disks=[dev], streams=2),
                identity={"system_uuid": str(uuid.uuid4())})
    asked = Counter(calls.read_text().splitlines())
    assert asked[f"sfdisk --json {dev}"] == 1
    for node in (dev, *parts):
        assert asked[f"blkid -p -o export {node}"] <= 1, asked
    # Outside a capture nothing is remembered: a second look runs the tool again.
    blockdev.partition_table(dev)
    assert Counter(calls.read_text().splitlines())[f"sfdisk --json {dev}"] == 2

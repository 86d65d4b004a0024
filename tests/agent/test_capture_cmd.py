"""`p2v-agent capture` and `restore` as typed at a terminal: what they print, and only once."""

from __future__ import annotations

import subprocess
import sys

from support import run

AGENT = [sys.executable, "-m", "agent.cli"]


def test_a_capture_and_restore_at_a_terminal_say_each_thing_once(loopdev, p2v_server_factory, tmp_path):
    # The capture raised the agent's logger to INFO for the server's event log, and the terminal
    # then printed each progress line's news again as "INFO: ..." ("sealed" three times).
    server = p2v_server_factory(plain=True)
    src = loopdev(64 << 20, "source")
    run("mkfs.ext4", "-q", "-d", "/usr/share/doc/bash", src)
    capture = subprocess.run(AGENT + ["capture", "--server", server.url, "--token", server.token,
                                      "--disks", src, "--name", "terminal"],
                             capture_output=True, text=True, timeout=300)
    assert capture.returncode == 0, capture.stderr
    assert "INFO" not in capture.stderr, capture.stderr
    assert capture.stderr.count("sealed") == 1, capture.stderr    # the last progress line
    assert capture.stdout.count("sealed") == 1, capture.stdout    # the result
    job = capture.stdout.split("sealed in job ")[1].split(":")[0]
    target = tmp_path / "copy.img"
    restore = subprocess.run(AGENT + ["restore", "--server", server.url, "--token", server.token,
                                      "--job", job, "--target", str(target)],
                             capture_output=True, text=True, timeout=300)
    assert restore.returncode == 0, restore.stderr
    assert "INFO" not in restore.stderr, restore.stderr
    assert target.read_bytes() == open(src, "rb").read()


def test_a_restores_summary_counts_one_chunk_as_one_chunk():
    from agent.transfer.restore import RestoreResult
    one = RestoreResult("job", "sda", "/dev/xvda", 1 << 20, fetched_chunks=1, fetched_bytes=1 << 20,
                        no_data_said="nothing else")
    assert "1 chunk fetched (1.0 MiB" in one.summary(), one.summary()
    two = RestoreResult("job", "sda", "/dev/xvda", 1 << 20, fetched_chunks=2)
    assert "2 chunks fetched" in two.summary()


def test_a_disk_name_that_matches_nothing_lists_the_machines_disks():
    # The probe looked at the named disks only, so the sentence listed "none".
    from agent.probe.disks import disk_paths
    from agent.settings import Settings
    from agent.transfer.capture import CaptureError, select_disks
    try:
        select_disks(Settings(disks=["xenp2v-no-such-disk"]), None)
    except CaptureError as e:
        said = str(e)
    else:
        raise AssertionError("a disk that is not there was selected")
    names = [p.rsplit("/", 1)[1] for p in disk_paths()]
    assert said.startswith("There is no disk xenp2v-no-such-disk here; "), said
    assert said.endswith(f"the disks are: {', '.join(names)}." if names else "lists what the kernel sees)."), said


def test_a_ca_bundle_that_is_not_there_is_named_not_blamed_on_a_disk(loopdev, p2v_server, tmp_path):
    # FileNotFoundError from loading it read "Cannot read a source disk: No such file or
    # directory" (capture) and "Cannot write …" (restore).
    import os
    env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env["REQUESTS_CA_BUNDLE"] = "/nonexistent"
    src = loopdev(16 << 20, "source")
    said = "The CA bundle REQUESTS_CA_BUNDLE=/nonexistent cannot be read (No such file or directory)"
    capture = subprocess.run(AGENT + ["capture", "--server", p2v_server.url, "--token",
                                      p2v_server.token, "--disks", src],
                             capture_output=True, text=True, timeout=300, env=env)
    assert capture.returncode == 1 and said in capture.stderr, capture.stderr
    assert "a source disk" not in capture.stderr and "Traceback" not in capture.stderr, capture.stderr
    restore = subprocess.run(AGENT + ["restore", "--server", p2v_server.url, "--token",
                                      p2v_server.token, "--job", "nope",
                                      "--target", str(tmp_path / "copy.img")],
                             capture_output=True, text=True, timeout=300, env=env)
    assert restore.returncode == 1 and said in restore.stderr, restore.stderr
    assert "Cannot write" not in restore.stderr and "Traceback" not in restore.stderr, restore.stderr

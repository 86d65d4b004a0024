"""The e2e's live machines give up early on a guest that is stuck, and a failed phase prints its
console's tail: a CI run's output is all that is left of its machines (a restore that hung for an
hour in CI left only 'the machine did not power off')."""

import subprocess
import threading
import time

import live
import run


def machine(tmp_path, script: str) -> live.LiveMachine:
    """A LiveMachine whose 'guest' is a shell script printing to the console."""
    vm = object.__new__(live.LiveMachine)
    vm.log = tmp_path / "console.serial"
    vm.output, vm.arrivals, vm.started = bytearray(), [], time.monotonic()
    vm.proc = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    vm._reader = threading.Thread(target=vm._read, daemon=True)
    vm._reader.start()
    return vm


def test_an_agent_that_keeps_saying_it_does_not_move_is_given_up(tmp_path, monkeypatch):
    monkeypatch.setattr(live, "POLL", 0.2)
    vm = machine(tmp_path, "for i in 1 2 3; do echo 'No progress for 0:05:00 (vda restore)'; "
                           "sleep 0.2; done; sleep 60")
    started = time.monotonic()
    try:
        assert vm.wait_off(120) is False
    finally:
        vm.close()
    assert time.monotonic() - started < 10
    assert vm.stuck() == "the agent said 3 times that its transfer does not move"


def test_a_silent_console_is_given_up(tmp_path, monkeypatch):
    monkeypatch.setattr(live, "SILENT_LIMIT", 1)
    monkeypatch.setattr(live, "POLL", 0.2)
    vm = machine(tmp_path, "echo booting; sleep 60")
    try:
        assert vm.wait_off(120) is False
    finally:
        vm.close()
    assert "console was silent" in vm.stuck()


def test_a_machine_that_powers_off_is_off(tmp_path):
    vm = machine(tmp_path, "echo 'No progress for 0:05:00'; echo done")
    try:
        assert vm.wait_off(60) is True
    finally:
        vm.close()


def test_a_failed_phase_prints_the_console_tail(tmp_path, capsys):
    log = tmp_path / "x-repair-virtio.serial"
    log.write_bytes(b"".join(b"line %d\r\n" % i for i in range(100)) + b"\x1b[1mvda: restore 1%\x1b[0m\r\n")
    scenario = run.Scenario.__new__(run.Scenario)
    scenario.name, scenario.row = "bios-mbr", {}
    assert scenario.record("repair-virtio", False, 1.0, "failed", log) is False
    out = capsys.readouterr().out
    assert "    | line 99\n    | vda: restore 1%\n" in out and "line 60\n" not in out
    scenario.record("capture", True, 1.0, "done", log)
    assert "|" not in capsys.readouterr().out

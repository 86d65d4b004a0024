"""A restore+repair given up as stuck (a starved guest: CI's restore over virtio hung for an hour
once, and never again in 60 tries) runs once more on new blank disks, and the phase's line says
so; any other failure is not retried."""

import os

import live
import run

GIVEN_UP = "its console was silent for 15 minutes"


class Guests:
    """Stands in for live._agent_run: each call is the next scripted console; the disks it got
    must be blank and of the scenario's sizes, and the 'restore' then writes on them."""

    def __init__(self, *consoles: str):
        self.consoles = list(consoles)
        self.calls = []

    def __call__(self, iso, images, controller, nic, firmware, log, flags, snapshot, mac=live.MAC):
        sizes = run.variant("bios-mbr").sizes()
        self.calls.append((controller, flags, [(p.stat().st_size, p.stat().st_blocks) for p in images],
                           sizes))
        for image in images:
            with open(image, "r+b") as f:
                f.write(b"restored")
        text = self.consoles.pop(0)
        log.write_text(text)
        off = live.GIVEN_UP not in text
        return off, text, 900.0, "boot 60 s"


def migrate(tmp_path, monkeypatch, *consoles: str) -> tuple[run.Scenario, Guests]:
    """The ISO path of bios-mbr with its capture done and its boots after the repair good."""
    guests = Guests(*consoles)
    monkeypatch.setattr(live, "_agent_run", guests)
    monkeypatch.setattr(live, "capture", lambda *a: (live.Phase(
        True, "job j1 sealed", 1.0, tmp_path / "c.serial", boot_line="p2v.server=x p2v.mode=restore"), "j1"))
    monkeypatch.setattr(run.Scenario, "check", lambda self, key, *a: self.record(key, True, 1.0, "up"))
    scenario = run.Scenario("bios-mbr", tmp_path)
    scenario.iso_path([], tmp_path / "x.iso", server=type("Server", (), {
        "port": 1, "token": "admin", "fingerprint": "f"})())
    return scenario, guests


def stuck(console: str = "sda: restore 0 B of 3.0 GiB\n") -> str:
    return f"{console}\n{live.GIVEN_UP}{GIVEN_UP}.\n"


def test_a_stuck_try_is_run_again_on_new_blank_disks_and_says_so(tmp_path, monkeypatch, capsys):
    ok = "Repair ok: the disks boot on this VM.\nPowering off.\n"
    scenario, guests = migrate(tmp_path, monkeypatch, ok, stuck(), ok)
    out = capsys.readouterr().out
    assert len(guests.calls) == 3
    for controller, flags, disks, sizes in guests.calls:
        assert [size for size, _ in disks] == sizes and all(blocks == 0 for _, blocks in disks)
    assert [c[0] for c in guests.calls] == ["ide", "virtio", "virtio"]
    assert guests.calls[1][1] == guests.calls[2][1]      # the same flags again
    assert scenario.row["repair-virtio"][0] is True
    line = next(line for line in out.splitlines() if "repair-virtio: PASS" in line)
    assert f"(second try; the first was given up: {GIVEN_UP} (900 s; its console: " \
           "bios-mbr-repair-virtio.stuck.serial))" in line
    assert (tmp_path / "bios-mbr-repair-virtio.stuck.serial").read_text() == stuck()
    assert (tmp_path / "bios-mbr-repair-virtio.serial").read_text() == ok
    assert "second try" not in next(line for line in out.splitlines() if "repair-ide:" in line)


def test_stuck_twice_fails_with_both_reasons(tmp_path, monkeypatch, capsys):
    again = "its agent said 3 times that its transfer does not move"
    second = f"No progress for 0:05:00\n\n{live.GIVEN_UP}{again}.\n"
    ok = "Repair ok: the disks boot on this VM.\nPowering off.\n"
    scenario, guests = migrate(tmp_path, monkeypatch, stuck(), second, ok)
    out = capsys.readouterr().out
    assert [c[0] for c in guests.calls] == ["ide", "ide", "virtio"]
    assert scenario.row["repair-ide"][0] is False
    line = next(line for line in out.splitlines() if "repair-ide: FAIL" in line)
    assert f"failed: {live.GIVEN_UP}{again}." in line
    assert f"(second try; the first was given up: {GIVEN_UP} (900 s" in line
    assert "after-ide" not in scenario.row


def test_an_ordinary_failure_is_not_retried(tmp_path, monkeypatch, capsys):
    failed = "Stopped: Job j1 was not imported onto this VM by the server.\nThe agent is done.\n"
    scenario, guests = migrate(tmp_path, monkeypatch, failed + "\n" + live.GIVEN_UP + GIVEN_UP + ".\n",
                               "Repair failed: no bootloader.\nPowering off.\n")
    out = capsys.readouterr().out
    assert [c[0] for c in guests.calls] == ["ide", "virtio"]   # each once
    assert scenario.row["repair-ide"][0] is False and scenario.row["repair-virtio"][0] is False
    assert "second try" not in out and not list(tmp_path.glob("*.stuck.serial"))
    assert "repair-ide: FAIL — failed: Stopped: Job j1 was not imported" in out


def test_a_try_stuck_after_its_report_is_run_again_with_the_admins_token(tmp_path, monkeypatch):
    """The capture's boot line carries the job's own token, which the repair's report ended."""
    ok = "Repair ok: the disks boot on this VM.\nPowering off.\n"
    _, guests = migrate(tmp_path, monkeypatch, stuck(ok.replace("Powering off.\n", "")), ok, ok)
    first, second = guests.calls[0][1], guests.calls[1][1]
    assert first.startswith("p2v.server=x p2v.mode=restore")
    assert "p2v.token=admin" in second and "p2v.mode=repair p2v.job=j1" in second
    assert os.path.exists(tmp_path / "bios-mbr-repair-ide.stuck.serial")

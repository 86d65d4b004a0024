"""The TUI for a tired technician (issue 17): each slip a person makes at a server's console,
tried with the keys, on recorded machines and fixed core actions."""

from __future__ import annotations

import asyncio

from agent.probe import probe_machine
from agent.settings import Settings
from agent.tui.app import make_app
from agent.tui.edges import Edges
from tests.tui.helpers import MACHINES, screen_text, wait_for, wait_screen

FINGERPRINT = "sha256:" + "5c0ffee1" * 8
PRESET = dict(server="https://10.0.0.5:8443", token="s3cret-token", fingerprint=FINGERPRINT)


def edges(machine: str = "two-disks-usb", **more) -> Edges:
    given = {"nics": lambda: [], "power": lambda argv: None, "shell": lambda: None, **more}
    return Edges(probe=lambda devices: probe_machine(recorded=MACHINES / f"{machine}.json"), **given)


def walk(app, steps, size=(80, 24)):
    async def run():
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, lambda: app.screen.query_one("#choices").display, 60, "the probe")
            await steps(pilot)
    asyncio.run(run())


def rendered(app, selector: str) -> list[str]:
    """The lines of one widget as the screen draws them (its width, its folds)."""
    widget = app.screen.query_one(selector)
    return [strip.text for strip in widget.render_lines(widget.content_region.reset_offset)]


async def open_screen(pilot, screen):
    await pilot.app.push_screen(screen)
    await pilot.pause(0.2)


# --- 1. the manual path's boot line --------------------------------------------------------------

def test_done_screens_boot_line_carries_the_fingerprint():
    app = make_app(Settings(**PRESET, disks=["/dev/sda"]), edges())

    async def steps(pilot):
        from agent.tui.done import DoneScreen
        app.session.job = "20261127-0930-files-1a2b3c"
        await open_screen(pilot, DoneScreen(True, False))
        text = screen_text(app).replace("\n", " ")
        assert "p2v.job=20261127-0930-files-1a2b3c p2v.mode=restore" in text
        # As drawn at 80 columns: the fingerprint cannot fit on one line; where it folds is
        # ours (after 32 hex digits) and said, so it is not typed as two words.
        hexdigits = FINGERPRINT.removeprefix("sha256:")
        lines = [line.strip(" │▁▂▃▄▅▆▇█") for line in rendered(app, "#result")]
        first = lines.index(f"p2v.fingerprint=sha256:{hexdigits[:32]}")
        assert lines[first + 1] == hexdigits[32:], lines
        assert "with no space" in text, text

    walk(app, steps)


def test_the_done_screens_help_after_a_failed_transfer_says_what_to_do_not_what_success_means():
    app = make_app(Settings(**PRESET, disks=["/dev/sda"]), edges())

    async def steps(pilot):
        from agent.tui.done import DoneScreen
        app.session.outcome = ["The transfer stopped: cannot reach https://10.0.0.5:8443."]
        await open_screen(pilot, DoneScreen(False, False, again="transfer"))
        await pilot.press("f1")
        await wait_screen(pilot, "HelpScreen")
        said = screen_text(app).replace("\n", " ")
        assert "The transfer is over" not in said and "once the VM runs" not in said, said
        assert "The transfer did not finish: the reason is on this screen" in said, said
        assert "The agent's log" in said and "Resume the transfer" in said, said
        assert "keep it as it is, it is the original" in said, said

    walk(app, steps)


def test_restore_with_an_untrusted_server_asks_for_the_fingerprint_first():
    restored = []
    app = make_app(Settings(server="https://127.0.0.1:9", token="t", job="j1"),
                   edges("windows", restore=lambda *a: restored.append(a) or []))

    async def steps(pilot):
        assert app.screen.query_one("#choices").get_option_at_index(0).id == "restore"
        await pilot.press("enter")
        await wait_screen(pilot, "ServerScreen")
        assert not restored

    walk(app, steps)


# --- 2. Enter on the Disks screen ----------------------------------------------------------------

def test_enter_on_the_disks_screen_goes_on_and_unticks_nothing():
    app = make_app(Settings(), edges())

    async def steps(pilot):
        from agent.tui.disks import DisksScreen
        await open_screen(pilot, DisksScreen())
        assert app.screen.chosen == {"/dev/sda", "/dev/sdb"}
        await pilot.press("enter")                   # focus starts in the table
        await wait_screen(pilot, "VmScreen")
        assert app.session.settings.disks == ["/dev/sda", "/dev/sdb"]

    walk(app, steps)


def test_space_on_the_disks_screens_buttons_unticks_nothing():
    """Space pressed on Next (Space presses a button in many programs) unticked the disk under
    the table's cursor, the system disk, as the screen took every Space."""
    app = make_app(Settings(), edges())

    async def steps(pilot):
        from agent.tui.disks import DisksScreen
        await open_screen(pilot, DisksScreen())
        for button in ("#next", "#again"):
            app.screen.query_one(button).focus()
            await pilot.press("space")
            await pilot.pause(0.2)
            assert app.screen.chosen == {"/dev/sda", "/dev/sdb"}, button
        app.screen.query_one("#disks").focus()
        await pilot.press("space")                   # in the table Space still ticks
        await pilot.pause(0.2)
        assert app.screen.chosen == {"/dev/sdb"}
        assert "1 disk ticked." in screen_text(app)    # not "1 disk(s)"

    walk(app, steps)


def test_a_system_disk_left_out_is_a_warning_on_the_vm_and_summary_screens():
    app = make_app(Settings(**PRESET), edges())

    async def steps(pilot):
        from agent.tui.disks import DisksScreen
        await open_screen(pilot, DisksScreen())
        await pilot.press("space")                   # the first row, sda: the Debian disk
        await pilot.press("enter")
        await wait_screen(pilot, "VmScreen")
        assert app.session.settings.disks == ["/dev/sdb"]
        assert "sda holds Debian GNU/Linux 11 (bullseye) but is not ticked" in screen_text(app)
        await pilot.press("enter")
        await wait_screen(pilot, "SummaryScreen")
        assert "sda holds Debian GNU/Linux 11 (bullseye) but is not ticked" in screen_text(app)

    walk(app, steps)


# --- 3. a new look at the disks ------------------------------------------------------------------

def test_back_from_the_shell_the_disks_are_looked_at_again(tmp_path):
    import json
    one = json.loads((MACHINES / "two-disks-usb.json").read_text())
    one["disks"] = one["disks"][:1]                  # sdb's controller has no driver yet
    (tmp_path / "one.json").write_text(json.dumps(one))
    looks = []

    def probe(devices):
        looks.append(devices)
        name = "one.json" if len(looks) == 1 else None
        return probe_machine(recorded=tmp_path / name if name else MACHINES / "two-disks-usb.json")

    shells = []
    app = make_app(Settings(), Edges(probe=probe, nics=lambda: [], power=lambda argv: None,
                                     shell=lambda: shells.append(1)))

    async def steps(pilot):
        from agent.tui.disks import DisksScreen
        await open_screen(pilot, DisksScreen())
        assert app.screen.query_one("#disks").row_count == 2     # sda and the stick
        await pilot.press("f9")                                  # modprobe in the shell, exit
        await wait_for(pilot, lambda: app.screen.query_one("#disks").row_count == 3, 30,
                       "the new look")
        assert shells and "New: sdb." in screen_text(app)
        assert app.screen.chosen == {"/dev/sda", "/dev/sdb"}

    walk(app, steps)


def test_a_missing_name_in_p2v_disks_hides_no_other_disk(loopdev):
    dev = loopdev(8 << 20, "named")
    looked = []

    def probe(devices):
        looked.append(devices)
        return probe_machine(recorded=MACHINES / "two-disks-usb.json")

    app = make_app(Settings(disks=["/dev/sdzz9", dev]), Edges(
        probe=probe, nics=lambda: [], power=lambda argv: None, shell=lambda: None))

    async def steps(pilot):
        assert looked == [[dev]]
        assert "p2v.disks names /dev/sdzz9, which this machine does not have" in screen_text(app)
        from agent.tui.disks import DisksScreen
        await open_screen(pilot, DisksScreen())          # the recorded disks: none named
        assert app.screen.chosen == set()

    walk(app, steps)


# --- 5. static addresses -------------------------------------------------------------------------

def test_a_static_address_is_checked_in_the_forms_words_applied_before_next_and_summarised():
    from agent.probe import Nic
    applied = []
    nic = Nic(name="eno1", mac="70:10:6f:aa:bb:01", driver="tg3", link=True, speed=1000)
    app = make_app(Settings(**PRESET), edges(
        nics=lambda: [nic], configure_network=lambda n, ip: applied.append((n, ip)) or "done"))

    async def steps(pilot):
        from agent.tui.network import NetworkScreen
        app.session.machine.nics = [nic]
        await open_screen(pilot, NetworkScreen())
        screen = app.screen
        screen.query_one("#static").value = True
        await pilot.pause(0.2)
        assert screen.query_one("#address").region.width >= 20       # room for 192.168.100.200/24
        screen.query_one("#address").value = "10.0.0.9"
        screen.query_one("#apply").press()
        await pilot.pause(0.2)
        status = str(screen.query_one("#status").render())
        assert "needs its prefix length" in status and not applied
        screen.query_one("#address").value = "10.0.0.9/24"
        screen.query_one("#gateway").value = "10.0.1.1"
        screen.query_one("#apply").press()
        await pilot.pause(0.2)
        status = str(screen.query_one("#status").render())
        assert "Gateway 10.0.1.1 is not on 10.0.0.0/24" in status and "::" not in status
        screen.query_one("#gateway").value = "10.0.0.1"
        screen.query_one("#next").press()                          # not applied yet
        await pilot.pause(0.2)
        assert type(app.screen).__name__ == "NetworkScreen"
        assert "not applied yet" in str(screen.query_one("#status").render())
        screen.query_one("#apply").press()
        await wait_for(pilot, lambda: applied, 30, "the address applied")
        screen.query_one("#next").press()
        await wait_screen(pilot, "ServerScreen")
        app.session.settings.disks = ["/dev/sda"]
        from agent.tui.summary import SummaryScreen
        await open_screen(pilot, SummaryScreen())
        assert "Network      eno1 10.0.0.9/24 via 10.0.0.1" in screen_text(app)

    walk(app, steps)


# --- 8. the token goes only to a trusted certificate ---------------------------------------------

class Listener:
    """A TLS port that records every byte a client sends after the handshake, answers nothing."""

    def __init__(self, tmp_path):
        import socket
        import ssl
        import subprocess
        import threading
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj",
                        "/CN=middle", "-days", "1", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.sock.getsockname()[1]}"
        self.received = b""
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        import ssl
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(2)
                    while chunk := tls.recv(65536):
                        self.received += chunk
            except (OSError, ssl.SSLError):
                pass

    def close(self):
        self.sock.close()


def test_test_shows_the_fingerprint_and_sends_no_token_until_it_is_trusted(tmp_path):
    listener = Listener(tmp_path)
    app = make_app(Settings(), edges())

    async def steps(pilot):
        from agent.tui.server import ServerScreen
        await open_screen(pilot, ServerScreen())
        app.screen.query_one("#url").value = listener.url
        app.screen.query_one("#token").value = "the-secret-token"
        app.screen.query_one("#test").press()
        await wait_for(pilot, lambda: "The server presents" in screen_text(app), 60, "the fingerprint")
        await pilot.pause(3)                      # anything else the agent would send, it has
        assert app.screen.query_one("#trust").display
        assert b"the-secret-token" not in listener.received and listener.received == b""
        assert "The token is sent only then" in screen_text(app)

    try:
        walk(app, steps)
    finally:
        listener.close()


def test_two_tired_enters_do_not_trust_a_certificate_nobody_compared(tmp_path):
    """Enter in the Token field tests; a second Enter pressed Trust it, which had the focus: the
    token went to a machine in the middle whose fingerprint nobody read."""
    listener = Listener(tmp_path)
    app = make_app(Settings(), edges())

    async def steps(pilot):
        from agent.tui.server import ServerScreen
        await open_screen(pilot, ServerScreen())
        app.screen.query_one("#url").value = listener.url
        app.screen.query_one("#token").value = "the-secret-token"
        app.screen.query_one("#token").focus()
        await pilot.press("enter")                # Enter in a field: Test
        await wait_for(pilot, lambda: "The server presents" in screen_text(app), 60, "the fingerprint")
        await pilot.press("enter")                # the tired second Enter
        await pilot.pause(3)
        assert b"the-secret-token" not in listener.received
        assert not app.screen.query_one("#fingerprint").value

    try:
        walk(app, steps)
    finally:
        listener.close()


def test_test_then_trust_then_next_goes_on_and_back_keeps_what_was_typed(p2v_server):
    app = make_app(Settings(), edges())

    async def steps(pilot):
        from agent.tui.server import ServerScreen
        await open_screen(pilot, ServerScreen())
        app.screen.query_one("#url").value = p2v_server.url
        app.screen.query_one("#token").value = p2v_server.token
        app.screen.query_one("#test").press()
        await wait_for(pilot, lambda: app.screen.query_one("#trust").display, 60, "the fingerprint")
        await pilot.press("tab", "enter")         # Trust it (Tab: never focused): now the token goes
        await wait_for(pilot, lambda: "accepts the token" in screen_text(app), 60, "the token check")
        await pilot.press("escape")               # back to Start, then forward again
        await pilot.app.push_screen(ServerScreen())
        await pilot.pause(0.3)
        values = [app.screen.query_one(f"#{n}").value for n in ("url", "token", "fingerprint")]
        assert values == [p2v_server.url, p2v_server.token, p2v_server.fingerprint]
        app.screen.query_one("#test").press()
        await wait_for(pilot, lambda: "accepts the token" in screen_text(app), 60, "the test")
        await pilot.press("enter")                # Next has the focus: no "Press Test first"
        await wait_screen(pilot, "DisksScreen")

    walk(app, steps)


# --- 9. repair on a machine whose disks are not where it looks -----------------------------------

def test_repair_with_no_disk_found_names_the_disks_and_lets_one_be_chosen(monkeypatch):
    from agent.repair import runner
    from agent.repair.guest import RepairError
    from tests.tui.test_snapshots import fixed_plan
    monkeypatch.setattr(runner, "is_vm", lambda: True)
    monkeypatch.setattr(runner, "vm_disks", lambda: [])      # a controller the VM shows otherwise
    asked = []

    def plan(disk, inventory, say, passphrases=None):
        asked.append(disk)
        if disk is None:
            return runner.repair(runner.Request(dry_run=True), say)   # what the real one says
        return fixed_plan(disk, inventory, say, passphrases)

    app = make_app(Settings(), edges("windows", plan_repair=plan))

    async def steps(pilot):
        from agent.tui.repair import RepairScreen
        await open_screen(pilot, RepairScreen())
        await wait_for(pilot, lambda: app.screen.query_one("#pick-disk").display, 30, "the choice")
        text = screen_text(app)
        assert "Choose the disk that holds the copied system" in text and "| . " not in text
        assert "shows no disk" not in text, text     # not with the VM's disks listed above it
        picker = app.screen.query_one("#pick-disk")
        first = picker.get_option_at_index(0).id
        assert first.startswith("/dev/") and first in str(picker.get_option_at_index(0).prompt)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen.query_one("#apply").display, 30, "the plan")
        assert asked == [None, first] and app.screen.disk == first

    walk(app, steps)


# --- 10. the smaller things ----------------------------------------------------------------------

def test_an_outage_shows_as_waiting_then_connected_again_not_a_frozen_rate():
    import logging
    import threading
    import time
    from agent.transfer.progress import ProgressEvent
    GiB = 1 << 30
    back = threading.Event()

    def capture(settings, progress, machine=None, keep_macs=None):
        def report(done, rate, eta):
            for subscriber in progress.subscribers:
                subscriber(ProgressEvent("sda", "capture", done, 8 * GiB, done, rate, eta))
        report(2 * GiB, 100 << 20, 60.0)
        logging.getLogger("agent.transfer.client").warning("cannot reach https://s:1 (refused); retrying in 4.0 s")
        while not back.is_set():
            report(2 * GiB, 100 << 20, 60.0)          # the last rate, as a stalled capture reports
            back.wait(0.2)
        while True:
            report(3 * GiB, 90 << 20, 55.0)
            time.sleep(0.2)

    app = make_app(Settings(**PRESET, disks=["/dev/sda"]), edges(capture=capture))

    async def steps(pilot):
        from agent.tui.transfer import TransferScreen
        await open_screen(pilot, TransferScreen())
        line = lambda: str(app.screen.query_one("#line-sda").render())   # noqa: E731
        await wait_for(pilot, lambda: "waiting for the server" in line(), 30, "the outage")
        assert "ETA" not in line()
        back.set()
        await wait_for(pilot, lambda: "ETA" in line(), 30, "the way back")
        assert "Connected again" in screen_text(app)

    walk(app, steps)


def test_an_outage_with_no_report_at_all_still_shows_waiting_not_the_rate_of_before():
    """The real capture reports nothing while its request waits in the client's retries (seen in
    tmux with the server killed: '2.4 MiB/s ETA 0:00:19' stayed for the whole outage)."""
    import logging
    import threading
    import time
    from agent.transfer.progress import ProgressEvent
    GiB = 1 << 30
    back = threading.Event()

    def capture(settings, progress, machine=None, keep_macs=None):
        def report(done, rate, eta):
            for subscriber in progress.subscribers:
                subscriber(ProgressEvent("sda", "capture", done, 8 * GiB, done, rate, eta))
        report(2 * GiB, 100 << 20, 60.0)
        time.sleep(0.5)
        logging.getLogger("agent.transfer.client").warning("cannot reach https://s:1 (refused); retrying in 4.0 s")
        back.wait(60)                                  # blocked in the retries: no report
        while True:
            report(3 * GiB, 90 << 20, 55.0)
            time.sleep(0.2)

    app = make_app(Settings(**PRESET, disks=["/dev/sda"]), edges(capture=capture))

    async def steps(pilot):
        from agent.tui.transfer import TransferScreen
        await open_screen(pilot, TransferScreen())
        line = lambda: str(app.screen.query_one("#line-sda").render())   # noqa: E731
        await wait_for(pilot, lambda: "retrying" in screen_text(app), 30, "the outage")
        await pilot.pause(0.5)
        assert "waiting for the server" in line() and "ETA" not in line(), line()
        back.set()
        await wait_for(pilot, lambda: "ETA" in line(), 30, "the way back")
        assert "Connected again" in screen_text(app)

    walk(app, steps)


def test_vm_fields_say_what_is_wrong_in_the_forms_words_and_an_empty_one_is_the_default():
    app = make_app(Settings(**PRESET, disks=["/dev/sda"]), edges())

    async def steps(pilot):
        from agent.tui.vm import VmScreen
        await open_screen(pilot, VmScreen())
        screen = app.screen
        assert screen.query_one("#memory").value == "16G"
        screen.query_one("#vcpus").focus()
        await pilot.press("end", "x")                  # a letter is kept, then refused in words
        assert screen.query_one("#vcpus").value == "4x"
        screen.query_one("#next").press()
        await pilot.pause(0.2)
        status = str(screen.query_one("#status").render())
        assert status == "vCPUs: '4x' is not a whole number.", status
        screen.query_one("#vcpus").value = ""
        screen.query_one("#memory").value = "12"
        screen.query_one("#next").press()
        await pilot.pause(0.2)
        status = str(screen.query_one("#status").render())
        assert "TUI" not in status and "p2v." not in status and status.startswith("Memory: '12'")
        screen.query_one("#memory").value = ""
        screen.query_one("#next").press()
        await wait_screen(pilot, "SummaryScreen")
        assert "vCPUs        4 " in screen_text(app) and "None" not in screen_text(app)

    walk(app, steps)


def test_the_memory_default_is_a_round_size_and_one_vcpu_is_singular():
    from agent.tui.done import next_steps
    from agent.vmspec import default_memory, vcpus_text
    machine = probe_machine(recorded=MACHINES / "two-disks-usb.json")
    machine.memory = 24105 << 20
    assert default_memory(machine) == 24 << 30
    machine.memory = 1000 << 20
    assert default_memory(machine) == 1024 << 20
    assert vcpus_text(1) == "1 vCPU" and vcpus_text(4) == "4 vCPUs"

    class Session:
        settings = Settings(**PRESET, vcpus=1, memory=1 << 30, disks=["/dev/sda"])
        job, job_token, machine = "j1", None, probe_machine(recorded=MACHINES / "two-disks-usb.json")
    assert "by hand (1 vCPU, " in next_steps(Session)


def test_toggles_draw_on_and_off_differently_and_ctrl_t_opens_the_shell():
    shells = []
    app = make_app(Settings(**PRESET, disks=["/dev/sda"]), edges(shell=lambda: shells.append(1)))

    async def steps(pilot):
        from agent.tui.vm import VmScreen
        await open_screen(pilot, VmScreen())
        box = app.screen.query_one("#macs")
        ticked = str(box.render())
        box.value = False
        await pilot.pause(0.1)
        assert str(box.render()) != ticked
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: shells, 10, "the shell")

    walk(app, steps)


def test_the_memory_default_is_not_warned_as_more_than_the_machine_has(tmp_path):
    from agent.vmspec import default_memory, warnings
    machine = probe_machine(recorded=MACHINES / "two-disks-usb.json")
    machine.memory = 23_5 * (1 << 30) // 10                      # what the kernel counts: 23.5 GiB
    settings = Settings(**PRESET, disks=["/dev/sda", "/dev/sdb"])
    assert default_memory(machine) == 24 << 30                     # rounded up, as a person sizes it
    assert not [w for w in warnings(machine, settings, 4, 24 << 30) if "more memory" in w]
    assert [w for w in warnings(machine, settings, 4, 25 << 30) if "more memory" in w]

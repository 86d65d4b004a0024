"""The repair flow in a VM the server knows: found, planned (diffs), applied, reported, reboot."""

from __future__ import annotations

import asyncio

import requests

from agent.transfer.client import Client
from agent.repair import runner
from agent.repair.luks import Cryptsetup
from agent.settings import Settings
from agent.tui import repair as repair_screen
from agent.tui.app import make_app
from agent.tui.common import PassphraseScreen
from agent.tui.edges import Edges
from luksdisk import encrypted_debian_disk
from server.store import Store
from xenp2v import protocol
from support import run
from tests.tui.helpers import recorded, screen_text, wait_for, wait_screen

MiB = 1 << 20
VM_UUID = "6f1c2a9e-3b4d-4e5f-8a7b-0c1d2e3f4a5b"


def fstab(part: str, tmp_path) -> str:
    mnt = tmp_path / "check"
    mnt.mkdir(exist_ok=True)
    run("mount", "-o", "ro", part, str(mnt))
    try:
        return (mnt / "etc/fstab").read_text()
    finally:
        run("umount", str(mnt))


def test_repair_flow_in_a_vm_the_server_knows(copied_disk, p2v_server, tmp_path):
    dev, part = copied_disk
    client = Client(p2v_server.url, p2v_server.token, p2v_server.fingerprint, retry_for=30)
    created = client.create_job({"name": "web01", "machine": {"system_uuid": "src-1"},
                                 "disks": [{"id": "sda", "size": 64 * MiB}]})
    job, chunk = created["id"], created["disks"][0]["chunk_size"]
    # The server takes a repair report only for a sealed job: seal it as all zeros (the repair
    # works on the copied disk here, not on a restore).
    chunks = 64 * MiB // chunk
    client.complete(job, "sda", protocol.image_digest(64 * MiB, chunk, {}, range(chunks)),
                    [[0, chunks]], [])
    store = Store(p2v_server.data_dir)
    store.set_target_uuid(job, VM_UUID)
    store.close()
    powered: list = []
    edges = Edges(probe=recorded("bios-mbr", tmp_path, vendor="Xen", product="HVM domU",
                                 system_uuid=VM_UUID),
                  nics=lambda: [], power=powered.append, shell=lambda: None, repair_disk=dev)
    settings = Settings(server=p2v_server.url, token=p2v_server.token,
                        fingerprint=p2v_server.fingerprint)
    app = make_app(settings, edges)

    async def walk():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.screen.query_one("#choices").display, 120, "the probe")
            assert f"target of job {job} (web01)" in screen_text(app)
            await pilot.press("enter")                    # Repair is offered first
            await wait_screen(pilot, "RepairScreen")
            await wait_for(pilot, lambda: app.screen.query_one("#apply").display, 120, "the plan")
            text = screen_text(app)
            assert "Debian GNU/Linux 12 (bookworm) (debian family)" in text
            assert "-/dev/sda1 / ext4" in app.screen.plan_text
            assert "+UUID=" in app.screen.plan_text
            await pilot.press("pagedown", "tab", "enter")  # read, then Apply the changes
            await wait_screen(pilot, "ConfirmScreen")
            await pilot.press("tab", "enter")             # Apply
            await wait_for(pilot, lambda: app.screen.query_one("#reboot").display, 120, "the repair")
            assert "The repair is done" in screen_text(app)
            await pilot.press("enter")                    # Reboot
            await wait_for(pilot, lambda: powered, 30, "the reboot")

    asyncio.run(walk())
    assert powered == [["systemctl", "reboot"]]
    assert fstab(part, tmp_path).startswith("UUID=")
    got = requests.get(f"{p2v_server.url}/api/v1/jobs/{job}", headers=p2v_server.headers,
                       verify=False, timeout=30).json()
    assert got["repair"]["status"] == "ok" and got["repair"]["disk"] == dev


def test_an_encrypted_system_asks_for_its_passphrase_once_in_a_dialog(loopdev, tmp_path, monkeypatch):
    enc = encrypted_debian_disk(loopdev, tmp_path, b"s3cret")
    # This kernel has no device-mapper: opened volumes are links to the plaintext (tests/luksdisk.py).
    tools = runner.Tools(Cryptsetup(enc.mapper))
    monkeypatch.setattr(runner, "Tools", lambda: tools)
    dialogs: list[str] = []

    class CountedDialog(PassphraseScreen):
        def __init__(self, prompt: str):
            super().__init__(prompt)
            dialogs.append(prompt)

    monkeypatch.setattr(repair_screen, "PassphraseScreen", CountedDialog)
    edges = Edges(probe=recorded("bios-mbr", tmp_path, vendor="Xen", product="HVM domU",
                                 system_uuid=VM_UUID),
                  nics=lambda: [], power=lambda argv: None, shell=lambda: None, repair_disk=enc.disk)
    app = make_app(Settings(), edges)

    async def walk():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.screen.query_one("#choices").display, 120, "the probe")
            await pilot.press("down", "enter")            # Repair the copied system
            await wait_screen(pilot, "CountedDialog", 120)
            assert "encrypted volume" in screen_text(app) and "never stored or sent" in screen_text(app)
            await pilot.press(*"wrong", "enter")
            await wait_for(pilot, lambda: len(dialogs) == 2, 60, "the second ask")
            await wait_screen(pilot, "CountedDialog")
            behind = app.screen_stack[-2].query_one("#status")
            await wait_for(pilot, lambda: "That passphrase does not open it." in str(behind.render()))
            await pilot.press(*"s3cret", "enter")
            await wait_for(pilot, lambda: app.screen.query_one("#apply").display, 120, "the plan")
            assert f"+sda2_crypt UUID={enc.luks_uuid} none luks,discard" in app.screen.plan_text
            await pilot.press("tab", "enter")             # Apply the changes
            await wait_screen(pilot, "ConfirmScreen")
            await pilot.press("tab", "enter")             # Apply
            await wait_screen(pilot, "RepairScreen")
            await wait_for(pilot, lambda: app.screen.query_one("#reboot").display, 120, "the repair")
            assert "The repair is done" in screen_text(app)

    try:
        asyncio.run(walk())
    finally:
        enc.mapper.cleanup()
    assert len(dialogs) == 2                              # the plan asked; the apply did not
    opened = [argv for argv, stdin in enc.mapper.calls if argv[:2] == ["cryptsetup", "open"]]
    assert [("--readonly" in argv) for argv in opened] == [True, False]
    assert all(stdin == b"s3cret" for argv, stdin in enc.mapper.calls if argv[:2] == ["cryptsetup", "open"])
    assert fstab(enc.plaintext, tmp_path).endswith(f"UUID={enc.boot_uuid} /boot ext4 defaults 0 2\n")

"""LUKS in the repair: where passphrases come from, the exact cryptsetup calls, the guest's own
mapping names, and a whole repair of a system whose root is encrypted.

Headers are real (`cryptsetup luksFormat` on loop devices) and passphrases are checked against
them for real (`--test-passphrase` needs no device-mapper). This kernel has no device-mapper, so
`cryptsetup open`, `dmsetup rename` and `cryptsetup close` go to a recording stand-in that shows an
opened volume as a /dev/mapper link to a loop device holding its plaintext.
"""

from __future__ import annotations

import os
import select
import subprocess
import termios
import threading
import uuid
from pathlib import Path

import pytest

from agent.disk import blockdev
from agent.repair.facts import Filesystem
from agent.repair.guest import RepairError
from agent.repair.luks import Cryptsetup, Passphrases, console_ask, guest_names, unlock
from agent.repair.runner import Request, Tools, repair
from luksdisk import Mapper, done, encrypted_debian_disk, luks_format
from support import rescan, run

MiB = 1 << 20
LUKS_UUID = "44444444-4444-4444-8444-444444444444"
HEADER = Filesystem("/dev/xvda3", "crypto_LUKS", LUKS_UUID, None, 3)
ROOT = Filesystem("/dev/xvda1", "ext4", "11111111-1111-4111-8111-111111111111", None, 1)


class Recorder:
    """A runner for Cryptsetup that records every call; `right` is the one passphrase that fits."""

    def __init__(self, right: bytes | None = None, open_status: int = 0, open_err: bytes = b""):
        self.calls: list[tuple[list[str], bytes | None]] = []
        self.right, self.open_status, self.open_err = right, open_status, open_err

    def __call__(self, argv: list[str], stdin: bytes | None) -> subprocess.CompletedProcess:
        self.calls.append((argv, stdin))
        if "--test-passphrase" in argv:
            return done(argv, 0 if stdin == self.right else 2, b"No key available with this passphrase.")
        if argv[:2] == ["cryptsetup", "open"]:
            return done(argv, self.open_status, self.open_err)
        return done(argv)


def keys_file(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "luks.txt"
    path.write_bytes(data)
    return str(path)


# --- passphrases and the calls -----------------------------------------------------------------------

def test_file_lines_are_tried_in_order_and_the_fitting_one_opens(tmp_path):
    rec = Recorder(right=b"pass two")
    keys = Passphrases(keys_file(tmp_path, b"first one\r\n\npass two\nthird\n"))
    assert unlock("/dev/xvda3", LUKS_UUID, Cryptsetup(rec), keys, readonly=False) == \
        (f"/dev/mapper/luks-{LUKS_UUID}", f"luks-{LUKS_UUID}")
    test = ["cryptsetup", "open", "--test-passphrase", "--key-file=-", "/dev/xvda3"]
    assert rec.calls == [
        (test, b"first one"), (test, b"pass two"),
        (["cryptsetup", "open", "--type", "luks", "--key-file=-", "/dev/xvda3", f"luks-{LUKS_UUID}"], b"pass two"),
    ]


def test_dry_run_opens_read_only():
    rec = Recorder(right=b"typed")
    keys = Passphrases(ask=lambda prompt: b"typed")
    unlock("/dev/xvda3", LUKS_UUID, Cryptsetup(rec), keys, readonly=True)
    assert rec.calls[-1][0] == ["cryptsetup", "open", "--type", "luks", "--key-file=-", "--readonly",
                                "/dev/xvda3", f"luks-{LUKS_UUID}"]


def test_the_console_is_asked_after_the_file_three_times_at_most(tmp_path):
    said, asked = [], []
    answers = iter([b"wrong", b"also wrong", b"right"])

    def ask(prompt: str) -> bytes:
        asked.append(prompt)
        return next(answers)

    rec = Recorder(right=b"right")
    keys = Passphrases(keys_file(tmp_path, b"old passphrase\n"), ask, said.append)
    path, _ = unlock("/dev/xvda3", LUKS_UUID, Cryptsetup(rec), keys, readonly=False)
    assert path == f"/dev/mapper/luks-{LUKS_UUID}"
    assert [stdin for _, stdin in rec.calls] == [b"old passphrase", b"wrong", b"also wrong", b"right", b"right"]
    assert asked == [f"Passphrase for the encrypted volume /dev/xvda3 (LUKS {LUKS_UUID}): "] * 3
    assert said == ["That passphrase does not open it."] * 2

    rec = Recorder(right=b"never typed")
    answers = iter([b"a", b"b", b"c", b"d"])
    keys = Passphrases(ask=lambda prompt: next(answers), say=said.append)
    assert unlock("/dev/xvda3", LUKS_UUID, Cryptsetup(rec), keys, readonly=False) == \
        (None, "no passphrase typed opens /dev/xvda3")
    assert len(rec.calls) == 3


def test_a_typed_passphrase_that_fits_is_not_asked_again():
    asked: list[str] = []
    keys = Passphrases(ask=lambda prompt: asked.append(prompt) or b"typed")
    rec = Recorder(right=b"typed")
    for readonly in (True, False):                 # the plan, then the apply
        assert unlock("/dev/xvda3", LUKS_UUID, Cryptsetup(rec), keys, readonly)[0]
    assert len(asked) == 1 and keys.typed == [b"typed"]


def test_nobody_at_the_console_and_no_file_leave_it_locked_with_a_sentence(tmp_path):
    rec = Recorder(right=b"x")
    assert unlock("/dev/xvda3", LUKS_UUID, Cryptsetup(rec), Passphrases(ask=lambda p: None), False) == \
        (None, "no passphrase typed opens /dev/xvda3")
    path, why = unlock("/dev/xvda3", LUKS_UUID, Cryptsetup(rec), Passphrases(), False)
    assert path is None and why == ("/dev/xvda3 is encrypted (LUKS) and no passphrase was given: put "
                                    "it in a file named by p2v.luks= (or --luks), or run repair on a "
                                    "console to type it")
    keys = Passphrases(keys_file(tmp_path, b"one\ntwo\n"))
    assert unlock("/dev/xvda3", LUKS_UUID, Cryptsetup(rec), keys, False) == \
        (None, f"none of the 2 passphrases in {keys.file} opens /dev/xvda3: add its passphrase to "
               "that file, one a line")
    assert rec.calls == [(["cryptsetup", "open", "--test-passphrase", "--key-file=-", "/dev/xvda3"], p)
                         for p in (b"one", b"two")]


def test_key_file_errors_are_sentences(tmp_path):
    rec = Recorder()
    with pytest.raises(RepairError, match=r"The LUKS passphrases file .*/gone\.txt cannot be read "
                                          r"\(No such file or directory\); fix p2v\.luks \(or --luks\)"):
        unlock("/dev/xvda3", LUKS_UUID, Cryptsetup(rec), Passphrases(str(tmp_path / "gone.txt")), False)
    with pytest.raises(RepairError, match="cannot be read \\(Is a directory\\)"):
        unlock("/dev/xvda3", LUKS_UUID, Cryptsetup(rec), Passphrases(str(tmp_path)), False)
    with pytest.raises(RepairError, match="luks.txt is empty; write each passphrase on a line of its own"):
        unlock("/dev/xvda3", LUKS_UUID, Cryptsetup(rec), Passphrases(keys_file(tmp_path, b"\n\r\n")), False)
    assert rec.calls == []


def test_open_failures_say_what_to_do():
    rec = Recorder(right=b"k", open_status=1,
                   open_err=b"Cannot initialize device-mapper. Is dm_mod kernel module loaded?\n")
    with pytest.raises(RepairError) as e:
        unlock("/dev/xvda3", LUKS_UUID, Cryptsetup(rec), Passphrases(ask=lambda p: b"k"), False)
    assert str(e.value) == (f"Cannot unlock /dev/xvda3 as luks-{LUKS_UUID}: this machine's kernel has "
                            "no device-mapper. Repair from the live ISO.")
    rec = Recorder(right=b"k", open_status=5, open_err=b"Device sda3_crypt already exists.\n")
    with pytest.raises(RepairError, match=f"^Cannot unlock /dev/xvda3 as luks-{LUKS_UUID}: Device "
                                          "sda3_crypt already exists.$"):
        unlock("/dev/xvda3", LUKS_UUID, Cryptsetup(rec), Passphrases(ask=lambda p: b"k"), False)
    with pytest.raises(RepairError, match="Cannot rename the unlocked volume luks-x to sda3_crypt, the "
                                          "name the guest gives it: busy. Close whatever uses sda3_crypt"):
        Cryptsetup(lambda argv, stdin: done(argv, 1, b"busy")).rename("luks-x", "sda3_crypt")


# --- the guest's names ------------------------------------------------------------------------------

def test_guest_names_from_crypttab_cryptdevice_and_rd_luks_name():
    other = Filesystem("/dev/xvda4", "crypto_LUKS", "55555555-5555-4555-8555-555555555555", None, 4)
    third = Filesystem("/dev/xvda5", "crypto_LUKS", "66666666-6666-4666-8666-666666666666", None, 5)
    files = {
        "/etc/crypttab": "# <target> <source> <key> <options>\n"
                         "sda3_crypt /dev/sda3 none luks,discard\n"
                         f"swap_crypt UUID={other.uuid} /dev/urandom swap\n",
        "/etc/default/grub": f'GRUB_CMDLINE_LINUX="cryptdevice=UUID={other.uuid}:cryptroot root=/dev/mapper/cryptroot"\n',
        "/etc/kernel/cmdline": f"rd.luks.name={third.uuid}=data rd.luks.name=luks-{HEADER.uuid}=ignored\n",
    }
    names = {"/dev/sda3": HEADER}
    # crypttab first; a second source for the same volume does not override it.
    assert guest_names(files.get, [ROOT, HEADER, other, third], names) == {
        HEADER.uuid: "sda3_crypt", other.uuid: "swap_crypt", third.uuid: "data"}
    arch = {"/etc/default/grub": f'GRUB_CMDLINE_LINUX="cryptdevice=/dev/disk/by-uuid/{other.uuid}:cryptroot"\n'}
    assert guest_names(arch.get, [ROOT, other], {}) == {other.uuid: "cryptroot"}
    # A name for a device that is not LUKS, or not on this disk, is no name for anything here.
    odd = {"/etc/crypttab": f"a /dev/sdb3 none\nb UUID={ROOT.uuid} none\n"}
    assert guest_names(odd.get, [ROOT, HEADER], {}) == {}


# --- real headers -------------------------------------------------------------------------------------

def test_real_header_checks_passphrases_without_device_mapper(loopdev, tmp_path):
    dev = loopdev(24 * MiB, "luks")
    uuid = luks_format(dev, b"correct horse")
    crypt = Cryptsetup()
    assert crypt.fits(dev, b"correct horse") and not crypt.fits(dev, b"correct horse\n")
    assert not crypt.fits(dev, b"battery staple")
    plain = loopdev(8 * MiB, "plain")
    with pytest.raises(RepairError, match=f"Cannot read the LUKS header of {plain}: Device {plain} is not a valid LUKS device"):
        crypt.fits(plain, b"x")

    def real_but_open(argv, stdin):
        """Passphrase checks go to the real cryptsetup; the open is recorded."""
        calls.append((argv, stdin))
        return subprocess.run(argv, input=stdin, capture_output=True) if "--test-passphrase" in argv else done(argv)

    calls = []
    keys = Passphrases(keys_file(tmp_path, b"battery staple\ncorrect horse\n"))
    assert unlock(dev, uuid, Cryptsetup(real_but_open), keys, readonly=False)[1] == f"luks-{uuid}"
    assert calls[-1] == (["cryptsetup", "open", "--type", "luks", "--key-file=-", dev, f"luks-{uuid}"],
                         b"correct horse")
    assert len(calls) == 3


@pytest.mark.skipif(Path("/sys/module/dm_mod").exists(), reason="this kernel has device-mapper")
def test_real_open_without_device_mapper_is_a_sentence(loopdev):
    dev = loopdev(24 * MiB, "luks")
    uuid = luks_format(dev, b"k")
    with pytest.raises(RepairError, match=f"^Cannot unlock {dev} as luks-{uuid}: this machine's "
                                          "kernel has no device-mapper. Repair from the live ISO.$"):
        unlock(dev, uuid, Cryptsetup(), Passphrases(ask=lambda p: b"k"), readonly=False)


# --- a whole repair --------------------------------------------------------------------------------

@pytest.fixture
def encrypted_debian(loopdev, tmp_path):
    disk = encrypted_debian_disk(loopdev, tmp_path)
    yield disk
    disk.mapper.cleanup()


def test_encrypted_root_is_unlocked_renamed_to_its_crypttab_name_and_repaired(encrypted_debian, tmp_path):
    disk, header, luks_uuid, boot_uuid, plaintext, mapper = encrypted_debian
    keys = keys_file(tmp_path, b"not this one\ns3cret\n")

    out: list[str] = []
    report = repair(Request(disk=disk, dry_run=True, passphrases=Passphrases(keys)), out.append,
                    Tools(Cryptsetup(mapper)))
    text = "\n".join(out)
    assert report["root"] == "/dev/mapper/sda2_crypt" and report["status"] == "planned"
    assert f"LUKS volume {luks_uuid} unlocked as sda2_crypt, the name the guest gives it." in text
    assert f"-sda2_crypt /dev/sda2 none luks,discard\n+sda2_crypt UUID={luks_uuid} none luks,discard\n" in text
    assert f"+UUID={boot_uuid} /boot ext4 defaults 0 2\n" in text
    assert mapper.calls == [
        (["cryptsetup", "open", "--type", "luks", "--key-file=-", "--readonly", header, f"luks-{luks_uuid}"],
         b"s3cret"),
        (["dmsetup", "rename", f"luks-{luks_uuid}", "sda2_crypt"], None),
        (["cryptsetup", "close", "sda2_crypt"], None),
    ]
    assert not any(link.is_symlink() for link in mapper.links)

    mapper.calls.clear()
    report = repair(Request(disk=disk, passphrases=Passphrases(keys)), out.append, Tools(Cryptsetup(mapper)))
    assert report["status"] == "ok" and report["root"] == "/dev/mapper/sda2_crypt"
    assert mapper.calls[0][0] == ["cryptsetup", "open", "--type", "luks", "--key-file=-", header,
                                  f"luks-{luks_uuid}"]
    assert mapper.calls[-1][0] == ["cryptsetup", "close", "sda2_crypt"]
    mnt = tmp_path / "check"
    mnt.mkdir()
    run("mount", "-o", "ro", plaintext, str(mnt))
    try:
        assert (mnt / "etc/crypttab").read_text() == f"sda2_crypt UUID={luks_uuid} none luks,discard\n"
        assert (mnt / "etc/fstab").read_text() == ("/dev/mapper/sda2_crypt / ext4 errors=remount-ro 0 1\n"
                                                   f"UUID={boot_uuid} /boot ext4 defaults 0 2\n")
    finally:
        run("umount", str(mnt))
    assert not os.path.lexists("/dev/mapper/sda2_crypt")


def test_encrypted_root_without_its_passphrase_is_refused_with_why(encrypted_debian, tmp_path):
    disk, header, _, _, _, mapper = encrypted_debian
    keys = keys_file(tmp_path, b"wrong\n")
    with pytest.raises(RepairError) as e:
        repair(Request(disk=disk, dry_run=True, passphrases=Passphrases(keys)), lambda line: None,
               Tools(Cryptsetup(mapper)))
    assert str(e.value) == (f"{disk} holds no system that repair can fix (no Linux root filesystem "
                            f"with /etc/fstab and an os-release, and no Windows); none of the 1 passphrases in {keys} "
                            f"opens {header}: add its passphrase to that file, one a line. Check that "
                            "the image was restored onto this disk.")
    assert mapper.calls == []


def test_ubuntu_layout_lvm_inside_luks(loopdev, tmp_path):
    """Ubuntu's encrypted install: /boot, then LUKS holding an LVM PV with the root LV."""
    disk = loopdev(48 * MiB, "disk")
    run("sfdisk", "-q", disk, input="label: dos\n,16MiB,83\n,,83\n")
    boot, header = rescan(disk)
    run("mkfs.ext4", "-q", boot)
    luks_uuid = luks_format(header, b"s3cret")
    plaintext = loopdev(40 * MiB, "plaintext")
    vg = "vg" + uuid.uuid4().hex[:8]
    no_dm = ("--driverloaded", "n")
    run("lvm", "pvcreate", "-q", "--devices", plaintext, plaintext)
    run("lvm", "vgcreate", "-q", "--devices", plaintext, vg, plaintext)
    run("lvm", "lvcreate", *no_dm, "--devices", plaintext, "-q", "-an", "-Zn", "-L", "24M", "-n", "root", vg)
    (layout,) = blockdev.lvm_layout([plaintext])
    seg = layout.lvs[0].segments[0]
    lv = run("losetup", "--show", "-f", "-o", str(seg["pv_start"]), "--sizelimit", str(seg["size"]),
             plaintext).stdout.strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        run("mkfs.ext4", "-q", lv)
        run("mount", lv, str(mnt))
        try:
            (mnt / "boot").mkdir()
            for path, text in {"etc/os-release": 'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nID=ubuntu\nID_LIKE=debian\n',
                               "etc/fstab": f"/dev/mapper/{vg}-root / ext4 errors=remount-ro 0 1\n"
                                            "/dev/sda1 /boot ext4 defaults 0 2\n",
                               "etc/crypttab": "sda2_crypt /dev/sda2 none luks,discard\n"}.items():
                (mnt / path).parent.mkdir(parents=True, exist_ok=True)
                (mnt / path).write_text(text)
        finally:
            run("umount", str(mnt))
    finally:
        run("losetup", "-d", lv)
    mapper = Mapper(plaintext)
    try:
        out: list[str] = []
        report = repair(Request(disk=disk, dry_run=True, passphrases=Passphrases(ask=lambda p: b"s3cret")),
                        out.append, Tools(Cryptsetup(mapper)))
    finally:
        mapper.cleanup()
    text = "\n".join(out)
    assert report["root"] == f"/dev/mapper/{vg}-root"
    assert f"+sda2_crypt UUID={luks_uuid} none luks,discard\n" in text
    assert [argv for argv, _ in mapper.calls] == [
        ["cryptsetup", "open", "--type", "luks", "--key-file=-", "--readonly", header, f"luks-{luks_uuid}"],
        ["dmsetup", "rename", f"luks-{luks_uuid}", "sda2_crypt"],
        ["cryptsetup", "close", "sda2_crypt"]]


def test_console_prompt_reads_a_line_without_echo_and_gives_up_after_its_timeout(monkeypatch, capsys):
    master, slave = os.openpty()
    tty = os.fdopen(slave, "r")
    try:
        monkeypatch.setattr("sys.stdin", tty)
        # Typed once the prompt is up: what was typed before it is flushed, as getpass does.
        typing = threading.Timer(0.5, os.write, (master, b"pass phrase\n"))
        typing.start()
        assert console_ask(timeout=10)("Passphrase: ") == b"pass phrase"
        typing.join()
        assert not select.select([master], [], [], 0.2)[0]           # nothing was echoed
        assert termios.tcgetattr(slave)[3] & termios.ECHO             # echo is back on afterwards
        assert console_ask(timeout=0.2)("Passphrase: ") is None       # nobody typed
        assert capsys.readouterr().err == "Passphrase: \nPassphrase: \n"
    finally:
        tty.close()
        os.close(master)
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    assert console_ask() is None

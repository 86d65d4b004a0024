"""An encrypted Debian disk for repair tests, on a kernel without device-mapper.

The LUKS header is real (`cryptsetup luksFormat`), so passphrases are checked against it for real
(`--test-passphrase` needs no device-mapper). `cryptsetup open`, `dmsetup rename` and
`cryptsetup close` go to `Mapper`, a recording stand-in that shows an opened volume as a
/dev/mapper link to a loop device holding its plaintext.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import NamedTuple

from support import rescan, run

MiB = 1 << 20


def done(argv: list[str], status: int = 0, err: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(argv, status, b"", err)


def luks_format(dev: str, passphrase: bytes) -> str:
    """A LUKS2 header on `dev` (a fast KDF: these tests check passphrases, not their cost)."""
    run("cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2",
        "--pbkdf-force-iterations", "1000", "--key-file=-", dev, input=passphrase.decode())
    return run("cryptsetup", "luksUUID", dev).stdout.strip()


class Mapper:
    """cryptsetup and dmsetup for a kernel without device-mapper: passphrases are checked against
    the real header; an opened volume is a /dev/mapper/<name> link to `plaintext`."""

    def __init__(self, plaintext: str):
        self.plaintext = plaintext
        self.calls: list[tuple[list[str], bytes | None]] = []
        self.links: set[Path] = set()

    def __call__(self, argv: list[str], stdin: bytes | None) -> subprocess.CompletedProcess:
        if "--test-passphrase" in argv:
            return subprocess.run(argv, input=stdin, capture_output=True)
        self.calls.append((argv, stdin))
        if argv[:2] == ["cryptsetup", "open"]:
            self._link(argv[-1]).symlink_to(self.plaintext)
        elif argv[:2] == ["dmsetup", "rename"]:
            self._link(argv[2]).rename(self._link(argv[3]))
        elif argv[:2] == ["cryptsetup", "close"]:
            self._link(argv[2]).unlink()
        return done(argv)

    def _link(self, name: str) -> Path:
        link = Path("/dev/mapper") / name
        self.links.add(link)
        return link

    def cleanup(self) -> None:
        for link in self.links:
            if link.is_symlink():
                link.unlink()



class EncryptedDisk(NamedTuple):
    disk: str            # the whole disk: /boot, then the LUKS partition
    header: str          # the LUKS partition
    luks_uuid: str
    boot_uuid: str
    plaintext: str       # the loop device Mapper opens the volume onto: the Debian root
    mapper: Mapper


def encrypted_debian_disk(loopdev, tmp_path: Path, passphrase: bytes = b"s3cret") -> EncryptedDisk:
    """A disk with /boot (ext4) and a LUKS partition; the LUKS's plaintext, a Debian root whose
    fstab and crypttab name /dev/sda*, is on a loop device of its own (see Mapper). The caller
    runs `mapper.cleanup()` at the end."""
    disk = loopdev(48 * MiB, "disk")
    run("sfdisk", "-q", disk, input="label: dos\n,16MiB,83\n,,83\n")
    boot, header = rescan(disk)
    run("mkfs.ext4", "-q", boot)
    luks_uuid = luks_format(header, passphrase)
    plaintext = loopdev(32 * MiB, "plaintext")
    run("mkfs.ext4", "-q", plaintext)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run("mount", plaintext, str(mnt))
    try:
        (mnt / "boot").mkdir()
        for path, text in {"etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12"\nID=debian\n',
                           "etc/fstab": "/dev/mapper/sda2_crypt / ext4 errors=remount-ro 0 1\n"
                                        "/dev/sda1 /boot ext4 defaults 0 2\n",
                           "etc/crypttab": "sda2_crypt /dev/sda2 none luks,discard\n"}.items():
            (mnt / path).parent.mkdir(parents=True, exist_ok=True)
            (mnt / path).write_text(text)
    finally:
        run("umount", str(mnt))
    boot_uuid = run("blkid", "-p", "-s", "UUID", "-o", "value", boot).stdout.strip()
    return EncryptedDisk(disk, header, luks_uuid, boot_uuid, plaintext, Mapper(plaintext))

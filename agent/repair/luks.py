"""LUKS volumes on the disk being repaired: unlock them, under the names the guest itself uses.

Passphrases come from the p2v.luks file (one a line), then from the console when someone may be
there to type. Each is tried with `cryptsetup open --test-passphrase`, which needs no
device-mapper, before the one that fits opens the volume. A volume opens first as `luks-<UUID>`
(systemd's and dracut's default name); once the guest's own name is known (crypttab,
`cryptdevice=`, `rd.luks.name=`), the mapping is renamed to it, because Debian's initramfs hook
finds the root's volume in crypttab by that name.

cryptsetup and dmsetup run through `Cryptsetup`, built on one `runner`: tests give it a runner
that records what would run where the kernel has no device-mapper.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import termios
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from agent.repair.facts import Filesystem
from agent.repair.guest import RepairError, resolve

Runner = Callable[[list[str], bytes | None], subprocess.CompletedProcess]
WRONG_PASSPHRASE = 2      # cryptsetup's exit status for "No key available with this passphrase"
PROMPT_TRIES = 3


def run_tool(argv: list[str], stdin: bytes | None) -> subprocess.CompletedProcess:
    """Run a tool with `stdin` (a passphrase never goes on the command line)."""
    try:
        return subprocess.run(argv, input=stdin or b"", capture_output=True, timeout=300)
    except FileNotFoundError:
        raise RepairError(f"Cannot unlock LUKS volumes: the tool '{argv[0]}' is not installed.") from None
    except subprocess.TimeoutExpired:
        raise RepairError(f"'{argv[0]}' did not finish within 300 s; try again.") from None


def _output(proc: subprocess.CompletedProcess) -> str:
    return (proc.stderr or proc.stdout or b"").decode(errors="replace").strip()


def _last_line(proc: subprocess.CompletedProcess) -> str:
    """The tool's last word, without its full stop (the sentence around it has one)."""
    text = _output(proc)
    return text.splitlines()[-1].rstrip(".") if text else f"exit status {proc.returncode}"


class Cryptsetup:
    """The edge: cryptsetup and dmsetup. `--key-file=-` reads the passphrase from stdin, as is:
    no newline is stripped, so none is sent."""

    def __init__(self, runner: Runner = run_tool):
        self.runner = runner

    def fits(self, device: str, passphrase: bytes) -> bool:
        """Whether the passphrase opens one of the volume's key slots."""
        proc = self.runner(["cryptsetup", "open", "--test-passphrase", "--key-file=-", device], passphrase)
        if proc.returncode in (0, WRONG_PASSPHRASE):
            return proc.returncode == 0
        raise RepairError(f"Cannot read the LUKS header of {device}: {_last_line(proc)}")

    def open(self, device: str, name: str, passphrase: bytes, readonly: bool) -> str:
        """Open the volume as /dev/mapper/<name>; returns that path."""
        argv = ["cryptsetup", "open", "--type", "luks", "--key-file=-"] + \
            (["--readonly"] if readonly else []) + [device, name]
        proc = self.runner(argv, passphrase)
        if proc.returncode != 0:
            if "Cannot initialize device-mapper" in _output(proc):
                raise RepairError(f"Cannot unlock {device} as {name}: this machine's kernel has no "
                                  "device-mapper. Repair from the live ISO.")
            raise RepairError(f"Cannot unlock {device} as {name}: {_last_line(proc)}.")
        return f"/dev/mapper/{name}"

    def rename(self, old: str, new: str) -> str:
        proc = self.runner(["dmsetup", "rename", old, new], None)
        if proc.returncode != 0:
            raise RepairError(f"Cannot rename the unlocked volume {old} to {new}, the name the "
                              f"guest gives it: {_last_line(proc)}. Close whatever uses {new} "
                              "here (cryptsetup close) and run repair again.")
        return f"/dev/mapper/{new}"

    def close(self, name: str) -> None:
        self.runner(["cryptsetup", "close", name], None)


Ask = Callable[[str], bytes | None]   # prompt → passphrase typed, or None when nobody answers


@dataclass
class Passphrases:
    """Where passphrases come from: the p2v.luks file, then `ask` (a console prompt), if any."""

    file: str | None = None
    ask: Ask | None = None
    say: Callable[[str], None] = print
    _lines: list[bytes] | None = field(default=None, repr=False)
    # Typed passphrases that opened a volume: tried first next time, so that the plan and the
    # apply of one repair ask the person once.
    typed: list[bytes] = field(default_factory=list, repr=False)

    def from_file(self) -> list[bytes]:
        """The file's passphrases, one a line (CR LF or LF; blank lines skipped)."""
        if self.file is None:
            return []
        if self._lines is None:
            try:
                data = Path(self.file).read_bytes()
            except OSError as e:
                raise RepairError(f"The LUKS passphrases file {self.file} cannot be read "
                                  f"({e.strerror}); fix p2v.luks (or --luks) and run repair again.") from None
            self._lines = [line.rstrip(b"\r") for line in data.split(b"\n") if line.rstrip(b"\r")]
            if not self._lines:
                raise RepairError(f"The LUKS passphrases file {self.file} is empty; write each "
                                  "passphrase on a line of its own and run repair again.")
        return self._lines


def unlock(device: str, uuid: str | None, crypt: Cryptsetup, keys: Passphrases,
           readonly: bool) -> tuple[str | None, str]:
    """Open one LUKS volume; returns (its /dev/mapper path, its name), or (None, why not)."""
    name = f"luks-{uuid}" if uuid else f"xenp2v-{Path(device).name}"
    tried = keys.from_file()
    for passphrase in keys.typed + tried:
        if crypt.fits(device, passphrase):
            return crypt.open(device, name, passphrase, readonly), name
    if keys.ask:
        for _ in range(PROMPT_TRIES):
            passphrase = keys.ask(f"Passphrase for the encrypted volume {device} (LUKS {uuid}): ")
            if not passphrase:
                break
            if crypt.fits(device, passphrase):
                keys.typed.append(passphrase)
                return crypt.open(device, name, passphrase, readonly), name
            keys.say("That passphrase does not open it.")
    if tried:
        return None, (f"none of the {len(tried)} passphrases in {keys.file} opens {device}: add "
                      "its passphrase to that file, one a line")
    if keys.ask:
        return None, f"no passphrase typed opens {device}"
    return None, (f"{device} is encrypted (LUKS) and no passphrase was given: put it in a file "
                  "named by p2v.luks= (or --luks), or run repair on a console to type it")


# --- the guest's own names -------------------------------------------------------------------------

_CRYPTDEVICE = re.compile(r"(?<![\w.-])cryptdevice=([^\s\"':]+):([^\s\"':]+)")
_RD_LUKS_NAME = re.compile(r"(?<![\w.-])rd\.luks\.name=(?:luks-)?([0-9a-fA-F-]{36})=([^\s\"']+)")
_CMDLINE_FILES = ("/etc/default/grub", "/etc/kernel/cmdline")
GUEST_FILES = ("/etc/crypttab", *_CMDLINE_FILES)   # what guest_names reads


def guest_names(read: Callable[[str], str | None], filesystems: list[Filesystem],
                names: dict[str, Filesystem]) -> dict[str, str]:
    """LUKS UUID → the name the guest opens it under: crypttab, then `cryptdevice=SPEC:NAME`
    (Arch's encrypt hook), then `rd.luks.name=UUID=NAME` (dracut, systemd)."""
    out: dict[str, str] = {}

    def add(spec: str, name: str) -> None:
        fs = resolve(spec, filesystems, names)
        if fs is not None and fs.fstype == "crypto_LUKS" and fs.uuid:
            out.setdefault(fs.uuid, name)

    for line in (read("/etc/crypttab") or "").splitlines():
        fields = line.split()
        if len(fields) > 1 and not fields[0].startswith("#"):
            add(fields[1], fields[0])
    for path in _CMDLINE_FILES:
        text = read(path) or ""
        for spec, name in _CRYPTDEVICE.findall(text):
            add(spec, name)
        for uuid, name in _RD_LUKS_NAME.findall(text):
            add(f"UUID={uuid.lower()}", name)
    return out


# --- the console ------------------------------------------------------------------------------------

def console_ask(timeout: float = 600.0) -> Ask | None:
    """A prompt on this terminal with echo off, or None when stdin is not a terminal.

    An unattended run sits on the console: after `timeout` seconds with nobody typing, the volume
    stays locked and the run goes on (and stops with a sentence if it needed that volume).
    """
    if not sys.stdin.isatty():
        return None

    def ask(prompt: str) -> bytes | None:
        fd = sys.stdin.fileno()
        old = termios.tcgetattr(fd)
        new = termios.tcgetattr(fd)
        new[3] &= ~termios.ECHO
        sys.stderr.write(prompt)
        sys.stderr.flush()
        try:
            termios.tcsetattr(fd, termios.TCSAFLUSH, new)
            ready, _, _ = select.select([fd], [], [], timeout)
            line = os.read(fd, 4096) if ready else b""
        finally:
            termios.tcsetattr(fd, termios.TCSAFLUSH, old)
            sys.stderr.write("\n")
        return line.rstrip(b"\r\n") or None

    return ask

"""A Xen host for the boot tests: Debian bookworm's Xen 4.17 with a debootstrapped dom0, under QEMU.

The dom0 is built once and cached (`/var/cache/xenp2v/e2e/xen-dom0-<digest>/`: its root filesystem
image, the dom0 kernel and initrd, and Xen's uncompressed ELF, which QEMU's multiboot loader wants).
`XenHost` boots it under QEMU TCG with AMD's SVM (no NPT: with it Xen uses HAP and HVM guests
triple-fault under TCG), Xen and the dom0 kernel loaded with -kernel/-initrd, and drives dom0's
console (hvc0, through Xen's com1) as a root shell: `run()` sends one command and returns its output
and exit status. The disks to boot are handed in as virtio disks after dom0's own (/dev/vdb, vdc, ...),
copy-on-write (snapshot=on): the images on this host are never written.

Guests write their consoles to /var/log/xen/console/ in dom0 (xenconsoled for PV guests, qemu-xen's
serial for HVM guests); `XenHost.guest()` starts one with `xl create`, watches its console for the
marker or a known failure, destroys it and returns its console text.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import select
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sources import CACHE, MIRROR, SUITE, sh

ACCEL = os.environ.get("XENP2V_ACCEL", "tcg")
# The Xen host's CPUs (QEMU's -smp; dom0 gets as many vCPUs). With one, an HVM guest's every
# emulated I/O (qemu-xen in dom0) is a switch inside one QEMU thread, not a wake-up of another
# thread by the loaded host's scheduler: in the same ten minutes here (load 10-17), GRUB read the
# kernel over emulated IDE in 300 s on one CPU and had not finished after 1450 s on two.
XEN_CPUS = int(os.environ.get("XENP2V_XEN_CPUS", "1"))
XEN_VERSION = "4.17"
DOM0_PACKAGES = ("systemd-sysv,udev,kmod,iproute2,procps,linux-image-amd64,initramfs-tools,e2fsprogs,"
                 f"xen-hypervisor-{XEN_VERSION}-amd64,xen-utils-{XEN_VERSION},qemu-system-xen,ovmf")
DOM0_SIZE = 3 * 1024**3
DOM0_MEM_MB = 1024
HOST_MEM_MB = 3072
# Xen on the first serial port; dom0's console is Xen's (hvc0), so one line carries both.
# sched=credit: under TCG on a loaded host, Xen 4.17's default credit2 stalled for good with dom0's
# vCPU runnable on its run queue and both CPUs idle (debug key 'r': every credit at -10000000,
# nothing tickled; an HVM guest stopped in GRUB's kernel read for 7 min and counting). credit1 is
# the scheduler XenServer and XCP-ng themselves run.
XEN_ARGS = (f"console=com1 com1=115200,8n1 dom0_mem={DOM0_MEM_MB}M,max:{DOM0_MEM_MB}M dom0_max_vcpus={XEN_CPUS} "
            "sched=credit noreboot loglvl=warning guest_loglvl=warning")
DOM0_ARGS = "root=/dev/vda rw console=hvc0 quiet systemd.show_status=0 net.ifnames=0"
PROMPT = "XENP2V-DOM0# "
# watch.sh says a line a minute: a Xen host silent this long has stalled (dom0 does not run).
DOM0_SILENCE = 600
# Under TCG on a loaded host Xen sometimes halts and no timer wakes it (it says, once woken, that
# its platform timer "appears to have unexpectedly wrapped" N times); any interrupt wakes it. After
# this much silence the driver gives it one, a serial input switch to Xen and back (CTRL-a six
# times), which dom0 never sees.
NUDGE_AFTER = 120
CONSOLE_DIR = "/var/log/xen/console"
DOM0_RECIPE = "3"

# Dom0's configuration, written into the tree before the image is made.
AUTOLOGIN = """[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200 %I linux
"""
PROFILE = f"""# The test driver's shell: no echo, a prompt it can find, no pager, wide lines.
if [ "$(tty)" = /dev/hvc0 ]; then
    stty -echo cols 500
    export PS1='{PROMPT}' PAGER=cat SYSTEMD_PAGER=cat TERM=dumb
fi
"""
# xenconsoled writes each PV guest's console to CONSOLE_DIR/guest-<name>.log, stamped.
XEN_DEFAULT = f'XENCONSOLED_ARGS="--log=guest --log-dir={CONSOLE_DIR} --timestamp=guest"\n'


def dom0_dir() -> Path:
    digest = hashlib.sha256((DOM0_PACKAGES + DOM0_RECIPE + AUTOLOGIN + PROFILE + XEN_DEFAULT).encode()).hexdigest()[:12]
    return CACHE / f"xen-dom0-{digest}"


@dataclass(frozen=True)
class Dom0:
    """The cached files one boot of the Xen host needs."""

    xen: Path        # Xen's ELF (uncompressed)
    kernel: Path     # dom0's vmlinuz
    initrd: Path     # dom0's initrd
    image: Path      # dom0's root filesystem (ext4, no partition table)


def dom0(say=print) -> Dom0:
    """The cached dom0, built when missing (debootstrap, about 10 minutes on a busy machine)."""
    where = dom0_dir()
    files = Dom0(where / "xen", where / "vmlinuz", where / "initrd.img", where / "root.img")
    if all(getattr(files, f).exists() for f in ("xen", "kernel", "initrd", "image")):
        return files
    started = time.monotonic()
    tmp = where.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tree = tmp / "tree"
    tmp.mkdir(parents=True)
    sh("debootstrap", "--variant=minbase", f"--include={DOM0_PACKAGES}", SUITE, str(tree), MIRROR, timeout=5400)
    for deb in (tree / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    _configure(tree)
    boot = tree / "boot"
    kernel = max(boot.glob("vmlinuz-*"))
    initrd = boot / kernel.name.replace("vmlinuz", "initrd.img")
    xen = max(boot.glob(f"xen-{XEN_VERSION}*-amd64.gz"))
    shutil.copy(kernel, tmp / "vmlinuz")
    shutil.copy(initrd, tmp / "initrd.img")
    (tmp / "xen").write_bytes(subprocess.run(["zcat", str(xen)], capture_output=True, check=True).stdout)
    with open(tmp / "root.img", "wb") as f:
        f.truncate(DOM0_SIZE)
    sh("mkfs.ext4", "-q", "-L", "dom0", "-d", str(tree), str(tmp / "root.img"))
    shutil.rmtree(tree)
    shutil.rmtree(where, ignore_errors=True)
    tmp.rename(where)
    say(f"built the Xen dom0 in {time.monotonic() - started:.0f} s: {where}")
    return files


def _configure(tree: Path) -> None:
    (tree / "etc/fstab").write_text("/dev/vda / ext4 errors=remount-ro 0 1\n")
    (tree / "etc/hostname").write_text("dom0\n")
    sh("chroot", str(tree), "passwd", "-d", "root")
    dropin = tree / "etc/systemd/system/serial-getty@hvc0.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "autologin.conf").write_text(AUTOLOGIN)
    (tree / "root/.profile").write_text(PROFILE)
    default = tree / "etc/default/xen"
    text = default.read_text() if default.exists() else ""
    default.write_text(text + XEN_DEFAULT)
    (tree / CONSOLE_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    # Nothing to wait for at boot: no network configuration, no timers.
    for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer"):
        (tree / "etc/systemd/system" / unit).unlink(missing_ok=True)
        (tree / "etc/systemd/system" / unit).symlink_to("/dev/null")


@dataclass
class GuestRun:
    ok: bool             # the marker was seen
    root: str | None
    net: str | None
    seconds: float       # from `xl create` to the marker or the failure
    why: str
    console: str         # the guest's console, as dom0 logged it
    vbd_state: str = "?"  # xenstore state of its first PV disk's frontend (4: connected)
    phases: dict[str, float] = field(default_factory=dict)  # PHASES seen: seconds from `xl create`

    def __str__(self) -> str:
        return (f"up root={self.root} net={self.net}" if self.ok else f"failed: {self.why}") + \
            f" ({self.seconds:.0f} s)"

    def timeline(self) -> str:
        """Where the boot's time went, e.g. `GRUB 52 s, kernel read 95 s, ..., end 620 s`."""
        return ", ".join([f"{phase} {t:.0f} s" for phase, t in self.phases.items()] + [f"end {self.seconds:.0f} s"])


def phases(watch_output: str, offset: float) -> dict[str, float]:
    """The PHASES watch.sh saw, in boot order: {phase: seconds}, its times plus `offset` (the
    seconds `xl create` took before it started)."""
    seen = {}
    for m in re.finditer(r"^PHASE (\d+) (.+?)\s*$", watch_output, re.M):
        seen[m[2]] = int(m[1]) + offset
    return {phase: seen[words] for phase, words in PHASES if words in seen}


MARKER = re.compile(r"XENP2V-BOOT-OK root=(\S+) net=(\S+)")
# What a guest that cannot find its root prints (initramfs-tools), a kernel that gives up, a guest
# firmware or boot loader that finds nothing to boot.
FAILURES = ("Gave up waiting for root", "ALERT!", "Kernel panic", "emergency mode",
            "No bootable device", "Boot failed", "error: no such device", "No bootable option")
# Where the payload disk's files land in dom0.
PAYLOAD = "/root/x"
# Where a guest's boot time goes: (phase, the console's first words of it), in boot order. HVM
# guests show all of them; a PV guest's boot starts at the kernel (pygrub reads it in dom0).
PHASES = (("GRUB", "Booting `"), ("kernel read", "Loading initial ramdisk"), ("kernel", "Linux version"),
          ("initramfs", "Run /init"), ("systemd", "Welcome to"))
# watch.sh NAME SECONDS [QUIET]: waits for guest NAME's marker or a known failure on its console
# (PV: xenconsoled's guest-NAME.log; HVM: the serial file its configuration names), for the guest to
# go, or for its console to stay QUIET seconds unchanged; says which, `PHASE <s> <words>` when a
# phase's words first show (phases.txt, one a line), and every minute the console's last line, for
# whoever follows the host's log. Consoles are read again only when they grew (dom0's CPU is the
# guest's device model's).
WATCH = f"""#!/bin/sh
name=$1 limit=$2 quiet=${{3:-0}}
logs="{CONSOLE_DIR}/guest-$name.log {CONSOLE_DIR}/$name.serial"
start=$(date +%s) next=0 size=0 still=$(date +%s) seen="|"
while :; do
    t=$(( $(date +%s) - start ))
    now=$(cat $logs 2>/dev/null | wc -c)
    if [ "$now" != "$size" ]; then
        size=$now still=$(date +%s)
        while IFS= read -r words; do
            case "$seen" in *"|$words|"*) continue ;; esac
            if cat $logs 2>/dev/null | grep -aqF -- "$words"; then seen="$seen$words|"; echo "PHASE $t $words"; fi
        done < {PAYLOAD}/phases.txt
    fi
    if [ $quiet -gt 0 ] && [ $(( $(date +%s) - still )) -ge $quiet ]; then echo GUEST-QUIET; break; fi
    if cat $logs 2>/dev/null | grep -aq XENP2V-BOOT-OK; then echo GUEST-UP; break; fi
    if cat $logs 2>/dev/null | grep -aqE '{"|".join(FAILURES)}'; then echo GUEST-FAILED; break; fi
    if ! xl domid "$name" >/dev/null 2>&1; then echo GUEST-GONE; break; fi
    if [ $t -ge $limit ]; then echo GUEST-TIMEOUT; break; fi
    if [ $t -ge $next ]; then
        echo "[$t s] $(cat $logs 2>/dev/null | tr -d '\\000\\r' | grep -a . | tail -n 1 | cut -c 1-150)"
        next=$((next + 60))
    fi
    sleep 3
done
"""
# vbd.sh NAME: the xenstore state of guest NAME's first PV disk's frontend.
VBD = """#!/bin/sh
d=/local/domain/$(xl domid "$1")/device/vbd
xenstore-read "$d/$(xenstore-list "$d" | head -n 1)/state"
"""
CONSOLE = f"""#!/bin/sh
cat {CONSOLE_DIR}/guest-$1.log {CONSOLE_DIR}/$1.serial 2>/dev/null | tr -d '\\000\\r'
"""


class XenStalled(RuntimeError):
    """Dom0 fell silent: Xen no longer runs it (its run queues were dumped into the host's log)."""


class XenHost:
    """Xen and dom0 running under QEMU, with `disks` as dom0's /dev/vdb, /dev/vdc, ... (read-only
    to this host: QEMU keeps the guests' writes in a temporary overlay).

    Dom0's console takes typed input slowly and loses bytes when dom0 is slow to read them (Xen's
    input ring is small): files go in on one more disk instead, a tar of `payload` (name -> text)
    that dom0 unpacks into PAYLOAD, and every command typed stays short.
    """

    def __init__(self, files: Dom0, disks: list[Path], log: Path, payload: dict[str, str],
                 memory_mb: int = HOST_MEM_MB):
        self.files, self.disks, self.log = files, disks, log
        self.payload = {"watch.sh": WATCH, "console.sh": CONSOLE, "vbd.sh": VBD,
                        "phases.txt": "".join(f"{words}\n" for _, words in PHASES), **payload}
        self.memory_mb = memory_mb
        self.proc: subprocess.Popen | None = None
        self.buffer = b""
        self.boot_seconds = 0.0
        self.stalled = False    # Xen stopped running dom0: no guest can run after it
        self.nudges = 0         # interrupts given to a silent Xen (NUDGE_AFTER)
        self._log = None

    @staticmethod
    def device(index: int) -> str:
        """dom0's name of disks[index]."""
        return f"/dev/vd{chr(ord('b') + index)}"

    def argv(self, tar: Path) -> list[str]:
        f = self.files
        drives = [a for d in (f.image, *self.disks) for a in
                  ("-drive", f"file={d},format=raw,if=virtio,snapshot=on,cache=unsafe")]
        return ["qemu-system-x86_64", "-machine", f"pc,accel={ACCEL}", "-cpu", "qemu64,+svm",
                "-smp", str(XEN_CPUS), "-m", str(self.memory_mb), "-nodefaults", "-display", "none",
                "-monitor", "none", "-no-reboot", "-serial", "stdio", *drives,
                "-drive", f"file={tar},format=raw,if=virtio,readonly=on",
                "-kernel", str(f.xen), "-append", XEN_ARGS,
                # Multiboot modules: a comma in a module's arguments would have to be doubled.
                "-initrd", f"{f.kernel} {DOM0_ARGS},{f.initrd}"]

    def start(self, timeout: float = 1200) -> float:
        """Boot Xen and dom0 to the root shell, unpack the payload; returns the seconds it took."""
        tar = self.log.with_suffix(".payload.tar")
        with tarfile.open(tar, "w") as archive:
            for name, text in self.payload.items():
                info = tarfile.TarInfo(name)
                data = text.encode()
                info.size, info.mode = len(data), 0o755
                archive.addfile(info, io.BytesIO(data))
        self._log = open(self.log, "wb")
        started = time.monotonic()
        self.proc = subprocess.Popen(self.argv(tar), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, bufsize=0)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._expect(PROMPT, timeout)
        self.boot_seconds = time.monotonic() - started
        self.check(f"mkdir -p {PAYLOAD} && tar -xf {self.device(len(self.disks))} -C {PAYLOAD}")
        return self.boot_seconds

    def _read(self, wait: float) -> bytes:
        ready, _, _ = select.select([self.proc.stdout], [], [], wait)
        if not ready:
            return b""
        data = self.proc.stdout.read(65536) or b""
        if data:
            self._log.write(data)
            self._log.flush()
        elif self.proc.poll() is not None:
            raise RuntimeError(f"QEMU exited ({self.proc.returncode}) while Xen ran; see {self.log}")
        return data

    def _expect(self, text: str, timeout: float, silence: float = 0) -> str:
        """Read until `text`; returns what came before it, leaving the rest in the buffer. Raises
        TimeoutError after `timeout` seconds, XenStalled after `silence` seconds without a byte
        (0: no limit)."""
        needle, deadline = text.encode(), time.monotonic() + timeout
        heard = nudged = time.monotonic()
        while needle not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} from the Xen host within {timeout:.0f} s; see {self.log}")
            if silence and time.monotonic() - max(heard, nudged) > NUDGE_AFTER:
                self.proc.stdin.write(b"\x01" * 6)
                self.nudges += 1
                nudged = time.monotonic()
            if silence and time.monotonic() - heard > silence:
                self.xen_keys(b"r")
                raise XenStalled(f"the Xen host said nothing for {silence:.0f} s: Xen stopped running dom0 "
                                 f"(its run queues, debug key r, are at the end of {self.log})")
            data = self._read(min(5.0, max(0.1, deadline - time.monotonic())))
            if data:
                heard = time.monotonic()
            self.buffer += data
        before, _, self.buffer = self.buffer.partition(needle)
        return before.decode(errors="replace")

    def xen_keys(self, keys: bytes, wait: float = 15) -> None:
        """Hand Xen's debug `keys` to Xen itself (CTRL-a three times switches the serial input
        between Xen and dom0) and log its answer for `wait` seconds."""
        self.proc.stdin.write(b"\x01\x01\x01" + keys)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            self.buffer += self._read(1.0)
        self.proc.stdin.write(b"\x01\x01\x01")

    def run(self, command: str, timeout: float = 300, silence: float = 0) -> tuple[int, str]:
        """Run `command` (short: see the class) in dom0's shell; returns (exit status, output).
        `silence`: as `_expect`'s."""
        self.buffer = b""
        # The end mark is split in the command so that only its output matches.
        self._type(f"{command};echo \"@@X\"\"E $?@@\"\n".encode())
        out = self._expect("@@XE ", timeout, silence)
        status = int(self._expect("@@", 10))
        # The previous command's prompt arrives after its end mark: it leads this output.
        return status, out.replace("\r", "").replace(PROMPT, "")

    def _type(self, data: bytes) -> None:
        for i in range(0, len(data), 16):
            self.proc.stdin.write(data[i:i + 16])
            time.sleep(0.05)

    def check(self, command: str, timeout: float = 300) -> str:
        status, out = self.run(command, timeout)
        if status != 0:
            raise RuntimeError(f"dom0: {command!r} failed ({status}): {out.strip()[-1000:]}")
        return out

    def guest(self, name: str, timeout: float = 3600, quiet: int = 0) -> GuestRun:
        """`xl create` guest `name` from the payload's NAME.cfg, wait for the marker, a failure on
        its console, or `quiet` seconds of silence there (0: no limit), destroy it; the guest's
        console and its first PV disk's frontend state come back in the result."""
        started = time.monotonic()
        for _ in range(3):
            # On a slow dom0, libxl may give up on its hotplug scripts (block, vif-bridge): again.
            status, out = self.run(f"xl create {PAYLOAD}/{name}.cfg", timeout=600)
            if status == 0 or "because of timeout" not in out:
                break
        if status != 0:
            return GuestRun(False, None, None, time.monotonic() - started, f"xl create failed: {out.strip()[-300:]}", out)
        created = time.monotonic() - started
        try:
            _, verdict = self.run(f"{PAYLOAD}/watch.sh {name} {int(timeout)} {quiet}", timeout=timeout + 600,
                                  silence=DOM0_SILENCE)
        except XenStalled as e:
            self.stalled = True
            return GuestRun(False, None, None, time.monotonic() - started, str(e), "")
        seconds = time.monotonic() - started
        seen = phases(verdict, created)
        # 4 (Connected) once the guest's xen-blkfront took the disk; 1 (Initialising) if nothing did.
        _, state = self.run(f"{PAYLOAD}/vbd.sh {name}", timeout=300)
        self.run(f"xl destroy {name}", timeout=300)
        _, console = self.run(f"{PAYLOAD}/console.sh {name}", timeout=600)
        vbd = state.strip().splitlines()[-1] if state.strip() else "?"
        m = MARKER.search(console)
        if m:
            return GuestRun(True, m[1], m[2], seconds, "marker seen", console, vbd, seen)
        failure = next((f for f in FAILURES if f in console), None)
        why = failure or {"GUEST-GONE": "the guest stopped", "GUEST-QUIET": f"its console silent for {quiet} s"}.get(
            next((v for v in ("GUEST-GONE", "GUEST-QUIET") if v in verdict), ""), f"no marker within {timeout} s")
        return GuestRun(False, None, None, seconds, why, console, vbd, seen)

    def stop(self) -> None:
        # Nothing in dom0 needs keeping (its disks are QEMU snapshots): the emulator just stops.
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._log:
            self._log.close()

    def __enter__(self) -> "XenHost":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

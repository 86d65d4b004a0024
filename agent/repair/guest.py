"""The edge: find the OS on a disk, mount it for a chroot, run the guest's own tools, clean up.

Everything here touches devices; it works the same on the VM's own disk and on a loop device.
It only ever mounts filesystems that live on the disk being repaired.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import shutil
import subprocess
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from agent.disk import blockdev, inuse
from agent.repair import raid
from agent.repair.facts import Filesystem, RaidArray
from agent.repair.steps import RELEASE_FILES
from agent.repair.tree import host_of

ESP_TYPES = {"C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "ef", "0xef"}
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
ROOT_TYPES = ("ext2", "ext3", "ext4", "xfs", "btrfs")
BTRFS_ROOT_SUBVOLUMES = ("@", "@root", "root", "@rootfs")
_LVM_CONFIG = "devices { obtain_device_list_from_udev=0 use_devicesfile=0 } activation { udev_sync=0 udev_rules=0 }"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class RepairError(Exception):
    """A repair cannot go on; the message says what to do next."""


def run(argv: list[str], what: str, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except FileNotFoundError:
        raise RepairError(f"Cannot {what}: the tool '{argv[0]}' is not installed.") from None
    except subprocess.TimeoutExpired:
        raise RepairError(f"Cannot {what}: '{argv[0]}' did not finish within {timeout} s.") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise RepairError(f"Cannot {what}: {lines[-1] if lines else f'exit status {proc.returncode}'}")
    return proc


@dataclass
class DiskLayout:
    disk: str
    filesystems: list[Filesystem]
    bios: bool             # MBR, or GPT with a BIOS boot partition
    uefi: bool             # has an EFI system partition
    volume_groups: list[str]
    aliases: dict[str, Filesystem]   # LV and md names (/dev/mapper/vg-lv, /dev/md0) → filesystem
    locked: list[Filesystem] = field(default_factory=list)   # LUKS volumes nobody opened yet
    arrays: list[RaidArray] = field(default_factory=list)    # md arrays with members here
    read_only: set[str] = field(default_factory=set)         # devices that can only be read
    notes: list[str] = field(default_factory=list)           # what the plan should say about them


def unlocked(node: str) -> list[str]:
    """/dev/mapper names of the device-mapper devices open on top of `node` (an unlocked LUKS)."""
    holders = Path("/sys/class/block") / Path(os.path.realpath(node)).name / "holders"
    return [f"/dev/mapper/{(h / 'dm/name').read_text().strip()}"
            for h in sorted(holders.iterdir())] if holders.is_dir() else []


def map_lv(lv: blockdev.LogicalVolume, stack: ExitStack) -> str:
    """A loop device over a linear LV: its contents where this kernel has no device-mapper."""
    if len(lv.segments) != 1 or lv.segments[0]["size"] != lv.size:
        raise RepairError(f"Logical volume {lv.vg}/{lv.name} is not one linear segment, and this "
                          "machine has no device-mapper to activate it; repair from the live ISO.")
    seg = lv.segments[0]
    loop = run(["losetup", "--show", "-f", "--offset", str(seg["pv_start"]), "--sizelimit",
                str(lv.size), seg["pv"]], f"map {lv.vg}/{lv.name}").stdout.strip()
    stack.callback(subprocess.run, ["losetup", "-d", loop], capture_output=True)
    return loop


def attach_image(disk: str, stack: ExitStack) -> str:
    """`disk` itself, or for an image file a loop device of its own over it, its partitions
    dropped and it detached when `stack` closes: partx on the file would leave one behind."""
    if not stat.S_ISREG(os.stat(disk).st_mode):
        return disk
    loop = run(["losetup", "--show", "-f", disk], f"attach the image {disk}").stdout.strip()
    stack.callback(subprocess.run, ["losetup", "-d", loop], capture_output=True)
    stack.callback(subprocess.run, ["partx", "-d", loop], capture_output=True)
    return loop


def lv_names(vg: str, lv: str) -> list[str]:
    return [f"/dev/mapper/{vg.replace('-', '--')}-{lv.replace('-', '--')}", f"/dev/{vg}/{lv}"]


def boot_places(table: blockdev.PartitionTable | None) -> tuple[bool, bool]:
    """(BIOS boot code fits: MBR, or GPT with a BIOS boot partition; an EFI system partition is
    there) for a disk's partition table."""
    parts = table.partitions if table else []
    types = {p.type.upper() if table and table.label == "gpt" else p.type.lower() for p in parts}
    return table is None or table.label == "dos" or BIOS_BOOT_TYPE in types, bool(types & ESP_TYPES)


def disk_boot_places(disk: str) -> tuple[bool, bool]:
    """boot_places of another of the VM's disks (the one it boots from)."""
    try:
        return boot_places(blockdev.partition_table(disk))
    except blockdev.BlockDevError as e:
        raise RepairError(str(e)) from None


def read_layout(disk: str, stack: ExitStack, peers: list[str] = (), readonly: bool = False,
                mdadm: raid.Mdadm | None = None) -> DiskLayout:
    """Every filesystem on `disk`: on its partitions, LVM volumes and md arrays (active until
    `stack` closes). An array's members on `peers` (the other disks repair may touch) join it.

    A LUKS volume someone opened already counts with what is inside; a closed one is listed in
    `locked` for `add_inside` once unlocked.
    """
    subprocess.run(["partx", "-a", disk], capture_output=True)
    subprocess.run(["partx", "-u", disk], capture_output=True)
    try:
        table = blockdev.partition_table(disk)
    except blockdev.BlockDevError as e:
        raise RepairError(str(e)) from None
    parts = table.partitions if table else []
    bios, uefi = boot_places(table)
    layout = DiskLayout(disk=disk, filesystems=[], bios=bios, uefi=uefi, volume_groups=[], aliases={})
    pvs: list[str] = []
    members: list[raid.Member] = []
    try:
        if table is None:
            pvs += _add_filesystem(layout, disk)
        for part in parts:
            pvs += _add_filesystem(layout, part.node, part.number, part.start, part.size)
            if layout.filesystems and layout.filesystems[-1].device == part.node and \
                    layout.filesystems[-1].fstype == "linux_raid_member":
                info = blockdev.md_member(part.node)
                if info is not None:
                    members.append(raid.Member(part.node, part.number, info))
        if members:
            peer_members = [m for peer in peers if os.path.realpath(peer) != os.path.realpath(disk)
                            for m in raid.members_on(peer)]
            devices, views, notes = raid.assemble(members, peer_members, mdadm or raid.Mdadm(), stack, readonly)
            layout.arrays = raid.arrays(members)
            layout.read_only.update(views)
            layout.notes += notes
            for array in layout.arrays:
                if array.uuid in devices:
                    pvs += _add_filesystem(layout, devices[array.uuid])
                    inside = [fs for fs in layout.filesystems if fs.device == devices[array.uuid]]
                    layout.aliases.update({name: inside[0] for name in raid.guest_names(array) if inside})
    except blockdev.BlockDevError as e:
        raise RepairError(str(e)) from None
    _add_volume_groups(layout, pvs, stack)
    return layout


def add_inside(layout: DiskLayout, device: str, stack: ExitStack) -> None:
    """Count what an unlocked volume holds: a filesystem, or an LVM PV whose VGs get activated."""
    try:
        pvs = _add_filesystem(layout, device)
    except blockdev.BlockDevError as e:
        raise RepairError(str(e)) from None
    _add_volume_groups(layout, pvs, stack)


def partition_filesystems(disk: str) -> list[Filesystem]:
    """The filesystems on `disk`'s partitions, with their numbers (another of the VM's disks,
    looked at for its names only: nothing is activated or mounted)."""
    subprocess.run(["partx", "-a", disk], capture_output=True)
    subprocess.run(["partx", "-u", disk], capture_output=True)
    try:
        table = blockdev.partition_table(disk)
    except blockdev.BlockDevError:
        return []
    found = []
    for part in table.partitions if table else []:
        info = blockdev.filesystem(part.node)
        if info.get("TYPE"):
            found.append(Filesystem(part.node, info["TYPE"], info.get("UUID"), info.get("LABEL"), part.number,
                                    part.start, part.size))
    return found


def _add_filesystem(layout: DiskLayout, device: str, partition: int | None = None,
                    start: int | None = None, size: int | None = None) -> list[str]:
    """Adds what is on `device` to the layout; returns the LVM PVs found (itself, or inside it)."""
    info = blockdev.filesystem(device)
    if info.get("TYPE") == "LVM2_member":
        return [device]
    if not info.get("TYPE"):
        return []
    fs = Filesystem(device, info["TYPE"], info.get("UUID"), info.get("LABEL"), partition, start, size)
    layout.filesystems.append(fs)
    return _luks_inside(layout, fs) if fs.fstype == "crypto_LUKS" else []


def _luks_inside(layout: DiskLayout, fs: Filesystem) -> list[str]:
    """What an opened LUKS volume holds counts (opened by someone, under its crypttab name); a
    closed one waits in `locked`."""
    inner = unlocked(fs.device)
    if not inner:
        layout.locked.append(fs)
    return [pv for device in inner for pv in _add_filesystem(layout, device)]


def _add_volume_groups(layout: DiskLayout, pvs: list[str], stack: ExitStack) -> None:
    if not pvs:
        return
    try:
        vgs = blockdev.lvm_layout(pvs)
        for vg in vgs:
            if any(os.path.realpath(pv) not in {os.path.realpath(p) for p in pvs} for pv in vg.pvs):
                raise RepairError(f"Volume group {vg.name} spans disks other than {layout.disk}; "
                                  "attach them all and repair from inside the VM.")
            try:
                blockdev.lvm_activate(vg.name)
                stack.callback(subprocess.run, ["lvm", "vgchange", "--config", _LVM_CONFIG, "-an", vg.name],
                               capture_output=True)
                mapped = False
            except blockdev.BlockDevError:
                mapped = True  # no device-mapper here: read the LVs through loop devices
            for lv in vg.lvs:
                if lv.hidden:
                    continue  # a component of another LV (raid image, cache origin, pool data)
                device = map_lv(lv, stack) if mapped else lv.path
                info = blockdev.filesystem(device)
                if info.get("TYPE"):
                    fs = Filesystem(device, info["TYPE"], info.get("UUID"), info.get("LABEL"))
                    layout.filesystems.append(fs)
                    layout.aliases.update(dict.fromkeys(lv_names(vg.name, lv.name), fs))
                    if fs.fstype == "crypto_LUKS" and _luks_inside(layout, fs):
                        raise RepairError(f"{vg.name}/{lv.name} is an encrypted volume holding LVM "
                                          "again; repair does not go that deep: open it by hand.")
            layout.volume_groups.append(vg.name)
    except blockdev.BlockDevError as e:
        raise RepairError(str(e)) from None


def rename_device(layout: DiskLayout, old: str, new: str) -> dict[Filesystem, Filesystem]:
    """The filesystem on device `old` is now on `new` (a renamed mapping); returns old → new."""
    moved = {fs: dataclasses.replace(fs, device=new) for fs in layout.filesystems if fs.device == old}
    layout.filesystems = [moved.get(fs, fs) for fs in layout.filesystems]
    layout.aliases = {name: moved.get(fs, fs) for name, fs in layout.aliases.items()}
    return moved


def mount(source: str, target: Path, stack: ExitStack, fstype: str | None = None,
          options: str | None = None) -> None:
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RepairError(f"Cannot mount {source} on {target}: the mount point cannot be made "
                          f"({e.strerror}); create it in the guest and run repair again.") from None
    if fstype == "vfat" and not kernel_knows("vfat"):
        # A kernel without vfat (some hosts a disk is attached to): FUSE reads and writes the ESP;
        # fsname lets grub-install find the ESP's device from mountinfo.
        mode = "ro" if "ro" in (options or "").split(",") else "rw+"
        argv = ["fusefat", "-o", f"{mode},fsname={source}", source, str(target)]
    else:
        argv = ["mount"] + (["-t", fstype] if fstype else []) + (["-o", options] if options else []) + [source, str(target)]
    run(argv, f"mount {source} on {target}")
    stack.callback(_unmount, target, stack)


class Mounts(ExitStack):
    """An ExitStack whose mounts are synced and unmounted properly on close; what could only be
    detached lazily is listed in `not_unmounted`, as sentences for the report."""

    def __init__(self) -> None:
        super().__init__()
        self.not_unmounted: list[str] = []


UNMOUNT_TRIES = 3


def unmount(target: Path, tries: int = UNMOUNT_TRIES, pause: float = 1.0) -> str | None:
    """Write out, then unmount `target` and what is mounted below it; None when done.

    A mount still busy after `tries` attempts is detached lazily (it goes once the last user
    lets go) and the sentence returned says so: its last writes may not be on the disk yet.
    """
    subprocess.run(["sync"], capture_output=True)
    why = ""
    for attempt in range(tries):
        proc = subprocess.run(["umount", "-R", str(target)], capture_output=True, text=True)
        if proc.returncode == 0:
            return None
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        why = lines[-1] if lines else f"status {proc.returncode}"
        if attempt + 1 < tries:
            time.sleep(pause)
    subprocess.run(["umount", "-R", "-l", str(target)], capture_output=True)
    subprocess.run(["sync"], capture_output=True)
    return (f"{target} could not be unmounted ({why}); it was detached lazily, so its last writes "
            "may not be on the disk yet: shut the VM down cleanly before starting it.")


def _unmount(target: Path, stack: ExitStack) -> None:
    problem = unmount(target)
    if problem is None:
        return
    if isinstance(stack, Mounts):
        stack.not_unmounted.append(problem)
    logging.getLogger(__name__).warning("%s", problem)


PROC_FILESYSTEMS = Path("/proc/filesystems")


def kernel_knows(fstype: str) -> bool:
    """Whether this kernel mounts `fstype`; a module not loaded yet (vfat on the live ISO, until
    something mounted a FAT) is loaded first."""
    def listed() -> bool:
        return any(line.split()[-1] == fstype for line in PROC_FILESYSTEMS.read_text().splitlines() if line.strip())

    if listed():
        return True
    try:
        subprocess.run(["modprobe", "-q", fstype], capture_output=True)
    except FileNotFoundError:  # no kmod here: what the kernel lists is all it has
        return False
    return listed()


def _os_release(root: Path) -> bool:
    return any(host_of(root, path).exists()
               for path in ("/etc/os-release", "/usr/lib/os-release", *RELEASE_FILES))


def find_roots(layout: DiskLayout, workdir: Path) -> list[tuple[Filesystem, str | None]]:
    """(filesystem, btrfs subvolume or None) of every OS root on the disk: a tree with /etc/fstab
    and an os-release (or an older release file). Each candidate is looked at read-only and unmounted again."""
    roots = []
    for fs in layout.filesystems:
        if fs.fstype not in ROOT_TYPES:
            continue
        with ExitStack() as stack:
            where = workdir / "probe"
            try:
                mount(fs.device, where, stack, fs.fstype, "ro")
            except RepairError:
                continue
            candidates = [None] + (list(BTRFS_ROOT_SUBVOLUMES) if fs.fstype == "btrfs" else [])
            for sub in candidates:
                tree = where / sub if sub else where
                if host_of(tree, "/etc/fstab").exists() and _os_release(tree):
                    roots.append((fs, sub))
                    break
    return roots


def fstab_entries(text: str) -> list[tuple[str, str, str, str]]:
    """(spec, mountpoint, type, options) of every active fstab line."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not fields[0].startswith("#"):
            out.append((fields[0], fields[1], fields[2], fields[3] if len(fields) > 3 else "defaults"))
    return out


def resolve(spec: str, filesystems: list[Filesystem], names: dict[str, Filesystem]) -> Filesystem | None:
    """The filesystem on this disk that an fstab spec names, or None (never another disk's).

    `names` holds old device names and LV names; anything else must match one of `filesystems`.
    """
    if spec in names:
        return names[spec]
    for key, attr in (("UUID=", "uuid"), ("LABEL=", "label"), ("/dev/disk/by-uuid/", "uuid"),
                      ("/dev/disk/by-label/", "label")):
        if spec.startswith(key):
            return next((fs for fs in filesystems if getattr(fs, attr) == spec[len(key):]), None)
    if spec.startswith("/dev/"):
        real = os.path.realpath(spec)
        return next((fs for fs in filesystems if os.path.realpath(fs.device) == real), None)
    return None


def mount_guest(root_fs: Filesystem, subvolume: str | None, filesystems: list[Filesystem],
                names: dict[str, Filesystem], workdir: Path, stack: ExitStack,
                readonly: bool = False) -> tuple[Path, list[str]]:
    """Mount the root and what its fstab puts under /boot, /usr and /var; returns (root, notes)."""
    root = workdir / "root"
    ro = ["ro"] if readonly else []
    mount(root_fs.device, root, stack, root_fs.fstype,
          ",".join(ro + ([f"subvol={subvolume}"] if subvolume else [])) or None)
    notes = []
    wanted = ("/boot", "/boot/efi", "/efi", "/usr", "/var")
    entries = sorted((e for e in fstab_entries(host_of(root, "/etc/fstab").read_text()) if e[1] in wanted),
                     key=lambda e: e[1].count("/"))
    for spec, point, fstype, options in entries:
        fs = resolve(spec, filesystems, names)
        if fs is None:
            notes.append(f"{point} ({spec}) is not on this disk: not mounted.")
            continue
        subvol = [o for o in options.split(",") if o.startswith(("subvol=", "subvolid="))][:1]
        if fs.fstype == "vfat" and not kernel_knows("vfat"):
            stage_esp(fs.device, host_of(root, point), workdir, stack, readonly)
            notes.append(f"{point}: this kernel has no FAT driver; the ESP is worked on in a copy "
                         "and copied back with mtools.")
            continue
        # Resolved inside the guest: a `/boot -> /mnt/boot` link must not lead onto this machine's tree.
        mount(fs.device, host_of(root, point), stack, fs.fstype, ",".join(ro + subvol) or None)
    return root, notes


def stage_esp(device: str, target: Path, work: Path, stack: ExitStack, readonly: bool) -> None:
    """Mount an empty FAT stand-in for the ESP at `target` (FUSE); when the repair succeeds, what
    the guest's tools wrote there is copied onto the ESP with mtools.

    For kernels without vfat. FUSE's FAT driver loses data when it overwrites a file, so it only
    ever creates files, in a fresh image; mtools, which overwrites safely, writes the ESP. The
    guest's tools therefore see an empty ESP (a shim there goes unnoticed).
    """
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    image = work / "esp.img"
    with open(image, "wb") as f:
        f.truncate(max(blockdev.disk_size(device), 64 << 20))
    stack.callback(image.unlink, missing_ok=True)
    run(["mkfs.vfat", "-F", "32", str(image)], "make a stand-in for the ESP")
    loop = run(["losetup", "--show", "-f", str(image)], "attach the ESP's stand-in").stdout.strip()
    stack.callback(subprocess.run, ["losetup", "-d", loop], capture_output=True)
    mount(loop, target, stack, "vfat")
    if readonly:
        return

    def copy_back(exc_type, exc, tb) -> bool:
        if exc_type is None:
            for entry in sorted(os.listdir(target)):
                run(["mcopy", "-s", "-o", "-i", device, str(target / entry), "::/"],
                    f"copy {entry} onto the ESP", env=env)
        return False
    stack.push(copy_back)


def _copy_dev_nodes(src: Path, dst: Path, subdirs: tuple[str, ...]) -> None:
    dst.mkdir(exist_ok=True)
    for entry in os.scandir(src):
        st = entry.stat(follow_symlinks=False)
        target = dst / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode):
            os.mknod(target, st.st_mode, st.st_rdev)
            os.chown(target, st.st_uid, st.st_gid)
        elif entry.is_dir() and entry.name in subdirs:
            _copy_dev_nodes(Path(entry.path), target, ())


def enter(root: Path, filesystems: list[Filesystem], volume_groups: list[str], stack: ExitStack,
          aliases: dict[str, Filesystem] | None = None) -> None:
    """Prepare `root` for chroot commands: /proc, /sys (with efivars), a private /dev and /run.

    /dev is a copy of the host's device nodes on a tmpfs, plus /dev/disk/by-uuid links to this
    disk's filesystems. Without udev there is no by-uuid, and grub-mkconfig's 10_linux then writes
    `root=/dev/loop0p1` (or whatever this machine calls the disk) instead of `root=UUID=…`: it
    uses the UUID only when /dev/disk/by-uuid/<uuid> exists. The copy keeps the host's /dev
    untouched. /run is a fresh tmpfs so the guest's tools leave no state in the host's.
    """
    proc, sys_, dev, run_ = (host_of(root, p) for p in ("/proc", "/sys", "/dev", "/run"))
    mount("proc", proc, stack, "proc")
    mount("/sys", sys_, stack, options="rbind")
    run(["mount", "--make-rslave", str(sys_)], "isolate /sys mounts")
    mount("tmpfs", dev, stack, "tmpfs", "mode=0755,size=16m")
    _copy_dev_nodes(Path("/dev"), dev, ("mapper", "md", *volume_groups))
    by_uuid = dev / "disk/by-uuid"
    by_uuid.mkdir(parents=True, exist_ok=True)
    for fs in filesystems:
        if fs.uuid and not (by_uuid / fs.uuid).exists():
            os.symlink(os.path.realpath(fs.device), by_uuid / fs.uuid)
    for name, fs in (aliases or {}).items():
        # LVs read through loop devices (no device-mapper here) keep their names for the guest's
        # hooks (fsck, lvm2) that look the root up by its fstab name.
        link = dev / name.removeprefix("/dev/")
        if name.startswith("/dev/") and not os.path.lexists(link):
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.realpath(fs.device), link)
    (dev / "pts").mkdir(exist_ok=True)
    (dev / "shm").mkdir(exist_ok=True)
    mount("tmpfs", run_, stack, "tmpfs", "mode=0755,size=64m")


# The kernel command line a guest program would read; a copy without secrets is shown instead.
CMDLINE = Path("/proc/cmdline")
SECRET_WORDS = ("p2v.token=",)
# Run in the new namespaces, with the host's sh and mount: $1 the clean command line, $2 the root.
_MASKED = ('[ -e "$2/proc/cmdline" ] && { mount --bind "$1" "$2/proc/cmdline" || exit 125; }; '
           'root="$2"; shift 2; exec chroot "$root" "$@"')


def chroot(root: Path, argv: tuple[str, ...], timeout: int = 1800) -> subprocess.CompletedProcess:
    """Runs `argv` in the guest, where it cannot learn the server's token.

    The environment is a clean one. The program runs in its own mount and PID namespaces: its
    /proc shows only its own processes (not the agent's command line or environment), and its
    /proc/cmdline is a copy of the kernel's without p2v.token=. The guest's programs run as
    root and come from a disk we know nothing of, so they are told nothing they do not need.
    """
    env = {"PATH": CHROOT_PATH, "LANG": "C.UTF-8", "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive"}
    fd, clean = tempfile.mkstemp(prefix="xenp2v-cmdline-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(clean_cmdline(_read(CMDLINE)))
        masked = (host_of(root, "/proc") / "self").exists()   # enter() mounted /proc there
        wrapper = (["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                    "--kill-child", f"--mount-proc={host_of(root, '/proc')}"] if masked else
                   ["unshare", "--mount", "--propagation", "private"])
        return subprocess.run([*wrapper, "sh", "-c", _MASKED, "sh", clean, str(root), *argv],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RepairError(f"'{' '.join(argv)}' in the guest did not finish within {timeout} s.") from None
    finally:
        os.unlink(clean)


def clean_cmdline(text: str) -> str:
    """The kernel command line without the words that carry secrets (p2v.token=…)."""
    words = [w for w in text.split() if not w.startswith(SECRET_WORDS)]
    return " ".join(words) + "\n"


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def workdir(stack: ExitStack) -> Path:
    path = Path(tempfile.mkdtemp(prefix="xenp2v-repair-"))
    stack.callback(lambda: _rmdirs(path))
    return path


def _rmdirs(path: Path) -> None:
    """Removes the work directory: what the repair staged there (the Windows tools copied off a
    CD, ...) and its empty mount points. A tree with anything mounted at or below it is left
    whole (a guest may still hang there: deleting through it would delete the guest's files)."""
    mounted = [Path(target) for target in inuse.mount_points()]
    for sub in sorted(path.iterdir()) if path.is_dir() else []:
        if any(m == sub or sub in m.parents for m in mounted):
            try:
                sub.rmdir()
            except OSError:
                pass
        elif sub.is_dir() and not sub.is_symlink():
            shutil.rmtree(sub, ignore_errors=True)
        else:
            sub.unlink(missing_ok=True)
    try:
        path.rmdir()
    except OSError:
        pass

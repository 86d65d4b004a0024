"""The pool's guest agent installed into a real Debian guest tree from a tools ISO built here.

The ISO is laid out as the vendors lay theirs out (Linux/ with xe-guest-utilities_<v>_<arch>.deb,
xe-guest-utilities-<v>.<arch>.rpm and its -xenstore- package, xe-guest-utilities_<v>_<arch>.tgz),
with real packages made by dpkg-deb and rpmbuild. The guest is the e2e cache's debootstrapped
bookworm tree under an overlay, so the test writes nothing into the cache.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.repair import guest, guest_tools
from agent.repair.apply import apply_plan
from agent.repair.tree import GuestTree

VERSION = "8.4.0-1"
UNIT = """[Unit]
Description=Linux Guest Agent

[Service]
ExecStart=/usr/sbin/xe-daemon

[Install]
WantedBy=multi-user.target
"""



def payload(root: Path) -> None:
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/xe-daemon").write_text("#!/bin/sh\nexec sleep infinity\n")
    (root / "usr/sbin/xe-daemon").chmod(0o755)
    (root / "lib/systemd/system").mkdir(parents=True)
    (root / "lib/systemd/system/xe-linux-distribution.service").write_text(UNIT)


def make_deb(work: Path, arch: str, out: Path) -> None:
    root = work / f"deb-{arch}"
    payload(root)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        f"Package: xe-guest-utilities\nVersion: {VERSION}\nArchitecture: {arch}\n"
        "Maintainer: test <test@example.org>\nDescription: Linux guest agent (test build)\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root),
                    str(out / f"xe-guest-utilities_{VERSION}_{arch}.deb")], check=True, capture_output=True)


def make_rpms(work: Path, out: Path, full_version: str = VERSION) -> None:
    top = work / "rpmbuild"
    spec = work / "xe.spec"
    version, release = full_version.split("-")
    spec.write_text(f"""Summary: Linux guest agent (test build)
Name: xe-guest-utilities
Version: {version}
Release: {release}
License: BSD
AutoReqProv: no
%description
test
%package xenstore
Summary: XenStore utilities (test build)
%description xenstore
test
%install
mkdir -p %{{buildroot}}/usr/sbin %{{buildroot}}/usr/lib/systemd/system %{{buildroot}}/usr/bin
printf 'test build: no interpreter, so no /bin/sh requirement\\n' > %{{buildroot}}/usr/sbin/xe-daemon
chmod 755 %{{buildroot}}/usr/sbin/xe-daemon
printf '%s' '{UNIT}' > %{{buildroot}}/usr/lib/systemd/system/xe-linux-distribution.service
printf 'test build\\n' > %{{buildroot}}/usr/bin/xenstore
chmod 755 %{{buildroot}}/usr/bin/xenstore
%files
/usr/sbin/xe-daemon
/usr/lib/systemd/system/xe-linux-distribution.service
%files xenstore
/usr/bin/xenstore
""")
    subprocess.run(["rpmbuild", "-bb", "--target", "x86_64", "--nodeps", "--define", f"_topdir {top}",
                    "--define", "debug_package %{nil}", str(spec)], check=True, capture_output=True)
    for rpm in (top / "RPMS/x86_64").glob("*.rpm"):
        # rpmbuild names them <name>-<version>-<release>.x86_64.rpm, as the ISO has them.
        shutil.copy(rpm, out / rpm.name)


@pytest.fixture(scope="module")
def tools_iso(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("tools")
    linux = work / "iso/Linux"
    linux.mkdir(parents=True)
    make_deb(work, "amd64", linux)
    make_deb(work, "i386", linux)
    make_rpms(work, linux)
    tgz_root = work / "tgz"
    payload(tgz_root)
    subprocess.run(["tar", "-cf", str(linux / f"xe-guest-utilities_{VERSION}_all.tgz"), "-C", str(tgz_root), "."],
                   check=True)
    (linux / "versions.deb").write_text(f"XE_GUEST_UTILITIES_PKG_FILE_amd64='xe-guest-utilities_{VERSION}_amd64.deb'\n")
    iso = work / "guest-tools.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-R", "-J", "-V", "XenServer Tools", "-o", str(iso),
                    str(work / "iso")], check=True, capture_output=True)
    return iso


def base_tree() -> Path:
    from e2e.sources import base_tree as build
    return build()


@pytest.fixture
def debian_guest(tmp_path) -> Path:
    """A writable bookworm guest: the cached debootstrap tree under an overlay."""
    lower = base_tree()
    root, upper, work = tmp_path / "root", tmp_path / "upper", tmp_path / "work"
    for d in (root, upper, work):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={work}", str(root)], check=True)
    yield root
    subprocess.run(["umount", str(root)], check=True)


RPM_DEBS = ("rpm", "rpm-common", "librpm9", "librpmio9", "librpmbuild9", "librpmsign9", "liblua5.3-0",
            "libpopt0", "libsqlite3-0", "debugedit", "rpm2cpio", "libfsverity0")


def rpm_debs() -> list[str]:
    """Debian's rpm and the libraries the bookworm tree lacks for it: fetched once with apt-get
    download into the e2e cache."""
    from e2e.sources import CACHE
    cache = CACHE / "rpm-debs"
    cache.mkdir(parents=True, exist_ok=True)
    missing = [n for n in RPM_DEBS if not glob.glob(f"{cache}/{n}_*.deb")]
    if missing:
        proc = subprocess.run(["apt-get", "download", *missing], cwd=cache, capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"apt-get download {' '.join(missing)} failed (the rpm test needs Debian's rpm "
                        f"packages): {proc.stderr.strip()[-300:]}")
    return [p for n in RPM_DEBS for p in glob.glob(f"{cache}/{n}_*.deb")]


def install(root: Path, source: Path, family: str) -> tuple[list, list[str]]:
    tree = GuestTree(root)
    files = guest_tools.read_source(source, root.parent / "extracted")
    package = guest_tools.pick(files, family, guest_tools.guest_arch(tree), str(source))
    step = guest_tools.plan(tree, package, family, str(source))
    guest_tools.stage(root, package)
    said: list[str] = []

    def run(cmd):
        proc = guest.chroot(root, cmd.argv)
        return proc.returncode, proc.stdout + proc.stderr

    apply_plan(root, [step], run, said.append)
    return [package, step], said


def test_deb_from_the_iso_installed_with_dpkg_and_enabled(debian_guest, tools_iso):
    (package, step), said = install(debian_guest, tools_iso, "debian")
    assert package.kind == "deb" and package.arch == "amd64"
    assert [f.name for f in package.files] == [f"xe-guest-utilities_{VERSION}_amd64.deb"]
    assert [c.argv[0] for c in step.commands] == ["dpkg", "sh"] and step.commands[1].argv[-2:] == ("xe-linux-distribution", "yes")
    status = (debian_guest / "var/lib/dpkg/status").read_text()
    entry = next(p for p in status.split("\n\n") if p.startswith("Package: xe-guest-utilities\n"))
    assert "Status: install ok installed" in entry and f"Version: {VERSION}" in entry
    assert (debian_guest / "etc/systemd/system/multi-user.target.wants/xe-linux-distribution.service").is_symlink()
    assert (debian_guest / "usr/sbin/xe-daemon").exists()
    again = guest_tools.plan(GuestTree(debian_guest), package, "debian", str(tools_iso))
    assert again.empty and "already installed" in again.notes[0]


def test_rpm_from_the_iso_installed_with_the_guests_rpm(debian_guest, tools_iso):
    """A guest whose family uses rpm: the guest's own rpm (Debian's, put into the tree) installs
    both packages; the rpm database in the guest lists them."""
    debs = rpm_debs()
    stage = debian_guest / "tmp/debs"
    stage.mkdir()
    for deb in debs:
        shutil.copy(deb, stage)
    proc = guest.chroot(debian_guest, ("sh", "-c", "dpkg -i --force-depends /tmp/debs/*.deb"))
    assert proc.returncode == 0, proc.stderr
    (debian_guest / "etc/os-release").unlink()
    (debian_guest / "etc/os-release").write_text('ID="rocky"\nID_LIKE="rhel centos fedora"\n')
    (package, step), said = install(debian_guest, tools_iso, "rhel")
    assert package.kind == "rpm" and package.arch == "x86_64"
    assert [f.name for f in package.files] == ["xe-guest-utilities-8.4.0-1.x86_64.rpm",
                                               "xe-guest-utilities-xenstore-8.4.0-1.x86_64.rpm"]
    proc = guest.chroot(debian_guest, ("rpm", "-q", "xe-guest-utilities", "xe-guest-utilities-xenstore"))
    assert proc.returncode == 0 and "xe-guest-utilities-8.4.0-1.x86_64" in proc.stdout, proc.stdout + proc.stderr
    assert (debian_guest / "etc/systemd/system/multi-user.target.wants/xe-linux-distribution.service").is_symlink()


def rpm_guest(root: Path) -> None:
    """The guest as an RPM one: Debian's rpm put into the tree, os-release a Rocky one."""
    stage = root / "tmp/debs"
    stage.mkdir()
    for deb in rpm_debs():
        shutil.copy(deb, stage)
    proc = guest.chroot(root, ("sh", "-c", "dpkg -i --force-depends /tmp/debs/*.deb"))
    assert proc.returncode == 0, proc.stderr
    (root / "etc/os-release").unlink()
    (root / "etc/os-release").write_text('ID="rocky"\nID_LIKE="rhel centos fedora"\n')


def test_a_guest_agent_already_there_is_left_and_said(debian_guest, tools_iso, tmp_path):
    """A source that already runs a guest agent (a VM moved from a newer pool, or XCP-ng's
    xe-guest-utilities-latest): rpm -U of the pool's older one refuses, which failed the step and
    undid the whole repair. The guest keeps its agent, and the plan says so."""
    rpm_guest(debian_guest)
    newer = tmp_path / "newer"
    newer.mkdir()
    make_rpms(tmp_path, newer, "9.0.0-1")
    (rpm,) = [p for p in newer.glob("*.rpm") if "xenstore" not in p.name]
    shutil.copy(rpm, debian_guest / "tmp")
    proc = guest.chroot(debian_guest, ("rpm", "-i", "--nodeps", f"/tmp/{rpm.name}"))
    assert proc.returncode == 0, proc.stderr
    (package, step), said = install(debian_guest, tools_iso, "rhel")
    assert not step.commands and not step.changes
    assert step.warnings == [
        "The guest already has a guest agent (/usr/sbin/xe-daemon) that xenp2v did not install: it is left as "
        f"it is, and xe-guest-utilities 8.4.0-1 (rpm, x86_64) from {tools_iso} is not installed over it (it may "
        "be newer, or another package's). To have the pool's, remove the guest's and repair again."]
    proc = guest.chroot(debian_guest, ("rpm", "-q", "xe-guest-utilities"))
    assert proc.stdout.strip() == "xe-guest-utilities-9.0.0-1.x86_64", proc.stdout + proc.stderr


def test_package_fits_family_and_architecture(tools_iso, tmp_path):
    files = guest_tools.read_source(tools_iso, tmp_path / "x")
    names = lambda p: [f.name for f in p.files]  # noqa: E731
    assert names(guest_tools.pick(files, "debian", "i386", "iso")) == [f"xe-guest-utilities_{VERSION}_i386.deb"]
    assert guest_tools.pick(files, "arch", "x86_64", "iso").kind == "tgz"
    # No i686 rpm on this ISO: the tarball, not an x86_64 rpm.
    assert guest_tools.pick(files, "suse", "i386", "iso").kind == "tgz"
    assert guest_tools.pick([f for f in files if f.suffix != ".tgz"], "arch", "x86_64", "iso") is None


def test_no_package_or_no_iso_is_a_warning_not_a_failure(tmp_path):
    empty = tmp_path / "tools"
    empty.mkdir()
    tree = GuestTree(tmp_path)
    step = guest_tools.plan(tree, None, "debian", str(empty))
    assert step.empty and f"{empty} has no xe-guest-utilities package for this guest" in step.warnings[0]
    with pytest.raises(guest_tools.ToolsError, match="neither an ISO file nor a directory"):
        guest_tools.read_source(tmp_path / "missing.iso", tmp_path / "x")
    assert guest_tools.plan(tree, None, "debian", None).empty


INIT_SCRIPT = """#!/bin/sh
### BEGIN INIT INFO
# Provides:          xe-linux-distribution
# Required-Start:    $remote_fs
# Required-Stop:     $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: Linux guest agent
### END INIT INFO
exec /usr/sbin/xe-daemon
"""


def tarball_dir(work: Path, init_script: bool) -> Path:
    """A tools folder whose Linux/ holds only the vendor's tarball (tar -C stage .: members ./lib/,
    ./usr/... as a plain build makes them), with the unit and, if asked, a SysV init script."""
    stage = work / "tgz"
    payload(stage)
    if init_script:
        (stage / "etc/init.d").mkdir(parents=True)
        (stage / "etc/init.d/xe-linux-distribution").write_text(INIT_SCRIPT)
        (stage / "etc/init.d/xe-linux-distribution").chmod(0o755)
    linux = work / "tools/Linux"
    linux.mkdir(parents=True)
    subprocess.run(["tar", "-czf", str(linux / f"xe-guest-utilities_{VERSION}_x86_64.tgz"), "-C", str(stage), "."],
                   check=True)
    return work / "tools"


def without_systemd(root: Path, os_release: str | None = None) -> None:
    """The guest as a SysV-init one: no systemd binary (an overlay whiteout), /sbin/init its own."""
    (root / "usr/lib/systemd/systemd").unlink()
    if os_release is not None:
        (root / "etc/os-release").unlink()
        (root / "etc/os-release").write_text(os_release)


def test_tarball_keeps_a_merged_usr_intact(debian_guest, tmp_path):
    """An Arch-like guest (tarball path) whose /lib, /bin and /sbin are links into /usr: GNU tar
    replaces a link with a directory when the archive has one of that name (./lib/), which leaves
    the guest without /lib/modules and without its init."""
    source = tarball_dir(tmp_path, init_script=False)
    (debian_guest / "etc/os-release").unlink()
    (debian_guest / "etc/os-release").write_text('ID=arch\nPRETTY_NAME="Arch Linux"\n')
    (package, step), said = install(debian_guest, source, "arch")
    assert package.kind == "tgz"
    for link in ("lib", "bin", "sbin", "lib64"):
        assert (debian_guest / link).is_symlink(), f"/{link} is no longer a link into /usr"
    assert (debian_guest / "usr/lib/systemd/system/xe-linux-distribution.service").is_file()
    assert (debian_guest / "usr/sbin/xe-daemon").is_file()
    assert (debian_guest / "etc/systemd/system/multi-user.target.wants/xe-linux-distribution.service").is_symlink()


def test_sysv_guest_of_no_known_family_gets_its_init_script_enabled(debian_guest, tmp_path):
    """No systemd, no chkconfig: the init script the tarball brings is enabled with the tool the
    guest has (here update-rc.d), not with chkconfig, which it lacks."""
    without_systemd(debian_guest, 'ID=slackware\nPRETTY_NAME="Slackware 15.0"\n')
    (package, step), said = install(debian_guest, tarball_dir(tmp_path, init_script=True), None)
    assert package.kind == "tgz"
    assert (debian_guest / "etc/init.d/xe-linux-distribution").is_file()
    assert glob.glob(str(debian_guest / "etc/rc2.d/S*xe-linux-distribution")), "\n".join(said)


def test_sysv_debian_guest_with_a_unit_only_package_is_installed_and_said(debian_guest, tools_iso):
    """A Debian without systemd and a package that ships only a systemd unit: the package is
    installed and the repair goes on, saying the agent is not started at boot; update-rc.d on a
    script that does not exist would fail the whole repair (and undo it)."""
    without_systemd(debian_guest)
    (package, step), said = install(debian_guest, tools_iso, "debian")
    assert package.kind == "deb"
    status = (debian_guest / "var/lib/dpkg/status").read_text()
    assert "Package: xe-guest-utilities\nStatus: install ok installed" in status
    out = "\n".join(said)
    assert ("The guest agent has no /etc/init.d/xe-linux-distribution and no systemd unit this guest can run: "
            "not started at boot") in out

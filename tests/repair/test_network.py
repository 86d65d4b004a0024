"""The network step on fixture guest trees: the exact file changes for each stack, the name the
guest will give the VM's NIC, what the plan says per old NIC, and a second run that changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.repair.apply import apply_plan
from agent.repair.network import SourceNic, VmNic, network, source_nics
from agent.repair.plan import StepPlan
from agent.repair.tree import GuestTree

OLD = "00:16:3e:aa:00:01"      # the source's first NIC
OLD2 = "00:16:3e:aa:00:02"     # its second
NEW = "aa:bb:cc:00:00:01"      # the VM's first vif, when the VM has new MACs
NEW2 = "aa:bb:cc:00:00:02"

DEBIAN_12 = {"/etc/os-release": "ID=debian\nVERSION_ID=12\n",
             "/usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-252.so": "",
             "/lib/systemd/systemd-udevd": ""}
UBUNTU_2204 = {"/etc/os-release": "ID=ubuntu\nID_LIKE=debian\nVERSION_ID=22.04\n",
               "/usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-249.so": "",
               "/lib/systemd/systemd-udevd": ""}
UBUNTU_2404 = {"/etc/os-release": "ID=ubuntu\nID_LIKE=debian\nVERSION_ID=24.04\n",
               "/usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-255.so": "",
               "/usr/lib/systemd/systemd-udevd": ""}
ROCKY_9 = {"/etc/os-release": 'ID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.3"\n',
           "/usr/lib64/systemd/libsystemd-shared-252.so": "", "/usr/lib/systemd/systemd-udevd": ""}


def make_tree(root: Path, *parts: dict[str, str]) -> GuestTree:
    for files in parts:
        for path, text in files.items():
            host = root / path.lstrip("/")
            host.parent.mkdir(parents=True, exist_ok=True)
            host.write_text(text)
    return GuestTree(root)


def family(tree: GuestTree) -> str:
    text = tree.read("/etc/os-release") or ""
    return "rhel" if "rhel" in text else "debian"


def plan(tree: GuestTree, sources, vms, by_hand=None) -> StepPlan:
    return network(tree, sources, vms, by_hand or {}, family(tree))


def changed(step: StepPlan) -> dict[str, str | None]:
    return {c.path: c.new for c in step.changes}


def second_run_is_empty(tree: GuestTree, sources, vms) -> bool:
    apply_plan(tree.root, [plan(tree, sources, vms)], lambda cmd: (0, ""), lambda line: None)
    return plan(tree, sources, vms).changes == []


NETPLAN_BY_MAC = ("network:\n  version: 2\n  ethernets:\n    lan:\n      match:\n"
                  f"        macaddress: {OLD}\n      set-name: eno1\n      addresses: [192.0.2.10/24]\n")


def test_netplan_by_mac_with_a_new_mac_matches_the_vms_nic(tmp_path):
    tree = make_tree(tmp_path, UBUNTU_2404, {"/etc/netplan/01-lan.yaml": NETPLAN_BY_MAC})
    sources, vms = [SourceNic("eno1", OLD)], [VmNic(NEW, 0, "enX0")]
    step = plan(tree, sources, vms)
    # netplan's set-name pins eno1 on the MAC it matches: the match moves, the name stays.
    assert changed(step) == {"/etc/netplan/01-lan.yaml": NETPLAN_BY_MAC.replace(OLD, NEW)}
    assert step.notes == [
        f"eno1 -> VM vif 0, new MAC {NEW} (was {OLD}), named eno1 by the guest: pinned by its MAC in "
        "the guest's configuration; comes up with 192.0.2.10/24 (/etc/netplan/01-lan.yaml)"]
    assert second_run_is_empty(tree, sources, vms)


def test_netplan_by_mac_with_the_kept_mac_is_left_alone(tmp_path):
    tree = make_tree(tmp_path, UBUNTU_2404, {"/etc/netplan/01-lan.yaml": NETPLAN_BY_MAC})
    step = plan(tree, [SourceNic("eno1", OLD)], [VmNic(OLD, 0, "enX0")])
    assert changed(step) == {}
    assert "same MAC, named eno1 by the guest" in step.notes[0]


def test_ifcfg_with_hwaddr_and_an_unchanged_name_gets_the_new_mac(tmp_path):
    ifcfg = f"DEVICE=eth0\nHWADDR={OLD.upper()}\nBOOTPROTO=none\nIPADDR=192.0.2.20\nPREFIX=24\nONBOOT=yes\n"
    tree = make_tree(tmp_path, ROCKY_9, {
        "/etc/default/grub": 'GRUB_CMDLINE_LINUX="crashkernel=auto net.ifnames=0 biosdevname=0"\n',
        "/etc/sysconfig/network-scripts/ifcfg-eth0": ifcfg})
    sources, vms = [SourceNic("eth0", OLD)], [VmNic(NEW, 0, "enX0")]
    step = plan(tree, sources, vms)
    assert changed(step) == {"/etc/sysconfig/network-scripts/ifcfg-eth0": ifcfg.replace(OLD.upper(), NEW.upper())}
    assert "named eth0 by the guest: net.ifnames=0 on the guest's kernel line" in step.notes[0]
    assert "192.0.2.20/24 (/etc/sysconfig/network-scripts/ifcfg-eth0)" in step.notes[0]
    assert second_run_is_empty(tree, sources, vms)


def test_networkmanager_keyfile_by_mac_on_rhel_pins_the_name(tmp_path):
    keyfile = ("[connection]\nid=ens192\ntype=ethernet\ninterface-name=ens192\n\n"
               f"[ethernet]\nmac-address={OLD.upper()}\ncloned-mac-address={OLD.upper()}\n\n"
               "[ipv4]\nmethod=manual\naddress1=192.0.2.30/24,192.0.2.1\n")
    tree = make_tree(tmp_path, ROCKY_9, {"/etc/NetworkManager/system-connections/ens192.nmconnection": keyfile})
    sources, vms = [SourceNic("ens192", OLD)], [VmNic(NEW, 0, "enX0")]
    step = plan(tree, sources, vms)
    # RHEL's systemd names by its own scheme: not guessed, ens192 is pinned on the VM NIC's MAC.
    # The MAC the keyfile *sets* (cloned-mac-address) is the administrator's and stays.
    assert changed(step) == {
        "/etc/NetworkManager/system-connections/ens192.nmconnection":
            keyfile.replace(f"mac-address={OLD.upper()}\ncloned", f"mac-address={NEW.upper()}\ncloned"),
        "/etc/udev/rules.d/70-persistent-net.rules":
            "# Added by xenp2v repair: the VM's NIC under the name the guest's configuration uses.\n"
            f'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{{address}}=="{NEW}", ATTR{{type}}=="1", '
            'NAME="ens192"\n'}
    assert "distribution's own naming scheme: pinned on MAC aa:bb:cc:00:00:01 by a udev rule" in step.notes[0]
    assert "192.0.2.30/24" in step.notes[0]
    assert second_run_is_empty(tree, sources, vms)


def test_networkd_by_mac_and_by_name(tmp_path):
    by_mac = f"[Match]\nMACAddress={OLD}\n\n[Network]\nAddress=192.0.2.40/24\n\n[Link]\nMACAddress={OLD}\n"
    by_name = "[Match]\nName=enp3s0\n\n[Network]\nDHCP=yes\n"
    tree = make_tree(tmp_path, DEBIAN_12, {"/etc/systemd/network/10-by-mac.network": by_mac,
                                           "/etc/systemd/network/20-by-name.network": by_name})
    sources, vms = [SourceNic("enp3s0", OLD)], [VmNic(NEW, 0, "enX0")]
    step = plan(tree, sources, vms)
    assert changed(step) == {
        # [Link] MACAddress= sets the MAC: the administrator's choice, kept.
        "/etc/systemd/network/10-by-mac.network":
            f"[Match]\nMACAddress={NEW}\n\n[Network]\nAddress=192.0.2.40/24\n\n[Link]\nMACAddress={OLD}\n",
        "/etc/systemd/network/20-by-name.network": "[Match]\nName=enX0\n\n[Network]\nDHCP=yes\n"}
    assert "named enX0 by the guest: a Xen vif under systemd naming scheme v252" in step.notes[0]
    assert second_run_is_empty(tree, sources, vms)


BOND = ("auto lo\niface lo inet loopback\n\nauto bond0\niface bond0 inet static\n    address 192.0.2.50/24\n"
        "    bond-slaves eno1 eno2\n    bond-mode active-backup\n")


def test_a_bond_of_two_nics_onto_one_vm_nic(tmp_path):
    tree = make_tree(tmp_path, DEBIAN_12, {"/etc/network/interfaces": BOND})
    sources, vms = [SourceNic("eno1", OLD), SourceNic("eno2", OLD2)], [VmNic(NEW, 0, "enX0")]
    step = plan(tree, sources, vms)
    assert changed(step) == {"/etc/network/interfaces": BOND.replace("eno1 eno2", "enX0 eno2")}
    assert step.notes[0].endswith("comes up with 192.0.2.50/24 (/etc/network/interfaces) on bond0")
    assert step.notes[1].startswith(f"eno2 [{OLD2}]: the VM has no NIC in its place")
    assert second_run_is_empty(tree, sources, vms)


def test_a_netplan_bond_of_two_nics_onto_two_vm_nics(tmp_path):
    text = ("network:\n  version: 2\n  ethernets:\n    eno1:\n      dhcp4: false\n    eno2:\n      dhcp4: false\n"
            "  bonds:\n    bond0:\n      interfaces: [eno1, eno2]\n      addresses: [192.0.2.60/24]\n")
    tree = make_tree(tmp_path, UBUNTU_2404, {"/etc/netplan/00-bond.yaml": text})
    sources = [SourceNic("eno1", OLD), SourceNic("eno2", OLD2)]
    vms = [VmNic(NEW2, 1, "enX1"), VmNic(NEW, 0, "enX0")]
    step = plan(tree, sources, vms)
    assert changed(step) == {"/etc/netplan/00-bond.yaml": text.replace("eno1", "enX0").replace("eno2", "enX1")}
    assert [n.split(":")[0] for n in step.notes] == [
        "eno1 -> VM vif 0, new MAC aa", "eno2 -> VM vif 1, new MAC aa"]
    assert all("192.0.2.60/24 (/etc/netplan/00-bond.yaml) on bond0" in n for n in step.notes)
    assert second_run_is_empty(tree, sources, vms)


def test_a_vlan_on_a_bridge(tmp_path):
    text = ("auto eno1\niface eno1 inet manual\n\nauto eno1.100\niface eno1.100 inet manual\n"
            "    vlan-raw-device eno1\n\nauto br100\niface br100 inet static\n    address 192.0.2.70/24\n"
            "    bridge_ports eno1.100\n")
    tree = make_tree(tmp_path, DEBIAN_12, {"/etc/network/interfaces": text})
    sources, vms = [SourceNic("eno1", OLD)], [VmNic(OLD, 0, "enX0")]
    step = plan(tree, sources, vms)
    assert changed(step) == {"/etc/network/interfaces": text.replace("eno1", "enX0")}
    assert "192.0.2.70/24 (/etc/network/interfaces) on br100 on enX0.100" in step.notes[0]
    assert second_run_is_empty(tree, sources, vms)


NETPLAN_DHCP = "network:\n  version: 2\n  ethernets:\n    ens3:\n      dhcp4: true\n"


@pytest.mark.parametrize("guest, name", [(UBUNTU_2204, "eth0"), (UBUNTU_2404, "enX0"), (DEBIAN_12, "enX0")])
def test_a_xen_vif_is_eth0_before_systemd_250_and_enx0_after(tmp_path, guest, name):
    tree = make_tree(tmp_path, guest, {"/etc/netplan/50-cloud-init.yaml": NETPLAN_DHCP})
    # The live ISO (a recent systemd) calls the vif enX0 whatever the guest will do.
    sources, vms = [SourceNic("ens3", OLD)], [VmNic(OLD, 0, "enX0")]
    step = plan(tree, sources, vms)
    assert changed(step) == {"/etc/netplan/50-cloud-init.yaml": NETPLAN_DHCP.replace("ens3", name)}
    assert f"named {name} by the guest" in step.notes[0]
    assert "comes up with DHCP (/etc/netplan/50-cloud-init.yaml)" in step.notes[0]
    assert second_run_is_empty(tree, sources, vms)


def test_net_ifnames_0_keeps_the_kernels_name(tmp_path):
    text = "auto ens3\niface ens3 inet dhcp\n"
    tree = make_tree(tmp_path, DEBIAN_12, {"/etc/network/interfaces": text,
                                           "/etc/default/grub": 'GRUB_CMDLINE_LINUX_DEFAULT="quiet net.ifnames=0"\n'})
    sources, vms = [SourceNic("ens3", OLD)], [VmNic(NEW, 0, "enX0")]
    step = plan(tree, sources, vms)
    assert changed(step) == {"/etc/network/interfaces": "auto eth0\niface eth0 inet dhcp\n"}
    assert second_run_is_empty(tree, sources, vms)


def test_a_config_by_an_alternative_name(tmp_path):
    # The primary name is the slot name ens3; the guest's config uses the path name and the MAC name.
    text = ("auto enp0s3\niface enp0s3 inet static\n    address 192.0.2.80/24\n    gateway 192.0.2.1\n"
            "auto enx00163eaa0001.20\niface enx00163eaa0001.20 inet dhcp\n")
    tree = make_tree(tmp_path, DEBIAN_12, {"/etc/network/interfaces": text})
    inventory = {"machine": {"nics": [{"name": "ens3", "mac": OLD.upper(), "altnames": ["enp0s3"],
                                       "udev_names": {"path": "enp0s3", "slot": "ens3", "mac": "enx00163eaa0001"}}]}}
    sources, vms = source_nics(inventory), [VmNic(NEW, 0, "enX0")]
    assert sources == [SourceNic("ens3", OLD, ("enp0s3", "enx00163eaa0001"))]
    step = plan(tree, sources, vms)
    assert changed(step) == {"/etc/network/interfaces": text.replace("enp0s3", "enX0").replace(
        "enx00163eaa0001", "enX0")}
    assert step.notes[0].startswith("ens3 (also enp0s3, enx00163eaa0001) -> VM vif 0")
    assert "192.0.2.80/24 (/etc/network/interfaces)" in step.notes[0]
    assert second_run_is_empty(tree, sources, vms)


def test_old_inventories_without_names_or_with_nics_at_the_top_still_read():
    assert source_nics({"nics": [{"name": "eth0", "mac": OLD}]}) == [SourceNic("eth0", OLD)]
    assert source_nics({"machine": {"nics": [{"name": "eth0", "mac": "not a mac"}]}}) == []


def test_persistent_net_rules_follow_the_vms_macs(tmp_path):
    rules = (f'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{{address}}=="{OLD}", NAME="eth0"\n'
             f'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{{address}}=="{OLD2}", NAME="eth1"\n')
    ifcfg = "DEVICE=eth0\nBOOTPROTO=dhcp\nONBOOT=yes\n"
    # RHEL 6: udev 147, no systemd; the rules file names the NICs.
    tree = make_tree(tmp_path, {"/etc/redhat-release": "CentOS release 6.10 (Final)\n", "/sbin/udevd": "",
                                "/etc/udev/rules.d/70-persistent-net.rules": rules,
                                "/etc/sysconfig/network-scripts/ifcfg-eth0": ifcfg})
    sources, vms = [SourceNic("eth0", OLD), SourceNic("eth1", OLD2)], [VmNic(NEW, 0, "enX0")]
    step = network(tree, sources, vms, {}, "rhel")
    # eth1's rule would hold its name for a NIC the VM does not have.
    assert changed(step) == {"/etc/udev/rules.d/70-persistent-net.rules": rules.splitlines(True)[0].replace(OLD, NEW)}
    assert "named eth0 by the guest: pinned by its MAC" in step.notes[0]

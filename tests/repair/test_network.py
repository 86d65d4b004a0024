"""The network step on fixture guest trees: the exact file changes for each stack, the name the
guest will give the VM's NIC, what the plan says per old NIC, and a second run that changes nothing."""

from __future__ import annotations

import os
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


def test_a_nic_named_by_hand_is_that_name_under_its_alternative_names_too(tmp_path):
    # --nic ens3=ens4 (the VM's emulated NIC, as the technician sees it): the config by the path
    # name follows, and no rule pins the old name over the technician's.
    text = "auto enp0s3\niface enp0s3 inet static\n    address 192.0.2.80/24\n"
    tree = make_tree(tmp_path, DEBIAN_12, {"/etc/network/interfaces": text})
    sources, vms = [SourceNic("ens3", OLD, ("enp0s3",))], [VmNic(NEW, None, "ens4")]
    step = plan(tree, sources, vms, {"ens3": "ens4"})
    assert changed(step) == {"/etc/network/interfaces": text.replace("enp0s3", "ens4")}
    assert step.notes == ["ens3 -> ens4 (given by hand)",
                          f"ens3 (also enp0s3) -> VM emulated NIC, new MAC {NEW} (was {OLD}), named ens4 by the "
                          "guest: given by hand (--nic); comes up with 192.0.2.80/24 (/etc/network/interfaces)"]
    apply_plan(tree.root, [step], lambda cmd: (0, ""), lambda line: None)
    assert plan(tree, sources, vms, {"ens3": "ens4"}).changes == []


RHEL_8 = {"/etc/os-release": 'ID="rhel"\nID_LIKE="fedora"\nVERSION_ID="8.9"\n',
          "/usr/lib64/systemd/libsystemd-shared-239.so": "", "/usr/lib/systemd/systemd-udevd": ""}


def test_rhel_gatewaydev_follows_the_nic(tmp_path):
    ifcfg = "DEVICE=ens192\nNAME=ens192\nBOOTPROTO=none\nIPADDR=192.0.2.90\nPREFIX=24\nONBOOT=yes\n"
    network_file = "NETWORKING=yes\nHOSTNAME=db01\nGATEWAY=192.0.2.1\nGATEWAYDEV=ens192\n"
    tree = make_tree(tmp_path, RHEL_8, {"/etc/sysconfig/network-scripts/ifcfg-ens192": ifcfg,
                                        "/etc/sysconfig/network": network_file})
    sources, vms = [SourceNic("ens192", OLD)], [VmNic(NEW, 0, "enX0")]
    step = plan(tree, sources, vms)
    # systemd 239 leaves a vif the kernel's eth0; the default route's device goes with it.
    assert changed(step) == {"/etc/sysconfig/network-scripts/ifcfg-ens192": None,
                             "/etc/sysconfig/network-scripts/ifcfg-eth0": ifcfg.replace("ens192", "eth0"),
                             "/etc/sysconfig/network": network_file.replace("GATEWAYDEV=ens192", "GATEWAYDEV=eth0")}
    assert "named eth0 by the guest" in step.notes[0]
    assert second_run_is_empty(tree, sources, vms)


def test_a_team_of_two_nics_in_ifcfg_and_teamd_onto_two_vm_nics(tmp_path):
    team = ("DEVICE=team0\nDEVICETYPE=Team\nTEAM_CONFIG='{\"runner\": {\"name\": \"activebackup\"}}'\n"
            "BOOTPROTO=none\nIPADDR=192.0.2.100\nPREFIX=24\nONBOOT=yes\n")
    port = "DEVICE={name}\nHWADDR={mac}\nDEVICETYPE=TeamPort\nTEAM_MASTER=team0\nONBOOT=yes\n"
    teamd = ('{\n  "device": "team0",\n  "runner": {"name": "activebackup"},\n'
             '  "ports": {"ens192": {"prio": 100}, "ens224": {"prio": 50}}\n}\n')
    d = "/etc/sysconfig/network-scripts"
    tree = make_tree(tmp_path, RHEL_8, {f"{d}/ifcfg-team0": team, "/etc/teamd/team0.conf": teamd,
                                        f"{d}/ifcfg-ens192": port.format(name="ens192", mac=OLD.upper()),
                                        f"{d}/ifcfg-ens224": port.format(name="ens224", mac=OLD2.upper())})
    sources = [SourceNic("ens192", OLD), SourceNic("ens224", OLD2)]
    vms = [VmNic(NEW, 0, "enX0"), VmNic(NEW2, 1, "enX1")]
    step = plan(tree, sources, vms)
    assert changed(step) == {
        f"{d}/ifcfg-ens192": None, f"{d}/ifcfg-eth0": port.format(name="eth0", mac=NEW.upper()),
        f"{d}/ifcfg-ens224": None, f"{d}/ifcfg-eth1": port.format(name="eth1", mac=NEW2.upper()),
        "/etc/teamd/team0.conf": teamd.replace("ens192", "eth0").replace("ens224", "eth1")}
    assert [n.split(" by the guest")[0] for n in step.notes] == [
        f"ens192 -> VM vif 0, new MAC {NEW} (was {OLD}), named eth0",
        f"ens224 -> VM vif 1, new MAC {NEW2} (was {OLD2}), named eth1"]
    assert all(n.endswith(f"comes up with 192.0.2.100/24 ({d}/ifcfg-team0) on team0") for n in step.notes)
    assert second_run_is_empty(tree, sources, vms)


def test_cloud_inits_network_config_follows_the_vms_nic(tmp_path):
    # Subiquity's install: netplan, and the same config for cloud-init, which renders it again
    # (old MAC and all) on a new instance's first boot; version 1 names a NIC by mac_address.
    v2 = (f"network:\n  ethernets:\n    ens3:\n      match:\n        macaddress: '{OLD}'\n"
          "      set-name: ens3\n      addresses: [192.0.2.110/24]\n  version: 2\n")
    v1 = (f"network:\n  version: 1\n  config:\n  - type: physical\n    name: ens4\n    mac_address: '{OLD2}'\n"
          f"  - mac_address: {OLD2}\n    type: physical\n    name: ens4\n"
          f"  - type: bond\n    name: bond0\n    bond_interfaces: [ens4]\n    mac_address: '{OLD2}'\n"
          "    subnets:\n    - type: dhcp\n")
    tree = make_tree(tmp_path, UBUNTU_2204, {"/etc/netplan/00-installer-config.yaml": v2,
                                             "/etc/cloud/cloud.cfg.d/50-curtin-networking.cfg": v2,
                                             "/etc/cloud/cloud.cfg.d/60-second.cfg": v1})
    sources = [SourceNic("ens3", OLD), SourceNic("ens4", OLD2)]
    vms = [VmNic(NEW, 0, "enX0"), VmNic(NEW2, 1, "enX1")]
    step = plan(tree, sources, vms)
    # ens3 is pinned by its MAC (set-name): its match moves; ens4 is a vif under systemd 249: eth1.
    assert changed(step) == {
        "/etc/netplan/00-installer-config.yaml": v2.replace(OLD, NEW),
        "/etc/cloud/cloud.cfg.d/50-curtin-networking.cfg": v2.replace(OLD, NEW),
        # The bond's mac_address sets its MAC: the administrator's, kept.
        "/etc/cloud/cloud.cfg.d/60-second.cfg": v1.replace(OLD2, NEW2, 2).replace("ens4", "eth1")}
    assert "named ens3 by the guest: pinned by its MAC" in step.notes[0]
    assert "192.0.2.110/24 (/etc/cloud/cloud.cfg.d/50-curtin-networking.cfg)" in step.notes[0]
    assert "named eth1 by the guest" in step.notes[1]
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


def test_a_udev_rule_of_its_own_that_pins_the_name_by_mac_follows_the_new_mac(tmp_path):
    # Not 70-persistent-net.rules: an administrator's own rule naming the NIC by its MAC (upper case).
    rule = f'SUBSYSTEM=="net", ACTION=="add", ATTR{{address}}=="{OLD.upper()}", NAME="lan0"\n'
    netplan = "network:\n  version: 2\n  ethernets:\n    lan0:\n      addresses: [192.0.2.9/24]\n"
    tree = make_tree(tmp_path, UBUNTU_2404, {"/etc/udev/rules.d/60-lan.rules": rule,
                                             "/etc/netplan/01-lan.yaml": netplan})
    sources, vms = [SourceNic("lan0", OLD)], [VmNic(NEW, 0, "enX0")]
    step = plan(tree, sources, vms)
    # The rule keeps naming the VM's NIC lan0 only once it matches the VM NIC's MAC.
    assert changed(step) == {"/etc/udev/rules.d/60-lan.rules": rule.replace(OLD.upper(), NEW.upper())}
    assert "named lan0 by the guest: pinned by its MAC" in step.notes[0]
    assert second_run_is_empty(tree, sources, vms)


def test_net_ifnames_0_set_in_grub_d_is_on_the_kernel_line(tmp_path):
    # grub-mkconfig (which the boot step runs) reads /etc/default/grub.d/*.cfg after /etc/default/grub.
    netplan = "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n"
    tree = make_tree(tmp_path, UBUNTU_2404, {
        "/etc/default/grub": 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n',
        "/etc/default/grub.d/50-cloudimg-settings.cfg":
            'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT console=ttyS0 net.ifnames=0"\n',
        "/etc/netplan/01-lan.yaml": netplan})
    step = plan(tree, [SourceNic("eth0", OLD)], [VmNic(NEW, 0, "enX0")])
    assert changed(step) == {}
    assert "named eth0 by the guest: net.ifnames=0 on the guest's kernel line" in step.notes[0]


def test_a_later_grub_d_file_that_clears_the_kernel_line_wins(tmp_path):
    netplan = "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n"
    tree = make_tree(tmp_path, UBUNTU_2404, {
        "/etc/default/grub": 'GRUB_CMDLINE_LINUX="net.ifnames=0"\n',
        "/etc/default/grub.d/90-predictable.cfg": 'GRUB_CMDLINE_LINUX=""\n',
        "/etc/netplan/01-lan.yaml": netplan})
    step = plan(tree, [SourceNic("eth0", OLD)], [VmNic(NEW, 0, "enX0")])
    assert changed(step) == {"/etc/netplan/01-lan.yaml": netplan.replace("eth0", "enX0")}


def test_what_comes_up_on_a_bond_is_the_bonds_own_not_every_file_without_a_mac(tmp_path):
    # The bond's files carry no MAC; a file of another NIC without one is not the bond's.
    tree = make_tree(tmp_path, ROCKY_9, {
        "/etc/default/grub": 'GRUB_CMDLINE_LINUX="net.ifnames=0"\n',
        "/etc/sysconfig/network-scripts/ifcfg-eth0": f"DEVICE=eth0\nHWADDR={OLD}\nMASTER=bond0\nSLAVE=yes\n",
        "/etc/sysconfig/network-scripts/ifcfg-bond0": "DEVICE=bond0\nBOOTPROTO=none\nIPADDR=192.0.2.7\nPREFIX=24\n",
        "/etc/sysconfig/network-scripts/ifcfg-eth1": "DEVICE=eth1\nBOOTPROTO=dhcp\n",
        "/etc/netplan/01-other.yaml": "network:\n  version: 2\n  ethernets:\n    eth9:\n      dhcp4: true\n"})
    step = plan(tree, [SourceNic("eth0", OLD)], [VmNic(NEW, 0, "enX0")])
    assert step.notes[0].endswith(
        "comes up with 192.0.2.7/24 (/etc/sysconfig/network-scripts/ifcfg-bond0) on bond0")


def test_a_networkmanager_profile_that_shuns_a_nic_by_mac_shuns_the_vms_nic(tmp_path):
    keyfile = (f"[connection]\nid=any\ntype=ethernet\n\n[ethernet]\nmac-address-blacklist={OLD2.upper()};\n\n"
               "[ipv4]\nmethod=auto\n")
    tree = make_tree(tmp_path, DEBIAN_12, {"/etc/NetworkManager/system-connections/any.nmconnection": keyfile})
    sources = [SourceNic("eno1", OLD), SourceNic("eno2", OLD2)]
    vms = [VmNic(NEW, 0, "enX0"), VmNic(NEW2, 1, "enX1")]
    step = plan(tree, sources, vms)
    assert changed(step) == {"/etc/NetworkManager/system-connections/any.nmconnection":
                             keyfile.replace(OLD2.upper(), NEW2.upper())}
    assert second_run_is_empty(tree, sources, vms)


def test_a_name_pattern_the_guests_name_no_longer_fits_is_a_warning(tmp_path):
    # Ubuntu 22.04 (systemd 249) calls a Xen vif eth0: `en*` matched the source's enp3s0, not eth0.
    netplan = "network:\n  version: 2\n  ethernets:\n    all:\n      match:\n        name: en*\n      dhcp4: true\n"
    networkd = "[Match]\nName=en*\n\n[Network]\nDHCP=yes\n"
    tree = make_tree(tmp_path, UBUNTU_2204, {"/etc/netplan/01-all.yaml": netplan,
                                             "/etc/systemd/network/20-all.network": networkd})
    step = plan(tree, [SourceNic("enp3s0", OLD)], [VmNic(NEW, 0, "enX0")])
    assert changed(step) == {}
    assert step.warnings == [
        "enp3s0: /etc/netplan/01-all.yaml matches NICs by the pattern en*, which fitted enp3s0 but not eth0, "
        "the name the guest gives the VM's NIC: that setting will not apply; widen the pattern or name the NIC.",
        "enp3s0: /etc/systemd/network/20-all.network matches NICs by the pattern en*, which fitted enp3s0 but not "
        "eth0, the name the guest gives the VM's NIC: that setting will not apply; widen the pattern or name the NIC."]


def test_a_vm_nic_no_source_nic_had_is_in_the_plan(tmp_path):
    tree = make_tree(tmp_path, DEBIAN_12, {"/etc/network/interfaces": "auto eno1\niface eno1 inet dhcp\n"})
    step = plan(tree, [SourceNic("eno1", OLD)], [VmNic(NEW, 0, "enX0"), VmNic(NEW2, 1, "enX1")])
    assert step.notes[-1] == (f"VM vif 1 [{NEW2}]: no NIC of the source in its place; no settings name it, "
                              "so it comes up only where the guest configures new NICs by itself (DHCP on any NIC).")


def test_the_vms_emulated_twin_of_a_vif_is_not_another_nic(tmp_path):
    # An HVM VM not yet unplugged (xen_emul_unplug=never, or a kernel without the unplug) shows
    # the vif's MAC twice: once on the emulated NIC, once on the vif. The vif is the VM's NIC.
    from agent.repair.runner import local_nics
    devices = {"enX0": "devices/vif-0", "ens4": "devices/pci0000:00/0000:00:04.0", "lo": None}
    for name, device in devices.items():
        entry = tmp_path / "class/net" / name
        entry.mkdir(parents=True)
        (entry / "address").write_text((NEW if device else "00:00:00:00:00:00") + "\n")
        if device:
            (tmp_path / device).mkdir(parents=True)
            (entry / "device").symlink_to(tmp_path / device)
    assert local_nics(tmp_path) == [VmNic(NEW, 0, "enX0")]


def test_firewall_rules_bound_to_the_old_name_follow_it(tmp_path):
    # A DROP policy that lets SSH in on eno1 only would shut the technician out of the VM's enX0.
    iptables = ("*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\n"
                "-A INPUT -i eno1 -p tcp --dport 22 -j ACCEPT\nCOMMIT\n")
    nft = 'table inet filter {\n  chain input {\n    type filter hook input priority 0; policy drop;\n' \
          '    iifname "eno1" tcp dport 22 accept\n  }\n}\n'
    zone = '<?xml version="1.0" encoding="utf-8"?>\n<zone>\n  <short>Internal</short>\n' \
           '  <interface name="eno1"/>\n  <service name="ssh"/>\n</zone>\n'
    tree = make_tree(tmp_path, DEBIAN_12, {"/etc/iptables/rules.v4": iptables, "/etc/sysconfig/iptables": iptables,
                                           "/etc/nftables.conf": nft, "/etc/firewalld/zones/internal.xml": zone,
                                           "/etc/ufw/user.rules": iptables,
                                           "/etc/network/interfaces": "auto eno1\niface eno1 inet dhcp\n"})
    sources, vms = [SourceNic("eno1", OLD)], [VmNic(NEW, 0, "enX0")]
    step = plan(tree, sources, vms)
    assert changed(step) == {"/etc/iptables/rules.v4": iptables.replace("eno1", "enX0"),
                             "/etc/sysconfig/iptables": iptables.replace("eno1", "enX0"),
                             "/etc/nftables.conf": nft.replace("eno1", "enX0"),
                             "/etc/firewalld/zones/internal.xml": zone.replace("eno1", "enX0"),
                             "/etc/ufw/user.rules": iptables.replace("eno1", "enX0"),
                             "/etc/network/interfaces": "auto enX0\niface enX0 inet dhcp\n"}
    assert second_run_is_empty(tree, sources, vms)


def test_a_renamed_ifcfg_keeps_its_mode_and_owner(tmp_path):
    ifcfg = "DEVICE=ens192\nNAME=ens192\nBOOTPROTO=none\nIPADDR=192.0.2.90\nPREFIX=24\nONBOOT=yes\n"
    tree = make_tree(tmp_path, RHEL_8, {"/etc/sysconfig/network-scripts/ifcfg-ens192": ifcfg})
    old = tmp_path / "etc/sysconfig/network-scripts/ifcfg-ens192"
    os.chmod(old, 0o600)
    os.chown(old, 0, 42)
    sources, vms = [SourceNic("ens192", OLD)], [VmNic(NEW, 0, "enX0")]
    step = plan(tree, sources, vms)
    apply_plan(tree.root, [step], lambda cmd: (0, ""), lambda line: None)
    new = os.stat(tmp_path / "etc/sysconfig/network-scripts/ifcfg-eth0")
    assert (new.st_mode & 0o7777, new.st_uid, new.st_gid) == (0o600, 0, 42)
    assert not old.exists()

"""The network step: every setting bound to an old NIC's name or MAC, made to fit the VM's NIC.

Each of the source's NICs is paired with a NIC of the VM (same MAC; else the VIF made in its
place, VIF N for the source's Nth NIC; else the only one with the only one). The name the NIC will
have is the one the *guest* gives it on the VM, not the one this live system sees:

- a pin the guest already has by MAC (a udev rule's NAME=, a .link file's Name=, netplan's
  set-name) names it, once its MAC is the VM NIC's;
- net.ifnames=0 on the kernel line, or a guest without predictable names, leaves the kernel's
  ethN (N in the order the NICs appear);
- a Xen vif is enX<vif number> under systemd's naming scheme v250 and later (net_id's
  NAMING_XEN_VIF), and keeps the kernel's ethN before (Ubuntu 22.04's 249, RHEL 7/8, SLES 15 SP4);
- anything else (an emulated NIC, a distribution's own naming scheme, .link files or rules that
  match other than by MAC) is not guessed: the step pins the source's name on the VM NIC's MAC with
  a udev rule, which every udev since 2008 honours, and says so.

Then every name of the old NIC (primary, the kernel's alternative names, udev's path, slot and MAC
names) is renamed to that name in every stack's files, and every MAC that selects the NIC is made
the VM NIC's. MACs a configuration *sets* (cloned-mac-address=, MACADDR=, LLADDR=, a bond's
macaddress) are the administrator's choice and stay.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from agent.repair.plan import FileChange, StepPlan
from agent.repair.tree import GuestTree

CLOUD_CONFIG = "/etc/cloud/cloud.cfg.d/*.cfg"
NETWORK_FILES = ("/etc/network/interfaces", "/etc/network/interfaces.d/*", "/etc/netplan/*.yaml",
                 "/etc/NetworkManager/system-connections/*", "/etc/sysconfig/network-scripts/ifcfg-*",
                 "/etc/sysconfig/network-scripts/route-*", "/etc/sysconfig/network/ifcfg-*",
                 "/etc/sysconfig/network/ifroute-*", "/etc/systemd/network/*.network",
                 "/etc/systemd/network/*.netdev", "/etc/systemd/network/*.link",
                 # RHEL's GATEWAYDEV= (a file there; a directory on SUSE), SUSE's routes (a column
                 # names the NIC), teamd's own configurations (ports by name), cloud-init's
                 # network config, which it renders again on a new instance's first boot.
                 "/etc/sysconfig/network", "/etc/sysconfig/network/routes", "/etc/teamd/*.conf",
                 CLOUD_CONFIG,
                 # Firewalls that let traffic in by interface name (iptables' and ufw's -i, nftables'
                 # iifname, firewalld's zone bindings): under a DROP policy the old name shuts the VM off.
                 "/etc/iptables/rules.v4", "/etc/iptables/rules.v6", "/etc/sysconfig/iptables",
                 "/etc/sysconfig/ip6tables", "/etc/nftables.conf", "/etc/nftables.d/*", "/etc/nftables/*.nft",
                 "/etc/firewalld/zones/*.xml", "/etc/ufw/user.rules", "/etc/ufw/user6.rules")
PERSISTENT_NET = "/etc/udev/rules.d/70-persistent-net.rules"
PIN_MARK = "# Added by xenp2v repair: the VM's NIC under the name the guest's configuration uses."
# First systemd whose net_id names a Xen vif (enX<N>): naming scheme v250.
XEN_VIF_SCHEME = 250
_MAC = r"[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}"
_KERNEL_NAME = re.compile(r"^eth\d+$")


@dataclass(frozen=True)
class SourceNic:
    """A NIC of the source machine, as the capture's inventory lists it."""

    name: str                             # its primary name on the source (as the live ISO saw it)
    mac: str                              # lower case aa:bb:cc:dd:ee:ff
    names: tuple[str, ...] = ()           # every other name: kernel altnames, udev path/slot/MAC names
    addresses: tuple[str, ...] = ()       # what it had while the live ISO ran (rarely the guest's)


@dataclass(frozen=True)
class VmNic:
    """A NIC of the VM, as the live system running in the VM sees it (or as provisioning made it)."""

    mac: str                              # lower case
    vif: int | None = None                # Xen vif number (vif-N); None for an emulated NIC
    live_name: str | None = None          # what this live system calls it


@dataclass(frozen=True)
class Naming:
    """How the guest names NICs: what its udev is and what its kernel line says."""

    systemd: int | None                   # version of the guest's systemd-udevd; None: none found
    udev: bool                            # it has udev at all (old udev without systemd counts)
    kernel_names: bool                    # net.ifnames=0: the kernel's ethN stay
    scheme: int | None                    # net.naming-scheme=vNNN on the kernel line
    distro_scheme: bool                   # RHEL's systemd names by its own rhel-N.M schemes
    pins: dict[str, str] = field(default_factory=dict)   # MAC → name the guest pins on it
    other_rules: tuple[str, ...] = ()     # .link files / rules that name NICs other than by MAC
    systemd_udevd: bool = False           # it has systemd's udevd (whatever its version)


@dataclass(frozen=True)
class Pairing:
    """One source NIC, the VM NIC in its place (None: the VM has none for it), the guest's name."""

    source: SourceNic
    vm: VmNic | None
    name: str | None = None
    why: str = ""
    pinned: bool = False                  # this step writes the pin


# --- what the guest is ---------------------------------------------------------------------------

def _systemd_version(tree: GuestTree) -> int | None:
    for pattern in ("/usr/lib/systemd/libsystemd-shared-*.so", "/lib/systemd/libsystemd-shared-*.so",
                    "/usr/lib/*/systemd/libsystemd-shared-*.so", "/usr/lib64/systemd/libsystemd-shared-*.so"):
        for path in tree.glob(pattern):
            m = re.search(r"libsystemd-shared-(\d+)", path)
            if m:
                return int(m[1])
    status = tree.read("/var/lib/dpkg/status") or ""
    m = re.search(r"(?ms)^Package: (?:systemd|udev)\n(?:(?!\n\n).)*?^Status: install ok installed\n"
                  r"(?:(?!\n\n).)*?^Version: (\d+)", status)
    return int(m[1]) if m else None


def kernel_arguments(tree: GuestTree) -> list[str]:
    """Every argument the guest's boot configuration gives its kernel (all entries together)."""
    # grub-mkconfig (which the boot step runs) sources /etc/default/grub, then grub.d/*.cfg in
    # order: a later assignment replaces an earlier one, and may extend it ("$GRUB_CMDLINE_LINUX …").
    grub = {"GRUB_CMDLINE_LINUX": "", "GRUB_CMDLINE_LINUX_DEFAULT": ""}
    for path in ("/etc/default/grub", *tree.glob("/etc/default/grub.d/*.cfg")):
        for m in re.finditer(r"(?m)^\s*(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)\s*=\s*([\"']?)(.*?)\2\s*$",
                             tree.read(path) or ""):
            grub[m[1]] = m[3] if m[2] == "'" else \
                re.sub(r"\$\{?(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)\b\}?", lambda v: grub[v[1]], m[3])
    words = grub["GRUB_CMDLINE_LINUX"].split() + grub["GRUB_CMDLINE_LINUX_DEFAULT"].split()
    for path in ("/etc/kernel/cmdline", *tree.glob("/boot/loader/entries/*.conf")):
        for line in (tree.read(path) or "").splitlines():
            words += line.split()[1:] if line.startswith("options") else \
                (line.split() if path == "/etc/kernel/cmdline" else [])
    for path in ("/boot/grub/menu.lst", "/boot/grub/grub.conf"):
        for line in (tree.read(path) or "").splitlines():
            if line.strip().startswith("kernel"):
                words += line.split()[2:]
    return words


def _ini_sections(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of an INI-style file (systemd units, NetworkManager keyfiles)."""
    out, section = [], ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1]
        elif "=" in s and not s.startswith(("#", ";")):
            key, _, value = s.partition("=")
            out.append((section, key.strip(), value.strip()))
    return out


def _rule_pins(text: str) -> tuple[dict[str, str], list[str]]:
    """MAC → NAME of udev rules that name a NIC by its MAC; the other naming rules' lines."""
    pins, others = {}, []
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not re.search(r'\bNAME\s*:?=\s*"', line):
            continue
        mac = re.search(rf'ATTRS?\{{address\}}\s*==\s*"({_MAC})"', line)
        name = re.search(r'\bNAME\s*:?=\s*"([^"$%]+)"', line)
        if mac and name:
            pins[mac[1].lower().replace("-", ":")] = name[1]
        else:
            others.append(line.strip())
    return pins, others


def _netplan_pins(text: str) -> dict[str, str]:
    """MAC → set-name of netplan entries that match by macaddress (netplan writes a .link of it)."""
    pins = {}
    for block in re.split(r"(?m)^(?=\s{2,}\S[^:]*:\s*$)", text):
        mac = re.search(rf"(?m)^\s+macaddress:\s*[\"']?({_MAC})", block)
        name = re.search(r"(?m)^\s+set-name:\s*[\"']?([\w.-]+)", block)
        if mac and name and re.search(r"(?m)^\s+match:\s*$", block):
            pins[mac[1].lower()] = name[1]
    return pins


def guest_naming(tree: GuestTree, family: str | None) -> Naming:
    args = kernel_arguments(tree)
    scheme = next((int(m[1]) for a in args if (m := re.fullmatch(r"net\.naming[-_]scheme=v(\d+)", a))), None)
    version = _systemd_version(tree)
    systemd_udevd = any(tree.exists(p) for p in ("/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd"))
    udevd = systemd_udevd or any(tree.exists(p) for p in ("/sbin/udevd", "/usr/sbin/udevd", "/sbin/udevadm"))
    pins: dict[str, str] = {}
    others: list[str] = []
    for path in tree.glob("/etc/udev/rules.d/*.rules"):
        found, rest = _rule_pins(tree.read(path) or "")
        pins.update(found)
        others += [f"{path}: {line}" for line in rest]
    for path in tree.glob("/etc/systemd/network/*.link"):
        entries = _ini_sections(tree.read(path) or "")
        mac = next((v for s, k, v in entries if s == "Match" and k in ("MACAddress", "PermanentMACAddress")), None)
        name = next((v for s, k, v in entries if s == "Link" and k == "Name"), None)
        if mac and name and re.fullmatch(_MAC, mac):
            pins.setdefault(mac.lower().replace("-", ":"), name)
        elif name or any(k == "NamePolicy" for s, k, v in entries):
            others.append(f"{path} names NICs other than by MAC")
    # cloud-init's version 2 network config is netplan's, and pins the same way.
    for path in (*tree.glob("/etc/netplan/*.yaml"), *tree.glob(CLOUD_CONFIG)):
        for mac, name in _netplan_pins(tree.read(path) or "").items():
            pins.setdefault(mac, name)
    return Naming(systemd=version, udev=udevd or version is not None, systemd_udevd=systemd_udevd,
                  kernel_names="net.ifnames=0" in args, scheme=scheme,
                  distro_scheme=family == "rhel", pins=pins, other_rules=tuple(others))


def source_nics(inventory: dict) -> list[SourceNic]:
    """The source's NICs from a job's inventory ("machine" → "nics"; older inventories: the top),
    with every name the probe recorded for each (older inventories have only the primary)."""
    listed = (inventory.get("machine") or {}).get("nics") or inventory.get("nics") or []
    out = []
    for nic in listed:
        mac = str(nic.get("mac") or nic.get("address") or "").lower().replace("-", ":")
        if not nic.get("name") or not re.fullmatch(_MAC, mac):
            continue
        others = [*(nic.get("altnames") or []), *(nic.get("udev_names") or {}).values()]
        out.append(SourceNic(nic["name"], mac, tuple(dict.fromkeys(n for n in others if n and n != nic["name"])),
                             tuple(nic.get("addresses") or ())))
    return out


# --- pairing and naming --------------------------------------------------------------------------

def pair(sources: list[SourceNic], vms: list[VmNic]) -> list[Pairing]:
    """Each source NIC with the VM NIC in its place: same MAC, else the VIF provisioning made for
    it (VIF N for the source's Nth NIC), else the only one with the only one; None when the VM has
    fewer NICs."""
    by_mac = {v.mac: v for v in vms}
    taken = {s.mac for s in sources if s.mac in by_mac}
    free = sorted((v for v in vms if v.mac not in taken), key=lambda v: (v.vif is None, v.vif or 0, v.mac))
    out = []
    for i, source in enumerate(sources):
        vm = by_mac.get(source.mac)
        if vm is None:
            vm = next((v for v in free if v.vif == i), None)
            if vm is None and len(sources) == 1 and len(free) == 1:
                vm = free[0]
            if vm is not None:
                free.remove(vm)
        out.append(Pairing(source, vm))
    return out


def _order(vm: VmNic, vms: list[VmNic]) -> int:
    """Where the NIC comes in the kernel's ethN count: netfront probes the vifs in order."""
    ranked = sorted(vms, key=lambda v: (v.vif is None, v.vif or 0, v.mac))
    return ranked.index(vm)


def guest_name(vm: VmNic, source: SourceNic, vms: list[VmNic], naming: Naming) -> tuple[str | None, str]:
    """(the name the guest will give the VM NIC, why); None when it cannot be told for sure."""
    pinned = naming.pins.get(vm.mac) or naming.pins.get(source.mac)
    if pinned:
        return pinned, "pinned by its MAC in the guest's configuration"
    eth = f"eth{_order(vm, vms)}"
    alone = "" if len(vms) == 1 else " (the kernel numbers NICs in the order they appear)"
    if naming.kernel_names:
        return eth, "net.ifnames=0 on the guest's kernel line: the kernel's name" + alone
    if not naming.udev:
        return eth, "the guest has no udev to rename NICs: the kernel's name" + alone
    if naming.other_rules:
        return None, "the guest's own naming rules may apply (" + "; ".join(naming.other_rules[:2]) + ")"
    if vm.vif is None:
        return None, "an emulated NIC, whose name depends on its PCI slot"
    if naming.systemd is None and naming.systemd_udevd:
        return None, "the guest's systemd version is unknown"
    if naming.systemd is None:
        return eth, "the guest's udev predates predictable names: the kernel's name" + alone
    scheme = naming.scheme or naming.systemd or 0
    if naming.distro_scheme and naming.scheme is None and scheme >= XEN_VIF_SCHEME:
        return None, f"systemd {naming.systemd} with the distribution's own naming scheme"
    if scheme >= XEN_VIF_SCHEME:
        return f"enX{vm.vif}", f"a Xen vif under systemd naming scheme v{scheme} (v250 and later: enX<vif>)"
    return eth, f"a Xen vif under systemd {scheme} (before v250 udev leaves it the kernel's name)" + alone


def decide(sources: list[SourceNic], vms: list[VmNic], naming: Naming) -> list[Pairing]:
    """Every source NIC paired and named; a name that cannot be told is the source's own, pinned."""
    out = []
    for p in pair(sources, vms):
        if p.vm is None:
            out.append(Pairing(p.source, None, None, "the VM has no NIC in its place"))
            continue
        name, why = guest_name(p.vm, p.source, vms, naming)
        if name is None:
            out.append(Pairing(p.source, p.vm, p.source.name, f"{why}: pinned on MAC {p.vm.mac} by a udev rule",
                               pinned=True))
        else:
            out.append(Pairing(p.source, p.vm, name, why))
    return out


# --- rewriting -----------------------------------------------------------------------------------

def rename_interfaces(text: str, nics: dict[str, str]) -> str:
    """Every whole-word use of an old interface name (also as `eth0:1`, `eth0.100`) renamed.

    One pass, so a chain (eth0→eth1, eth1→eth2) cannot rename twice.
    """
    if not nics:
        return text
    names = "|".join(re.escape(n) for n in sorted(nics, key=len, reverse=True))
    return re.sub(rf"(?<![\w-])({names})(?![\w-])", lambda m: nics[m[1]], text)


def _same_form(new: str, old: str) -> str:
    """`new` written as `old` is: upper or lower case, `:` or `-` between bytes."""
    out = new.upper() if old.isupper() else new
    return out.replace(":", "-") if "-" in old else out


def _swap_macs(line: str, macs: dict[str, str]) -> str:
    return re.sub(_MAC, lambda m: _same_form(macs.get(m[0].lower().replace("-", ":"), m[0].lower()), m[0])
                  if m[0].lower().replace("-", ":") in macs else m[0], line)


def _list_item_types(text: str) -> list[str]:
    """For each line of a YAML text: the `type:` of the list item whose own key it is ("" if none),
    e.g. "physical" for the lines of `- type: physical` / `  mac_address: …`, in any key order."""
    lines = text.splitlines()
    item_of: list[int | None] = []          # the line where each line's item starts
    open_items: list[tuple[int, int]] = []  # (dash's indent, start line), innermost last
    for n, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        body = line.strip()
        if body.startswith("- "):
            while open_items and open_items[-1][0] >= indent:
                open_items.pop()
            open_items.append((indent, n))
            item_of.append(n)
            continue
        while body and open_items and open_items[-1][0] >= indent:
            open_items.pop()
        # A key of the item itself sits two columns right of its dash.
        item_of.append(open_items[-1][1] if open_items and body and indent == open_items[-1][0] + 2 else None)
    types: dict[int, str] = {}
    for n, start in enumerate(item_of):
        m = re.match(r"\s*(?:-\s+)?type:\s*[\"']?([\w-]+)", lines[n])
        if start is not None and m:
            types[start] = m[1]
    return [types.get(start, "") if start is not None else "" for start in item_of] + [""]


def rebind_macs(path: str, text: str, macs: dict[str, str]) -> str:
    """The MACs that *select* a NIC, old → new; MACs that set one are left as they are."""
    if not macs:
        return text
    out, section, match_indent = [], "", None
    v1_types = _list_item_types(text)
    for n, line in enumerate(text.splitlines(keepends=True)):
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1]
        key = re.split(r"[=:\s]", s.lstrip("- "), maxsplit=1)[0] if s else ""
        if path.endswith((".yaml", ".cfg")):
            indent = len(line) - len(line.lstrip())
            if match_indent is not None and s and indent <= match_indent:
                match_indent = None
            if key == "match":
                match_indent = indent
            # cloud-init's version 1 selects a physical NIC by its mac_address (a bond's sets one).
            select = key == "macaddress" and match_indent is not None or \
                key == "mac_address" and v1_types[n] == "physical"
        elif path.endswith((".network", ".link", ".netdev")):
            select = section == "Match" and key in ("MACAddress", "PermanentMACAddress")
        elif "/NetworkManager/" in path:
            # A profile's deny list (mac-address-blacklist, -denylist since 1.48) keeps it off a NIC.
            select = section in ("ethernet", "802-3-ethernet") and \
                key in ("mac-address", "mac-address-blacklist", "mac-address-denylist")
        elif "/ifcfg-" in path:
            select = key == "HWADDR"
        elif path.endswith(".rules"):
            select = "address" in line
        else:
            select = False   # ifupdown's `hwaddress` sets the MAC
        out.append(_swap_macs(line, macs) if select else line)
    return "".join(out)


def _pin_rule(mac: str, name: str) -> str:
    # DRIVERS=="?*" keeps VLANs and bonds, which share the MAC but have no driver, out of it.
    return (f'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{{address}}=="{mac}", '
            f'ATTR{{type}}=="1", NAME="{name}"\n')


def persistent_net(text: str | None, macs: dict[str, str], dropped: set[str], pins: dict[str, str]) -> str | None:
    """70-persistent-net.rules with its MACs moved to the VM's NICs, the rules of NICs the VM does
    not have removed (they would hold their names), and this step's pins added."""
    lines = [] if text is None else text.splitlines(keepends=True)
    kept = []
    for line in lines:
        m = re.search(rf'ATTRS?\{{address\}}\s*==\s*"({_MAC})"', line)
        if m and m[1].lower() in dropped:
            continue
        kept.append(_swap_macs(line, macs) if m else line)
    body = "".join(kept)
    missing = [(mac, name) for mac, name in pins.items() if f'"{mac}"' not in body.lower()]
    if missing:
        if body and not body.endswith("\n"):
            body += "\n"
        if PIN_MARK not in body:
            body += PIN_MARK + "\n"
        body += "".join(_pin_rule(mac, name) for mac, name in missing)
    if text is None and not body:
        return None
    return body


# --- what comes up -------------------------------------------------------------------------------

def _addresses_in(path: str, text: str, name: str, mac: str) -> tuple[list[str], list[str]]:
    """(addresses or "DHCP" this file gives `name`, the interfaces it hands `name` to: bond, bridge)."""
    found, over = [], []
    if "/ifcfg-" in path:
        fields = dict(re.findall(r"(?m)^\s*(\w+)\s*=\s*[\"']?([^\"'\n]*)", text))
        if path.rsplit("ifcfg-", 1)[1] != name and fields.get("DEVICE") != name and \
                not (mac and fields.get("HWADDR", "").lower() == mac):
            return [], []
        if fields.get("MASTER") or fields.get("BRIDGE") or fields.get("TEAM_MASTER"):
            over.append(fields.get("MASTER") or fields.get("BRIDGE") or fields["TEAM_MASTER"])
        if fields.get("BOOTPROTO", "").lower() in ("dhcp", "dhcp4", "dhcp6", "bootp"):
            found.append("DHCP")
        found += [v + (f"/{fields[k.replace('IPADDR', 'PREFIX')]}" if k.replace("IPADDR", "PREFIX") in fields else "")
                  for k, v in fields.items() if k.startswith("IPADDR") and v]
    elif "/NetworkManager/" in path:
        entries = _ini_sections(text)
        get = {(s, k): v for s, k, v in entries}
        if get.get(("connection", "interface-name")) != name and \
                not (mac and get.get(("ethernet", "mac-address"), "").lower() == mac):
            return [], []
        master = get.get(("connection", "master")) or get.get(("connection", "controller"))
        if master:
            over.append(master)
        if get.get(("ipv4", "method")) == "auto":
            found.append("DHCP")
        found += [v.split(",")[0] for (s, k), v in get.items() if s == "ipv4" and re.fullmatch(r"address\d*", k)]
    elif path.endswith(".network"):
        entries = _ini_sections(text)
        names = " ".join(v for s, k, v in entries if s == "Match" and k == "Name").split()
        macs = " ".join(v for s, k, v in entries if s == "Match" and k == "MACAddress").lower().split()
        if name not in names and not (mac and mac in macs):
            return [], []
        over += [v for s, k, v in entries if s == "Network" and k in ("Bond", "Bridge")]
        over += [v for s, k, v in entries if s == "Network" and k == "VLAN"]
        if any(s == "Network" and k == "DHCP" and v in ("yes", "true", "ipv4", "ipv6") for s, k, v in entries):
            found.append("DHCP")
        found += [v for s, k, v in entries if s in ("Network", "Address") and k == "Address"]
    elif path.endswith(".yaml") or path.endswith(".cfg") and re.search(r"(?m)^\s*version:\s*2\b", text):
        blocks = re.split(r"(?m)^(?=\s{4}[\w.-]+:\s*$)", text)
        for block in blocks:
            head = re.match(r"\s{4}([\w.-]+):", block)
            if not head:
                continue
            set_name = re.search(r"(?m)^\s+set-name:\s*[\"']?([\w.-]+)", block)
            ident = set_name[1] if set_name else head[1]
            if ident == name or mac and mac in block.lower():
                if re.search(r"(?m)^\s+dhcp4:\s*(true|yes)", block):
                    found.append("DHCP")
                m = re.search(r"(?ms)^\s+addresses:\s*(\[[^\]]*\]|(?:\n\s+-\s*\S+)+)", block)
                if m:
                    found += re.findall(r"[0-9a-fA-F.:]+/\d+", m[1])
            elif re.search(rf"(?m)^\s+(interfaces:.*[\[\s,]{re.escape(name)}\b|-\s*{re.escape(name)}\s*$"
                           rf"|link:\s*{re.escape(name)}\s*$)", block):
                over.append(head[1])
    elif "/network/interfaces" in path:
        for stanza in re.split(r"(?m)^(?=iface\s)", text):
            m = re.match(r"iface\s+(\S+)\s+inet6?\s+(\w+)", stanza)
            if not m:
                continue
            if m[1] == name:
                found += ["DHCP"] if m[2] == "dhcp" else re.findall(r"(?m)^\s+address\s+(\S+)", stanza)
            elif re.search(rf"(?m)^\s+(bond-slaves|bridge_ports|bridge-ports|vlan-raw-device|slaves)\s.*\b{re.escape(name)}\b", stanza):
                over.append(m[1])
    return found, over


def addresses(tree: GuestTree, changes: list[FileChange], name: str, mac: str, depth: int = 0) -> list[str]:
    """What comes up on `name` (or on the bond, bridge or VLAN it joins): addresses, "DHCP".
    `mac` "" (a bond, bridge or VLAN) selects nothing by MAC."""
    new = {c.path: c.new for c in changes}
    files = {p: new.get(p, tree.read(p)) for pattern in NETWORK_FILES for p in tree.glob(pattern)}
    files.update({c.path: c.new for c in changes if c.new is not None})
    out = []
    for path, text in sorted(files.items()):
        if text is None:
            continue
        found, over = _addresses_in(path, text, name, mac)
        out += [f"{a} ({path})" if a != "DHCP" else f"DHCP ({path})" for a in found]
        if depth < 3:
            out += [f"{a} on {upper}" for upper in dict.fromkeys(over) if upper != name
                    for a in addresses(tree, changes, upper, "", depth + 1)]
    # VLANs named after their parent (eth0.100, enX0.100).
    for path, text in sorted(files.items()):
        for vlan in sorted(set(re.findall(rf"(?<![\w-]){re.escape(name)}\.\d+", text or ""))):
            if depth < 3:
                out += [f"{a} on {vlan}" for a in addresses(tree, changes, vlan, "", depth + 1)]
    return list(dict.fromkeys(out))


# --- the step ------------------------------------------------------------------------------------

def network(tree: GuestTree, source: list[SourceNic], vms: list[VmNic], by_hand: dict[str, str],
            family: str | None) -> StepPlan:
    """Old NICs → the VM's, by name and by MAC, in ifupdown, netplan, NetworkManager, ifcfg
    (RHEL's and SUSE's wicked, their GATEWAYDEV= and routes), teamd, cloud-init's network config,
    systemd-networkd and .link files, udev's persistent-net rules and the administrator's own
    rules by MAC, and the firewalls that name interfaces (iptables, nftables, firewalld zones).

    `by_hand` (old name → new, from --nic) wins over the names worked out here.
    """
    step = StepPlan("network interfaces")
    naming = guest_naming(tree, family)
    # A NIC named by hand is that name under every name it had (its alternative names too), and
    # nothing is pinned over the technician's word.
    pairings = [Pairing(p.source, p.vm, by_hand[p.source.name], "given by hand (--nic)")
                if p.vm is not None and p.source.name in by_hand else p
                for p in decide(source, vms, naming)]
    names: dict[str, str] = {}
    macs: dict[str, str] = {}
    pins: dict[str, str] = {}
    for p in pairings:
        if p.vm is None or p.name is None:
            continue
        for old in (p.source.name, *p.source.names):
            if old != p.name:
                names[old] = p.name
        if p.vm.mac != p.source.mac:
            macs[p.source.mac] = p.vm.mac
        if p.pinned:
            pins[p.vm.mac] = p.name
    names.update(by_hand)
    names = {old: new for old, new in names.items() if old != new}
    dropped = {p.source.mac for p in pairings if p.vm is None}
    for pattern in NETWORK_FILES:
        for path in tree.glob(pattern):
            old = tree.read(path) or ""
            new = rebind_macs(path, old if path.endswith(".link") else rename_interfaces(old, names), macs)
            dirname, _, base = path.rpartition("/")
            kind, _, name = base.partition("-")
            renamed = f"{kind}-{names[name]}" if kind in ("ifcfg", "route", "ifroute") and name in names else base
            if renamed != base:
                if kind == "ifcfg" and not any(re.search(rf"(?m)^HWADDR=[\"']?{re.escape(m)}", new, re.I)
                                               for m in macs.values()):
                    # The name is the file's identity in ifcfg; a MAC pin nobody moved would stop it matching.
                    new = "".join(line for line in new.splitlines(keepends=True) if not line.startswith("HWADDR="))
                step.changes += [FileChange(path, old, None), FileChange(f"{dirname}/{renamed}", None, new, like=path)]
            elif new != old:
                step.changes.append(FileChange(path, old, new))
    # The administrator's own rules that name a NIC by its MAC: the MAC moves, the name stays
    # (guest_naming counts such a rule as the guest's pin on the VM NIC).
    for path in tree.glob("/etc/udev/rules.d/*.rules"):
        if path == PERSISTENT_NET:
            continue
        old = tree.read(path) or ""
        new = rebind_macs(path, old, macs)
        if new != old:
            step.changes.append(FileChange(path, old, new))
    rules_old = tree.read(PERSISTENT_NET)
    # Without the source's NICs, the old rules' MACs may be anyone's: gone, the guest writes new ones.
    rules_new = persistent_net(rules_old, macs, dropped, pins) if pairings else None
    if rules_new != rules_old:
        step.changes.append(FileChange(PERSISTENT_NET, rules_old, rules_new))
    step.notes += _notes(tree, step.changes, pairings, naming, by_hand, vms)
    step.warnings += _unfit_patterns(tree, step.changes, pairings, by_hand)
    return step


def name_patterns(path: str, text: str) -> list[list[str]]:
    """The lists of shell patterns by which a file's sections match NICs by name, where one has
    a wildcard: netplan's (and cloud-init's) `match: name:`, networkd's `[Match] Name=`."""
    if path.endswith((".network", ".link")):
        lists = [v.split() for s, k, v in _ini_sections(text) if s == "Match" and k == "Name"]
    elif path.endswith((".yaml", ".cfg")):
        lists = [[m[1]] for block in re.finditer(r"(?m)^([ \t]+)match:[ \t]*\n((?:\1[ \t]+\S.*\n?)*)", text)
                 for m in re.finditer(r"(?m)^\s+name:\s*[\"']?([^\"'\s]+)", block[2])]
    else:
        return []
    return [pats for pats in lists if any(c in "".join(pats) for c in "*?[")]


def _unfit_patterns(tree: GuestTree, changes: list[FileChange], pairings: list[Pairing],
                    by_hand: dict[str, str]) -> list[str]:
    """A warning per setting whose name pattern fitted an old NIC but not the name the guest gives
    the VM's NIC (`en*` and a Xen vif that stays eth0): renaming cannot fix a pattern."""
    new = {c.path: c.new for c in changes}
    out = []
    for p in pairings:
        name = by_hand.get(p.source.name, p.name)
        if p.vm is None or name is None:
            continue
        for pattern in NETWORK_FILES:
            for path in tree.glob(pattern):
                text = new.get(path, tree.read(path)) or ""
                for pats in name_patterns(path, text):
                    fits = [n for n in (p.source.name, *p.source.names)
                            if any(fnmatch.fnmatchcase(n, q) for q in pats)]
                    if fits and not any(fnmatch.fnmatchcase(name, q) for q in pats):
                        out.append(f"{p.source.name}: {path} matches NICs by the pattern {' '.join(pats)}, which "
                                   f"fitted {fits[0]} but not {name}, the name the guest gives the VM's NIC: that "
                                   "setting will not apply; widen the pattern or name the NIC.")
    return list(dict.fromkeys(out))


def _notes(tree: GuestTree, changes: list[FileChange], pairings: list[Pairing], naming: Naming,
           by_hand: dict[str, str], vms: list[VmNic]) -> list[str]:
    out = []
    if not pairings and not by_hand:
        out.append("No NICs of the source are known (no job inventory): network settings are left as they are; "
                   "check the network on the VM's console.")
    for old, new in sorted(by_hand.items()):
        out.append(f"{old} -> {new} (given by hand)")
    for p in pairings:
        s = p.source
        alt = f" (also {', '.join(s.names)})" if s.names else ""
        if p.vm is None:
            out.append(f"{s.name}{alt} [{s.mac}]: the VM has no NIC in its place; its settings are left, "
                       "and a bond over it comes up with the NICs the VM has. UNSURE: check it.")
            continue
        name = by_hand.get(s.name, p.name)
        place = f"vif {p.vm.vif}" if p.vm.vif is not None else "emulated NIC"
        mac = "same MAC" if p.vm.mac == s.mac else f"new MAC {p.vm.mac} (was {s.mac})"
        up = addresses(tree, changes, name, p.vm.mac)
        comes_up = ", ".join(up) if up else "no address found in its settings: UNSURE, check it on the console"
        out.append(f"{s.name}{alt} -> VM {place}, {mac}, named {name} by the guest: {p.why}; comes up with {comes_up}")
    paired = {p.vm.mac for p in pairings if p.vm is not None}
    for vm in sorted(vms, key=lambda v: (v.vif is None, v.vif or 0, v.mac)):
        if pairings and vm.mac not in paired:
            place = f"vif {vm.vif}" if vm.vif is not None else "emulated NIC"
            out.append(f"VM {place} [{vm.mac}]: no NIC of the source in its place; no settings name it, so it comes "
                       "up only where the guest configures new NICs by itself (DHCP on any NIC).")
    return out

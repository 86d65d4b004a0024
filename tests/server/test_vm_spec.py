"""The VM spec from both inventory shapes the agent sends, and its bounds."""

import XenAPI

from server.xenserver.pool import explain
from server.xenserver.spec import MIB, fit_to_host, vm_spec


def test_capture_inventory_shape():
    job = {"id": "j", "name": "web01", "inventory": {
        "machine": {"system_uuid": "u", "firmware": "uefi", "cpus": 4, "memory": 3 * 1024 * MIB + 1,
                    "os": {"family": "windows", "name": "Windows Server 2019", "id": "windows"},
                    "nics": [{"name": "Ethernet0", "mac": "00:15:5D:01:02:03"}]},
        "disks": [{"id": "sda", "size": 1 << 30}]}}
    spec = vm_spec(job)
    assert (spec.vcpus, spec.memory, spec.firmware, spec.windows) == (4, 3073 * MIB, "uefi", True)
    # The source's MACs by default: DHCP reservations, firewall rules and licences follow them.
    assert spec.nics[0].mac == "00:15:5d:01:02:03"
    assert vm_spec(job, keep_macs=False).nics[0].mac == ""


def test_unattended_inventory_shape_with_overrides_and_per_nic_keep_mac():
    job = {"id": "j", "name": "db", "inventory": {
        "machine": {"system_uuid": "u", "cpus": 8, "memory": 64 << 30,
                    "os": {"family": "linux", "name": "Debian GNU/Linux 12"}},
        "vcpus": 2, "memory": 100 * MIB, "firmware": "bios",
        "nics": [{"name": "eth0", "mac": "52:54:00:00:00:01", "keep_mac": True},
                 {"name": "eth1", "mac": "52:54:00:00:00:02", "keep_mac": False}],
        "disks": [{"id": "vda", "size": 1 << 30}]}}
    # The choice made on the source wins over the server's, either way.
    assert [n.mac for n in vm_spec(job, keep_macs=False).nics] == ["52:54:00:00:00:01", ""]
    spec = vm_spec(job)
    assert (spec.vcpus, spec.firmware, spec.windows) == (2, "bios", False)
    assert spec.memory == 256 * MIB and "raised" in spec.adjustments[0]
    assert [n.mac for n in spec.nics] == ["52:54:00:00:00:01", ""]
    fitted = fit_to_host(spec, host_cpus=1, host_free_memory=10 << 30)
    assert fitted.vcpus == 1 and "vCPUs lowered from 2 to 1" in fitted.adjustments[-1]


def test_xapi_errors_read_as_sentences():
    assert "give --xapi-url https://10.0.0.1" in explain(XenAPI.Failure(["HOST_IS_SLAVE",
                                                                         "10.0.0.1"]))
    assert "The storage repository failed: VDI not available." in explain(
        XenAPI.Failure(["SR_BACKEND_FAILURE_46", "", "VDI not available", ""]))
    assert "2048 MiB needed, 1024 MiB free" in explain(
        XenAPI.Failure(["HOST_NOT_ENOUGH_FREE_MEMORY", str(2 << 30), str(1 << 30)]))
    assert explain(XenAPI.Failure(["LICENCE_RESTRICTION", "x"])) == \
        "XAPI answered LICENCE_RESTRICTION (x)."


def test_the_command_line_keeps_macs_unless_told(tmp_path):
    import argparse

    from server.xenserver.cli import add_xapi_arguments, config_from_args
    password = tmp_path / "pw"
    password.write_text("secret\n")
    p = argparse.ArgumentParser()
    add_xapi_arguments(p)
    base = ["--xapi-url", "xen1", "--xapi-password-file", str(password), "--iso", "x.iso"]
    assert config_from_args(p.parse_args(base)).keep_macs is True
    assert config_from_args(p.parse_args(base + ["--keep-macs"])).keep_macs is True
    assert config_from_args(p.parse_args(base + ["--new-macs"])).keep_macs is False

"""The network screen's edge: a static address typed as a person would, applied to a real
(bridge) interface; the kernel's ip= form it is recorded as in the settings."""

from __future__ import annotations

import subprocess

import pytest

from agent.settings import Settings, SettingsError, parse_ip, update
from agent.tui.edges import configure_network
from agent.tui.network import static_ip
from support import needs_root, run

NIC = "p2vtuitest0"


@pytest.fixture
def spare_nic():
    needs_root()
    subprocess.run(["ip", "link", "del", NIC], capture_output=True)
    run("ip", "link", "add", NIC, "type", "bridge")   # no dummy module on every kernel
    yield NIC
    subprocess.run(["ip", "link", "del", NIC], capture_output=True)


def test_static_address_goes_through_the_settings_and_onto_the_card(spare_nic):
    text = static_ip(spare_nic, "192.0.2.10/24", "", "")
    settings = update(Settings(), {"ip": [text]})
    (ip,) = settings.ip_configs()
    assert (ip.autoconf, ip.client, ip.prefix, ip.device) == ("static", "192.0.2.10", 24, spare_nic)
    assert configure_network(spare_nic, ip) == f"{spare_nic} now uses 192.0.2.10/24."
    assert "192.0.2.10/24" in run("ip", "-4", "-o", "addr", "show", spare_nic).stdout


def test_gateway_and_dns_are_kept_and_bad_input_is_a_sentence():
    ip = parse_ip(static_ip("eth0", "10.0.0.9/16", "10.0.0.1", "10.0.0.53"))
    assert (ip.prefix, ip.gateway, ip.dns) == (16, "10.0.0.1", ["10.0.0.53"])
    with pytest.raises(SettingsError, match="is not like 10.0.0.9/24"):
        static_ip("eth0", "10.0.0.300/24", "", "")


def test_a_failing_command_says_what_to_do():
    said = configure_network("p2vnosuchnic9", parse_ip("192.0.2.1::::::off"))
    assert "failed" in said and "shell (F9 or Ctrl+T)" in said

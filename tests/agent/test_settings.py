"""Settings: table-driven over many command lines, good and bad, and the order of sources."""

from __future__ import annotations

import argparse

import pytest

from agent.settings import (
    IpConfig, Settings, SettingsError, add_source_arguments, load_from_args, load_settings,
    parse_ip, parse_size, split_cmdline, update,
)

FP = "sha256:" + "ab" * 32
G = 1 << 30
M = 1 << 20

# (kernel command line, expected non-default fields)
GOOD = [
    ("", {}),
    ("BOOT_IMAGE=/live/vmlinuz boot=live quiet splash -- init=/bin/sh", {}),
    ("p2v.server=https://10.0.0.5:8443", {"server": "https://10.0.0.5:8443"}),
    ("p2v.server=http://srv.example:8080/", {"server": "http://srv.example:8080"}),
    ("p2v.token=s3cr3t", {"token": "s3cr3t"}),
    (f"p2v.fingerprint={FP}", {"fingerprint": FP}),
    ("p2v.fingerprint=SHA256:" + ":".join(["AB"] * 32), {"fingerprint": FP}),
    ("p2v.mode=capture", {"mode": "capture"}),
    ("p2v.mode=repair", {"mode": "repair"}),
    ("p2v.mode=shell", {"mode": "shell"}),
    ("p2v.disks=all", {"disks": None}),
    ("p2v.disks=sda,nvme0n1", {"disks": ["sda", "nvme0n1"]}),
    ("p2v.disks=/dev/loop3", {"disks": ["/dev/loop3"]}),
    ("p2v.name=web01", {"name": "web01"}),
    ('p2v.name="web server 01"', {"name": "web server 01"}),
    ("p2v.vcpus=8", {"vcpus": 8}),
    ("p2v.memory=4G", {"memory": 4 * G}),
    ("p2v.memory=4096M", {"memory": 4 * G}),
    ("p2v.memory=1.5GiB", {"memory": 3 * G // 2}),
    ("p2v.memory=8g", {"memory": 8 * G}),
    ("p2v.job=job-42", {"job": "job-42"}),
    ("p2v.streams=1", {"streams": 1}),
    ("p2v.streams=64", {"streams": 64}),
    ("p2v.compress=zstd", {"compress": "zstd"}),
    ("p2v.compress=off", {"compress": "off"}),
    ("p2v.bwlimit=50M", {"bwlimit": 50 * M}),
    ("p2v.bwlimit=50MB/s", {"bwlimit": 50 * M}),
    ("p2v.bwlimit=100K", {"bwlimit": 100 * 1024}),
    ("p2v.bwlimit=off", {"bwlimit": None}),
    ("p2v.post=poweroff", {"post": "poweroff"}),
    ("p2v.post=reboot", {"post": "reboot"}),
    ("p2v.debug", {"debug": True}),
    ("p2v.debug=0", {}),
    ("p2v.unattended p2v.server=https://s:1 p2v.token=t",
     {"unattended": True, "server": "https://s:1", "token": "t"}),
    ("p2v.unattended p2v.mode=shell", {"unattended": True, "mode": "shell"}),
    ("p2v.unattended=yes p2v.mode=repair", {"unattended": True, "mode": "repair"}),
    ("ip=dhcp", {"ip": ["dhcp"]}),
    ("ip=eth0:dhcp ip=eth1:dhcp", {"ip": ["eth0:dhcp", "eth1:dhcp"]}),
    ("ip=10.0.0.9::10.0.0.1:255.255.255.0:box:eth0:off",
     {"ip": ["10.0.0.9::10.0.0.1:255.255.255.0:box:eth0:off"]}),
    ("p2v.streams=2 p2v.streams=8", {"streams": 8}),  # the last one wins, as in the kernel
    ("console=ttyS0 p2v.mode=capture root=live:CDLABEL=X p2v.streams=6",
     {"mode": "capture", "streams": 6}),
]


@pytest.mark.parametrize("cmdline,expected", GOOD, ids=[c or "(empty)" for c, _ in GOOD])
def test_good_command_lines(cmdline, expected):
    settings = load_settings(cmdline, cfg_paths=[])
    assert settings == Settings(**expected)


# (kernel command line, fragments that must appear in the one problem line for it)
BAD = [
    ("p2v.sever=https://x", ["unknown key p2v.sever", "did you mean p2v.server"]),
    ("p2v.zzz=1", ["unknown key p2v.zzz", "known keys: p2v.server"]),
    ("p2v.stream=1", ["unknown key p2v.stream", "did you mean p2v.streams"]),
    ("p2v.server", ["p2v.server needs a value"]),
    ("p2v.server=10.0.0.5", ["p2v.server=10.0.0.5", "https://10.0.0.5:8443"]),
    ("p2v.server=https://host:99999", ["bad port"]),
    ("p2v.server=ftp://host", ["not a server address"]),
    ("p2v.fingerprint=md5:abcd", ["sha256:"]),
    ("p2v.fingerprint=sha256:abcd", ["64 hex digits"]),
    ("p2v.mode=migrate", ["p2v.mode=migrate", "auto|capture|restore|repair|shell"]),
    ("p2v.mode", ["p2v.mode needs a value", "p2v.mode=capture"]),
    ("p2v.disks=sda,,sdb", ["separated by commas"]),
    ("p2v.disks=../../etc/passwd", ["not a disk"]),
    ("p2v.vcpus=0", ["between 1 and 512"]),
    ("p2v.vcpus=two", ["p2v.vcpus=two is not a whole number"]),
    ("p2v.memory=4096", ["less than 128M", "4096M"]),
    ("p2v.memory=lots", ["not a size"]),
    ("p2v.memory=4X", ["not a size"]),
    ("p2v.job=../x", ["not a job id"]),
    ("p2v.streams=0", ["between 1 and 64"]),
    ("p2v.streams=100", ["between 1 and 64"]),
    ("p2v.streams=-1", ["not a whole number"]),
    ("p2v.compress=gzip", ["auto|zstd|off"]),
    ("p2v.bwlimit=fast", ["not a size"]),
    ("p2v.bwlimit=10", ["below 1K"]),
    ("p2v.post=halt", ["poweroff|reboot|shell|wait"]),
    ("p2v.debug=maybe", ["not yes or no"]),
    ("p2v.name=" + "x" * 200, ["1 to 128"]),
    ("p2v.luks=/nonexistent/keys.txt", ["p2v.luks=… names no readable file"]),
    ("ip=1.2.3.4.5::::::off", ["bad client address '1.2.3.4.5'"]),
    ("ip=10.0.0.9::10.0.0.1:255.0.255.0:box:eth0:off", ["bad netmask"]),
    ("ip=10.0.0.9:::::eth0:magic", ["unknown autoconf method 'magic'"]),
    ("ip=eth0", ["is not dhcp, <device>:dhcp"]),
    ("p2v.unattended", ["needs p2v.server and p2v.token"]),
    ("p2v.unattended p2v.server=https://s:1", ["needs p2v.token"]),
    ("p2v.unattended p2v.mode=capture p2v.token=t", ["p2v.mode=capture needs p2v.server"]),
]


@pytest.mark.parametrize("cmdline,fragments", BAD, ids=[c[:40] for c, _ in BAD])
def test_bad_command_lines(cmdline, fragments):
    with pytest.raises(SettingsError) as err:
        load_settings(cmdline, cfg_paths=[])
    assert len(err.value.problems) == 1, err.value.problems
    (line,) = err.value.problems
    assert "\n" not in line
    for fragment in fragments:
        assert fragment in line


def test_every_problem_is_reported_at_once():
    with pytest.raises(SettingsError) as err:
        load_settings("quiet p2v.streams=x p2v.mode=y p2v.oops ip=bad p2v.compress=zstd", cfg_paths=[])
    problems = err.value.problems
    assert len(problems) == 4
    assert all(p.startswith("kernel command line: ") for p in problems)
    assert str(err.value) == "\n".join(problems)


@pytest.mark.parametrize("cmdline", [
    "p2v.token=",
    "p2v.token='has space'",
    "p2v.tokn=TOPSECRET",
    "p2v.luks=/nonexistent/TOPSECRET",
])
def test_secrets_never_appear_in_problems(cmdline):
    with pytest.raises(SettingsError) as err:
        load_settings(cmdline.replace("'", '"'), cfg_paths=[])
    assert "TOPSECRET" not in str(err.value) and "has space" not in str(err.value)


def test_secrets_redacted_in_logs_and_repr(tmp_path):
    keys = tmp_path / "luks.txt"
    keys.write_text("passphrase\n")
    settings = load_settings(f"p2v.token=TOPSECRET p2v.luks={keys}", cfg_paths=[])
    assert settings.token == "TOPSECRET" and settings.luks == str(keys)
    view = settings.redacted()
    assert view["token"] == "(set)" and view["luks"] == "(set)"
    assert "TOPSECRET" not in repr(settings) and "TOPSECRET" not in str(view)
    assert load_settings("", cfg_paths=[]).redacted()["token"] is None


@pytest.mark.parametrize("cmdline,unattended", [
    ("", False),
    ("p2v.server=https://s:1 p2v.token=t", False),
    ("p2v.server=https://s:1 p2v.token=t p2v.mode=capture", True),
    ("p2v.server=https://s:1 p2v.token=t p2v.unattended", True),
    ("p2v.mode=shell p2v.unattended", True),
])
def test_unattended(cmdline, unattended):
    assert load_settings(cmdline, cfg_paths=[]).runs_unattended is unattended


@pytest.mark.parametrize("text,config", [
    ("dhcp", IpConfig(autoconf="dhcp")),
    ("off", IpConfig(autoconf="off")),
    ("eth0:dhcp", IpConfig(autoconf="dhcp", device="eth0")),
    ("10.1.2.3::10.1.2.1:255.255.0.0:web01:ens3:none:10.1.0.53:10.1.0.54",
     IpConfig(autoconf="static", device="ens3", client="10.1.2.3", gateway="10.1.2.1",
              prefix=16, hostname="web01", dns=["10.1.0.53", "10.1.0.54"])),
    ("192.168.1.20:192.168.1.1:192.168.1.254:24::eth1:off",
     IpConfig(autoconf="static", device="eth1", client="192.168.1.20", server="192.168.1.1",
              gateway="192.168.1.254", prefix=24)),
    ("10.0.0.7:::::eth0", IpConfig(autoconf="static", device="eth0", client="10.0.0.7", prefix=8)),
    (":::::eth0:dhcp", IpConfig(autoconf="dhcp", device="eth0")),
])
def test_ip_forms(text, config):
    assert parse_ip(text) == config


@pytest.mark.parametrize("text,size", [
    ("0", 0), ("512", 512), ("1K", 1024), ("50M", 50 * M), ("4G", 4 * G), ("2T", 2 << 40),
    ("4GiB", 4 * G), ("4gb", 4 * G), ("0.5G", G // 2),
])
def test_sizes(text, size):
    assert parse_size(text) == size


def test_kernel_splitting():
    assert split_cmdline('a p2v.name="web 01" b="x" c="open') == ["a", "p2v.name=web 01", "b=x", "c=open"]


def test_sources_in_order(tmp_path):
    first = tmp_path / "first.cfg"
    first.write_text(
        "# preset for the lab\n"
        "p2v.server=https://cfg:1 p2v.token=fromcfg\n"
        "p2v.streams=2   # slow link\n"
        "p2v.compress=zstd\n"
        "p2v.name='lab box'\n"
        "ip=eth0:dhcp\n"
        "ip=eth1:dhcp\n"
    )
    second = tmp_path / "second.cfg"
    second.write_text("p2v.compress=off\n")
    settings = load_settings("quiet p2v.streams=3 p2v.server=https://cmdline:1",
                             cfg_paths=[first, second, tmp_path / "absent.cfg"],
                             cli={"server": "https://cli:1", "bwlimit": "1M", "vcpus": None})
    assert settings.server == "https://cli:1"            # CLI beats the command line
    assert settings.streams == 3                         # the command line beats p2v.cfg
    assert settings.compress == "off"                    # a later p2v.cfg beats an earlier one
    assert settings.token == "fromcfg" and settings.name == "lab box"
    assert settings.ip == ["eth0:dhcp", "eth1:dhcp"]
    assert settings.bwlimit == 1 << 20 and settings.vcpus is None
    assert load_settings("ip=dhcp", cfg_paths=[first]).ip == ["dhcp"]  # ip= replaces, not adds


def test_cfg_problems_name_file_and_line(tmp_path):
    cfg = tmp_path / "p2v.cfg"
    cfg.write_text("p2v.server=https://ok:1\n\nquiet\np2v.streams=many\nname='unclosed\n")
    with pytest.raises(SettingsError) as err:
        load_settings("", cfg_paths=[cfg])
    assert err.value.problems == [
        f"{cfg} line 3: unknown key quiet; known keys: " + ", ".join(
            ["p2v.server", "p2v.token", "p2v.fingerprint", "p2v.mode", "p2v.disks", "p2v.name",
             "p2v.vcpus", "p2v.memory", "p2v.job", "p2v.streams", "p2v.compress", "p2v.bwlimit",
             "p2v.post", "p2v.fail", "p2v.unattended", "p2v.debug", "p2v.luks",
             "p2v.guest_tools", "p2v.windows_drivers", "p2v.keep_pagefile",
             "p2v.allow_hibernated", "p2v.ascii", "ip"]) + ".",
        f"{cfg} line 4: p2v.streams=many is not a whole number.",
        f"{cfg} line 5: cannot be read (No closing quotation); check the quotes.",
    ]


def test_cli_values_are_checked_like_the_rest():
    with pytest.raises(SettingsError) as err:
        load_settings("", cfg_paths=[], cli={"streams": 0, "compress": "lz4", "colour": "red"})
    assert err.value.problems == [
        "command line --streams: p2v.streams=0 must be between 1 and 64.",
        "command line --compress: p2v.compress=lz4 is not one of auto|zstd|off.",
        "command line --colour: there is no such setting.",
    ]
    settings = load_settings("", cfg_paths=[], cli={"disks": ["sda", "/dev/loop3"], "debug": True,
                                                    "streams": 8, "ip": ["dhcp"]})
    assert settings.disks == ["sda", "/dev/loop3"] and settings.debug and settings.streams == 8


def test_tui_updates_go_through_the_same_checks():
    settings = load_settings("p2v.server=https://s:1", cfg_paths=[])
    changed = update(settings, {"bwlimit": "20M", "disks": "sda", "mode": "capture"})
    assert changed.bwlimit == 20 * M and changed.disks == ["sda"] and changed.server == "https://s:1"
    assert settings.bwlimit is None  # the original is left alone
    with pytest.raises(SettingsError) as err:
        update(changed, {"memory": "12", "unattended": True})
    assert err.value.problems == [
        "Memory: '12' is less than 128M; write it with a unit, like 4G or 4096M.",
        "p2v.unattended with p2v.mode=capture needs p2v.token too; "
        "add them to the boot line or to p2v.cfg.",
    ]


def test_argparse_front(tmp_path):
    cfg = tmp_path / "p2v.cfg"
    cfg.write_text("p2v.name=fromcfg\n")
    parser = argparse.ArgumentParser()
    add_source_arguments(parser)
    parser.add_argument("--streams", type=int)
    parser.add_argument("--server")
    args = parser.parse_args(["--cmdline", "p2v.streams=2 p2v.server=https://k:1",
                              "--config", str(cfg), "--streams", "5"])
    settings = load_from_args(args)
    assert (settings.streams, settings.server, settings.name) == (5, "https://k:1", "fromcfg")


def test_reads_proc_cmdline_when_not_given():
    assert isinstance(load_settings(cfg_paths=[]), Settings)  # this machine's boot line has no p2v.*


def test_luks_file_relative_to_the_boot_medium(tmp_path, monkeypatch):
    import agent.settings

    (tmp_path / "keys").mkdir()
    (tmp_path / "keys/luks.txt").write_text("one\ntwo\n")
    monkeypatch.setattr(agent.settings, "BOOT_MEDIUM", tmp_path)
    assert load_settings("p2v.luks=keys/luks.txt", cfg_paths=[]).luks == str(tmp_path / "keys/luks.txt")
    with pytest.raises(SettingsError, match="p2v.luks=… names no readable file"):
        load_settings("p2v.luks=keys/other.txt", cfg_paths=[])


def test_plain_http_with_a_fingerprint_is_refused_on_every_path(tmp_path):
    plain = "http://10.0.0.5:8443"
    expected = "plain HTTP but a fingerprint is given"
    with pytest.raises(SettingsError, match=expected):           # p2v.* kernel flags
        load_settings(f"p2v.server={plain} p2v.fingerprint={FP}", cfg_paths=[])
    cfg = tmp_path / "p2v.cfg"
    cfg.write_text(f"p2v.fingerprint={FP}\n")
    with pytest.raises(SettingsError, match=expected):           # p2v.cfg and a CLI flag
        load_settings("", cfg_paths=[cfg], cli={"server": plain})
    parser = argparse.ArgumentParser()
    add_source_arguments(parser)
    parser.add_argument("--server")
    parser.add_argument("--fingerprint")
    args = parser.parse_args(["--server", plain, "--fingerprint", FP, "--cmdline", ""])
    with pytest.raises(SettingsError, match=expected):           # CLI flags alone
        load_from_args(args)
    with pytest.raises(SettingsError, match=expected):           # the TUI's server screen
        update(Settings(), {"server": plain, "token": "t", "fingerprint": FP})
    from agent.transfer.client import Client, ServerError
    with pytest.raises(ServerError, match=expected):             # whoever builds a Client
        Client(plain, "t", FP)
    # Without a fingerprint a --plain-http server stays usable, and https with one is fine.
    assert load_settings(f"p2v.server={plain}", cfg_paths=[]).server == plain
    assert load_settings(f"p2v.server=https://s:1 p2v.fingerprint={FP}", cfg_paths=[]).fingerprint == FP

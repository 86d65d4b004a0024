"""The one settings object the agent runs on.

Filled, in order, from: defaults, `p2v.cfg` on the boot medium, the kernel command line, CLI flags,
and the TUI. Unattended mode and the TUI both hand a Settings to the same core functions.

- ``load_settings(cmdline=None, cfg_paths=CFG_PATHS, cli=None)`` builds it at start-up;
- ``update(settings, {"bwlimit": "50M"}, source="TUI")`` is how the TUI (or anyone) changes it
  later, through the same parsers and checks;
- both raise SettingsError, whose ``problems`` are one sentence per bad key, all of them at once;
- ``settings.redacted()`` is the view for logs and screens: secrets show as "(set)".
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from xenp2v.protocol import ProtocolError, check_id

BOOT_MEDIUM = Path("/run/live/medium")
CFG_PATHS: tuple[Path, ...] = (BOOT_MEDIUM / "p2v.cfg",)
MODES = ("auto", "capture", "restore", "repair", "shell")
COMPRESS = ("auto", "zstd", "off")
POSTS = ("poweroff", "reboot", "shell", "wait")
FAILS = ("wait", "shell", "poweroff", "reboot")
SECRET = "(set)"


@dataclass
class IpConfig:
    """One `ip=` value: either a method (dhcp, off, …) or a static address."""

    autoconf: str                        # dhcp|on|any|off|none|static|bootp|rarp|both|dhcp6
    device: str | None = None
    client: str | None = None
    server: str | None = None
    gateway: str | None = None
    prefix: int | None = None            # netmask as a prefix length
    hostname: str | None = None
    dns: list[str] = field(default_factory=list)


@dataclass
class Settings:
    server: str | None = None            # p2v.server: https://host:port of the receiving server
    token: str | None = field(default=None, repr=False)  # p2v.token (secret: never printed)
    fingerprint: str | None = None       # p2v.fingerprint: sha256:HEX of the server's certificate
    mode: str | None = None              # p2v.mode: auto|capture|restore|repair|shell
    disks: list[str] | None = None       # p2v.disks: names or paths; None means all
    name: str | None = None              # p2v.name: the job's (and the VM's) name
    vcpus: int | None = None             # p2v.vcpus
    memory: int | None = None            # p2v.memory, in bytes
    job: str | None = None               # p2v.job
    streams: int = 8                     # p2v.streams: parallel connections
    compress: str = "auto"               # p2v.compress: auto|zstd|off
    bwlimit: int | None = None           # p2v.bwlimit, in bytes per second
    post: str = "wait"                   # p2v.post: poweroff|reboot|shell|wait, after success
    fail: str = "wait"                   # p2v.fail: wait|shell|poweroff|reboot, after a failure
    unattended: bool = False             # p2v.unattended
    debug: bool = False                  # p2v.debug
    ip: list[str] = field(default_factory=list)  # standard ip= values, as given
    luks: str | None = field(default=None, repr=False)  # p2v.luks: file of LUKS passphrases
    guest_tools: str | None = None       # p2v.guest_tools: the pool's tools ISO or a directory
    windows_drivers: str | None = None   # p2v.windows_drivers: the vendor's Windows PV drivers
    keep_pagefile: bool = False          # p2v.keep_pagefile: send Windows' page/hibernation files
    allow_hibernated: bool = False       # p2v.allow_hibernated: copy a hibernated Windows anyway
    ascii: bool | None = None            # p2v.ascii: the TUI draws with ASCII only (0: never);
                                         # None: decided from TERM and the locale (agent.tui.ascii)

    @property
    def runs_unattended(self) -> bool:
        """No prompt at all: asked for, or everything needed to start was given."""
        return self.unattended or bool(self.server and self.token and self.mode)

    def ip_configs(self) -> list[IpConfig]:
        return [parse_ip(value) for value in self.ip]

    def redacted(self) -> dict[str, Any]:
        """Every setting, secrets replaced by "(set)": safe for logs, screens and reports."""
        view = dataclasses.asdict(self)
        for name in SECRETS:
            if view[name] is not None:
                view[name] = SECRET
        return view


class SettingsError(Exception):
    """Bad settings: `problems` holds one sentence per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# --- value parsers: each takes the text as given and returns the value or raises ValueError ----

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'4G' → 4294967296; binary units (K, M, G, T), an optional 'B' or 'iB', bytes when bare."""
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError("is not a size; write it like 4G, 512M or 100K")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("is not a server address; write it like https://10.0.0.5:8443")
    try:
        parts.port
    except ValueError:
        raise ValueError("has a bad port number; write it like https://10.0.0.5:8443") from None
    return text.rstrip("/")


def _token(text: str) -> str:
    if not text or any(ch.isspace() for ch in text):
        raise ValueError("must be the server's token, without spaces")
    return text


def _fingerprint(text: str) -> str:
    algo, _, hexpart = text.partition(":")
    digits = hexpart.replace(":", "").lower()
    if algo.lower() != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", digits):
        raise ValueError("is not a certificate fingerprint; write sha256: and 64 hex digits, "
                         "as the server prints it")
    return f"sha256:{digits}"


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"is not one of {'|'.join(options)}")
        return text
    return parse


def _disks(text: str) -> list[str] | None:
    if text == "all":
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise ValueError("must list disks separated by commas, like sda,nvme0n1, or say all")
    bad = [n for n in names if not re.fullmatch(r"(/dev/)?[A-Za-z0-9._:/-]+", n) or ".." in n]
    if bad:
        raise ValueError(f"names something that is not a disk: {bad[0]}")
    return names


def _name(text: str) -> str:
    if not text.strip() or len(text) > 128 or any(ord(ch) < 32 for ch in text):
        raise ValueError("must be a name of 1 to 128 printable characters")
    return text


def _count(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"\d+", text.strip()):
            raise ValueError("is not a whole number")
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value
    return parse


def _memory(text: str) -> int:
    value = parse_size(text)
    if value < 128 << 20:
        raise ValueError("is less than 128M; write it with a unit, like 4G or 4096M")
    return value


def _bwlimit(text: str) -> int | None:
    if text in ("0", "off", "none"):
        return None
    value = parse_size(text.removesuffix("/s"))
    if value < 1024:
        raise ValueError("is below 1K per second; write it like 50M (bytes per second), or off")
    return value


def _job(text: str) -> str:
    try:
        return check_id(text, "job id")
    except ProtocolError:
        raise ValueError("is not a job id (1 to 64 letters, digits, '.', '_' or '-')") from None


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("", "1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ValueError("is not yes or no; give the key alone to turn it on")


def _luks(text: str) -> str:
    path = Path(text) if text.startswith("/") else BOOT_MEDIUM / text
    if not path.is_file():
        raise ValueError("names no readable file; give the full path of the passphrases file, "
                         "or its path on the boot medium")
    return str(path)


def _guest_tools(text: str) -> str:
    path = Path(text) if text.startswith("/") else BOOT_MEDIUM / text
    if not (path.is_file() or path.is_dir()):
        raise ValueError("names no ISO file or directory; give the full path of the pool's tools "
                         "ISO (guest-tools.iso) or of a folder with its Linux/ files, or its path "
                         "on the boot medium")
    return str(path)


def _windows_drivers(text: str) -> str:
    path = Path(text) if text.startswith("/") else BOOT_MEDIUM / text
    if not path.is_dir():
        raise ValueError("names no directory; give the full path of the folder that holds the "
                         "vendor's Windows PV drivers (its .inf folders or .msi files), or its path "
                         "on the boot medium")
    return str(path)


_IP_METHODS = ("dhcp", "on", "any", "off", "none", "bootp", "rarp", "both", "dhcp6")


def parse_ip(text: str) -> IpConfig:
    """The kernel's `ip=` forms: a method alone, `<device>:<method>`, or
    `<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>[:<dns0>[:<dns1>]]`."""
    if text in _IP_METHODS:
        return IpConfig(autoconf=text)
    fields = text.split(":")
    if len(fields) == 2 and fields[1] in _IP_METHODS and fields[0]:
        return IpConfig(autoconf=fields[1], device=fields[0])
    if not 2 <= len(fields) <= 10:
        raise ValueError("is not dhcp, <device>:dhcp or "
                         "<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>")
    fields += [""] * (10 - len(fields))
    client, server, gateway, netmask, hostname, device, autoconf, dns0, dns1, _ntp = fields
    addresses = {"client": client, "server": server, "gateway": gateway, "dns": dns0,
                 "second dns": dns1}
    for what, value in addresses.items():
        if value:
            try:
                ipaddress.IPv4Address(value)
            except ValueError:
                raise ValueError(f"has a bad {what} address '{value}'") from None
    autoconf = autoconf or ("off" if client else "dhcp")
    if autoconf not in _IP_METHODS:
        raise ValueError(f"has an unknown autoconf method '{autoconf}' "
                         f"(use one of {'|'.join(_IP_METHODS)})")
    prefix = None
    if netmask:
        try:
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen
        except ValueError:
            raise ValueError(f"has a bad netmask '{netmask}'") from None
    if client and prefix is None:
        # As the kernel does: no netmask means the address's class decides (A /8, B /16, C /24).
        first = int(client.split(".")[0])
        prefix = 8 if first < 128 else 16 if first < 192 else 24
    return IpConfig(
        autoconf="static" if client and autoconf in ("off", "none") else autoconf,
        device=device or None, client=client or None, server=server or None,
        gateway=gateway or None, prefix=prefix, hostname=hostname or None,
        dns=[d for d in (dns0, dns1) if d],
    )


def _ip(text: str) -> str:
    parse_ip(text)
    return text


@dataclass(frozen=True)
class Key:
    field: str
    parse: Callable[[str], Any]
    example: str
    flag: bool = False


KEYS: dict[str, Key] = {
    "p2v.server": Key("server", _url, "https://10.0.0.5:8443"),
    "p2v.token": Key("token", _token, "<the token the server printed>"),
    "p2v.fingerprint": Key("fingerprint", _fingerprint, "sha256:<64 hex digits>"),
    "p2v.mode": Key("mode", _choice(MODES), "capture"),
    "p2v.disks": Key("disks", _disks, "sda,nvme0n1"),
    "p2v.name": Key("name", _name, "web01"),
    "p2v.vcpus": Key("vcpus", _count(1, 512), "2"),
    "p2v.memory": Key("memory", _memory, "4G"),
    "p2v.job": Key("job", _job, "<job id>"),
    "p2v.streams": Key("streams", _count(1, 64), "4"),
    "p2v.compress": Key("compress", _choice(COMPRESS), "auto"),
    "p2v.bwlimit": Key("bwlimit", _bwlimit, "50M"),
    "p2v.post": Key("post", _choice(POSTS), "poweroff"),
    "p2v.fail": Key("fail", _choice(FAILS), "wait"),
    "p2v.unattended": Key("unattended", _flag, "", flag=True),
    "p2v.debug": Key("debug", _flag, "", flag=True),
    "p2v.luks": Key("luks", _luks, "/run/live/medium/luks.txt"),
    "p2v.guest_tools": Key("guest_tools", _guest_tools, "/run/live/medium/guest-tools.iso"),
    "p2v.windows_drivers": Key("windows_drivers", _windows_drivers, "/run/live/medium/xen-drivers"),
    "p2v.keep_pagefile": Key("keep_pagefile", _flag, "", flag=True),
    "p2v.allow_hibernated": Key("allow_hibernated", _flag, "", flag=True),
    "p2v.ascii": Key("ascii", _flag, "", flag=True),
    "ip": Key("ip", _ip, "dhcp"),
}
BY_FIELD = {key.field: name for name, key in KEYS.items()}
SECRETS = ("token", "luks")


def _parse_one(name: str, text: str | None, where: str) -> tuple[str, Any]:
    """(field, value) for one key, or ValueError with the whole problem sentence."""
    key = KEYS[name]
    shown = "…" if key.field in SECRETS else text
    if text is None and not key.flag:
        raise ValueError(f"{where}: {name} needs a value, e.g. {name}={key.example}.")
    try:
        return key.field, key.parse(text or "")
    except ValueError as e:
        raise ValueError(f"{where}: {name}={shown} {e}.") from None


def _unknown(name: str, where: str) -> str:
    # Compare without the common prefix, which would make every p2v.* key look alike.
    near = difflib.get_close_matches(name.removeprefix("p2v."),
                                     [k.removeprefix("p2v.") for k in KEYS if k != "ip"], n=1)
    hint = f" (did you mean p2v.{near[0]}?)" if near else f"; known keys: {', '.join(KEYS)}"
    return f"{where}: unknown key {name}{hint}."


def parse_words(words: list[str], where: str, all_ours: bool) -> tuple[dict[str, Any], list[str]]:
    """Field values from `key=value` words, and the problems found.

    On the kernel command line (`all_ours` false) words that are neither `p2v.*` nor `ip=` belong
    to someone else and are skipped; in p2v.cfg every word must be one of our keys.
    """
    values: dict[str, Any] = {}
    problems = []
    for word in words:
        name, sep, text = word.partition("=")
        if name not in KEYS and (name.startswith("p2v.") or all_ours):
            problems.append(_unknown(name, where))
            continue
        if name not in KEYS:
            continue
        try:
            fieldname, value = _parse_one(name, text if sep else None, where)
        except ValueError as e:
            problems.append(str(e))
            continue
        if fieldname == "ip":
            values.setdefault("ip", []).append(value)
        else:
            values[fieldname] = value
    return values, problems


def _split_cfg_line(text: str, where: str) -> tuple[list[str], list[str]]:
    try:
        return shlex.split(text, comments=True), []
    except ValueError as e:
        return [], [f"{where}: cannot be read ({e}); check the quotes."]


def split_cmdline(text: str) -> list[str]:
    """Words as the kernel splits them: on spaces, except inside double quotes, which go away."""
    return [word.replace('"', "") for word in re.findall(r'(?:[^\s"]|"[^"]*"?)+', text)]


def read_cfg(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Values and problems from one p2v.cfg (keys as on the command line, `#` comments)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}, []
    except OSError as e:
        return {}, [f"{path}: cannot be read ({e.strerror})."]
    values: dict[str, Any] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{path} line {number}"
        words, bad = _split_cfg_line(line, where)
        found, more = parse_words(words, where, all_ours=True)
        if "ip" in found and "ip" in values:
            found["ip"] = values["ip"] + found["ip"]
        values.update(found)
        problems += bad + more
    return values, problems


def read_cmdline(text: str) -> tuple[dict[str, Any], list[str]]:
    return parse_words(split_cmdline(text), "kernel command line", all_ours=False)


def _cli_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def read_fields(changes: dict[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """Values and problems from {field: value} as the CLI or the TUI gives them.

    A value may be text as a person typed it ("50M", "sda,sdb") or already typed (4, True,
    ["sda"]); either way it goes through the key's parser. None means "not given".
    """
    values: dict[str, Any] = {}
    problems = []
    for fieldname, raw in changes.items():
        if raw is None:
            continue
        flag = f"--{fieldname.replace('_', '-')}" if source == "command line" else fieldname
        where = f"{source} {flag}"
        if fieldname not in BY_FIELD:
            problems.append(f"{where}: there is no such setting.")
            continue
        name = BY_FIELD[fieldname]
        texts = raw if fieldname == "ip" and isinstance(raw, (list, tuple)) else [raw]
        try:
            parsed = [_parse_one(name, _cli_text(t), where)[1] for t in texts]
        except ValueError as e:
            problems.append(_form_words(fieldname, texts) if source == "TUI" else str(e))
            continue
        values[fieldname] = parsed if fieldname == "ip" else parsed[0]
    return values, problems


# What the TUI's forms call the fields, for problems said to someone filling them in.
FORM_LABELS = {"server": "Server URL", "token": "Token", "fingerprint": "Fingerprint",
               "vcpus": "vCPUs", "memory": "Memory", "name": "Name", "disks": "Disks",
               "ip": "Network address"}


def _form_words(fieldname: str, texts: list) -> str:
    """A field's problem in a form's words ("vCPUs: 'x' is not a whole number."), not as a
    flag or a boot-line key: the person fills in a form."""
    label = FORM_LABELS.get(fieldname, fieldname)
    for text in texts:
        try:
            KEYS[BY_FIELD[fieldname]].parse(_cli_text(text))
        except ValueError as e:
            shown = "" if fieldname in SECRETS else f"'{_cli_text(text)}' "
            return f"{label}: {shown}{e}."
    return f"{label}: not accepted."


def check(settings: Settings) -> list[str]:
    """Problems no single key shows: what unattended mode cannot start without."""
    problems = []
    if settings.fingerprint and settings.server and urlsplit(settings.server).scheme != "https":
        problems.append(plain_with_fingerprint(settings.server))
    talks_to_server = settings.mode in (None, "auto", "capture", "restore")
    missing = [BY_FIELD[f] for f in ("server", "token") if not getattr(settings, f)]
    if settings.unattended and talks_to_server and missing:
        problems.append(f"p2v.unattended with p2v.mode={settings.mode or 'auto'} needs "
                        f"{' and '.join(missing)} too; add them to the boot line or to p2v.cfg.")
    return problems


def plain_with_fingerprint(url: str) -> str:
    """Why a fingerprint with a plain-HTTP server address is refused (the pin would guard
    nothing: the token and the inventory would cross the network in clear)."""
    return (f"p2v.server={url} is plain HTTP but a fingerprint is given: the fingerprint can only "
            "be checked over TLS, and the token would go in clear. Write the address with "
            "https:// as p2v-server printed it (or drop the fingerprint if the server really "
            "runs --plain-http).")


def load_settings(cmdline: str | None = None, cfg_paths: tuple[Path, ...] | list[Path] = CFG_PATHS,
                  cli: dict[str, Any] | None = None) -> Settings:
    """Defaults, then each p2v.cfg, then the kernel command line, then CLI values; checked once.

    `cmdline` None reads /proc/cmdline. Raises SettingsError listing every problem.
    """
    if cmdline is None:
        cmdline = Path("/proc/cmdline").read_text()
    layers = [read_cfg(Path(p)) for p in cfg_paths]
    layers.append(read_cmdline(cmdline))
    layers.append(read_fields(cli or {}, "command line"))
    values: dict[str, Any] = {}
    problems: list[str] = []
    for found, bad in layers:
        values.update(found)
        problems += bad
    settings = dataclasses.replace(Settings(), **values)
    problems += check(settings)
    if problems:
        raise SettingsError(problems)
    return settings


def update(settings: Settings, changes: dict[str, Any], source: str = "TUI") -> Settings:
    """A copy of `settings` with `changes` parsed and checked like every other source."""
    values, problems = read_fields(changes, source)
    updated = dataclasses.replace(settings, **values)
    problems += check(updated)
    if problems:
        raise SettingsError(problems)
    return updated


def boot_line(settings: Settings, fields: tuple[str, ...]) -> str:
    """The kernel arguments that give these `fields` of `settings`, as read_cmdline reads them
    back ("p2v.server=https://10.0.0.5:8443 p2v.job=j1"); fields not set are left out."""
    words = []
    for name in fields:
        value = getattr(settings, name)
        if value is None or value == []:
            continue
        for one in (value if name == "ip" else [value]):
            words.append(f"{BY_FIELD[name]}={_cli_text(one)}")
    return " ".join(words)


def cli_values(args: Any) -> dict[str, Any]:
    """The settings fields an argparse namespace carries (flags named after the fields)."""
    return {name: getattr(args, name) for name in BY_FIELD if getattr(args, name, None) is not None}


def add_source_arguments(parser: Any) -> None:
    """`--cmdline` and `--config`: where settings come from, overridable for tests and other boxes."""
    parser.add_argument("--cmdline", metavar="TEXT",
                        help="read these kernel arguments instead of /proc/cmdline")
    parser.add_argument("--config", metavar="FILE", type=Path, action="append",
                        help=f"read this p2v.cfg instead of {CFG_PATHS[0]} (may repeat)")


def load_from_args(args: Any) -> Settings:
    """load_settings() for a parsed command line that has add_source_arguments() and field flags."""
    return load_settings(cmdline=args.cmdline, cfg_paths=args.config or CFG_PATHS,
                         cli=cli_values(args))


_NEEDED = {"server": ("--server URL", "p2v.server="), "token": ("--token T", "p2v.token="),
           "job": ("--job ID", "p2v.job=")}


def _words(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def for_command(args: Any, command: str, needs: tuple[str, ...] = ("server", "token")) -> Settings:
    """load_from_args() for a subcommand that cannot start without the `needs` settings.

    Raises SettingsError: the bad keys, or one sentence naming the flags (and the p2v.* keys) that
    `command` needs.
    """
    settings = load_from_args(args)
    if not all(getattr(settings, name) for name in needs):
        flags, keys = zip(*(_NEEDED[name] for name in needs))
        raise SettingsError([f"{command} needs {_words(list(flags))} (or {_words(list(keys))})."])
    return settings

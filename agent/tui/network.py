"""Network: the cards with link, MAC and address; DHCP or a static address; does the server answer."""

from __future__ import annotations

import ipaddress

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal
from textual.widgets import Button, DataTable, Input, Label, RadioButton, RadioSet, Static

from agent.transfer.client import ServerError
from agent.settings import SettingsError, parse_ip, update
from agent.tui.common import Choice, Step, buttons
from agent.tui.messages import NetworkDone


def static_ip(nic: str, address: str, gateway: str, dns: str) -> str:
    """The kernel's `ip=` form of a static address typed as 10.0.0.9/24, a gateway on that
    network and a DNS server; SettingsError says, in the form's words, what is wrong."""
    text = address.strip()
    if "/" not in text:
        raise SettingsError([f"Address '{text}' needs its prefix length: write it like "
                             "10.0.0.9/24 (/24 is the netmask 255.255.255.0)."])
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError:
        raise SettingsError([f"Address '{address}' is not like 10.0.0.9/24."]) from None
    problems = []
    gateway, dns = gateway.strip(), dns.strip()
    if gateway:
        try:
            if ipaddress.IPv4Address(gateway) not in iface.network:
                problems.append(f"Gateway {gateway} is not on {iface.network}, the network of "
                                f"{iface}: the gateway must be on the same network (check the "
                                "prefix length).")
        except ValueError:
            problems.append(f"Gateway '{gateway}' is not an address like 10.0.0.1.")
    if dns:
        try:
            ipaddress.IPv4Address(dns)
        except ValueError:
            problems.append(f"DNS '{dns}' is not an address like 10.0.0.1.")
    if problems:
        raise SettingsError(problems)
    return f"{iface.ip}::{gateway}:{iface.netmask}::{nic}:off:{dns}".rstrip(":")


def network_line(ip_values: list[str]) -> str:
    """What the summary says of the network: the address typed, or DHCP."""
    from agent.settings import parse_ip
    if not ip_values:
        return "DHCP (as the live system started)"
    out = []
    for text in ip_values:
        ip = parse_ip(text)
        if ip.autoconf == "static":
            out.append(f"{ip.device or 'card'} {ip.client}/{ip.prefix}"
                       + (f" via {ip.gateway}" if ip.gateway else "")
                       + (f", DNS {' '.join(ip.dns)}" if ip.dns else ""))
        else:
            out.append(f"{ip.device or 'every card'} {ip.autoconf.upper()}")
    return "; ".join(out)


class NetworkScreen(Step):
    NAME = "network"
    TITLE = "Network"
    HELP = ("The table lists this machine's network cards: link up means a cable is plugged "
            "into a live switch port. The live system already asks DHCP on every card. If your "
            "network has no DHCP, choose Static, type the address as 10.0.0.9/24, the gateway "
            "and a DNS server, and press Apply.\n\nTest server checks that the server's address "
            "(set on the next screen, or on the boot line) answers from here.")

    def body(self) -> ComposeResult:
        yield DataTable(id="nics", cursor_type="row")
        with Horizontal(classes="row"):
            with RadioSet(id="method"):
                yield Choice("DHCP", value=True, id="dhcp")
                yield Choice("Static", id="static")
            with Grid(id="static-fields"):
                yield Label("Address")
                yield Input(placeholder="10.0.0.9/24", id="address")
                yield Label("Gateway")
                yield Input(placeholder="10.0.0.1", id="gateway")
                yield Label("DNS")
                yield Input(placeholder="10.0.0.1", id="dns")
        yield Static("", id="status")
        yield buttons(("next", "Next", "primary"), ("apply", "Apply", "default"),
                      ("test", "Test server", "default"))

    def on_mount(self) -> None:
        table = self.query_one("#nics", DataTable)
        table.add_columns("Card", "Link", "MAC", "Driver", "Addresses")
        self.show_nics(self.app.session.machine.nics if self.app.session.machine else [])
        self.query_one("#static-fields").display = False
        self.applied: str | None = None     # the static address last applied, in ip= form
        self.query_one("#next", Button).focus()

    def show_nics(self, nics) -> None:
        table = self.query_one("#nics", DataTable)
        table.clear()
        for nic in nics:
            link = f"up {nic.speed} Mb/s" if nic.link and nic.speed else "up" if nic.link else "down"
            table.add_row(nic.name, link, nic.mac, nic.driver or "?",
                          " ".join(nic.addresses) or "none", key=nic.name)
        if not nics:
            self.say("No network card was found: the transfer needs one. Check the cabling, or "
                     "the shell (F9 or Ctrl+T) for the card's driver.", True)

    @on(RadioSet.Changed, "#method")
    def method(self, event: RadioSet.Changed) -> None:
        self.query_one("#static-fields").display = event.pressed.id == "static"

    def typed(self) -> str | None:
        """The static address as typed, in ip= form (None: DHCP chosen); SettingsError."""
        if not self.query_one("#static", RadioButton).value:
            return None
        table = self.query_one("#nics", DataTable)
        nic = str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value) \
            if table.row_count else "eth0"
        return static_ip(nic, *(self.query_one(f"#{name}", Input).value
                                for name in ("address", "gateway", "dns")))

    @on(Button.Pressed, "#next")
    def next(self) -> None:
        try:
            wanted = self.typed()
        except SettingsError as e:
            self.say(" ".join(e.problems) + " Or choose DHCP.", True)
            return
        if wanted is not None and wanted != self.applied:
            self.say("Static is chosen but not applied yet: press Apply to set the address "
                     "(or choose DHCP).", True)
            return
        self.app.go("server")

    @on(Button.Pressed, "#apply")
    def apply(self) -> None:
        table = self.query_one("#nics", DataTable)
        if not table.row_count:
            self.say("There is no network card to configure.", True)
            return
        nic = str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        session = self.app.session
        try:
            text = self.typed() or f"{nic}:dhcp"
            session.settings = update(session.settings, {"ip": [text]})
        except SettingsError as e:
            self.say(" ".join(e.problems), True)
            return
        self.applied = text
        self.say(f"Configuring {nic}...")
        self.configure(nic, text)

    @work(thread=True, exclusive=True)
    def configure(self, nic: str, text: str) -> None:
        said = self.app.edges.configure_network(nic, parse_ip(text))
        self.post_message(NetworkDone(self.app.edges.nics(), said))

    @on(Button.Pressed, "#test")
    def test(self) -> None:
        settings = self.app.session.settings
        if not settings.server:
            self.say("No server address yet: press Next and type it on the Server screen.", True)
            return
        self.say(f"Asking {settings.server}...")
        self.test_server(settings.server)

    @work(thread=True, exclusive=True)
    def test_server(self, url: str) -> None:
        try:
            from agent.tui.server import reachable
            text = reachable(url)
        except (ServerError, OSError) as e:
            text = f"The server does not answer: {e}"
        self.post_message(NetworkDone(self.app.edges.nics(), text))

    def on_network_done(self, message: NetworkDone) -> None:
        self.show_nics(message.nics)
        self.say(message.text, message.text.startswith("The server does not") or "failed" in message.text)

"""Server: its address, token and certificate fingerprint, and a connection test."""

from __future__ import annotations

from urllib.parse import urlsplit

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import Button, Input, Label, Static

from agent.client import Client, ServerError, server_fingerprint
from agent.settings import SettingsError, update
from agent.tui.common import Step, buttons
from agent.tui.messages import ServerChecked
from xenp2v import protocol


def presented(url: str) -> str | None:
    """The fingerprint the server at `url` presents (None over plain HTTP)."""
    if urlsplit(url).scheme != "https":
        return None
    try:
        return server_fingerprint(url)
    except OSError as e:
        raise ServerError(f"Nothing answers at {url} ({e.strerror or e}). Check the address "
                          "and the network.") from None


def reachable(url: str) -> str:
    seen = presented(url)
    version = Client(url, "-", seen, retry_for=5, timeout=15).health().get("version", "?")
    return f"The server at {url} answers (version {version})."


def check(url: str, token: str, fingerprint: str | None) -> tuple[str | None, str]:
    """(fingerprint seen, sentence); raises ServerError when the server cannot be used."""
    seen = presented(url)
    client = Client(url, token, fingerprint or seen, retry_for=5, timeout=15)
    version = client.health().get("version", "?")
    client.request("GET", protocol.jobs_path(), what="check the token", retry_for=5)
    text = f"The server answers (version {version}) and accepts the token."
    if seen and not fingerprint:
        text += (" Compare the fingerprint it presents (above) with the one p2v-server printed; "
                 "if they are the same, press Trust it.")
    return seen, text


class ServerScreen(Step):
    TITLE = "Server"
    HELP = ("p2v-server printed three things when it started: its URL (https://HOST:PORT), a "
            "token, and the fingerprint of its certificate (sha256:...). Type the URL and the "
            "token, then press Test. The agent shows the fingerprint the server presents: "
            "compare it with the printed one, character by character at least at the start and "
            "the end. If they match, press Trust it. A different fingerprint means another "
            "machine answers: do not go on.")

    def __init__(self, then: type | None = None):
        super().__init__()
        self.then = then          # the screen after this one: Disks, or Restore on the manual path

    def body(self) -> ComposeResult:
        settings = self.app.session.settings
        with Grid(id="server-form"):
            yield Label("Server URL")
            yield Input(settings.server or "", placeholder="https://10.0.0.5:8443", id="url")
            yield Label("Token")
            yield Input(settings.token or "", password=True, id="token")
            yield Label("Fingerprint")
            yield Input(settings.fingerprint or "", placeholder="sha256:... (press Test)",
                        id="fingerprint")
        yield Static("", id="seen")
        yield Static("", id="status")
        yield buttons(("test", "Test", "primary"), ("trust", "Trust it", "default"),
                      ("next", "Next", "default"))

    def on_mount(self) -> None:
        self.seen: str | None = None
        self.tested: tuple | None = None
        self.query_one("#trust", Button).display = False
        self.query_one("#url" if not self.app.session.settings.server else "#test").focus()

    def values(self) -> tuple[str, str, str]:
        return tuple(self.query_one(f"#{name}", Input).value.strip()
                     for name in ("url", "token", "fingerprint"))

    @on(Input.Submitted)
    def submitted(self) -> None:
        self.test()

    @on(Button.Pressed, "#test")
    def test(self) -> None:
        url, token, fingerprint = self.values()
        try:
            update(self.app.session.settings, {"server": url or None, "token": token or None,
                                               "fingerprint": fingerprint or None})
        except SettingsError as e:
            self.say(" ".join(e.problems), True)
            return
        if not url or not token:
            self.say("Type the server's URL and its token, as p2v-server printed them.", True)
            return
        self.say(f"Testing {url}...")
        self.check(url, token, fingerprint or None)

    @work(thread=True, exclusive=True)
    def check(self, url: str, token: str, fingerprint: str | None) -> None:
        try:
            seen, text = check(url, token, fingerprint)
        except ServerError as e:
            self.post_message(ServerChecked(False, None, str(e)))
            return
        self.post_message(ServerChecked(True, seen, text))

    def on_server_checked(self, message: ServerChecked) -> None:
        self.say(message.text, not message.ok)
        self.seen = message.fingerprint
        url, token, fingerprint = self.values()
        if message.fingerprint:
            self.query_one("#seen", Static).update(
                f"The server presents:\n{message.fingerprint[:39]}\n"
                f"{' ' * 7}{message.fingerprint[39:]}")
        trust = bool(message.ok and message.fingerprint and not fingerprint)
        self.query_one("#trust", Button).display = trust
        if message.ok and not trust:
            self.tested = (url, token, fingerprint)
        self.query_one("#trust" if trust else "#next" if message.ok else "#test", Button).focus()

    @on(Button.Pressed, "#trust")
    def trust(self) -> None:
        self.query_one("#fingerprint", Input).value = self.seen or ""
        self.query_one("#trust", Button).display = False
        self.tested = self.values()
        self.say("Fingerprint trusted: the agent talks only to this server.")
        self.query_one("#next", Button).focus()

    @on(Button.Pressed, "#next")
    def next(self) -> None:
        url, token, fingerprint = self.values()
        if self.tested != (url, token, fingerprint):
            self.say("Press Test first: the agent goes on only with a server it has reached.", True)
            return
        session = self.app.session
        try:
            session.settings = update(session.settings, {"server": url, "token": token,
                                                         "fingerprint": fingerprint or None})
        except SettingsError as e:
            self.say(" ".join(e.problems), True)
            return
        if self.then:
            self.app.switch_screen(self.then())
            return
        from agent.tui.disks import DisksScreen
        self.app.push_screen(DisksScreen())

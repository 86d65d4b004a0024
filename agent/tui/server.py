"""Server: its address, token and certificate fingerprint, and a connection test."""

from __future__ import annotations

from urllib.parse import urlsplit

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import Button, Input, Label, Static

from agent.transfer.client import Client, ServerError, server_fingerprint
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


def same(a: str | None, b: str | None) -> bool:
    """Whether two fingerprints are the same, however they were written (case, colons)."""
    def digits(f: str) -> str:
        return f.lower().removeprefix("sha256:").replace(":", "")
    return bool(a and b) and digits(a) == digits(b)


def token_accepted(url: str, token: str, fingerprint: str | None, job: str | None = None) -> str:
    """A sentence once the server (pinned to `fingerprint` over HTTPS) accepted the token;
    raises ServerError when the server cannot be used. With the `job` the boot line gives, the
    token is asked to read that job: a job's own token (the Done screen's line) may not list."""
    client = Client(url, token, fingerprint, retry_for=5, timeout=15)
    version = client.health().get("version", "?")
    client.request("GET", protocol.job_path(job) if job else protocol.jobs_path(),
                   what="check the token", retry_for=5)
    return f"The server answers (version {version}) and accepts the token."


class ServerScreen(Step):
    NAME = "server"
    TITLE = "Server"
    HELP = ("p2v-server printed three things when it started: its URL (https://HOST:PORT), a "
            "token, and the fingerprint of its certificate (sha256:...). Type the URL and the "
            "token, then press Test. The agent shows the fingerprint the server presents: "
            "compare it with the printed one, character by character at least at the start and "
            "the end. If they match, press Trust it. A different fingerprint means another "
            "machine answers: do not go on.")

    def __init__(self, then: str | None = None):
        super().__init__()
        self.then = then          # the next screen's name: disks, or restore on the manual path

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
        self.trusting = False          # the check running is the one Trust it started
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
        self.query_one("#trust", Button).display = False
        self.say(f"Testing {url}...")
        self.check(url, token, fingerprint or None)

    @work(thread=True, exclusive=True)
    def check(self, url: str, token: str, fingerprint: str | None) -> None:
        """First the certificate alone (a TLS handshake, nothing sent); the token goes only to
        the certificate the person trusts."""
        try:
            seen = presented(url)
            if seen and not same(seen, fingerprint):
                text = ("Compare the fingerprint the server presents (above) with the one "
                        "p2v-server printed; if they are the same, press Trust it (Tab, then "
                        "Enter). The token is sent only then." if not fingerprint else
                        "The server presents a different fingerprint from the one typed: another "
                        "machine may answer. Do not go on; check the address, or compare the "
                        "fingerprint again.")
                self.post_message(ServerChecked(not fingerprint, seen, text, token_checked=False))
                return
            text = token_accepted(url, token, seen, self.app.session.settings.job)
        except ServerError as e:
            self.post_message(ServerChecked(False, None, str(e)))
            return
        self.post_message(ServerChecked(True, seen, text))

    def on_server_checked(self, message: ServerChecked) -> None:
        trusted = self.trusting and message.ok and message.token_checked
        self.trusting = False
        self.say(("Fingerprint trusted: the agent talks only to this server. " if trusted else "")
                 + message.text, not message.ok)
        self.seen = message.fingerprint
        if message.fingerprint:
            self.query_one("#seen", Static).update(
                f"The server presents:\n{message.fingerprint[:39]}\n"
                f"{' ' * 7}{message.fingerprint[39:]}")
        trust = message.ok and not message.token_checked
        self.query_one("#trust", Button).display = trust
        if message.ok and message.token_checked:
            self.tested = self.values()
            self.keep()
        # Trust it is never focused for the person: two tired Enters (Test, then Trust it) would
        # trust any certificate unread. Tab reaches it, a step taken on purpose.
        self.query_one("#next" if message.ok and not trust else "#test", Button).focus()

    @on(Button.Pressed, "#trust")
    def trust(self) -> None:
        self.query_one("#fingerprint", Input).value = self.seen or ""
        self.query_one("#trust", Button).display = False
        url, token, fingerprint = self.values()
        self.say("Sending the token to the server whose certificate you trusted...")
        self.trusting = True
        self.check(url, token, fingerprint)

    def keep(self) -> None:
        """What is typed, into the settings when it is valid: going back loses nothing."""
        url, token, fingerprint = self.values()
        try:
            self.app.session.settings = update(self.app.session.settings, {
                "server": url or None, "token": token or None, "fingerprint": fingerprint or None})
        except SettingsError:
            pass

    def action_back(self) -> None:
        self.keep()
        super().action_back()

    @on(Button.Pressed, "#next")
    def next(self) -> None:
        url, token, fingerprint = self.values()
        if self.tested != (url, token, fingerprint):
            self.say("Press Test: the agent goes on only with a server that accepted the token "
                     "(the values changed since the last test, or it did not pass).", True)
            return
        session = self.app.session
        try:
            session.settings = update(session.settings, {"server": url, "token": token,
                                                         "fingerprint": fingerprint or None})
        except SettingsError as e:
            self.say(" ".join(e.problems), True)
            return
        if self.then:
            self.app.go(self.then, replace=True)
            return
        self.app.go("disks")

"""What every screen shares: the title line, F1 help, the shell escape, quit with confirmation."""

from __future__ import annotations

import re

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Checkbox, Footer, Input, ProgressBar, RadioButton, Static

from agent.tui.ascii import AsciiBar

# The screens of each flow, numbered in the title line. A restore's Done comes only when it
# stopped, in place of Repair: no step of that flow, so it has no number there.
STEPS = ("Start", "Network", "Server", "Disks", "VM", "Summary", "Transfer", "Done")
RESTORE_STEPS = ("Start", "Server", "Restore", "Repair")   # Server only when the boot line lacks a fingerprint
REPAIR_STEPS = ("Start", "Repair")


class Step(Screen):
    """One screen of the flow. Subclasses set NAME (what `app.go` knows them by), TITLE, HELP
    and compose `body()`."""

    NAME = ""
    TITLE = ""
    HELP = ""
    BINDINGS = [
        Binding("f1", "help", "Help"),
        # Ctrl+T too, and the footer says so: a VT100 or a serial console's keyboard has no F9.
        Binding("f9,ctrl+t", "app.shell", "Shell", key_display="f9/^t"),
        Binding("escape", "back", "Back"),
        Binding("ctrl+q", "app.quit", "Quit", priority=True),
    ]

    def compose(self) -> ComposeResult:
        steps = self.app.session.steps
        where = f"  step {steps.index(self.TITLE) + 1} of {len(steps)}" if self.TITLE in steps else ""
        yield Static(f" xenp2v  |  {self.TITLE}{where}", id="title")
        with Vertical(id="body"):
            yield from self.body()
        yield Footer()

    def body(self) -> ComposeResult:
        yield from ()

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(self.TITLE, self.HELP))

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()

    def say(self, text: str, problem: bool = False) -> None:
        """The screen's status line: what just happened, or what to do about a problem (in the
        screens' words: the core's errors speak of flags)."""
        line = self.query_one("#status", Static)
        line.update(in_form_words(text) if problem else text)
        line.set_class(problem, "problem")


# The core's errors (agent.transfer.client, agent.transfer.capture, agent.repair) tell someone at a shell which
# flag or boot-line key to change; on a screen, the field or the choice that sets it.
FORM_WORDS = (
    (re.compile(r"check --token \(p2v\.token=\)"), "check the Token field"),
    (re.compile(r"pass the token p2v-server printed \(--token or p2v\.token=\)"),
     "type the token p2v-server printed in the Token field"),
    (re.compile(r"Check that --server points"), "Check that the Server URL points"),
    (re.compile(r"Pass the fingerprint p2v-server printed: --fingerprint sha256:HEX "
                r"\(p2v\.fingerprint=\)"),
     "Type the fingerprint p2v-server printed in the Fingerprint field, or press Test"),
    (re.compile(r"To repair a disk attached here, name it with --disk\."), ""),
    (re.compile(r", or name the disk to repair \(--disk\)"), ""),
    (re.compile(r"name them with --disks \(p2v\.disks=\)"),
     "load their controller's driver in the shell, then Look again"),
    (re.compile(r"Check the disk names given with --disks"), "Check the disks ticked"),
    # agent.vmspec's warnings about a disk left out.
    (re.compile(r"is not chosen \(--disks, p2v\.disks=\)"), "is not ticked"),
    (re.compile(r"Add it to the disks chosen\."), "Go back to Disks (Esc) to tick it."),
    # agent.transfer.targets: a restore's disks are named on the boot line, not on a screen.
    (re.compile(r"p2v\.disks=(?! on the boot line)"), "p2v.disks= on the boot line"),
)


def in_form_words(text: str) -> str:
    """`text` with the flags the core names replaced by the screens' words (FORM_WORDS)."""
    for flag, words in FORM_WORDS:
        text = flag.sub(words, text)
    return re.sub(r"  +", " ", text).strip()


def buttons(*items: tuple[str, str, str]) -> Horizontal:
    """A row of buttons from (id, label, variant)."""
    return Horizontal(*(Button(label, id=bid, variant=variant) for bid, label, variant in items),
                      classes="buttons")


class _Glyphs:
    """Textual's toggle glyphs made plain: ON inside when set, blank when not (the VGA console's
    16 colours draw Textual's on and off alike); LEFT and RIGHT frame it in ASCII."""

    ON = LEFT = RIGHT = ""

    @property
    def BUTTON_INNER(self) -> str:  # noqa: N802 - Textual's name
        return self.ON if self.value else " "

    @property
    def BUTTON_LEFT(self) -> str:  # noqa: N802
        return self.LEFT if self.app.ascii else super().BUTTON_LEFT

    @property
    def BUTTON_RIGHT(self) -> str:  # noqa: N802
        return self.RIGHT if self.app.ascii else super().BUTTON_RIGHT


class Tick(_Glyphs, Checkbox):
    """A checkbox: X ticked, blank not; [X] in ASCII."""

    ON, LEFT, RIGHT = "X", "[", "]"


class Choice(_Glyphs, RadioButton):
    """A radio button: * chosen, blank not; (*) in ASCII."""

    ON, LEFT, RIGHT = "*", "(", ")"


class TrackBar(ProgressBar):
    """A progress bar drawn # done, - to go in ASCII (the same glyph for both, told apart by
    colour alone, elsewhere)."""

    @property
    def BAR_RENDERABLE(self) -> type:  # noqa: N802 - Textual's name
        return AsciiBar if self.app.ascii else ProgressBar.BAR_RENDERABLE


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "close", "Close")]

    def __init__(self, title: str, text: str):
        super().__init__()
        self.title_text, self.text = title, text

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="help"):
            yield Static(f"Help: {self.title_text}", classes="dialog-title")
            with VerticalScroll():
                yield Static(self.text + "\n\n" + KEYS_HELP)
            yield buttons(("close", "Close", "primary"))

    def on_button_pressed(self) -> None:
        self.dismiss()

    def action_close(self) -> None:
        self.dismiss()


KEYS_HELP = ("Keys: Tab and Shift+Tab move between fields, Enter presses a button, arrows move in "
             "lists and tables, Space ticks a box. F1 help, F9 or Ctrl+T a shell (type exit to "
             "come back), Esc goes back a step, Ctrl+Q quits.")


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; dismisses with True for yes."""

    BINDINGS = [Binding("escape", "no", "No")]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No"):
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question)
            yield buttons(("no", self.no, "primary"), ("yes", self.yes, "warning"))

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_no(self) -> None:
        self.dismiss(False)


class PassphraseScreen(ModalScreen[bytes | None]):
    """Asks for a LUKS passphrase, never shown; dismisses with it, or None when skipped."""

    BINDINGS = [Binding("escape", "skip", "Skip")]

    def __init__(self, prompt: str):
        super().__init__()
        self.prompt = prompt

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.prompt.rstrip(": ") + ". It is used for this repair only, never "
                         "stored or sent.")
            yield Input(password=True, id="passphrase")
            yield buttons(("unlock", "Unlock", "primary"), ("skip", "Skip", "default"))

    def on_input_submitted(self) -> None:
        self.unlock()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "unlock":
            self.unlock()
        else:
            self.action_skip()

    def unlock(self) -> None:
        self.dismiss(self.query_one("#passphrase", Input).value.encode() or None)

    def action_skip(self) -> None:
        self.dismiss(None)

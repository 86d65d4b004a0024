"""What a repair will do, as data: file changes and chroot commands, grouped by named step."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field


REPORT_DIFF_LIMIT = 64 * 1024


@dataclass(frozen=True)
class FileChange:
    """One file in the guest: `old` None means created, `new` None means removed."""

    path: str                 # absolute inside the guest, e.g. /etc/fstab
    old: str | None
    new: str | None
    like: str | None = None   # a created file takes this guest file's mode and owner (a rename)

    def diff(self) -> str:
        a = [] if self.old is None else self.old.splitlines(keepends=True)
        b = [] if self.new is None else self.new.splitlines(keepends=True)
        before = "/dev/null" if self.old is None else f"a{self.path}"
        after = "/dev/null" if self.new is None else f"b{self.path}"
        lines = difflib.unified_diff(a, b, before, after)
        return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                       for line in lines)


@dataclass(frozen=True)
class Command:
    """A command run inside the guest (chroot); `why` says what it is for."""

    argv: tuple[str, ...]
    why: str

    def __str__(self) -> str:
        return " ".join(self.argv)


@dataclass
class StepPlan:
    name: str
    changes: list[FileChange] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # what the step saw or chose not to do
    # What a technician must see: the VM may come up without something, or a guess to check.
    warnings: list[str] = field(default_factory=list)

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    @property
    def empty(self) -> bool:
        return not self.changes and not self.commands

    def report_diff(self) -> str:
        """The step's file changes as one unified diff for the report the server keeps and
        shows, cut at REPORT_DIFF_LIMIT characters (the report travels in one JSON body)."""
        text = "".join(change.diff() for change in self.changes)
        if len(text) <= REPORT_DIFF_LIMIT:
            return text
        return (text[:REPORT_DIFF_LIMIT] + f"\n… cut at {REPORT_DIFF_LIMIT} characters; the "
                "guest keeps every original under /var/backups/xenp2v.\n")


@dataclass
class Plan:
    steps: list[StepPlan] = field(default_factory=list)

    @property
    def changes(self) -> list[FileChange]:
        return [c for s in self.steps for c in s.changes]

    @property
    def commands(self) -> list[Command]:
        return [c for s in self.steps for c in s.commands]

    @property
    def warnings(self) -> list[str]:
        return [w for s in self.steps for w in s.warnings]

    def render(self) -> str:
        """Every step, its notes, commands and a unified diff of every file it changes."""
        out = []
        for step in self.steps:
            out.append(f"== {step.name}: " + ("nothing to do" if step.empty else
                       f"{len(step.changes)} file(s), {len(step.commands)} command(s)"))
            out.extend(f"   WARNING: {warning}" for warning in step.warnings)
            out.extend(f"   {note}" for note in step.notes)
            out.extend(f"   $ {cmd}    # {cmd.why}" for cmd in step.commands)
            out.extend(change.diff() for change in step.changes)
        out.extend(f"WARNING: {warning}" for warning in self.warnings)
        return "\n".join(out) + "\n"

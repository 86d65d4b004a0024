"""The edge that changes the guest: file writes with backups, chroot commands, the guest's log.

Apply is all-or-nothing for the files it writes: each write is journalled, and when any step
fails every file is put back from its backup (with its mode, owner and times), the files it
created are removed, and so are the directories and backups it made for them.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from agent.repair.guest import RepairError
from agent.repair.plan import Command, FileChange, StepPlan
from agent.repair.tree import LinkLoop, is_special, resolve_guest

LOG = "/var/log/xenp2v-repair.log"
BACKUPS = "/var/backups/xenp2v"


def host_path(root: Path, path: str) -> Path:
    """Where a guest path is on this machine, its links followed inside the guest (as chroot
    would); refuses a path that ends in the guest's /dev, /proc, /sys or /run."""
    try:
        resolved = resolve_guest(root, path)
    except LinkLoop as e:
        raise RepairError(f"{e}; fix or remove that link and run repair again.") from None
    if is_special(resolved):
        raise RepairError(f"{path} in the guest leads to {resolved}, which is not a file repair can "
                          "change; fix or remove that link and run repair again.")
    return root / resolved.lstrip("/")


@dataclass
class Journal:
    """What apply changed so far, to put back: (file, its backup or None when created, its stat)."""

    written: list[tuple[Path, Path | None, os.stat_result | None]] = field(default_factory=list)
    made_dirs: list[Path] = field(default_factory=list)      # created by apply, outermost first

    def stat_of(self, path: Path) -> os.stat_result | None:
        """The file's stat before apply touched it (it may be gone since), or None."""
        for target, _, st in self.written:
            if target == path:
                return st
        try:
            return os.stat(path)
        except OSError:
            return None

    def mkdirs(self, directory: Path) -> None:
        missing = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for d in reversed(missing):
            d.mkdir()
            self.made_dirs.append(d)

    def roll_back(self) -> list[str]:
        """Put every file back; returns what could not be (with where its backup is)."""
        failed = []
        for target, saved, st in reversed(self.written):
            try:
                if saved is None:
                    if os.path.lexists(target):
                        target.unlink()
                    continue
                # The backup itself goes back in place (a rename: no room needed on a full
                # filesystem); a copy only when it sits on another filesystem of the guest.
                os.chown(saved, st.st_uid, st.st_gid)
                os.chmod(saved, st.st_mode & 0o7777)
                os.utime(saved, ns=(st.st_atime_ns, st.st_mtime_ns))
                try:
                    os.replace(saved, target)
                except OSError as e:
                    if e.errno != errno.EXDEV:
                        raise
                    tmp = target.with_name(target.name + ".xenp2v-undo")
                    try:
                        _write_new(tmp, saved.read_bytes())
                        os.chown(tmp, st.st_uid, st.st_gid)
                        os.chmod(tmp, st.st_mode & 0o7777)
                        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
                        os.replace(tmp, target)
                    except OSError:
                        tmp.unlink(missing_ok=True)
                        raise
                    saved.unlink()
            except OSError as e:
                failed.append(f"{target} ({e.strerror}; its backup is {saved})")
        for d in reversed(self.made_dirs):
            try:
                d.rmdir()
            except OSError:
                pass
        return failed


def write_change(root: Path, change: FileChange, backup_dir: str, journal: Journal | None = None) -> None:
    journal = journal if journal is not None else Journal()
    target = host_path(root, change.path)
    again = any(t == target for t, _, _ in journal.written)   # a second change to one file
    st = os.stat(target) if target.exists() else None
    saved = None
    if st is not None and not again:
        saved = host_path(root, backup_dir + change.path)
        journal.mkdirs(saved.parent)
        try:
            shutil.copy2(target, saved)
        except OSError:
            saved.unlink(missing_ok=True)     # a partial backup (a full filesystem) goes
            raise
    if change.new is None:
        if not again:
            journal.written.append((target, saved, st))
        target.unlink(missing_ok=True)
        return
    tmp = target.with_name(target.name + ".xenp2v-new")
    # A renamed file (`like`) keeps what it was: its mode and owner (0600 root:root stays so).
    was = st or (journal.stat_of(host_path(root, change.like)) if change.like else None)
    try:
        journal.mkdirs(target.parent)
        _write_new(tmp, change.new.encode("utf-8", errors="surrogateescape"))
        os.chmod(tmp, was.st_mode & 0o7777 if was else 0o644)
        if was:
            os.chown(tmp, was.st_uid, was.st_gid)
    except OSError:
        # The file itself is untouched: only the half-written new one and its backup go.
        tmp.unlink(missing_ok=True)
        if saved is not None:
            saved.unlink(missing_ok=True)
        raise
    if not again:       # the first change's backup holds the file as it was: that one goes back
        journal.written.append((target, saved, st))
    os.replace(tmp, target)


def _write_new(path: Path, data: bytes) -> None:
    """Write a fresh file at `path`, never through what is there: a guest's own link at that name
    (`fstab.xenp2v-new -> /etc/shadow`) would lead the write onto this machine."""
    if os.path.lexists(path):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def apply_plan(root: Path, steps: list[StepPlan], run_command: Callable[[Command], tuple[int, str]],
               say: Callable[[str], None]) -> list[dict]:
    """Apply every step in order. Returns the per-step report.

    The backups of one run sit together under /var/backups/xenp2v/<time>/, at the files' paths.
    Raises RepairError when a step fails (a command's non-zero status, a file that cannot be
    written), after putting every file back as it was; the message names the step and says so.
    """
    backup_dir = f"{BACKUPS}/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    report: list[dict] = []
    journal = Journal()
    ran: list[str] = []
    for step in steps:
        entry = {"step": step.name, "files": [c.path for c in step.changes],
                 "commands": [str(c) for c in step.commands], "notes": step.notes,
                 "warnings": step.warnings, "diff": step.report_diff(), "status": "ok"}
        report.append(entry)
        for warning in step.warnings:
            say(f"WARNING: {warning}")
        if step.empty:
            entry["status"] = "nothing to do"
            continue
        say(f"{step.name}:")
        for note in step.notes:
            say(f"  {note}")
        doing = ""
        try:
            for change in step.changes:
                doing = change.path
                existed = host_path(root, change.path).exists()
                write_change(root, change, backup_dir, journal)
                verb = "removed" if change.new is None else "changed" if existed else "created"
                say(f"  {verb} {change.path}" + (f" (backup in {backup_dir})" if existed else ""))
            for cmd in step.commands:
                doing = str(cmd)
                say(f"  $ {cmd}")
                status, output = run_command(cmd)
                lines = output.strip().splitlines()
                for line in lines[-20:]:
                    say(f"    {line}")
                if status != 0:
                    raise RepairError(f"'{cmd}' exited with status {status}" +
                                      (f" ({lines[-1].strip()})" if lines else ""))
                ran.append(str(cmd))
        except (RepairError, OSError) as e:
            entry["status"] = "failed"
            why = str(e) if isinstance(e, RepairError) else f"{doing}: {e.strerror or e}"
            raise RepairError(_failed(step.name, why, journal.roll_back(), ran)) from None
    return report


def _failed(step: str, why: str, not_put_back: list[str], ran: list[str]) -> str:
    if not_put_back:
        undone = ("Some files could not be put back, restore them by hand: " + "; ".join(not_put_back) + ".")
    else:
        undone = "Every file the repair had changed was put back as it was."
    tools = (f" Commands that had already run ({', '.join(ran)}) are not undone; rerunning repair "
             "runs them again." if ran else "")
    return f"Step '{step}' failed: {why}. {undone}{tools} Fix the cause and run repair again."


def append_log(root: Path, lines: list[str]) -> str | None:
    """Append to the guest's repair log. Returns None, or a sentence when it could not be written
    (a guest filesystem the repair filled): the repair itself is done by then and stays."""
    try:
        log = host_path(root, LOG)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
    except (OSError, RepairError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return f"The repair is done, but its log could not be written to the guest's {LOG} ({why})."
    return None

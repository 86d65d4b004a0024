"""The edge that changes the guest: file writes with backups, chroot commands, the guest's log."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

from agent.repair.guest import RepairError
from agent.repair.plan import Command, FileChange, StepPlan

LOG = "/var/log/xenp2v-repair.log"
BACKUPS = "/var/backups/xenp2v"


def host_path(root: Path, path: str) -> Path:
    """Where a guest path is on this machine; refuses a path that leads out of the guest."""
    host = root / path.lstrip("/")
    real = Path(os.path.realpath(host))
    if real != root and root.resolve() not in real.parents:
        raise RepairError(f"{path} in the guest points outside it ({real}); fix or remove that link and run repair again.")
    return real


def write_change(root: Path, change: FileChange, backup_dir: str) -> None:
    target = host_path(root, change.path)
    if change.old is not None and target.exists():
        saved = host_path(root, backup_dir + change.path)
        saved.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(target, saved)
    if change.new is None:
        target.unlink(missing_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = target.stat().st_mode & 0o7777 if target.exists() else 0o644
    tmp = target.with_name(target.name + ".xenp2v-new")
    tmp.write_text(change.new, encoding="utf-8", errors="surrogateescape")
    os.chmod(tmp, mode)
    os.replace(tmp, target)


def apply_plan(root: Path, steps: list[StepPlan], run_command: Callable[[Command], tuple[int, str]],
               say: Callable[[str], None]) -> list[dict]:
    """Apply every step in order; stop at the first failing command. Returns the per-step report.

    The backups of one run sit together under /var/backups/xenp2v/<time>/, at the files' paths.
    """
    backup_dir = f"{BACKUPS}/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    report = []
    for step in steps:
        entry = {"step": step.name, "files": [c.path for c in step.changes],
                 "commands": [str(c) for c in step.commands], "notes": step.notes, "status": "ok"}
        report.append(entry)
        if step.empty:
            entry["status"] = "nothing to do"
            continue
        say(f"{step.name}:")
        for note in step.notes:
            say(f"  {note}")
        for change in step.changes:
            write_change(root, change, backup_dir)
            verb = "removed" if change.new is None else "created" if change.old is None else "changed"
            say(f"  {verb} {change.path}" + (f" (backup in {backup_dir})" if change.old is not None else ""))
        for cmd in step.commands:
            say(f"  $ {cmd}")
            status, output = run_command(cmd)
            for line in output.strip().splitlines()[-20:]:
                say(f"    {line}")
            if status != 0:
                entry["status"] = "failed"
                raise RepairError(f"Step '{step.name}' failed: '{cmd}' exited with status {status}. "
                                  f"The guest's {LOG} has its output; fix the cause and run repair again.")
    return report


def append_log(root: Path, lines: list[str]) -> None:
    log = host_path(root, LOG)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))

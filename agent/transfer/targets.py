"""Where a restore writes: the disks named for it (p2v.disks=, --target) or else this VM's free
disks, one for each disk of the job in the job's order, every one checked before a byte is
written: not the disk the live system runs from, nothing mounted or held on it, large enough."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Callable

from agent.transfer.progress import human
from agent.transfer.restore import (RestoreError, check_no_other_name, check_target_free,
                                    check_target_kind, check_whole_and_writable, loop_maps)
from xenp2v.units import counted


@dataclass
class Target:
    path: str
    size: int | None = None       # bytes; None: a file still to be made, as large as the image
    problem: str | None = None    # why a restore must not write it, as a sentence
    # What the name leads to, whatever it is called: ("block", st_rdev), ("file", st_dev,
    # st_ino) (also a loop device's backing file), ("new", its directory's st_dev and st_ino,
    # its name). Two targets that share one would have the second disk written over the first.
    same: set[tuple] = field(default_factory=set)


def identities(path: str) -> set[tuple]:
    """What writing `path` writes, under every name it has here (see Target.same). A file still
    to be made is known by its directory (device and inode: bind mounts and links give one
    directory many paths) and its name."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = os.stat(os.path.dirname(os.path.abspath(path)))
        return {("new", parent.st_dev, parent.st_ino, os.path.basename(path))}
    if stat.S_ISBLK(st.st_mode):
        found = {("block", st.st_rdev)}
        maps = loop_maps(st.st_rdev)
        if maps:
            found.add(maps)
        return found
    return {("file", st.st_dev, st.st_ino)}


def writable(path: str) -> str | None:
    """Why the file `path` (or, for a file still to be made, its directory) cannot be written,
    as a sentence; None when it can."""
    where = path if os.path.exists(path) else os.path.dirname(os.path.abspath(path))
    if os.statvfs(where).f_flag & os.ST_RDONLY:
        return (f"{path} is on a read-only filesystem; choose a target on a writable one (or "
                "remount it read-write) and start again.")
    if not os.access(where, os.W_OK):
        return (f"{path} cannot be written ({'it' if where == path else 'its directory'} is not "
                "writable for this user); choose another target and start again.")
    return None


def look(path: str) -> Target:
    """What `path` is, read from this machine (the edge a test replaces)."""
    try:
        check_target_kind(path)
        if not os.path.exists(path):
            return Target(path, same=identities(path), problem=writable(path))
        problem = writable(path) if os.path.isfile(path) else None
        if problem:
            return Target(path, problem=problem)
        check_whole_and_writable(path)
        check_target_free(path)
        check_no_other_name(path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return Target(path, os.lseek(fd, 0, os.SEEK_END), same=identities(path))
        finally:
            os.close(fd)
    except RestoreError as e:
        return Target(path, problem=str(e))
    except OSError as e:
        return Target(path, problem=f"{path} cannot be read ({e.strerror}); choose another disk "
                      "('lsblk' lists them) and start again.")


def device(name: str, how: str = "p2v.disks=") -> str:
    """A disk as p2v.disks names it (xvdb or /dev/xvdb) as a path; a --target as given (a bare
    name there is a file in the current directory, as `p2v-agent restore --target` reads it)."""
    return name if "/" in name or how != "p2v.disks=" else f"/dev/{name}"


def choose(job: dict, named: list[str] | None, free: Callable[[], list[str]],
           how: str = "p2v.disks=", look: Callable[[str], Target] = look) -> list[str]:
    """The target of each disk of `job`, in the job's order: the `named` disks (set with `how`),
    else the first of `free()`. Raises RestoreError saying what to do."""
    disks = sorted(job["disks"], key=lambda d: d.get("position", 0))
    wanted = ", ".join(f"{d['id']} of {human(d['size'])}" for d in disks)
    has = f"Job {job['id']} has {counted(len(disks), 'disk')} ({wanted})"
    if named:
        paths = [device(n, how) for n in named]
        if len(paths) != len(disks):
            raise RestoreError(f"{has} but {how} names {counted(len(paths), 'disk')} to write "
                               f"({', '.join(paths)}); name one disk for each, in that order.")
        twice = next((p for i, p in enumerate(paths) if p in paths[:i]), None)
        if twice:
            raise RestoreError(f"{how} names {twice} twice; name one disk for each disk of job "
                               f"{job['id']} ({wanted}), in that order.")
    else:
        found = free()
        if len(found) < len(disks):
            raise RestoreError(
                f"{has} but this machine has {counted(len(found), 'free disk')}"
                + (f" ({', '.join(found)})" if found else "") + ". Attach a disk at least as "
                "large for each disk of the job, in that order, and start again; or name the "
                f"disks to write with {how} (one for each, in that order).")
        paths = found[:len(disks)]
    seen: dict[tuple, str] = {}
    for disk, path in zip(disks, paths):
        target = look(path)
        if target.problem:
            raise RestoreError(target.problem + (f" ({how} names it.)" if named else ""))
        other = next((seen[i] for i in target.same if i in seen), None)
        if other:
            raise RestoreError(
                f"{other} and {path} are the same disk (or file) under two names, so the second "
                f"disk of the job would be written over the first; {how} must name one disk "
                f"for each disk of job {job['id']} ({wanted}), each a different one.")
        seen.update((i, path) for i in target.same)
        if target.size is not None and target.size < disk["size"]:
            raise RestoreError(
                f"{path} holds {human(target.size)} ({target.size} bytes) but disk {disk['id']} "
                f"of job {job['id']}, which goes onto it, is {human(disk['size'])} ({disk['size']} bytes): "
                + (f"give a disk at least that large with {how}" if named else
                   f"make it at least that large, or name the disks to write with {how}")
                + f" ({wanted}, in that order).")
    return paths

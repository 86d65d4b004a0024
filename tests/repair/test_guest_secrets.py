"""A guest program the repair runs cannot read the server's token: not on the kernel command
line, not in the agent's command line or environment."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import ExitStack
from pathlib import Path

from agent.repair import guest
from support import needs_root, run

TOKEN = "s3cr3t-job-token-0123456789abcdef"


def tiny_root(root: Path) -> None:
    """A guest with sh and cat (the host's, with their libraries)."""
    for tool in ("sh", "cat"):
        binary = Path(shutil.which(tool)).resolve()
        libs = [w for w in run("ldd", str(binary)).stdout.split() if w.startswith("/")]
        for path in [binary, *map(Path, libs)]:
            for name in {str(path), str(path.resolve())}:
                dest = root / name.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
        (root / "bin").mkdir(exist_ok=True)
        if not (root / "bin" / tool).exists():
            shutil.copy2(binary, root / "bin" / tool)
    for lib in ("lib", "lib64"):
        if Path(f"/{lib}").is_symlink() and not (root / lib).exists():
            os.symlink(os.readlink(f"/{lib}"), root / lib)


def test_a_guest_program_cannot_read_the_token(tmp_path, monkeypatch):
    needs_root()
    root = tmp_path / "root"
    tiny_root(root)
    (root / "proc").mkdir()
    kernel = tmp_path / "cmdline"          # what the VM's kernel was booted with
    kernel.write_text(f"BOOT_IMAGE=/live/vmlinuz boot=live p2v.server=https://10.0.0.5:8443 "
                      f"p2v.token={TOKEN} p2v.mode=auto\n")
    monkeypatch.setattr(guest, "CMDLINE", kernel)
    monkeypatch.setenv("P2V_TOKEN", TOKEN)  # whatever the agent's environment holds
    # The agent, or anything on the live system, with the token in its command line.
    holder = subprocess.Popen(["sh", "-c", "sleep 60", f"p2v.token={TOKEN}"])
    with ExitStack() as stack:
        run("mount", "-t", "proc", "proc", str(root / "proc"))           # as guest.enter does
        stack.callback(subprocess.run, ["umount", "-l", str(root / "proc")])
        run("mount", "--bind", str(kernel), str(root / "proc/cmdline"))  # the kernel's line
        stack.callback(subprocess.run, ["umount", str(root / "proc/cmdline")])
        proc = guest.chroot(root, ("sh", "-c", "cat /proc/cmdline; echo; "
                                   "for f in /proc/[0-9]*/cmdline /proc/[0-9]*/environ; do "
                                   "cat $f; echo; done; echo env; cat /proc/self/environ"))
    holder.kill()
    holder.wait()
    assert proc.returncode == 0, proc.stderr
    seen = proc.stdout.replace("\0", " ")
    assert "p2v.server=https://10.0.0.5:8443" in seen and "p2v.mode=auto" in seen   # the rest stays
    assert TOKEN not in seen, seen
    assert "p2v.token" not in seen, seen

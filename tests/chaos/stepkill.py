"""p2v-server that kills itself with SIGKILL at one chosen step of a chunk write, a seal or a
restore read: what `kill -9` (or a power cut) at that very moment does to it.

    python tests/chaos/stepkill.py STEP N PYTHON -m server.cli serve ARGS...

STEP is a key of STEPS; the kill comes on the Nth time the server reaches it (counted from its
start). The chaos suite (tests/chaos/run.py) starts the server this way through P2VServer's
``prefix``, the command line after N being the one P2VServer builds. Nothing in the server knows.
"""

from __future__ import annotations

import functools
import itertools
import os
import runpy
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# step -> (class in server.store, method, "before" or "after" it runs)
STEPS = {
    "chunk write: received, not written": ("Store", "_write", "before"),
    "chunk write: in the image, not synced or journaled": ("Store", "_write", "after"),
    "chunk write: synced and journaled, answer racing": ("Journal", "_commit", "after"),
    "seal: checked, zero chunks not yet punched": ("Store", "_zero_fill", "before"),
    "seal: punched and synced, not marked sealed": ("Store", "_mark_sealed", "before"),
    "seal: marked sealed, not answered": ("Store", "_mark_sealed", "after"),
    "restore: chunk asked for, not read": ("Store", "read_chunk", "before"),
    "restore: chunk read, not answered": ("Store", "read_chunk", "after"),
}


def arm(step: str, nth: int) -> None:
    from server import store
    cls_name, method, when = STEPS[step]
    cls = getattr(store, cls_name)
    original = getattr(cls, method)
    calls = itertools.count(1)

    def die() -> None:
        sys.stderr.write(f"chaos: kill -9 at step '{step}' (call {nth})\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    @functools.wraps(original)
    def hooked(*args, **kw):
        hit = next(calls) == nth
        if hit and when == "before":
            die()
        result = original(*args, **kw)
        if hit:
            die()
        return result

    setattr(cls, method, hooked)


def main() -> None:
    step, nth, command = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    at = command.index("-m")
    module, args = command[at + 1], command[at + 2:]
    sys.path.insert(0, str(REPO))
    arm(step, nth)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

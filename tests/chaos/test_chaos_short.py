"""The short form of `make chaos` (tests/chaos/run.py): every kind of fault once or a few times,
in under a minute; the table is printed when it fails."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from support import needs_root


def test_chaos_short(capsys):
    needs_root()
    spec = importlib.util.spec_from_file_location("xenp2v_chaos", Path(__file__).with_name("run.py"))
    chaos = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = chaos  # its dataclasses look their module up there
    spec.loader.exec_module(chaos)
    code = chaos.main(["--short"])
    out = capsys.readouterr().out
    assert code == 0, out

"""The headless parts (everything but agent.tui) never import textual."""

import pkgutil
import subprocess
import sys

import agent
import server


def headless_modules():
    for pkg in (agent, server):
        for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if not mod.name.startswith("agent.tui"):
                yield mod.name


def test_headless_modules_do_not_import_textual():
    mods = sorted(headless_modules()) + ["xenp2v.protocol"]
    code = ";".join(f"import {m}" for m in mods) + ";import sys;print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"textual imported by one of: {mods}"

"""The live ISO installs the agent with `pip install 'xenp2v[agent]'` and nothing else: every
module the agent (and the shared xenp2v package) imports must come with Python, with this
repository, or with a distribution that the core dependencies or the agent extra name."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OURS = {"agent", "xenp2v", "server"}


def requirement_names(specs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", s, maxsplit=1)[0].lower().replace("_", "-") for s in specs}


def imported_modules(root: Path) -> dict[str, str]:
    """top-level module -> the first file that imports it, for every import under `root`."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def test_the_agent_imports_only_what_its_extra_installs():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    allowed = requirement_names(project["dependencies"] + project["optional-dependencies"]["agent"])
    providers = importlib.metadata.packages_distributions()   # import name -> distributions
    missing = []
    for package in ("agent", "xenp2v"):
        for module, where in imported_modules(REPO / package).items():
            if module in sys.stdlib_module_names or module in OURS or module == "__future__":
                continue
            dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
            if not dists & allowed:
                missing.append(f"{module} ({where}; from {', '.join(sorted(dists))})")
    assert not missing, ("the agent imports what `xenp2v[agent]` does not install, so the live "
                         "ISO's agent would fail: " + "; ".join(missing))


def test_the_agent_extra_names_nothing_the_agent_does_not_import():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    providers = importlib.metadata.packages_distributions()
    used = set()
    for package in ("agent", "xenp2v"):
        for module in imported_modules(REPO / package):
            used |= {d.lower().replace("_", "-") for d in providers.get(module, [])}
    unused = requirement_names(project["optional-dependencies"]["agent"]) - used
    assert not unused, f"the agent extra installs {sorted(unused)} on the ISO, which the agent never imports"

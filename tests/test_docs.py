"""The pages cannot rot: README.md and docs/*.md checked against the code they describe.

- every setting the agent accepts (agent/settings.py KEYS) is a row of technician.md's flag table,
  with its real default, and the table names no key the agent would refuse; every error it quotes
  is the code's own wording; its boot menu is the ISO's; each TUI screen has its paragraph and
  picture; repair.md's steps are the repair's, in order;
- every relative link and image resolves, anchors included (GitHub's heading slugs);
- architecture.md names every top-level module of agent/, server/ and xenp2v/, and each package's row
  of its parts table every module of that package; every path of the repository a page names exists;
- every `make TARGET` in code resolves to a Makefile target;
- every `--flag` in code exists in the argparse parser of the program it is given to (p2v-agent and
  p2v-server subcommands, the pre-copy sender, the XAPI simulator, bench/run.py, tests/chaos/run.py, tests/e2e/*.py),
  wherever the pages write it ($(…), ExecStart=, make's ARGS, a subcommand alone); a flag written
  alone in a code span or in the text exists in one of them; the word after p2v-agent or p2v-server
  is one of its subcommands, and a value given to a flag with choices is one of them; each such
  command of a fenced block parses whole (positionals, values, required flags);
- architecture.md and benchmarks.md describe `--compress auto`'s trial as agent/transfer/link.py runs it;
- every `p2v.KEY` the pages name, prose included, is a key the agent reads, and every flag of
  p2v-agent is named in them;
- the systemd unit the admin page ships passes `systemd-analyze verify`;
- admin.md names every metric and serve flag, and its backup, done as written, restores a
  working data directory;
- every ```sh runnable block (README's walk-through) runs as written and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent import cli as agent_cli
from agent.warm import precopy
from agent.settings import KEYS, Settings
from server import cli as server_cli

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
UNIT = REPO / "contrib" / "p2v-server.service"

# Flags of other programs that the pages quote (a tool's own flag, not ours to check).
OTHER_TOOLS = {
    "--snapshot-update": "pytest-textual-snapshot",
    "--durations": "pytest",
    "--threads": "py-spy", "--idle": "py-spy",
    "--domain": "partclone",
    "--test-passphrase": "cryptsetup",
    "--examine": "mdadm", "--scan": "mdadm",
    "--target": "grub-install", "--efi-directory": "grub-install", "--removable": "grub-install",
    "--no-nvram": "grub-install",
    "--regenerate-all": "dracut",
    "--now": "systemctl",
    "--ff-only": "git",
}


def page_text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


# --- the flag table -------------------------------------------------------------------------------

def table_rows(text: str) -> dict[str, list[str]]:
    """Rows of markdown tables whose first cell is one code span: {that text: cells}."""
    rows = {}
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        m = re.fullmatch(r"`([^`]+)`", cells[0])
        if m:
            rows[m[1]] = cells
    return rows


def shown_default(value: object) -> str:
    """How the table writes a default: `8`, `auto`, `off` for a switch, none for no value."""
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return "`on`" if value else "`off`"
    return f"`{value}`"


def flag_table() -> dict[str, list[str]]:
    text = page_text(REPO / "docs" / "technician.md")
    section = text.split("### The flags", 1)[1].split("\n## ", 1)[0]
    return table_rows(section)


def test_every_setting_is_in_the_technicians_table_with_its_default():
    rows = flag_table()
    defaults = Settings()
    problems = []
    for name, key in KEYS.items():
        if name not in rows:
            problems.append(f"{name} is missing from technician.md's flag table")
            continue
        cells = rows[name]
        assert len(cells) == 4, f"{name}: the row needs 4 cells (key, values, default, example): {cells}"
        want = shown_default(getattr(defaults, key.field))
        if not cells[2].startswith(want):
            problems.append(f"{name}: the table's default is {cells[2]!r}, the agent's is {want}")
        example = cells[3]
        if not example.startswith(f"`{name}"):
            problems.append(f"{name}: the example {example!r} does not use the key")
    for name in rows:
        if name not in KEYS:
            problems.append(f"technician.md's flag table names {name}, which the agent refuses")
    assert not problems, "\n".join(problems)


BOOT_KEY = re.compile(r"(?<![\w.-])p2v\.([a-z_]+)")
NOT_KEYS = {"p2v.cfg"}     # the settings file on the stick, named like a key


def unknown_keys(page: Path, text: str) -> list[str]:
    return sorted({f"{page.name}: p2v.{m[1]}" for m in BOOT_KEY.finditer(text)
                   if f"p2v.{m[1]}" not in KEYS and f"p2v.{m[1]}" not in NOT_KEYS})


def test_every_boot_key_the_pages_name_is_the_agents():
    """A `p2v.KEY` anywhere in the pages, prose included, is one the agent reads."""
    problems = [line for page in PAGES for line in unknown_keys(page, page_text(page))]
    assert not problems, "the pages name keys the agent refuses:\n" + "\n".join(problems)
    assert unknown_keys(REPO / "x.md", "p2v.streams=4 p2v.stream=4 out/xenp2v.iso p2v.cfg") == [
        "x.md: p2v.stream"]


def test_the_pages_job_ids_look_like_the_servers():
    """A job id given as an example (`p2v.job=…`, not a placeholder such as ID) has the form the
    server gives and `p2v-server jobs` lists, so the technician knows what to copy: the table
    once said `p2v.job=web01-1`."""
    from server.store import _new_job_id
    shape = re.compile(r"\d{8}-\d{6}-[A-Za-z0-9-]+-[0-9a-f]{6}")
    assert shape.fullmatch(_new_job_id("web01")), _new_job_id("web01")
    examples = [(page.name, job) for page in PAGES
                for job in re.findall(r"p2v\.job=([^\s`|)]+)", page_text(page))
                if not re.fullmatch(r"[A-Z]+|…", job)]
    assert examples, "no page gives a job id as an example"
    wrong = [f"{name}: {job}" for name, job in examples if not shape.fullmatch(job)]
    assert not wrong, f"job ids not of the server's form: {wrong}"


def test_the_tables_examples_are_accepted_by_the_agent(tmp_path):
    """Each example, as written (a path on the stick made to exist), parses like a boot line."""
    from agent import settings
    problems = []
    for name, cells in flag_table().items():
        word = cells[3].strip("`")
        if "…" in word:
            continue
        value = word.partition("=")[2]
        if value.startswith("/run/live/medium/"):
            made = tmp_path / value.removeprefix("/run/live/medium/")
            if name == "p2v.windows_drivers":
                made.mkdir(parents=True, exist_ok=True)
            else:
                made.parent.mkdir(parents=True, exist_ok=True)
                made.write_text("x\n")
            word = f"{name}={made}"
        _, bad = settings.read_cmdline(word)
        problems += bad
    assert not problems, "\n".join(problems)


# --- the screens -----------------------------------------------------------------------------------

def test_every_screen_has_its_paragraph_and_picture():
    """Each screen of the TUI's flow has its `**Title.**` paragraph in technician.md, and under it
    the picture a snapshot test of tests/tui/test_snapshots.py draws."""
    from agent.tui.app import FLOW
    text = page_text(REPO / "docs" / "technician.md")
    section = text.split("## The TUI, screen by screen", 1)[1].split("\n## ", 1)[0]
    paragraphs = dict(re.findall(r"(?ms)^\*\*([^*]+)\.\*\* (.*?)(?=^\*\*|\Z)", section))
    snapshot_tests = set(re.findall(r"(?m)^def (test_\w+)\(snap_compare\)",
                                    (REPO / "tests/tui/test_snapshots.py").read_text()))
    problems = []
    for screen in FLOW:
        if screen.TITLE not in paragraphs:
            problems.append(f"technician.md has no **{screen.TITLE}.** paragraph")
            continue
        pictures = re.findall(r"!\[[^\]]*\]\(\.\./tests/tui/__snapshots__/test_snapshots/(\w+)\.svg\)",
                              paragraphs[screen.TITLE])
        if not pictures:
            problems.append(f"technician.md's {screen.TITLE} screen has no picture")
        problems += [f"technician.md's {screen.TITLE} picture {p}.svg is drawn by no snapshot test"
                     for p in pictures if p not in snapshot_tests]
    assert not problems, "\n".join(problems)


# --- links and images ----------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def strip_code(text: str) -> str:
    text = re.sub(r"(?ms)^```.*?^```", "", text)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page_text(page))
    return {slug(m[1]) for m in re.finditer(r"(?m)^#+ (.+)$", text)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_and_images_resolve(page):
    problems = []
    for target in LINK.findall(strip_code(page_text(page))):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            problems.append(f"{page.name}: {target} does not exist")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{page.name}: {target}: {dest.name} has no heading with anchor #{anchor}")
    assert not problems, "\n".join(problems)


# --- code in the pages: make targets and flags --------------------------------------------------

def code_pieces(text: str) -> list[str]:
    """Fenced blocks (one piece per line, continuation lines joined) and inline code spans."""
    pieces = []
    for block in re.findall(r"(?ms)^```[^\n]*\n(.*?)^```", text):
        pieces += block.replace("\\\n", " ").splitlines()
    pieces += re.findall(r"`([^`\n]+)`", re.sub(r"(?ms)^```.*?^```", "", text))
    return pieces


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return {m[1] for m in re.finditer(r"(?m)^([a-z][\w-]*)\s*:(?!=)", text)}


def make_targets_in(piece: str) -> list[str]:
    """Every target a `make` command in this piece names: `make iso iso-test` both, past
    options (`make -C /opt/xenp2v venv`) and variables (`make bench BENCH=warm`)."""
    found = []
    for command in re.split(r"\s(?:\||&&|;)\s", piece):
        ws = words(command)
        for i, w in enumerate(ws):
            if w.lstrip("(") != "make":
                continue
            rest = iter(ws[i + 1:])
            for arg in rest:
                if arg in ("-C", "-o", "-f", "-j", "-W"):
                    next(rest, None)
                elif arg.startswith("-") or re.fullmatch(r"[A-Z_]+=.*", arg):
                    continue
                elif re.fullmatch(r"[a-z][\w-]*", arg):
                    found.append(arg)
                else:
                    break
            break
    return found


def test_make_targets_named_in_the_pages_exist():
    targets = makefile_targets()
    problems = []
    for page in PAGES:
        for piece in code_pieces(page_text(page)):
            for target in make_targets_in(piece):
                if target not in targets:
                    problems.append(f"{page.name}: `{piece}` names make target {target}, "
                                    "which the Makefile lacks")
    assert not problems, "\n".join(problems)
    assert make_targets_in("make -C /opt/xenp2v venv && make iso iso-test") == ["venv", "iso", "iso-test"]
    assert make_targets_in('make bench BENCH=warm BENCH_ARGS="--runs 2"  # the warm row') == ["bench"]


def make_variables_in(piece: str) -> list[tuple[str, str]]:
    """(variable, value) for each VAR=value a `make` command in this piece is given."""
    found = []
    for command in re.split(r"\s(?:\||&&|;)\s", piece):
        ws = words(command)
        if "make" in ws:
            found += [tuple(w.split("=", 1)) for w in ws[ws.index("make") + 1:]
                      if re.fullmatch(r"[A-Z][A-Z0-9_]*=.*", w)]
    return found


def test_make_variables_named_in_the_pages_exist():
    """`make e2e SCENARIOS=gpt-lvm E2E_PATH=host`: each variable is one the Makefile reads, and
    each scenario named is one of tests/e2e's (a renamed one left the page's command running
    nothing, or everything)."""
    sys.path.insert(0, str(REPO / "tests" / "e2e"))
    try:
        from sources import SCENARIOS
    finally:
        sys.path.remove(str(REPO / "tests" / "e2e"))
    makefile = (REPO / "Makefile").read_text()
    problems = []
    for page in PAGES:
        for piece in code_pieces(page_text(page)):
            for variable, value in make_variables_in(piece):
                if f"$({variable})" not in makefile:
                    problems.append(f"{page.name}: `{piece}`: the Makefile reads no {variable}")
                if variable == "SCENARIOS":
                    problems += [f"{page.name}: `{piece}`: no e2e scenario {name}"
                                 for name in value.split() if name not in SCENARIOS]
    assert not problems, "\n".join(problems)
    assert make_variables_in('make e2e SCENARIOS="a b" E2E_PATH=host') == [
        ("SCENARIOS", "a b"), ("E2E_PATH", "host")]


def test_make_venv_installs_debians_venv_module_first(tmp_path):
    """The README's first step on a fresh Debian 12 (`make venv`, or serve or test, which make it)
    does not stop at "ensurepip is not available": Debian's python3 makes a venv only with
    python3-venv, which is installed first."""
    out = subprocess.run(["make", "-n", "-B", "venv", f"VENV={tmp_path / 'venv'}"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    made = next(i for i, line in enumerate(out) if "-m venv" in line)
    assert any("python3-venv" in line for line in out[:made]), "\n".join(out)


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


class _Caught(Exception):
    def __init__(self, parser):
        self.parser = parser


def parser_of_script(path: Path, call) -> argparse.ArgumentParser:
    """The parser a script's main() builds, caught at parse_args (nothing of it runs)."""
    spec = importlib.util.spec_from_file_location(f"docs_{path.stem}_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module        # dataclasses look their module up while it loads
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    original = argparse.ArgumentParser.parse_args

    def catch(self, *args, **kwargs):
        raise _Caught(self)

    argparse.ArgumentParser.parse_args = catch
    try:
        call(module)
    except _Caught as caught:
        return caught.parser
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{path} built no parser")


def program_parsers() -> dict[str, dict[str, set[str]]]:
    """{program: {subcommand or "": its flags}} for every program the pages quote."""
    agent = agent_cli.build_parser()
    server = server_cli.build_parser()
    precopy_parser = argparse.ArgumentParser()
    precopy.add_arguments(precopy_parser)
    programs = {
        "p2v-agent": {"": options(agent), **{n: options(p) for n, p in subcommands(agent).items()}},
        "p2v-server": {"": options(server), **{n: options(p) for n, p in subcommands(server).items()}},
        "p2v-precopy": {"": options(precopy_parser)},
    }
    scripts = {"bench/run.py": ("BENCH_ARGS", lambda m: m.main([])),
               "tests/chaos/run.py": ("CHAOS_ARGS", lambda m: m.main([])),
               "tests/e2e/run.py": (None, lambda m: m.main([])),
               "tests/e2e/xenrun.py": (None, lambda m: m.main([]))}
    programs["xapisim"] = {"": options(parser_of_script(REPO / "tests/xapisim/__main__.py",
                                                        lambda m: m.main()))}
    for script, (variable, call) in scripts.items():
        flags = options(parser_of_script(REPO / script, call))
        programs[script] = {"": flags}
        if variable:
            programs[variable] = {"": flags}
    return programs


def words(piece: str) -> list[str]:
    try:
        return shlex.split(piece, comments=True)
    except ValueError:
        return piece.split()


SCRIPTS = ("bench/run.py", "tests/chaos/run.py", "tests/e2e/run.py", "tests/e2e/xenrun.py")
# What a make variable's flags go to: `make serve ARGS="--listen …"` runs p2v-server serve.
MAKE_ARGS = {"BENCH_ARGS": ("BENCH_ARGS", ""), "CHAOS_ARGS": ("CHAOS_ARGS", ""),
             "ARGS": ("p2v-server", "serve")}


def program_name(word: str) -> str:
    """The program a word runs: `.venv/bin/p2v-server`, `job=$(p2v-server`, `ExecStart=/opt/…/
    p2v-server` and `(p2v-agent` run p2v-server or p2v-agent; `chaos/run.py` tests/chaos/run.py."""
    word = re.sub(r"^(?:[\w.]+=)?\$?\(?", "", word)
    for script in SCRIPTS:
        if word.endswith(script.removeprefix("tests/")):
            return script
    return word.rsplit("/", 1)[-1]


def flags_in(piece: str, programs) -> list[tuple[str, str, str]]:
    """(program, subcommand, flag) for every flag given to one of our programs in this piece. A
    subcommand written alone (`repair --job`) is the program's that has it."""
    owner: dict[str, list[str]] = {}
    for name, subs in programs.items():
        for sub in subs:
            if sub:
                owner.setdefault(sub, []).append(name)
    # `[--xapi-ca FILE | --no-verify-tls]` is a choice between flags, not a pipe.
    while re.search(r"\[[^\]|]*\s\|\s", piece):
        piece = re.sub(r"(\[[^\]|]*)\s\|\s", r"\1 ", piece)
    found = []
    for command in re.split(r"\s(?:\||&&|;)\s", piece):
        ws = words(command)
        for i, w in enumerate(ws):
            variable, _, value = w.partition("=")
            if variable in MAKE_ARGS and value:
                program, sub = MAKE_ARGS[variable]
                found += [(program, sub, f.split("=")[0]) for f in value.split() if f.startswith("--")]
                continue
            name, sub, rest = program_name(w), "", ws[i + 1:]
            if name not in programs and i == 0 and len(owner.get(name, [])) == 1:
                name, sub = owner[name][0], name
            elif name not in programs:
                continue
            elif rest and rest[0] in programs[name]:
                sub, rest = rest[0], rest[1:]
            elif name == "p2v-server" and any(f.startswith("--") for f in rest):
                sub = "serve"
            found += [(name, sub, f.split("=")[0]) for f in rest if re.match(r"\[?--[a-z]", f)]
            break
    return [(p, s, f.lstrip("[").rstrip("]")) for p, s, f in found]


def unknown_subcommands(piece: str, programs) -> list[str]:
    """`p2v-server verfiy JOB`: a word after p2v-agent or p2v-server where a subcommand goes
    that is none of theirs (the flag check passes it: it has no flags). Only where the program
    starts the command: an error message may name p2v-server in a sentence."""
    found = []
    for command in re.split(r"\s(?:\||&&|;)\s", piece):
        ws = words(command)
        for i, w in enumerate(ws[:-1]):
            name = program_name(w)
            if (i == 0 or ws[i - 1] in ("sudo", "nohup")) and name in ("p2v-agent", "p2v-server") \
                    and re.fullmatch(r"[a-z][a-z-]*", ws[i + 1]) \
                    and ws[i + 1] not in programs[name]:
                found.append(f"{name} {ws[i + 1]}")
    return found


def test_flags_in_the_pages_exist_in_the_parsers():
    programs = program_parsers()
    everyone = set().union(*(flags for subs in programs.values() for flags in subs.values()))
    problems = []
    for page in PAGES:
        for piece in code_pieces(page_text(page)):
            quoted = flags_in(piece, programs)
            problems += [f"{page.name}: `{piece}`: {command} is no subcommand"
                         for command in unknown_subcommands(piece, programs)]
            for program, sub, flag in quoted:
                flag = flag.split("|")[0].rstrip(".,;:)")
                if flag not in programs[program][sub]:
                    problems.append(f"{page.name}: `{piece}`: {program} {sub} has no {flag}")
            alone = re.fullmatch(r"(--[a-z][\w-]*)(?:[ =]\S+)?", piece.strip())
            if alone and not quoted and alone[1] not in everyone and alone[1] not in OTHER_TOOLS:
                problems.append(f"{page.name}: `{piece}`: no program of ours has {alone[1]}")
        for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", strip_code(page_text(page))):
            if flag not in everyone and flag not in OTHER_TOOLS:
                problems.append(f"{page.name}: {flag}, in the text, is no program's of ours")
    assert not problems, "\n".join(problems)


def choices_of_flags() -> dict[tuple[str, str, str], list[str]]:
    """{(program, subcommand, flag): its choices} for our programs' flags that have any."""
    found = {}
    for name, parser in (("p2v-agent", agent_cli.build_parser()),
                         ("p2v-server", server_cli.build_parser())):
        for sub, subparser in [("", parser), *subcommands(parser).items()]:
            for action in subparser._actions:
                if action.choices and not isinstance(action, argparse._SubParsersAction):
                    found.update({(name, sub, flag): list(action.choices)
                                  for flag in action.option_strings})
    return found


def wrong_choices(piece: str, programs, choices) -> list[str]:
    """`--format raw|vhd|ova`: each value a page gives a flag with choices is one of them."""
    problems = []
    for program, sub, flag in flags_in(piece, programs):
        allowed = choices.get((program, sub, flag))
        value = re.search(rf"(?<![\w-]){re.escape(flag)}[ =]([a-z0-9|]+)(?![\w-])", piece)
        if allowed and value:
            problems += [f"{program} {sub} {flag} {v}" for v in value[1].split("|")
                         if v not in allowed]
    return problems


def test_flag_values_the_pages_give_are_the_parsers_choices():
    programs, choices = program_parsers(), choices_of_flags()
    assert ("p2v-server", "export", "--format") in choices
    problems = [f"{page.name}: `{piece}`: {wrong}" for page in PAGES
                for piece in code_pieces(page_text(page))
                for wrong in wrong_choices(piece, programs, choices)]
    assert not problems, "\n".join(problems)
    assert wrong_choices("p2v-server export J --format raw|ova --out x", programs, choices) == [
        "p2v-server export --format ova"]


def fenced_commands(text: str) -> list[tuple[str, list[str]]]:
    """(program, its arguments) for each line of a fenced block that runs p2v-agent or
    p2v-server, written as a reader types it: `[--opt X]` taken, the first of `a|b|c`, up to a
    redirection or `…`."""
    found = []
    for block in re.findall(r"(?ms)^```[^\n]*\n(.*?)^```", text):
        for line in block.replace("\\\n", " ").splitlines():
            for command in re.split(r"\s(?:\||&&|;|&)\s", line):
                ws = words(command)
                if not ws or program_name(ws[0]) not in ("p2v-agent", "p2v-server"):
                    continue
                args = []
                for arg in ws[1:]:
                    if arg.startswith((">", "2>")) or arg == "…":
                        break
                    arg = arg.strip("[]").rstrip(")")
                    if re.fullmatch(r"[a-z0-9]+(\|[a-z0-9]+)+", arg):
                        arg = arg.split("|")[0]
                    if arg and arg != "|":
                        args.append(arg)
                found.append((program_name(ws[0]), args))
    return found


def parse_problem(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    """argparse's complaint about these arguments, or None."""
    import contextlib
    import io
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            parser.parse_args(args)
    except SystemExit:
        return said.getvalue().strip().splitlines()[-1]
    return None


def test_the_pages_fenced_commands_parse():
    """Each p2v-agent or p2v-server command of a fenced block parses as written: its subcommand,
    positional arguments, each flag's value and the required flags, not only the flags' names."""
    parsers = {"p2v-agent": agent_cli.build_parser(), "p2v-server": server_cli.build_parser()}
    commands = [(page.name, program, args) for page in PAGES
                for program, args in fenced_commands(page_text(page))]
    assert len(commands) > 10, commands
    problems = [f"{name}: {program} {' '.join(args)}: {problem}"
                for name, program, args in commands
                if (problem := parse_problem(parsers[program], args))]
    assert not problems, "\n".join(problems)
    assert parse_problem(parsers["p2v-server"], ["verify"])           # its JOB left out
    assert parse_problem(parsers["p2v-agent"], ["restore", "--target"])   # a flag's value


def test_flag_check_catches_a_wrong_flag():
    """The checker itself: a flag a subcommand lacks is found, a right one is not."""
    programs = program_parsers()
    assert flags_in("p2v-agent capture --disks sda --nonsense 1", programs) == [
        ("p2v-agent", "capture", "--disks"), ("p2v-agent", "capture", "--nonsense")]
    assert "--nonsense" not in programs["p2v-agent"]["capture"]
    assert "--target" not in programs["p2v-agent"]["capture"]
    assert unknown_subcommands("p2v-server verfiy JOB && p2v-agent restore --job J", programs) == [
        "p2v-server verfiy"]
    assert "--keep-versions" in programs["p2v-server"]["serve"]
    # Where the pages put our programs: in $(…), after ExecStart=, in make's ARGS, a subcommand
    # alone, a choice inside [ | ], the simulator run with python -m.
    assert flags_in("job=$(.venv/bin/p2v-server jobs --data-dir d --json | python3 -c x)",
                    programs) == [("p2v-server", "jobs", "--data-dir"), ("p2v-server", "jobs", "--json")]
    assert flags_in("ExecStart=/opt/x/.venv/bin/p2v-server serve --listen a", programs) == [
        ("p2v-server", "serve", "--listen")]
    assert flags_in('make serve ARGS="--listen 0.0.0.0:9443"', programs) == [
        ("p2v-server", "serve", "--listen")]
    assert flags_in("repair --job", programs) == [("p2v-agent", "repair", "--job")]
    assert flags_in("p2v-server serve [--xapi-ca FILE | --no-verify-tls] [--pv]", programs) == [
        ("p2v-server", "serve", "--xapi-ca"), ("p2v-server", "serve", "--no-verify-tls"),
        ("p2v-server", "serve", "--pv")]
    assert flags_in("cd tests && python -m xapisim --root DIR [--tools-iso FILE]", programs) == [
        ("xapisim", "", "--root"), ("xapisim", "", "--tools-iso")]


# --- the systemd unit ----------------------------------------------------------------------------

def test_the_systemd_unit_verifies_and_its_command_parses(tmp_path):
    text = UNIT.read_text()
    exec_start = re.search(r"(?m)^ExecStart=(\S+)\s+(.*)$", text)
    assert exec_start, "the unit has no ExecStart"
    argv = shlex.split(exec_start[2])
    assert argv[0] == "serve"
    server_cli.build_parser().parse_args(argv)     # SystemExit on a flag p2v-server lacks
    assert shutil.which("systemd-analyze"), \
        "systemd-analyze is missing: make system-deps installs it (Debian's systemd package)."
    # Verified as installed: ExecStart pointed at this checkout's p2v-server.
    here = Path(sys.executable).parent / "p2v-server"
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(exec_start[1], str(here), 1))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    # Without systemd as PID 1 it may still complain about the system manager; not about the unit.
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines()
                  if UNIT.name in line or "Unknown" in line or "Invalid" in line]
    assert not complaints, "\n".join(complaints)


def test_the_units_command_serves_and_stops_on_sigterm(tmp_path):
    """The unit's ExecStart, run as systemd would (its data directory and port moved here):
    it prints the boot line, then SIGTERM (the unit's KillSignal) stops it with status 0."""
    import socket
    exec_start = re.search(r"(?m)^ExecStart=(\S+)\s+(.*)$", UNIT.read_text())
    argv = shlex.split(exec_start[2])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv[argv.index("--data-dir") + 1] = str(tmp_path / "data")
    argv[argv.index("--listen") + 1] = f"127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", *argv], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "p2v.server=" in line:
                break
        assert any(f"https://127.0.0.1:{port}" in line for line in seen), "".join(seen)
        # At once, as systemd may: the handlers are in place before the banner is printed
        # (a SIGTERM in between used to end it with -15).
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the technician's error table ------------------------------------------------------------------

def source_strings() -> str:
    """Every string literal of agent/, server/ and xenp2v/ (implicit concatenations joined, an
    f-string's values as \\x00), one per line of \\x01: where a quoted message must come from."""
    import ast
    texts = []
    for package in ("agent", "server", "xenp2v"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.JoinedStr):
                    texts.append("".join(v.value if isinstance(v, ast.Constant) else "\x00"
                                         for v in node.values))
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    texts.append(node.value)
    return "\x01".join(texts)


def literal_pieces(message: str) -> list[str]:
    """The parts of a quoted message that the code writes literally: what lies between the "…"
    of its variable parts and the joints (": ", "=") where messages are composed, 12 characters
    or more."""
    pieces = []
    for fragment in message.split("…"):
        for piece in re.split(r": |=", fragment):
            piece = piece.strip(" .,;:()'\"")
            if len(piece) >= 12:
                pieces.append(piece)
    return pieces


def test_the_errors_the_technician_reads_about_are_the_agents():
    text = page_text(REPO / "docs" / "technician.md")
    section = text.split("## Errors, and what to do", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) >= 15, "the error table is gone or cut short"
    sources = source_strings()
    problems = []
    for row in rows:
        for message in re.findall(r"`([^`]+)`", row.split(" | ")[0]):
            for piece in literal_pieces(message):
                if piece not in sources:
                    problems.append(f"technician.md quotes '{message}', but no message of the "
                                    f"code holds '{piece}'")
    assert not problems, "\n".join(problems)


# --- the repair's steps ----------------------------------------------------------------------------

def test_repair_md_lists_every_linux_step_in_order(tmp_path):
    """repair.md's table of steps is the repair's own list, by name and in its order (the plan
    of an empty guest names every step, each with nothing to do)."""
    from agent.repair.facts import Facts
    from agent.repair.steps import plan_repair
    from agent.repair.tree import GuestTree
    steps = [step.name for step in plan_repair(GuestTree(tmp_path), Facts())]
    text = page_text(REPO / "docs" / "repair.md")
    section = text.split("## The Linux steps, in order", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ")[0].strip("| ") for line in section.splitlines()
            if line.startswith("| ") and not line.startswith(("| step ", "| ---"))]
    assert rows == steps


def test_repair_mds_plan_example_is_what_the_repair_prints(tmp_path):
    """repair.md's "Reading the plan" example, each line in order ("…" for what it leaves out),
    is in the plan the repair prints for such a guest: a Debian with /dev/sda1 in its fstab and
    one kernel. The example once put the initramfs rebuild before the SELinux relabel."""
    from agent.repair.facts import Facts, Filesystem
    from agent.repair.plan import Plan
    from agent.repair.steps import plan_repair
    from agent.repair.tree import GuestTree
    for path, text in {"etc/os-release": "ID=debian\n",
                       "etc/fstab": "/dev/sda1  /  ext4  errors=remount-ro  0 1\n"
                                    "tmpfs  /tmp  tmpfs  defaults  0 0\n",
                       "etc/initramfs-tools/initramfs.conf": "",
                       "lib/modules/6.1.0-28-amd64/modules.dep": ""}.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    root = Filesystem("/dev/xvda1", "ext4", "0d3c1f5e-5b1e-4c9a-9d0e-2f4a6b8c0d1e", partition=1)
    printed = Plan(plan_repair(GuestTree(tmp_path), Facts(filesystems=[root],
                                                          names={"/dev/sda1": root}))).render()
    section = page_text(REPO / "docs" / "repair.md").split("## Reading the plan", 1)[1]
    example = re.search(r"(?ms)^```\n(.*?)^```", section)[1].splitlines()
    lines = iter(printed.splitlines())
    for shown in example:
        if shown == "…":
            continue
        pattern = re.compile(".*".join(map(re.escape, shown.split("…"))) + "$")
        assert any(pattern.match(line) for line in lines), \
            f"repair.md's plan example: {shown!r} is not next in the printed plan:\n{printed}"


# --- the admin's page is complete --------------------------------------------------------------------

def test_admin_md_names_every_metric_and_every_serve_flag():
    text = page_text(REPO / "docs" / "admin.md")
    metrics = set(re.findall(r"xenp2v_[a-z_]+", (REPO / "server/dashboard/metrics.py").read_text()))
    assert metrics, "no metric found in server/dashboard/metrics.py"
    assert metrics == set(re.findall(r"xenp2v_[a-z_]+", text))
    serve = subcommands(server_cli.build_parser())["serve"]
    missing = sorted(flag for flag in options(serve) if flag.startswith("--")
                     and flag not in ("--help", "--keep-macs") and f"`{flag}" not in text)
    assert not missing, f"admin.md does not say what these serve flags do: {missing}"


def test_admin_mds_flag_tables_give_serves_defaults():
    """The default column of admin.md's tables of serve's flags is the parser's: a literal
    default in a code span (`0.0.0.0:8443`, `2`), `off` for a switch; a flag with no default
    (None) is described in words (`none`, or what the server then does)."""
    serve = subcommands(server_cli.build_parser())["serve"]
    defaults = {flag: action.default for action in serve._actions for flag in action.option_strings}
    rows = {key.split()[0]: cells for key, cells in table_rows(page_text(REPO / "docs" / "admin.md")).items()
            if key.startswith("--") and len(cells) == 3}
    assert len(rows) > 15, sorted(rows)
    wrong = []
    for flag, (_, shown, _) in rows.items():
        value = defaults[flag]
        if value is False:
            expected = "off"
        elif value is not None:
            expected = f"`{value:g}`" if isinstance(value, float) else f"`{value}`"
        else:
            continue
        if not shown.startswith(expected):
            wrong.append(f"{flag}: admin.md says {shown!r}, serve's default is {value!r}")
    assert not wrong, "\n".join(wrong)


def test_every_agent_flag_is_in_the_pages():
    """Each flag of p2v-agent's parsers is named in the pages (the headless commands in
    technician.md, the repair's in repair.md), so none is known only to the code."""
    text = "\n".join(page_text(page) for page in PAGES)
    agent = agent_cli.build_parser()
    parsers = {"p2v-agent": agent, **{f"p2v-agent {n}": p for n, p in subcommands(agent).items()}}
    missing = sorted(f"{name} {flag}" for name, parser in parsers.items() for flag in options(parser)
                     if flag.startswith("--") and flag != "--help"
                     and not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text))
    assert not missing, f"no page names these flags of the agent: {missing}"


RUNS = re.compile(r"(?ms)^```[^\n]*\n(.*?)^```")


# --- the admin's backup, done as admin.md says ------------------------------------------------------

def test_the_backup_admin_md_gives_restores_a_working_data_directory(tmp_path, loopdev,
                                                                    p2v_server_factory):
    """A job captured, the server stopped, the data directory archived with admin.md's own tar
    line and unpacked elsewhere: a server there has the same token and certificate, `verify`
    finds the image intact, and the image is still sparse."""
    text = page_text(REPO / "docs" / "admin.md")
    section = text.split("## Backups", 1)[1].split("\n## ", 1)[0]
    tar_line = next(line for line in RUNS.findall(section)[0].splitlines() if line.startswith("tar "))
    disk = loopdev(512 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-d", str(REPO / "docs"), disk], check=True)
    (tmp_path / "lib").mkdir()
    server = p2v_server_factory(data_dir=tmp_path / "lib" / "xenp2v")
    agent = [sys.executable, "-m", "agent.cli", "capture", "--server", server.url, "--token",
             server.token, "--fingerprint", server.fingerprint, "--disks", disk, "--name", "backup",
             "--cmdline", ""]
    subprocess.run(agent, cwd=REPO, check=True, capture_output=True)
    server.stop()
    archive = tmp_path / "backup" / "xenp2v.tar.gz"
    archive.parent.mkdir()
    command = re.sub(r"-czf .*?\.tar\.gz", f"-czf {archive}",
                     tar_line.replace("/var/lib", str(tmp_path / "lib")))
    subprocess.run(command, shell=True, check=True)
    restored = tmp_path / "restored"
    restored.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(restored)], check=True)
    jobs = json.loads(subprocess.run([sys.executable, "-m", "server.cli", "jobs", "--json",
                                      "--data-dir", str(restored / "xenp2v")], cwd=REPO,
                                     check=True, capture_output=True, text=True).stdout)
    assert [job["name"] for job in jobs] == ["backup"]
    verify = subprocess.run([sys.executable, "-m", "server.cli", "verify", jobs[0]["id"],
                             "--data-dir", str(restored / "xenp2v")], cwd=REPO,
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    before = next((tmp_path / "lib" / "xenp2v" / "jobs").rglob("*.img"))
    after = next((restored / "xenp2v" / "jobs").rglob("*.img"))
    assert after.stat().st_size == 512 << 20
    assert after.stat().st_blocks <= before.stat().st_blocks + 64, "the restored image is not sparse"
    again = p2v_server_factory(data_dir=restored / "xenp2v")
    assert (again.token, again.fingerprint) == (server.token, server.fingerprint)


def test_the_boot_menu_table_is_the_isos_menu():
    """technician.md's boot menu entries are the ISO's, word for word (GRUB's and isolinux's)."""
    text = page_text(REPO / "docs" / "technician.md")
    section = text.split("## The boot menu", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"(?m)^\| \*([^*]+)\* \|", section)
    grub = (REPO / "live-build/config/bootloaders/grub-pc/grub.cfg").read_text()
    isolinux = (REPO / "live-build/config/bootloaders/syslinux_common/live.cfg.in").read_text()
    assert documented == re.findall(r'menuentry "([^"]+)"', grub)
    labels = [label.replace("^", "") for label in re.findall(r"(?m)^\s*menu label (.+)$", isolinux)]
    assert labels == [entry for entry in documented if entry != "UEFI firmware settings"]


def test_the_pages_describe_compress_autos_trial_as_link_py_runs_it():
    """architecture.md and benchmarks.md say how `--compress auto` chooses (both sides, capture
    and restore): the trial's order of windows, their length, the margin zstd must win by and
    how soon and how often it runs again are link.py's. benchmarks.md once said a restore's auto fetched
    plain chunks and described one window each way, after the code had changed both."""
    from agent.transfer import link
    comp = link.Compression("auto", 1)
    comp._try(True, 0.0)
    order = ", ".join("zstd" if way else "plain" for way in [comp.compressing, *comp._plan])
    seconds = {0.5: "half a second", 1.0: "a second"}
    times = {2.0: "twice", 3.0: "three times", 4.0: "four times"}
    said = [f"{order} (", f"{seconds[link.TRIAL_SECONDS]} and a chunk per stream",
            f"{round((link.MARGIN - 1) * 100)}% more disk bytes per second",
            f"after {times[link.FIRST_HOLD]} the trial's time", f"every {link.RETRY_SECONDS:.0f} s"]
    for page in ("architecture.md", "benchmarks.md"):
        text = " ".join(page_text(REPO / "docs" / page).split())
        missing = [words for words in said if words not in text]
        assert not missing, f"{page} does not say how auto runs now: {missing}"
        assert "decides the same way" in text, \
            f"{page} does not say a restore's auto chooses as a capture's does"


def test_the_pages_give_the_restores_zeroing_call_size():
    """Where a page says how large the restore's BLKZEROOUT calls are, it is restore.py's
    ZERO_STEP (benchmarks.md said 1 GiB after they became 128 MiB)."""
    from agent.transfer.restore import ZERO_STEP
    unit = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    said = [(page.name, n, u) for page in PAGES
            for n, u in re.findall(r"BLKZEROOUT in ([\d.]+) ([KMG]iB) calls", page_text(page))]
    assert said, "no page says how large the zeroing calls are"
    wrong = [f"{name}: {n} {u}" for name, n, u in said if float(n) * unit[u] != ZERO_STEP]
    assert not wrong, f"the restore zeroes in {ZERO_STEP >> 20} MiB calls, not {wrong}"


def test_architecture_md_names_every_module():
    """A newcomer finds any module from the architecture page in one hop: every module and
    package of agent/, server/ and xenp2v/ (top level) is named there."""
    text = page_text(REPO / "docs" / "architecture.md")
    missing = []
    for package in ("agent", "server", "xenp2v"):
        for path in sorted((REPO / package).iterdir()):
            if path.name.startswith(("_", ".")) or not (path.suffix == ".py" or
                                                        (path / "__init__.py").exists()):
                continue
            if not re.search(rf"`[^`\n]*\b{re.escape(path.stem)}(\.py|/)[^`\n]*`", text):
                missing.append(f"{package}/{path.name}")
    assert not missing, f"architecture.md does not name: {', '.join(missing)}"


def package_rows_problems(text: str) -> list[str]:
    """What is wrong with the parts table's package rows (`agent/disk/`, …): each names every
    module of its package, in words a newcomer can look up (`plan` or `plan.py`), and a bare name
    in a row is a module of that package."""
    section = text.split("## The parts", 1)[1].split("\n## ", 1)[0]
    problems = []
    for where, cells in table_rows(section).items():
        package = REPO / where
        if not (where.endswith("/") and (package / "__init__.py").exists()):
            continue
        described = " | ".join(cells[1:])
        modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
        named = set(re.findall(r"`([a-z_][a-z0-9_]*)(?:\.py)?`", described))
        problems += [f"{where} row does not name {m}" for m in sorted(modules - named)]
        problems += [f"{where} row names {n}, which is not a module there"
                     for n in sorted(named - modules)]
    return problems


def test_architecture_md_names_every_module_of_each_agent_package_in_its_row():
    text = page_text(REPO / "docs" / "architecture.md")
    assert "| `agent/transfer/` |" in text
    problems = package_rows_problems(text)
    assert not problems, "architecture.md's parts table:\n" + "\n".join(problems)
    wrong = text.replace("(`precopied`)", "(`precopy_job`)", 1)
    assert package_rows_problems(wrong) == ["agent/warm/ row does not name precopied",
                                            "agent/warm/ row names precopy_job, which is not a "
                                            "module there"]


NAMED_PATH = re.compile(
    r"(?<![\w./-])((?:agent|server|xenp2v|tests|bench|live-build|contrib|docs)/[\w./-]*)")


def missing_paths(page: Path, text: str) -> list[str]:
    """The paths of this repository a page names (`agent/transfer/capture.py`, `tests/e2e/`)
    that are not there."""
    named = {m.group(1).rstrip(".,:-") for m in NAMED_PATH.finditer(text)}
    return sorted(f"{page.name}: {path}" for path in named if not (REPO / path).exists())


def test_every_path_the_pages_name_exists():
    """A path the pages name is there: a module or test moved or renamed takes the pages with
    it."""
    named = {m.group(1) for page in PAGES for m in NAMED_PATH.finditer(page.read_text())}
    assert len(named) > 60, "the pattern finds the paths the pages name"
    missing = [line for page in PAGES for line in missing_paths(page, page.read_text())]
    assert not missing, "the pages name paths that do not exist:\n" + "\n".join(missing)


def test_every_environment_variable_the_pages_name_is_read():
    """`XENP2V_ACCEL=kvm`, `XENP2V_CACHE`: each XENP2V_ variable a page names is one the
    repository's code, scripts or Makefile reads (a renamed one left the page behind)."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    code = "".join((REPO / f).read_text(errors="replace") for f in files
                   if not f.startswith("docs/") and f != "README.md" and (REPO / f).is_file()
                   and not f.endswith((".png", ".svg", ".img", ".iso")))
    named = {(page.name, v) for page in PAGES
             for v in re.findall(r"\bXENP2V_[A-Z0-9_]+", page_text(page))}
    assert named, "the pages name no XENP2V_ variable: the check checks nothing"
    unread = sorted(f"{page}: {v}" for page, v in named
                    if not re.search(rf"\b{v}\b", code))
    assert not unread, f"the pages name variables nothing reads: {unread}"


def test_path_check_catches_a_made_up_path():
    text = ("`agent/transfer/capture.py` reads, `agent/capture.py` did, see tests/e2e/run.py "
            "and bench/nothing.py, not /var/cache/xenp2v/e2e.")
    assert missing_paths(REPO / "docs" / "x.md", text) == ["x.md: agent/capture.py",
                                                           "x.md: bench/nothing.py"]


# --- runnable blocks -----------------------------------------------------------------------------

RUNNABLE = re.compile(r"(?ms)^```sh runnable\n(.*?)^```")


def runnable_blocks() -> list[tuple[Path, str]]:
    """Fenced blocks marked ```sh runnable: commands a reader types as they stand."""
    return [(page, block) for page in PAGES for block in RUNNABLE.findall(page_text(page))]


def test_the_readme_has_a_runnable_walk_through():
    assert any(page.name == "README.md" for page, _ in runnable_blocks()), \
        "README.md has no ```sh runnable block: the new user's walk-through is gone"


@pytest.mark.parametrize("page,block", runnable_blocks(),
                         ids=lambda v: v.name if isinstance(v, Path) else "")
def test_runnable_blocks_run_as_written(page, block, tmp_path):
    """Each block, run by bash as it stands but for three things the machine decides: this
    checkout's venv for .venv/bin, a free port for 8443, and temporary directories under the
    test's own (so what a failed run leaves is found and cleaned up here)."""
    from support import detach_loop, free_port, needs_root
    needs_root()
    script = (block.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
              .replace("8443", str(free_port()))
              .replace("mktemp -d", f"mktemp -d -p {tmp_path}"))
    log = tmp_path / "output"
    with open(log, "w") as out:
        # Into a file, not a pipe: a server the block started in the background keeps a pipe open.
        proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, text=True,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=600)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)      # a server the block left running
        except ProcessLookupError:
            pass
        for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
            if backing.read_text().strip().startswith(str(tmp_path)):
                detach_loop(f"/dev/{backing.parent.parent.name}", backing.read_text().strip())
    assert proc.returncode == 0, \
        f"{page.name}'s block failed ({proc.returncode}):\n{script}\n{log.read_text()}"
    # A new user's first run says nothing alarming (the agent once raced the server it had just
    # started, and warned that it could not reach it; a traceback on the server's stop, or an
    # error logged, would alarm as much).
    alarming = [word for word in ("WARNING", "ERROR", "Traceback", "Creating regular file")
                if word in log.read_text()]
    assert not alarming, f"{page.name}'s block says {alarming}:\n{log.read_text()}"

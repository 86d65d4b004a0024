"""The automatic (XAPI) path with real boots: capture → server → simulated pool → repair → boot.

Per scenario: the cached source disk (sources.py) is captured by `p2v-agent capture` from a loop
device into a `p2v-server serve --xapi-url` that drives the XAPI simulator; the server makes the
VM and imports the disk into a VDI file. The agent "in the VM" (here: on a loop device of that VDI
file, as the VM would see its disk) repairs it and reports; the server ejects the ISO, sets the
boot order disk first and reboots the VM; the VDI file then boots under QEMU on XenServer's
emulated IDE controller and NIC, up to the source's boot marker.

The pool carries a test tools ISO (toolsiso.py: a real deb of a small guest agent, laid out as the
vendor's guest-tools.iso) in its tools SR; the server puts it in the VM's second CD drive, the
agent finds it among the VM's CDs as it does in a VM (guest_tools.tools_cd) and installs the guest
agent; the booted VM must print on its console that the agent's service is active.

The capture runs on this host, so the VM record's firmware is this host's; the boot uses the
source's (the layout's), as a capture on the source machine would have recorded.

Usage: automatic.py [SCENARIO ...]   (default: all; see sources.LAYOUTS)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import toolsiso  # noqa: E402
from agent.repair import guest_tools  # noqa: E402
from boot import boot  # noqa: E402
from support import P2VServer  # noqa: E402
from sources import ADDRESS, LAYOUTS, NET_VARIANTS, SOURCE_NIC, source_images  # noqa: E402
from xapisim import XapiSim  # noqa: E402
from xenp2v import protocol as p  # noqa: E402

REPO = HERE.parents[1]
AGENT = REPO / ".venv/bin/p2v-agent"
VM_NIC = "ens4"


def say(text: str) -> None:
    print(text, flush=True)


def attach(image: Path, read_only: bool = False) -> str:
    args = ["losetup", "--show", "-f", "-P", *(["-r"] if read_only else []), str(image)]
    loop = subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()
    # `losetup -P` does not always make the partition nodes here.
    subprocess.run(["partx", "-u", loop], capture_output=True)
    subprocess.run(["partx", "-a", loop], capture_output=True)
    return loop


def detach(loop: str) -> None:
    subprocess.run(["partx", "-d", loop], capture_output=True)
    subprocess.run(["losetup", "-d", loop], capture_output=True)


def job_state(server: P2VServer, job: str) -> dict:
    req = urllib.request.Request(server.url + p.job_path(job),
                                 headers={"Authorization": f"Bearer {server.token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def wait_state(server: P2VServer, job: str, states: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = job_state(server, job)
        if body["state"] in states or time.monotonic() > deadline:
            return body
        time.sleep(1)


def scenario(name: str, work: Path) -> tuple[bool, str]:
    sources = source_images(name, say)
    iso = work / "xenp2v.iso"
    iso.write_bytes(b"\0" * 4096)  # never booted here: the agent runs on this host instead
    password = work / "xapi.pw"
    password.write_text("secret\n")
    tools = toolsiso.build(work / "tools")
    with XapiSim(work / "sim", iso_path=iso, tools_iso=tools) as sim:
        server = P2VServer(work / "p2v-data", plain=True, args=(
            "--xapi-url", sim.url, "--xapi-password-file", str(password), "--iso", iso.name,
            "--keep-macs")).start()
        try:
            loops = [attach(source, read_only=True) for source in sources]
            try:
                t = time.monotonic()
                proc = subprocess.run([str(AGENT), "capture", "--server", server.url, "--token",
                                       server.token, "--disks", ",".join(loops), "--name", f"auto-{name}",
                                       "--cmdline", ""], capture_output=True, text=True,
                                      timeout=1800)
                say(f"  capture: exit {proc.returncode} ({time.monotonic() - t:.0f} s)")
                if proc.returncode != 0:
                    return False, f"capture failed: {proc.stderr.strip()[-500:]}"
            finally:
                for loop in loops:
                    detach(loop)
            job = next(j["id"] for j in json.loads(subprocess.run(
                [sys.executable, "-m", "server.cli", "jobs", "--json", "--data-dir",
                 str(server.data_dir)], capture_output=True, text=True, check=True,
                cwd=REPO).stdout) if j["name"] == f"auto-{name}")
            body = wait_state(server, job, {"repairing", "failed"}, 600)
            say(f"  provisioning: {body['state']} — {body['detail']}")
            if body["state"] != "repairing":
                return False, body["detail"]
            first = json.loads((work / "sim" / "boots.jsonl").read_text().splitlines()[0])
            vdi = Path(first["disks"][0])
            # The VM's CD drives as its guest sees them: the agent there looks for the tools ISO
            # the same way; here it is told the file, this host being no VM.
            tools_cd = guest_tools.tools_cd(first.get("cds", []))
            say(f"  tools ISO in the VM's CD drives: {tools_cd or 'none'}")
            if tools_cd is None:
                return False, f"the VM booted without the pool's tools ISO (CDs: {first.get('cds')})"
            loop = attach(vdi)
            try:
                t = time.monotonic()
                proc = subprocess.run([str(AGENT), "repair", "--disk", loop, "--server",
                                       server.url, "--token", server.token, "--job", job,
                                       "--nic", f"{SOURCE_NIC}={VM_NIC}", "--guest-tools", tools_cd],
                                      capture_output=True, text=True, timeout=1800)
                say(f"  repair in the VM's disk: exit {proc.returncode} "
                    f"({time.monotonic() - t:.0f} s)")
                (work / "repair.log").write_text(proc.stdout + proc.stderr)
            finally:
                detach(loop)
            boots = work / "sim" / "boots.jsonl"
            deadline = time.monotonic() + 300
            while len(boots.read_text().splitlines()) < 2 and time.monotonic() < deadline:
                time.sleep(1)  # the server restarts the VM after the report
            body = wait_state(server, job, {"done", "failed"}, 300)
            say(f"  after the report: {body['state']} — {body['detail']}")
            if body["state"] != "done":
                return False, body["detail"]
        finally:
            server.stop()
        last = json.loads((work / "sim" / "boots.jsonl").read_text().splitlines()[-1])
        if last["order"] != "cd" or last["cd"]:
            return False, f"the VM was restarted with boot order {last['order']} and CD {last['cd']}"
        # The capture ran on this host, so the VM's firmware is this host's; the disk needs the
        # source's, which a capture on the source itself would have given.
        firmware = LAYOUTS[name].firmware
        result = boot([Path(d) for d in last["disks"]], "ide", "vm", firmware,
                      work / f"{name}-automatic.serial", timeout=900, also=toolsiso.LINE)
        want = f"{VM_NIC}:{ADDRESS}"
        console = result.log.read_text(errors="replace") if result.log.exists() else ""
        agent = next((line.strip() for line in console.splitlines() if toolsiso.LINE in line), None)
        # systemd's own line, its colours dropped (it shortens long unit names: the description).
        started = next((re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in console.splitlines()
                        if "Started" in line and toolsiso.DESCRIPTION in line), None)
        say(f"  guest agent on the console: {started or 'no systemd line'} / {agent or 'not seen'}")
        ok = result.ok and result.net == want and agent is not None and \
            agent.endswith(f"; active as {toolsiso.SERVICE}")
        note = "" if last["firmware"] == firmware else f" (VM record: {last['firmware']})"
        return ok, f"boot from the VDI file with {firmware}{note}: {result}; guest agent: {agent or 'not seen'}"


def main(argv: list[str]) -> int:
    # The network scenarios need the source's own NIC in the job; a capture on this host has this
    # host's (run.py runs them).
    names = [n for n in argv if n not in NET_VARIANTS] if argv else list(LAYOUTS)
    if argv and not names:
        say(f"No scenario for the automatic path in {' '.join(argv)} (network scenarios run in run.py only).")
        return 0
    unknown = [n for n in names if n not in LAYOUTS]
    if unknown:
        say(f"Unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(LAYOUTS)}.")
        return 2
    failed = []
    for name in names:
        say(f"== {name} (automatic path through the XAPI simulator)")
        work = Path(tempfile.mkdtemp(prefix=f"xenp2v-auto-{name}-", dir="/var/tmp"))
        try:
            ok, why = scenario(name, work)
        finally:
            for vdi in (work / "sim" / "vdis").glob("*.raw"):
                vdi.unlink()
        say(f"  {name}: {'PASS' if ok else 'FAIL'} — {why}" + ("" if ok else f" (logs in {work})"))
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

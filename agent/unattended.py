"""The unattended run, and the core actions the TUI calls too.

`p2v-agent` with no subcommand and settings that say unattended (p2v.unattended, or server, token
and mode all given) runs `run(settings)`: it works out what to do (p2v.mode=auto: capture on bare
metal, repair in a VM the server knows, restore then repair in a VM given p2v.job; p2v.mode=repair
with a p2v.job the server did not import onto this VM restores first too), prints plain
progress lines on the console, and ends with p2v.post. The TUI fills the same Settings and calls
the same functions below; only the asking and the showing differ.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from agent.transfer.capture import CaptureError, CaptureResult
from agent.transfer.capture import run as capture_run
from agent import vmspec, xenstore
from agent.windows import winwarn
from agent.transfer.client import Client, ServerError
from agent.probe import Machine, ProbeError, probe_machine
from agent.transfer.progress import PlainLines, Progress, Watchdog, human
from agent.repair.guest import RepairError
from agent.repair.luks import Passphrases, console_ask
from agent.repair.runner import Request, repair, vm_disks
from agent.transfer.restore import RestoreError, RestoreResult
from agent.transfer.restore import run as restore_run
from agent.transfer import targets as restore_targets
from agent.settings import Settings, boot_line
from xenp2v import protocol

Say = Callable[[str], None]
LOG = logging.getLogger(__name__)


@dataclass
class Situation:
    """Where the agent runs and what it should do there."""

    mode: str                      # "capture", "repair", "restore" or "ask"
    reason: str                    # one sentence for the person (or the console)
    job: dict | None = None        # the server's job, when the server knows this VM


@dataclass
class Outcome:
    ok: bool
    lines: list[str] = field(default_factory=list)   # what happened, as sentences


def client_for(settings: Settings, retry_for: float = 600.0) -> Client:
    return Client(settings.server, settings.token, settings.fingerprint, retry_for=retry_for)


def job_for_machine(client: Client, system_uuid: str) -> dict | None:
    """The job whose target VM has this SMBIOS UUID, or None when the server knows none."""
    try:
        return client.request("GET", protocol.machine_path(system_uuid), ok=(200,),
                              what="ask the server about this VM", retry_for=15).json()
    except ServerError as e:
        if e.status == 404:
            return None
        raise


def situation(machine: Machine, settings: Settings, client: Client | None) -> Situation:
    """What p2v.mode=auto means here: the rule the design gives, decided once."""
    if not machine.is_virtual:
        return Situation("capture", "This is a physical machine: its disks can be migrated.")
    job = None
    if client and machine.system_uuid:
        job = job_for_machine(client, machine.system_uuid)
    if job:
        return Situation("repair", f"This VM is the target of job {job['id']} "
                         f"({job.get('name') or 'no name'}): its copied system can be repaired.", job)
    if settings.job:
        return Situation("restore", f"Job {settings.job} was given: its image goes onto this VM's "
                         "disks, then the system there is repaired.")
    return Situation("ask", "This is a virtual machine the server does not know: it can be "
                     "migrated as it is, or the system on its disks can be repaired.")


def imported_here(job: dict, machine: Machine) -> bool:
    """Whether the server put the job's disks on this VM (the automatic path); when not, p2v.mode=repair
    with p2v.job is the manual path: restore first (re-run safe: what is in place is kept)."""
    return bool(machine.system_uuid) and \
        (job.get("target_uuid") or "").lower() == machine.system_uuid.lower()


def capture(settings: Settings, progress: Progress, machine: Machine | None = None,
            keep_macs: bool | None = None) -> CaptureResult:
    """Capture the disks the settings name (None: all); raises CaptureError.

    `machine` is the probe already made; `keep_macs` (the TUI's choice) marks each NIC so that
    the server gives the VM the source's MACs, or not; None leaves it to the server.
    """
    identity = None
    if machine is not None and keep_macs is not None:
        identity = {"nics": [{**dataclasses.asdict(n), "keep_mac": keep_macs}
                             for n in machine.nics]}
    return capture_run(settings, progress, probed=machine, identity=identity)


def capture_summary(result: CaptureResult) -> list[str]:
    lines = [f"Job {result.job}" + (" (resumed)" if result.resumed else "") + ":"]
    for d in result.disks:
        if result.sync:
            lines.append(f"{d.id}: final sync sealed version {result.sync}: {human(d.changed)} "
                         f"changed since the last pass, {human(d.sent)} sent, "
                         f"{human(d.planned)} read of {human(d.size)}")
            lines += [f"  warning: {w}" for w in d.warnings]
            continue
        lines.append(f"{d.id}: sealed, {human(d.sent)} sent for {human(d.planned)} read of "
                     f"{human(d.size)}" + (f"; {len(d.bad_ranges)} unreadable ranges were "
                                           "zero-filled" if d.bad_ranges else ""))
        lines += [f"  warning: {w}" for w in d.warnings]
    return lines


def manual_boot_line(settings: Settings, job: str, token: str | None) -> str:
    """The manual path's kernel arguments, complete: a blank VM booted from the ISO with them
    restores `job` onto its disks and repairs it with no other input. `token` is the job's own
    (CaptureResult.token), "..." when the server gave none; the fingerprint goes too, or the
    VM's restore stops at a certificate with no screen to trust it on."""
    return boot_line(dataclasses.replace(settings, token=token or "...", job=job, mode="restore"),
                     ("server", "token", "fingerprint", "job", "mode"))


def restore(settings: Settings, progress: Progress, client: Client,
            targets: list[str] | None = None, how: str = "p2v.disks=") -> list[RestoreResult]:
    """Every disk of job settings.job, in order, onto `targets` (restore-and-repair's --target),
    else the disks p2v.disks names, else this VM's free disks; all are checked before the first
    is written; `how` is how the technician names them (restore-and-repair: --target), for the
    sentences. Raises RestoreError."""
    job = client.job(settings.job)
    named = targets
    if targets is None and settings.disks:
        named, how = settings.disks, "p2v.disks="
    chosen = restore_targets.choose(job, named, vm_disks, how)
    disks = sorted(job["disks"], key=lambda d: d.get("position", 0))
    return [restore_run(settings, target, d["id"], progress) for d, target in zip(disks, chosen)]


def plan_repair(disk: str | None, inventory: dict | None, say: Say,
                passphrases: Passphrases | None = None) -> dict:
    """The repair as it would run, changing nothing; `say` receives the steps and the diffs."""
    return repair(Request(disk=disk, dry_run=True, inventory=inventory,
                          passphrases=passphrases or Passphrases()), say)


def apply_repair(disk: str | None, inventory: dict | None, say: Say,
                 client: Client | None = None, job: str | None = None,
                 disks: list[str] | None = None, passphrases: Passphrases | None = None,
                 guest_tools: str | None = None, windows_drivers: str | None = None) -> dict:
    """Repair for real; the report goes to the server when there is a job. Raises RepairError.

    `disks`: where to look when no single disk is named (restore targets); none: this VM's.
    `passphrases`: for LUKS volumes (the p2v.luks file, a console prompt); none: no unlocking.
    `guest_tools`: the pool's tools ISO or a directory (p2v.guest_tools): its agent is installed.
    `windows_drivers`: a folder of the vendor's Windows PV drivers (p2v.windows_drivers).
    """
    try:
        report = repair(Request(disk=disk, disks=disks or [], inventory=inventory,
                                passphrases=passphrases or Passphrases(),
                                guest_tools=guest_tools, windows_drivers=windows_drivers), say)
    except RepairError as e:
        if client and job:
            send_repair_report(client, job, {"status": "failed", "error": str(e)}, say)
        raise
    if client and job:
        send_repair_report(client, job, report, say)
    return report


def send_repair_report(client: Client, job: str, report: dict, say: Say) -> None:
    try:
        client.request("POST", protocol.repair_path(job), json=report, ok=(200, 201, 204),
                       what="send the repair report", retry_for=60)
    except ServerError as e:
        say(f"The repair report did not reach the server: {e}")


def post_action(post: str, command: Callable[[list[str]], object] = subprocess.run) -> str:
    """Power off or reboot (p2v.post); shell and wait hand the console back. Returns a sentence."""
    if post in ("poweroff", "reboot"):
        done = "Powering off." if post == "poweroff" else "Rebooting."
        if power(post, command):
            return done
        return f"'systemctl {post}' failed, so it was forced. {done}"
    if post == "shell":
        return "The console becomes a root shell."
    return "The agent is done; the console waits for someone."


def power(verb: str, command: Callable[[list[str]], object]) -> bool:
    """`systemctl poweroff` (or reboot); True when that worked. When it fails (a starved guest's
    D-Bus call timed out: "Call to PowerOff failed: Connection timed out"), --force has systemd
    end every process and unmount without stopping units, and if even that fails, after a sync,
    --force twice has the kernel do it at once. A command that gives no returncode worked."""
    if _worked(command(["systemctl", verb])):
        return True
    if not _worked(command(["systemctl", verb, "--force"])):
        command(["sync"])
        command(["systemctl", verb, "--force", "--force"])
    return False


def _worked(result: object) -> bool:
    return getattr(result, "returncode", 0) == 0


# --- the unattended run ----------------------------------------------------------------------------

def run(settings: Settings, stream: TextIO | None = None, machine: Machine | None = None,
        command: Callable[[list[str]], object] = subprocess.run, log: Path | None = None) -> int:
    """One run with no prompt; returns the exit status (0 only on full success). `log`: the
    file agent.cli logs to, said on the console with p2v.debug."""
    stream = stream or sys.stderr

    def say(line: str) -> None:
        print(line, file=stream, flush=True)

    # The client's retries ("cannot reach …; retrying in 4.0 s") on the console as they happen:
    # a server that does not answer must not look like a hung agent for ten minutes. With
    # p2v.debug, every record of the agent, and the traceback behind a "Stopped:" sentence.
    retries = logging.StreamHandler(stream)
    agent_log = logging.getLogger("agent")
    level = agent_log.level
    if settings.debug:
        retries.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        agent_log.setLevel(logging.DEBUG)
        say("p2v.debug: everything the agent does is shown here" +
            (f" and logged to {log}." if log else "."))
    else:
        retries.setLevel(logging.WARNING)
        retries.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    agent_log.addHandler(retries)
    try:
        outcome = _run(settings, say, stream, machine)
    finally:
        agent_log.removeHandler(retries)
        agent_log.setLevel(level)
    for line in outcome.lines:
        say(line)
    # A failed run follows p2v.fail (default wait): its reason stays on screen for someone to read.
    say(post_action(settings.post if outcome.ok else settings.fail, command))
    return 0 if outcome.ok else 1


def _run(settings: Settings, say: Say, stream: TextIO, machine: Machine | None) -> Outcome:
    mode = settings.mode or "auto"
    if mode == "shell":
        return Outcome(True, ["p2v.mode=shell: nothing to do."])
    client = None
    try:
        if settings.server and (token := xenstore.vm_token()):
            # A VM the server made: its job's own token, not the boot line's.
            say("Using the job token this VM was given (XenStore).")
            settings = dataclasses.replace(settings, token=token)
        if settings.server and settings.token:
            client = client_for(settings)
        if machine is None:
            say("Looking at this machine's hardware and disks…")
            machine = probe_machine(devices=settings.disks)
        for problem in machine.problems:
            say(f"Probe: {problem}")
        if mode == "auto":
            found = situation(machine, settings, client)
            say(found.reason)
            mode = "capture" if found.mode == "ask" else found.mode
            job = found.job
        else:
            job = client.job(settings.job) if client and settings.job and mode == "repair" else None
            if job and not imported_here(job, machine):
                say(f"Job {job['id']} was not imported onto this VM by the server: its image is "
                    "restored onto this VM's disks first, then repaired.")
                mode = "restore"
        if mode == "capture":
            # What the TUI's Summary would warn about, from the same checks.
            for warning in winwarn.lines(winwarn.check(machine, settings.disks)) + \
                    vmspec.warnings(machine, settings, settings.vcpus, settings.memory):
                say(f"Warning: {warning}")
        if client is not None:
            say(f"Server {settings.server}: a server that does not answer is retried for "
                "10 minutes, each attempt shown here.")
        if mode in ("capture", "restore") and client is None:
            return Outcome(False, [f"p2v.mode={mode} needs p2v.server and p2v.token; add them "
                                   "to the boot line or to p2v.cfg."])
        progress = Progress([PlainLines(stream)], interval=5.0)
        if mode == "capture":
            with Watchdog(progress, say):
                result = capture(settings, progress, machine)
            return Outcome(True, capture_summary(result) + [
                "Without XenServer details on the server, create the VM by hand and boot it from "
                "this ISO with this boot line: it restores the disks and repairs by itself:",
                manual_boot_line(settings, result.job, result.token)])
        restored = None
        if mode == "restore":
            if not settings.job:
                return Outcome(False, ["p2v.mode=restore needs p2v.job=ID: the job to restore."])
            with Watchdog(progress, say):
                restored = [r.target for r in restore(settings, progress, client)]
            job = client.job(settings.job)
        inventory = protocol.job_inventory(job) if job else None
        disk = settings.disks[0] if settings.disks else None
        # After a restore, the repair looks at the disks just written, not at whatever this
        # machine has.
        report = apply_repair(disk, inventory, say, client, job and job["id"], disks=restored,
                              passphrases=Passphrases(settings.luks, console_ask(), say),
                              guest_tools=settings.guest_tools,
                              windows_drivers=settings.windows_drivers)
        return Outcome(True, [f"Repair {report['status']}: {report.get('os', 'the system')}."])
    except (CaptureError, RestoreError, RepairError, ServerError, ProbeError) as e:
        LOG.debug("Where it stopped:", exc_info=True)
        return Outcome(False, [f"Stopped: {e}"])

"""Repair: the system found, the planned changes as diffs to scroll through, apply, results, reboot."""

from __future__ import annotations

import queue

from rich.syntax import Syntax
from textual import on, work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Button, OptionList, RichLog, Static
from textual.widgets.option_list import Option

from xenp2v import protocol
from agent.transfer.client import ServerError
from agent.probe.report import human_size
from agent.repair.guest import RepairError
from agent.repair.luks import Passphrases
from agent.tui.common import ConfirmScreen, PassphraseScreen, Step, buttons
from agent.tui.messages import RepairApplied, RepairPlanned, RepairSaid
from agent.unattended import Situation, client_for, post_action

NO_VM_DISK = "This VM shows no disk to repair"   # the runner's sentence when vm_disks() is empty


def plan_overview(report: dict) -> str:
    lines = [f"System   {report.get('os')} ({report.get('family')} family) on {report.get('root')}",
             f"Disk     {report.get('disk')}"]
    steps = report.get("steps") or []
    busy = [s for s in steps if s["files"] or s["commands"]]
    if not busy:
        lines.append("Nothing to change: this system is already repaired.")
    for step in busy:
        lines.append(f"- {step['step']}: {len(step['files'])} file(s), "
                     f"{len(step['commands'])} command(s)")
    return "\n".join(lines)


class RepairScreen(Step):
    NAME = "repair"
    TITLE = "Repair"
    HELP = ("The agent found the copied system on this machine's disks and planned how to make "
            "it boot here: device names become UUIDs, old network names are mapped to the new "
            "cards, the initramfs gets the VM's disk and network drivers, the bootloader is "
            "installed again. An encrypted (LUKS) system asks for its passphrase first, unless "
            "the p2v.luks file holds it. The diffs below show every file it will change; scroll "
            "them with the arrows or Page Up/Down. Apply makes the changes (each file is backed up in the "
            "guest's /var/backups/xenp2v); then reboot the VM from its disk.")

    def body(self) -> ComposeResult:
        yield Static("Looking for the copied system and planning the repair...", id="found")
        yield OptionList(id="pick-disk")
        with VerticalScroll(id="diffs"):
            yield Static("", id="plan")
        yield RichLog(id="log", wrap=True, max_lines=2000, min_width=20)
        yield Static("", id="status")
        yield buttons(("apply", "Apply the changes", "warning"), ("reboot", "Reboot", "primary"))

    def on_mount(self) -> None:
        self.disk = self.app.edges.repair_disk     # None: the runner looks at this VM's disks
        self.query_one("#pick-disk").display = False
        self.query_one("#log").display = False
        self.query_one("#apply").display = False
        self.query_one("#reboot").display = False
        # One set for the plan and the apply: a passphrase typed for the plan is not asked again.
        self.passphrases = Passphrases(self.app.session.settings.luks, self.ask_passphrase,
                                       lambda line: self.app.call_from_thread(self.say, line, True))
        self.plan()

    def ask_passphrase(self, prompt: str) -> bytes | None:
        """From the repair's worker thread: the person's answer in a dialog (None: skipped)."""
        answer: queue.Queue[bytes | None] = queue.Queue(maxsize=1)
        self.app.call_from_thread(self.app.push_screen, PassphraseScreen(prompt), answer.put)
        return answer.get()

    def job(self) -> dict | None:
        situation = self.app.session.situation
        return situation.job if situation else None

    def given_job(self) -> str | None:
        """In the worker: the job p2v.job names, from the server, when the VM's situation has
        none (a repair chosen after a restore done earlier): its record guides the plan and
        takes the report. Returns what to say when the server does not give it."""
        session = self.app.session
        settings = session.settings
        if self.job() or not (settings.job and settings.server and settings.token):
            return None
        try:
            job = client_for(settings, retry_for=15).job(settings.job)
        except ServerError as e:
            return f"Job {settings.job} could not be read ({e}); the plan goes on without it."
        if session.situation is None:
            session.situation = Situation("repair", f"Job {settings.job} was given.")
        session.situation.job = job
        return None

    @work(thread=True, exclusive=True)
    def plan(self) -> None:
        missing = self.given_job()
        if missing:
            self.app.call_from_thread(self.say, missing, True)
        said: list[str] = []
        inventory = protocol.job_inventory(self.job()) if self.job() else None
        try:
            report = self.app.edges.plan_repair(self.disk, inventory, said.append,
                                                self.passphrases)
        except RepairError as e:
            self.post_message(RepairPlanned(None, "", str(e)))
            return
        self.post_message(RepairPlanned(report, "\n".join(said[1:]), None))

    def on_repair_planned(self, message: RepairPlanned) -> None:
        if message.problem:
            where = f" on {self.disk}" if self.disk else ""
            self.query_one("#found", Static).update(f"No system to repair was found{where}.")
            disks = self.disks()
            if disks:
                picker = self.query_one("#pick-disk", OptionList)
                picker.clear_options()
                picker.add_options([Option(text, id=path) for path, text in disks])
                picker.display = True
                picker.highlighted = 0
                picker.focus()
                # The core's "this VM shows no disk" would deny the list right above it.
                problem = ("The repair did not find this VM's disk by itself (it leaves out the "
                           "boot medium, CD drives and disks that are not a VM's)."
                           if message.problem.startswith(NO_VM_DISK) else message.problem)
                self.say(problem + " Choose the disk that holds the copied system "
                         "(arrows, Enter), or attach it in the shell (F9 or Ctrl+T): back "
                         "from it, the agent looks again.", True)
            else:
                self.say(message.problem, True)
            return
        self.query_one("#pick-disk").display = False
        self.report, self.plan_text = message.report, message.text
        self.query_one("#found", Static).update(plan_overview(message.report))
        self.query_one("#plan", Static).update(
            Syntax(message.text, "diff", theme="ansi_dark", word_wrap=True))
        if message.report["changed"]:
            self.query_one("#apply").display = True
            self.query_one("#diffs").focus()
            self.say("Arrows and Page Up/Down scroll the changes; Tab goes to Apply.")
        else:
            self.query_one("#reboot").display = True
            self.query_one("#reboot").focus()
            self.say("Nothing to change. Reboot the VM from its disk.")

    def disks(self) -> list[tuple[str, str]]:
        """(path, line) for each disk the probe saw here, to choose the one to repair."""
        machine = self.app.session.machine
        if not machine:
            return []
        out = []
        for disk in machine.disks:
            oses = sorted({fs.os.name for where, fs in machine.os_roots()
                           if where.startswith(disk.path)})
            out.append((disk.path, f"{disk.path} {human_size(disk.size)} {disk.model or ''}"
                        f"{' - ' + ', '.join(oses) if oses else ''}"))
        return out

    @on(OptionList.OptionSelected, "#pick-disk")
    def picked(self, event: OptionList.OptionSelected) -> None:
        self.disk = event.option.id
        self.query_one("#pick-disk").display = False
        self.query_one("#found", Static).update(f"Looking for the copied system on {self.disk}...")
        self.say("")
        self.plan()

    def look_again(self) -> None:
        """Back from the shell: a disk attached there may be the one."""
        self.plan()

    @on(Button.Pressed, "#apply")
    def apply(self) -> None:
        def answer(yes: bool | None) -> None:
            if yes:
                self.query_one("#apply").display = False
                self.query_one("#diffs").display = False
                self.query_one("#log").display = True
                self.say("Applying...")
                self.run_apply()

        self.app.push_screen(ConfirmScreen("Change the copied system as planned? Every file is "
                                           "backed up first.", yes="Apply", no="Not yet"), answer)

    @work(thread=True, exclusive=True)
    def run_apply(self) -> None:
        settings = self.app.session.settings
        job = self.job()
        client = None
        if job and settings.server and settings.token:
            try:
                client = client_for(settings, retry_for=60)
            except ServerError:
                client = None

        def say(line: str) -> None:
            self.post_message(RepairSaid(line))

        try:
            # The disk the plan was made for: the one chosen here, else the edges' own.
            report = self.app.edges.apply_repair(self.disk,
                                                 protocol.job_inventory(job) if job else None,
                                                 say, client, job and job["id"],
                                                 passphrases=self.passphrases)
        except RepairError as e:
            self.post_message(RepairApplied(None, str(e)))
            return
        self.post_message(RepairApplied(report, None))

    def on_repair_said(self, message: RepairSaid) -> None:
        self.query_one("#log", RichLog).write(message.line)

    def on_repair_applied(self, message: RepairApplied) -> None:
        if message.problem:
            self.say(f"The repair failed: {message.problem}", True)
            return
        self.app.session.finished = True
        self.app.session.outcome = [f"Repair {message.report['status']}: {message.report.get('os')}."]
        self.say("The repair is done. Reboot the VM from its disk (remove the ISO first).")
        self.query_one("#reboot").display = True
        self.query_one("#reboot").focus()

    @on(Button.Pressed, "#reboot")
    def reboot(self) -> None:
        self.say(post_action("reboot", self.app.edges.power))

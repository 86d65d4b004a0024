"""Restore (the manual path): the job's sealed images onto this VM's disks, then the repair."""

from __future__ import annotations

from agent.transfer.progress import Progress, human
from xenp2v.units import counted
from agent.tui.messages import TransferEnded
from agent.tui.transfer import TransferScreen
from agent.unattended import client_for


class RestoreScreen(TransferScreen):
    NAME = "restore"
    TITLE = "Restore"
    DONE = "done: written and checked"
    HELP = ("The images of the job are written onto this VM's disks, in the job's order, and "
            "checked chunk by chunk. A restore stopped for any reason starts again where it "
            "stopped. When it is done, the repair screen shows what it will change in the "
            "copied system.")

    def disk_ids(self) -> list[str]:
        return []

    def work(self, progress: Progress) -> tuple[str | None, list[str], None]:
        session = self.app.session
        client = client_for(session.settings)
        results = self.app.edges.restore(session.settings, progress, client,
                                         self.app.edges.restore_targets)
        if session.situation:
            session.situation.job = client.job(session.settings.job)
        return session.settings.job, [
            f"{r.disk} restored onto {r.target}: {counted(r.fetched_chunks, 'chunk')} fetched "
            f"({human(r.fetched_bytes)}), {r.kept_chunks} already in place" for r in results], None

    def ended(self, message: TransferEnded) -> None:
        if not message.ok:
            super().ended(message)
            return
        self.app.session.outcome = message.lines
        self.app.go("repair", replace=True)

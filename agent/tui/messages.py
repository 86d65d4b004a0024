"""Typed messages the workers post; the screens' handlers update what is shown."""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.message import Message

from agent.probe import Machine, Nic
from agent.transfer.progress import ProgressEvent
from agent.unattended import Situation


@dataclass(eq=False)
class Probed(Message):
    machine: Machine | None
    situation: Situation | None
    problem: str | None
    windows: dict[str, list[str]] = field(default_factory=dict)  # disk path: warnings (winwarn)


@dataclass(eq=False)
class NetworkDone(Message):
    nics: list[Nic]
    text: str


@dataclass(eq=False)
class ServerChecked(Message):
    ok: bool
    fingerprint: str | None     # what the server presents, for the person to compare
    text: str
    token_checked: bool = True  # False: only the certificate was fetched, nothing was sent


@dataclass(eq=False)
class TransferProgress(Message):
    event: ProgressEvent


@dataclass(eq=False)
class TransferLog(Message):
    line: str


@dataclass(eq=False)
class TransferEnded(Message):
    job: str | None
    lines: list[str]
    ok: bool
    cancelled: bool
    token: str | None = None    # the job's own token, from the capture (the Done screen's boot line)


@dataclass(eq=False)
class RepairPlanned(Message):
    report: dict | None
    text: str
    problem: str | None


@dataclass(eq=False)
class RepairSaid(Message):
    line: str


@dataclass(eq=False)
class RepairApplied(Message):
    report: dict | None
    problem: str | None

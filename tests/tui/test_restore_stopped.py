"""The Done screen after a restore that stopped: at the disks p2v.disks= names (no screen can
change them: the help says to edit the boot line), or at the person's own Cancel."""

from __future__ import annotations

import re
import threading

import pytest

from agent.settings import Settings
from agent.transfer import targets
from agent.transfer.restore import RestoreError
from agent.tui.app import make_app
from tests.tui.helpers import screen_text, wait_screen
from tests.tui.test_tired import PRESET, edges, walk

GiB = 1 << 30
JOB = {"id": "20261202-1200-web-1a2b3c",
       "disks": [{"id": "sda", "size": 8 * GiB, "position": 0}]}


TWO = dict(JOB, disks=JOB["disks"] + [{"id": "sdb", "size": GiB, "position": 1}])


def named_restore(job: dict, sizes: dict[str, int]):
    """The restore edge: the real choice of targets for `job`, over disks of `sizes` (a size
    of 0: a partition, which look() refuses in its own words)."""
    def look(path: str) -> targets.Target:
        if sizes.get(path) == 0:
            return targets.Target(path, problem=f"{path} is a partition of the disk /dev/xvdb; a "
                                  "restore writes whole disks. Name the disk itself and start again.")
        return targets.Target(path, sizes.get(path, 16 * GiB))

    def restore(settings, progress, client, named=None):
        targets.choose(job, settings.disks, lambda: [], "p2v.disks=", look=look)
        raise AssertionError("the disks named were accepted")
    return restore


@pytest.mark.parametrize("job, disks, sizes", [
    (JOB, ["xvdb"], {"/dev/xvdb": 4 * GiB}),
    (JOB, ["xvdb", "xvdc"], {}),
    (TWO, ["xvdb", "xvdb"], {}),
    (JOB, ["xvdb1"], {"/dev/xvdb1": 0}),
], ids=["too-small", "wrong-count", "twice", "a-partition"])
def test_a_restore_stopped_by_p2v_disks_says_to_edit_the_boot_line(job, disks, sizes):
    app = make_app(Settings(**PRESET, job=job["id"], disks=disks),
                   edges("windows", restore=named_restore(job, sizes)))

    async def steps(pilot):
        assert app.screen.query_one("#choices").get_option_at_index(0).id == "restore"
        await pilot.press("enter")
        await wait_screen(pilot, "DoneScreen")
        shown = screen_text(app).replace("\n", " ")
        assert "p2v.disks=" in shown, shown
        assert not re.search(r"p2v\.disks=(?! on the boot line)", shown), shown
        assert not app.screen.query("#resume"), "Resume would stop at the same p2v.disks="
        await pilot.press("f1")
        await wait_screen(pilot, "HelpScreen")
        said = screen_text(app).replace("\n", " ")
        assert "Put right what stopped it" not in said, said
        assert "reboot, edit p2v.disks= on the boot line" in said, said
        assert "remove it to use the VM's free disks" in said, said

    walk(app, steps)


def test_the_restore_flow_numbers_its_own_steps():
    go_on = threading.Event()

    def restore(*args):
        go_on.wait(30)
        raise RestoreError("Cannot reach https://10.0.0.5:8443; check the network.")

    app = make_app(Settings(**PRESET, job=JOB["id"]), edges("windows", restore=restore))

    def title() -> str:
        return str(app.screen.query_one("#title").render())

    async def steps(pilot):
        await pilot.press("enter")
        await wait_screen(pilot, "RestoreScreen")
        assert "step 2 of 3" in title(), title()   # Start, Restore, Repair
        go_on.set()
        await wait_screen(pilot, "DoneScreen")
        assert "step" not in title(), title()      # Done comes in place of Repair, not after it
        assert app.screen.query("#resume")         # the network can be put right from here
        await pilot.press("f1")
        await wait_screen(pilot, "HelpScreen")
        assert "Put right what stopped it" in screen_text(app).replace("\n", " ")

    walk(app, steps)


def test_after_the_persons_own_cancel_the_help_does_not_ask_to_put_anything_right():
    app = make_app(Settings(**PRESET, job=JOB["id"]), edges("windows"))

    async def steps(pilot):
        from agent.tui.done import DoneScreen
        app.session.outcome = ["The restore was cancelled."]
        await pilot.app.push_screen(DoneScreen(False, True, again="restore"))
        await pilot.pause(0.2)
        assert app.screen.query("#resume")
        await pilot.press("f1")
        await wait_screen(pilot, "HelpScreen")
        said = screen_text(app).replace("\n", " ")
        assert "Put right what stopped it" not in said and "what stopped it" not in said, said
        assert "Resume the restore" in said, said

    walk(app, steps)

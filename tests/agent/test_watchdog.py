"""A transfer that stops moving is said on the console, with what each thread waits on (the
e2e's serial log is all a CI run leaves of a guest); one that moves is left alone."""

import threading
import time

from agent.transfer.progress import Progress, Watchdog


def stuck_in_the_network(release: threading.Event) -> None:
    release.wait(30)


def test_a_stalled_restore_is_reported_with_the_waiting_call():
    lines: list[str] = []
    progress = Progress(interval=0.0)
    progress.start("vda", 4 << 30, "restore")
    progress.advance("vda", done=1 << 30)
    release = threading.Event()
    worker = threading.Thread(target=stuck_in_the_network, args=(release,), name="stream-1")
    worker.start()
    try:
        with Watchdog(progress, lines.append, after=0.3, poll=0.05) as dog:
            time.sleep(1.0)
    finally:
        release.set()
        worker.join()
    assert dog.reports >= 2, lines            # said again while it lasts
    first = lines[0]
    assert first.startswith("No progress for 0:00:00 (vda restore 1.0 GiB of 4.0 GiB (25%))"), first
    text = "\n".join(lines)
    assert "thread stream-1:" in text and "stuck_in_the_network" in text
    assert "thread watchdog" not in text


def test_a_moving_transfer_is_not_reported():
    lines: list[str] = []
    progress = Progress(interval=0.0)
    progress.start("sda", 100 << 20, "capture")
    with Watchdog(progress, lines.append, after=0.3, poll=0.05):
        for _ in range(12):
            progress.advance("sda", done=1 << 20)
            time.sleep(0.1)
    assert lines == []


def test_a_finished_disk_is_not_named():
    lines: list[str] = []
    progress = Progress(interval=0.0)
    progress.start("sda", 10, "capture")
    progress.advance("sda", done=10)
    progress.phase("sda", "done")
    with Watchdog(progress, lines.append, after=0.2, poll=0.05):
        time.sleep(0.5)
    assert lines and "(no disk under way)" in lines[0]

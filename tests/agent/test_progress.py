"""The console's progress lines (an unattended run, `p2v-agent capture` and `restore`)."""

from agent.transfer.progress import ProgressEvent

MiB = 1 << 20


def test_a_restores_line_does_not_say_it_sent_what_it_fetched():
    """A restore fetches; its line said "318.9 KiB sent" beside the final "on the wire"."""
    restore = ProgressEvent("sda", "restore", 10 * MiB, 44 * MiB, 1 * MiB, 2 * MiB, 17.0)
    assert restore.line() == ("sda: restore 10.0 MiB of 44.0 MiB (23%), 2.0 MiB/s, 1.0 MiB on the "
                              "wire, 0:00:17 left")
    done = ProgressEvent("sda", "done", 44 * MiB, 44 * MiB, 1 * MiB, 0, None, "restored onto x")
    assert " sent" not in done.line()

"""A live system without modprobe (no kmod) is asked what its kernel mounts: it answers by
/proc/filesystems instead of failing the repair."""

from agent.repair import guest


def test_a_missing_modprobe_means_the_kernel_knows_only_what_it_lists(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert guest.kernel_knows("no-such-filesystem-xenp2v") is False
    assert guest.kernel_knows("proc") is True

"""What the dashboard draws of a job, from the store's shapes, without a server."""

from __future__ import annotations

from server.dashboard import model

MiB = 1024 * 1024


def job(state="receiving", held=30 * MiB, disk_state="receiving", **extra) -> dict:
    return {
        "id": "j1", "name": "web01", "state": state, "detail": "", "created": "t0", "updated": "t1",
        "last_event": {"disk": "sda", "phase": "capture", "message": ""},
        "records": extra.get("records", {}),
        "inventory": {"machine": {"vendor": "Dell Inc.", "product": "PowerEdge R640"},
                      "disks": [{"id": "sda", "warnings": ["/dev/sda2: ext4 needs journal recovery: "
                                                           "read whole"]}]},
        "disks": [{"id": "sda", "size": 1024 * MiB, "state": disk_state, "held_bytes": held,
                   "held_chunks": held // (4 * MiB), "expected_bytes": 120 * MiB,
                   "bad_ranges": [[4096, 512]], "digest": None}],
    }


def test_a_receiving_disk_shows_the_servers_share_rate_and_eta_and_the_plans_warnings():
    event = {"disk": "sda", "phase": "capture", "sent": 20 * MiB, "rate": 0.0, "eta": None}
    view = model.job_view(job(), {"sda": event}, {"sda": 9 * MiB})
    (disk,) = view["disks"]
    assert disk["pct"] == 25 and disk["rate"] == 9 * MiB and disk["eta"] == 10
    assert view["machine"] == "Dell Inc. PowerEdge R640" and view["sent"] == 20 * MiB
    assert view["warnings"] == ["sda: /dev/sda2: ext4 needs journal recovery: read whole"]
    assert view["bad_ranges"] == 1
    # Before the server has watched a second, an agent's first "0 B/s" is not shown as a rate.
    assert model.job_view(job(), {"sda": event})["disks"][0]["rate"] is None


def test_only_the_seal_says_100_percent_and_a_sealed_disk_has_no_rate():
    assert model.job_view(job(held=120 * MiB), {})["disks"][0]["pct"] == 99
    sealed = model.job_view(job("sealed", 120 * MiB, "sealed"), {"sda": {"phase": "done", "rate": 5.0}},
                            {"sda": 5.0})
    assert sealed["disks"][0]["pct"] == 100 and sealed["disks"][0]["rate"] is None
    assert sealed["sealed"] and sealed["phase"] == "sealed"


def test_rates_come_from_what_the_server_held_at_each_look():
    rates = model.Rates()
    assert rates.look(job(held=0), 100.0) == {}
    assert rates.look(job(held=20 * MiB), 102.0) == {"sda": 10 * MiB}
    assert rates.look(job("sealed", disk_state="sealed"), 104.0) == {}


def test_actions_follow_the_jobs_state():
    assert model.actions(job(), can_provision=True) == ["verify", "cancel"]
    sealed = job("sealed", disk_state="sealed")
    assert model.actions(sealed, can_provision=False) == ["verify", "delete"]
    assert model.actions(sealed, can_provision=True) == ["provision", "verify", "delete"]
    assert model.actions(job("provisioning", disk_state="sealed"), can_provision=True) == ["verify"]


def test_diff_lines_are_classed_for_colour():
    diff = "--- a/etc/fstab\n+++ b/etc/fstab\n@@ -1 +1 @@\n-/dev/sda1 / ext4\n+UUID=x / ext4\n"
    assert [k for k, _ in model.diff_lines(diff)] == ["file", "file", "hunk", "del", "add"]

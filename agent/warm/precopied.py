"""The pre-copy job's disks under the names the stick gives them (warm migration).

The running system and the stick may name one disk differently (sda there, sdb here: another
controller order, a USB stick probed first). The server knows a disk by its id, the kernel name
the pre-copy pass saw, so the final sync must send each disk under the job's id. A disk of the
job is one of ours when everything but the name is equal: size, serial, partition table and the
filesystems on it (xenp2v.protocol.disk_identity), one to one.
"""

from __future__ import annotations

from xenp2v import protocol


def renamed(ours: list[dict], theirs: list[dict]) -> dict[str, str]:
    """{our disk id: the job's disk id} for the disks named otherwise there; {} when none is,
    or when the two lists do not pair up one to one by all but the name (inventory disks)."""
    left = list(theirs)
    pairs = {}
    for disk in ours:
        key = protocol.disk_identity(disk)[1:]
        same = [d for d in left if protocol.disk_identity(d)[1:] == key]
        if len(same) != 1:
            return {}
        left.remove(same[0])
        pairs[disk["id"]] = same[0]["id"]
    if left:
        return {}
    return {ours: theirs for ours, theirs in pairs.items() if ours != theirs}


def precopy_job(jobs: list[dict], machine: dict, named: str | None) -> dict | None:
    """The sealed pre-copy job a final sync goes into: the one `named` (p2v.job), else the
    newest of this machine (the same SMBIOS identity, never a placeholder one); None."""
    def precopied(job: dict) -> bool:
        warm = (job.get("records") or {}).get("warm") or {}
        return job.get("state") == "sealed" and warm.get("pass") == "precopy"

    if named:
        return next((j for j in jobs if j["id"] == named and precopied(j)), None)
    key = protocol.machine_key(machine)
    if key is None:
        return None
    mine = [j for j in jobs if precopied(j)
            and protocol.machine_key((j.get("inventory") or {}).get("machine") or {}) == key]
    return max(mine, key=lambda j: j.get("created") or "", default=None)


def sentence(job: str, names: dict[str, str]) -> str:
    pairs = ", ".join(f"{theirs} there is {ours} here" for ours, theirs in sorted(names.items()))
    return (f"The stick sees the disks of pre-copy job {job} under other names than the running "
            f"system did: {pairs} (same size, serial, partition table and filesystems). The "
            "final sync sends each under the job's name.")

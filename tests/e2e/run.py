"""`make e2e`: real boots of source machines before and after `p2v-agent repair --disk`.

Per scenario: the source boots on its own hardware (AHCI, e1000 as ens3); it fails on the VM's
controllers (IDE as XenServer emulates it, and virtio); a copy of its disk, attached here as a loop
device, is repaired with `p2v-agent repair --disk`, repaired again (which must change nothing),
and then boots on IDE and on virtio with the network up on the VM's NIC (rtl8139, ens4).

Usage: run.py [SCENARIO ...]   (default: all; see sources.LAYOUTS)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from boot import boot  # noqa: E402
from sources import ADDRESS, CACHE, LAYOUTS, SOURCE_NIC, source_image  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / ".venv/bin/p2v-agent"
VM_NIC = "ens4"


def say(text: str) -> None:
    print(text, flush=True)


def repair(image: Path, log: Path) -> tuple[bool, str]:
    """Attach `image` as a loop device, repair it twice; the second run must change nothing."""
    loop = subprocess.run(["losetup", "--show", "-f", "-P", str(image)], capture_output=True,
                          text=True, check=True).stdout.strip()
    try:
        outputs = []
        for attempt in (1, 2):
            proc = subprocess.run([str(AGENT), "repair", "--disk", loop, "--nic", f"{SOURCE_NIC}={VM_NIC}"],
                                  capture_output=True, text=True, timeout=1800)
            outputs.append(f"--- run {attempt} (exit {proc.returncode})\n{proc.stdout}{proc.stderr}")
            if proc.returncode != 0:
                return False, f"repair run {attempt} failed: {proc.stderr.strip()[-300:]}"
        log.write_text("\n".join(outputs))
        if "Nothing to change" not in outputs[1]:
            return False, "the second repair changed something"
        return True, "repaired; second run changed nothing"
    finally:
        subprocess.run(["partx", "-d", loop], capture_output=True)
        subprocess.run(["losetup", "-d", loop], capture_output=True)


def scenario(name: str, work: Path) -> dict:
    row = {"scenario": name}
    firmware = LAYOUTS[name].firmware
    t = time.monotonic()
    source = source_image(name, say)
    row["build"] = time.monotonic() - t
    expected_source = f"{SOURCE_NIC}:{ADDRESS}"
    expected_vm = f"{VM_NIC}:{ADDRESS}"

    def check(label: str, image: Path, controller: str, nic: str, want_up: bool, want_net: str | None):
        result = boot(image, controller, nic, firmware, work / f"{name}-{label}.serial", timeout=900)
        good = result.ok == want_up and (not want_up or result.net == want_net)
        row[label] = ("PASS" if good else "FAIL", result)
        say(f"  {name} {label}: {'PASS' if good else 'FAIL'} — {result}")
        return good

    check("own-ahci", source, "ahci", "source", True, expected_source)
    check("before-ide", source, "ide", "vm", False, None)
    check("before-virtio", source, "virtio", "vm", False, None)
    vm = work / f"{name}-vm.img"
    t = time.monotonic()
    shutil.copyfile(source, vm)
    ok, why = repair(vm, work / f"{name}-repair.log")
    row["repair"] = ("PASS" if ok else "FAIL", why, time.monotonic() - t)
    say(f"  {name} repair: {'PASS' if ok else 'FAIL'} — {why} ({row['repair'][2]:.0f} s)")
    if ok:
        check("after-ide", vm, "ide", "vm", True, expected_vm)
        check("after-virtio", vm, "virtio", "vm", True, expected_vm)
    vm.unlink(missing_ok=True)
    return row


def table(rows: list[dict]) -> str:
    cols = ("own-ahci", "before-ide", "before-virtio", "repair", "after-ide", "after-virtio")
    head = ["scenario", "build s", "boots on own hw", "fails on IDE", "fails on virtio", "repair",
            "boots after (IDE)", "boots after (virtio)"]
    lines = []
    for row in rows:
        cells = [row["scenario"], f"{row['build']:.0f}"]
        for col in cols:
            value = row.get(col)
            if value is None:
                cells.append("-")
            elif col == "repair":
                cells.append(f"{value[0]} {value[2]:.0f}s")
            else:
                cells.append(f"{value[0]} {value[1].seconds:.0f}s")
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
    fmt = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def main(argv: list[str]) -> int:
    names = argv or list(LAYOUTS)
    unknown = [n for n in names if n not in LAYOUTS]
    if unknown:
        say(f"Unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(LAYOUTS)}.")
        return 2
    work = CACHE / "runs" / time.strftime("%Y%m%dT%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        say(f"== {name}")
        rows.append(scenario(name, work))
    say("\n" + table(rows))
    say(f"serial logs and repair output: {work}")
    failed = [r["scenario"] for r in rows
              if any(isinstance(v, tuple) and v[0] == "FAIL" for v in r.values()) or "after-virtio" not in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

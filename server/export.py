"""Offline exports of a sealed job: raw, VHD (dynamic), qcow2, VMDK through qemu-img, XVA by us.

Only sealed disks are exported. A raw export writes data chunks only, so zero and free chunks stay
holes in a sparse file; the other formats are converted from the server's own sparse image, which
qemu-img reads hole-aware.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from xenp2v.protocol import ChunkKind, DiskState
from server import xva
from server.datadir import CommandError, add_data_dir, existing_store
from server.xenserver.spec import NEW_MACS_WARNING, vm_spec

FORMATS = ("raw", "vhd", "qcow2", "vmdk", "xva")
# qemu-img's names and options: a dynamic VHD of exactly the disk's size (no CHS rounding).
QEMU_FORMATS = {
    "vhd": ("vpc", ["-o", "subformat=dynamic,force_size=on"]),
    "qcow2": ("qcow2", []),
    "vmdk": ("vmdk", []),
}
COPY_BLOCK = 4 * 1024 * 1024


class ExportError(Exception):
    """An export that cannot be made; the message says what to do."""


def write_raw(image, out: str | os.PathLike) -> None:
    """A sparse raw copy: data chunks written, everything else left a hole (reads as zeros)."""
    tmp = f"{out}.part"
    with open(image.path, "rb") as src, open(tmp, "wb") as dst:
        dst.truncate(image.size)
        for extent in image.extents:
            if extent.kind is not ChunkKind.DATA:
                continue
            offset = extent.start * image.chunk_size
            end = min((extent.start + extent.count) * image.chunk_size, image.size)
            src.seek(offset)
            dst.seek(offset)
            while offset < end:
                block = src.read(min(COPY_BLOCK, end - offset))
                if not block:
                    break
                if block.count(0) != len(block):
                    dst.seek(offset)
                    dst.write(block)
                offset += len(block)
    os.replace(tmp, out)


def convert(image, fmt: str, out: str | os.PathLike) -> None:
    """VHD, qcow2 or VMDK through qemu-img."""
    name, options = QEMU_FORMATS[fmt]
    tmp = f"{out}.part"
    try:
        proc = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", name, *options,
                               str(image.path), tmp], capture_output=True, text=True)
    except FileNotFoundError:
        raise ExportError("qemu-img is not installed: install the Debian package qemu-utils "
                          "(apt-get install qemu-utils) and run the export again.") from None
    if proc.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        raise ExportError(f"qemu-img could not write the {fmt} file: {proc.stderr.strip()}")
    os.replace(tmp, out)


def disk_out_path(out: str | os.PathLike, disk_id: str, several: bool) -> Path:
    """PATH for a single disk; PATH with '-<disk>' before its extension when there are several."""
    path = Path(out)
    if not several:
        return path
    return path.with_name(f"{path.stem}-{disk_id}{path.suffix}")


def sealed_disk_ids(job: dict, disk_id: str | None) -> list[str]:
    disks = (job.get("disks") or (job.get("inventory") or {}).get("disks") or [])
    ids = [str(d["id"]) for d in disks]
    wanted = ids if disk_id is None else [disk_id]
    if disk_id is not None and disk_id not in ids:
        raise ExportError(f"Job {job['id']} has no disk {disk_id!r}; its disks are: "
                          f"{', '.join(ids) or 'none'}.")
    states = {str(d["id"]): d.get("state") for d in disks}
    unsealed = [d for d in wanted if states.get(d, DiskState.SEALED) != DiskState.SEALED]
    if unsealed:
        raise ExportError(f"Disk {', '.join(unsealed)} of job {job['id']} is not sealed yet: "
                          "wait until the capture finishes (p2v-server jobs shows it), then export.")
    return wanted


def export_job(store, job_id: str, fmt: str, out: str | os.PathLike,
               disk_id: str | None = None, keep_macs: bool = True) -> list[Path]:
    """Export a sealed job; returns the files written."""
    if fmt not in FORMATS:
        raise ExportError(f"Unknown format {fmt!r}: choose one of {', '.join(FORMATS)}.")
    job = store.get_job(job_id)
    ids = sealed_disk_ids(job, disk_id)
    images = [store.sealed_image(job_id, d) for d in ids]
    if fmt == "xva":
        spec = vm_spec(job, keep_macs=keep_macs)
        xva.write_xva(out, spec, images)
        return [Path(out)]
    written = []
    for image, d in zip(images, ids):
        path = disk_out_path(out, d, len(ids) > 1)
        if fmt == "raw":
            write_raw(image, path)
        else:
            convert(image, fmt, path)
        written.append(path)
    return written


# --- `p2v-server export` -----------------------------------------------------------------------

def register(sub) -> None:
    p = sub.add_parser("export", help="write a sealed job as raw, VHD, qcow2, VMDK or XVA",
                       description="Write a sealed job's disks for an offline import. raw, vhd, "
                                   "qcow2, vmdk: one file per disk (PATH-<disk>.ext when the job "
                                   "has several). xva: one file with the VM (CPUs, memory, MACs) "
                                   "and all its disks, for xe vm-import.")
    add_data_dir(p)
    p.add_argument("job", metavar="JOB")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, metavar="PATH")
    p.add_argument("--disk", default=None, metavar="ID", help="export this disk only")
    macs = p.add_mutually_exclusive_group()
    macs.add_argument("--new-macs", action="store_true",
                      help="xva: let the pool give the NICs new MACs instead of the source's")
    macs.add_argument("--keep-macs", action="store_true", help="xva: the default; accepted for older scripts")
    p.set_defaults(func=run)


def run(args) -> int:
    with existing_store(args) as store:
        try:
            files = export_job(store, args.job, args.format, args.out, disk_id=args.disk,
                               keep_macs=not args.new_macs)
        except ExportError as err:
            raise CommandError(str(err)) from err
        except OSError as err:
            raise CommandError(f"Cannot write {args.out}: {err.strerror}. Choose another --out.") from err
    if args.new_macs and args.format == "xva":
        print(f"warning: {NEW_MACS_WARNING}", file=sys.stderr)
    for path in files:
        print(path)
    return 0

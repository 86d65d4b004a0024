#!/usr/bin/env python3
"""The pre-copy sender of warm migration: one file, Python 3.6's standard library only.

It runs on the source's own running system (RHEL/CentOS 7, Debian 10, Ubuntu 18.04, SLES 12 ship
Python 3.6 or later; ``p2v-server`` offers this file at /api/v1/precopy.py) and streams its disks
into a job marked pre-copy, while the machine keeps working. Run it as often as you like (daily):
each pass opens a new version of the job's images and sends only the chunks that changed. The
final sync from the stick then sends what changed since the last pass, with the safe read plan.

What it reads: each disk whole, as the running system sees it. Where LVM can give a consistent
view, it does: each active linear LV on the disk is read from an LVM snapshot taken when the disk's
pass starts (its PVs' metadata areas as they were before the snapshots), removed at the end. What
has no snapshot (partitions, an LV whose volume group has no free space for one, btrfs: a btrfs
snapshot is of files, while the pass copies blocks, and the trees and superblock keep moving on
the device) is crash-consistent: it changes while it is read, and the final sync corrects every
chunk that differs. All-zero chunks are declared zero, never sent. Chunks are digested with SHA-256 (there is no BLAKE3 in Python
3.6's library, and a BLAKE3 in pure Python reads a few MB/s); the server checks that digest,
digests each chunk with BLAKE3 itself, and keeps both (see xenp2v.protocol, PRECOPY_DIGEST).

Usage: python3 precopy.py --server https://HOST:8443 --token T [--fingerprint sha256:HEX]
       [--disks sda,sdb] [--job ID] [--name NAME]

This file repeats a few of xenp2v.protocol's definitions (paths, headers, the image manifest),
since it cannot import that module on the source; tests/agent/test_precopy.py keeps them equal.
"""

import argparse
import hashlib
import http.client
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit

API = "/api/v1"
VERSION = 1
DIGEST_HEADER = "X-P2V-Digest"
PRECOPY_DIGEST = "sha256"
ATTEMPTS = 8
SKIP = ("loop", "ram", "sr", "fd", "dm-", "md", "zram", "nbd", "rbd")


class PrecopyError(Exception):
    """The pass cannot go on; the message says what to do."""


# --- the server --------------------------------------------------------------------------------

class Server:
    """JSON calls and chunk uploads over one kept-alive connection, retried across cuts."""

    def __init__(self, url, token, fingerprint=None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PrecopyError("The server address {!r} is not https://HOST:PORT.".format(url))
        if fingerprint and parts.scheme != "https":
            raise PrecopyError("The server address {} is plain HTTP but a fingerprint is given: "
                               "use https://.".format(url))
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.token = token
        self.fingerprint = None
        if fingerprint:
            text = fingerprint.strip().lower()
            text = text[len("sha256:"):] if text.startswith("sha256:") else text
            self.fingerprint = text.replace(":", "")
        self.conn = None

    def _connect(self):
        if self.scheme == "http":
            return http.client.HTTPConnection(self.host, self.port, timeout=120)
        context = ssl.create_default_context()
        if self.fingerprint:  # the pin is the trust: checked once the handshake is done
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=120, context=context)
        conn.connect()
        if self.fingerprint:
            seen = hashlib.sha256(conn.sock.getpeercert(binary_form=True)).hexdigest()
            if seen != self.fingerprint:
                conn.close()
                raise PrecopyError("The server's certificate is sha256:{}, not the fingerprint "
                                   "given; check --server and --fingerprint.".format(seen))
        return conn

    def call(self, method, path, body=None, headers=None, ok=(200, 201, 204)):
        """The answer's JSON (None when empty); PrecopyError with the server's sentence."""
        headers = dict(headers or {})
        headers["Authorization"] = "Bearer " + self.token
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in range(ATTEMPTS):
            try:
                if self.conn is None:
                    self.conn = self._connect()
                self.conn.request(method, path, body=body, headers=headers)
                answer = self.conn.getresponse()
                data = answer.read()
            except (OSError, http.client.HTTPException) as err:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt == ATTEMPTS - 1:
                    raise PrecopyError("The server at {}:{} cannot be reached ({}); check the "
                                       "address and the network.".format(self.host, self.port, err))
                time.sleep(min(30, 2 ** attempt))
                continue
            if answer.status in ok:
                return json.loads(data.decode()) if data else None
            if answer.status >= 500 and answer.status != 507 and attempt < ATTEMPTS - 1:
                time.sleep(min(30, 2 ** attempt))
                continue
            try:
                detail = json.loads(data.decode()).get("detail") or data.decode()
            except ValueError:
                detail = data.decode("utf-8", "replace")
            raise PrecopyError("The server refused {} {} ({}): {}".format(
                method, path, answer.status, detail))


# --- this machine ------------------------------------------------------------------------------

def _read(path):
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def machine():
    """The SMBIOS identity the server matches the later passes and the final sync by."""
    dmi = "/sys/class/dmi/id/"
    uuid_ = _read(dmi + "product_uuid")
    return {"system_uuid": uuid_.lower() if uuid_ else None, "vendor": _read(dmi + "sys_vendor"),
            "product": _read(dmi + "product_name"), "serial": _read(dmi + "product_serial")}


def whole_disks():
    return sorted(name for name in os.listdir("/sys/block")
                  if not name.startswith(SKIP) and os.path.exists("/sys/block/" + name + "/device"))


def _run(args):
    try:
        proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True)
    except OSError:
        return None
    return proc.stdout if proc.returncode == 0 else None


def blkid(node):
    """{"fstype", "uuid", "label"} of what blkid finds on `node`, None where nothing."""
    out = {}
    for line in (_run(["blkid", "-p", "-o", "export", node]) or "").splitlines():
        key, _, value = line.partition("=")
        out[key] = value.replace("\\", "")
    return {"fstype": out.get("TYPE"), "uuid": out.get("UUID"), "label": out.get("LABEL")}


def partition_node(device, number):
    sep = "p" if device[-1].isdigit() else ""
    return "{}{}{}".format(device, sep, number)


def partition_table(device):
    """The table as the capture's inventory lists it, from sfdisk --json where util-linux has it
    (2.27 and later), else read from the disk (MBR, GPT): None when the disk has none."""
    text = _run(["sfdisk", "--json", device])
    if text is not None:
        pt = json.loads(text)["partitiontable"]
        sector = int(pt.get("sectorsize", 512))
        parts = []
        for p in pt.get("partitions", []):
            node = p["node"]
            number = int(node[len(node.rstrip("0123456789")):])
            kind = str(p.get("type", ""))
            parts.append((number, int(p["start"]) * sector, int(p["size"]) * sector,
                          kind.upper() if pt["label"] == "gpt" else kind))
        label, ident = pt["label"], pt.get("id")
    else:
        found = read_table(device)
        if found is None:
            return None
        label, ident, parts = found
    return {"label": label, "id": ident,
            "partitions": [dict({"number": n, "start": s, "size": z, "type": t},
                                **blkid(partition_node(device, n))) for n, s, z, t in parts]}


def read_table(device, sector=512):
    """(label, id, [(number, start, size, type)]) of an MBR or GPT read from the disk; None."""
    with open(device, "rb") as f:
        head = f.read(34 * sector)
        if len(head) < 2 * sector or head[510:512] != b"\x55\xaa":
            return None
        if head[sector:sector + 8] == b"EFI PART":
            entries_lba, count, size = struct.unpack_from("<QII", head, sector + 72)
            f.seek(entries_lba * sector)
            table = f.read(count * size)
            parts = []
            for n in range(count):
                entry = table[n * size:(n + 1) * size]
                if entry[:16] == bytes(16):
                    continue
                first, last = struct.unpack_from("<QQ", entry, 32)
                parts.append((n + 1, first * sector, (last - first + 1) * sector,
                              str(uuid.UUID(bytes_le=entry[:16])).upper()))
            return "gpt", str(uuid.UUID(bytes_le=head[sector + 56:sector + 72])).upper(), parts
        parts, extended = [], None
        for n in range(4):
            kind, first, count = struct.unpack_from("<4xB3xII", head, 446 + 16 * n)
            if kind and count:
                parts.append((n + 1, first * sector, count * sector, "{:x}".format(kind)))
                if kind in (0x05, 0x0F, 0x85):
                    extended = first
        number, ebr = 5, extended
        while ebr is not None:  # logical partitions: a chain of EBRs inside the extended one
            f.seek(ebr * sector)
            record = f.read(sector)
            kind, first, count = struct.unpack_from("<4xB3xII", record, 446)
            if record[510:512] != b"\x55\xaa" or not count:
                break
            parts.append((number, (ebr + first) * sector, count * sector, "{:x}".format(kind)))
            number += 1
            _, nxt, _ = struct.unpack_from("<4xB3xII", record, 462)
            ebr = extended + nxt if nxt else None
        ident = "0x{:08x}".format(struct.unpack_from("<I", head, 440)[0])
        return "dos", ident, parts


def disk_record(name):
    device = "/dev/" + name
    size = int(_read("/sys/block/{}/size".format(name)) or 0) * 512
    serial = _read("/sys/block/{}/device/serial".format(name))
    table = partition_table(device)
    whole = blkid(device) if table is None else None
    return {"id": name, "size": size, "used": size, "serial": serial, "table": table,
            "filesystem": whole if whole and whole["fstype"] else None, "links": [],
            "device": device, "warnings": [],
            "plan": ["read whole on the running system (a pre-copy pass): its active LVs from LVM "
                     "snapshots where their volume group has room for one, the rest "
                     "crash-consistent; the final sync from the stick sends every chunk that "
                     "changed"]}


# --- a consistent view where LVM gives one -------------------------------------------------------

SNAPSHOT = "{}_p2vsnap"           # the name of the snapshot of LV {} while a pass reads it
MIN_SNAPSHOT = 64 << 20           # bytes of copy-on-write space below which none is taken


def lvm_report(args):
    """The rows of an LVM report, each a list of its fields; [] without LVM."""
    out = _run(["lvm"] + args + ["--noheadings", "--nosuffix", "--units", "b", "--separator", "|"])
    return [[f.strip() for f in line.split("|")] for line in (out or "").splitlines()
            if line.strip()]


def physical_volumes(name):
    """{PV as LVM names it: (its byte offset on disk `name`, its pe_start)} for the PVs that are
    the disk itself or one of its partitions."""
    out = {}
    for row in lvm_report(["pvs", "-o", "pv_name,pe_start"]):
        pv, pe_start = row[0], int(row[1])
        node = os.path.basename(os.path.realpath(pv))
        if node == name:
            out[pv] = (0, pe_start)
        elif os.path.exists("/sys/block/{}/{}".format(name, node)):
            start = int(_read("/sys/class/block/{}/start".format(node)) or 0) * 512
            out[pv] = (start, pe_start)
    return out


def lv_spans(pvs):
    """({(vg, lv): [(offset on the disk, length, offset in the LV)]} of the active LVs whose
    every segment on these PVs is linear, {vg: names of its LVs})."""
    spans, other, names = {}, set(), {}
    rows = lvm_report(["lvs", "-a", "--segments", "-o", "vg_name,lv_name,lv_attr,seg_start,"
                       "seg_size,seg_pe_ranges,vg_extent_size,segtype"])
    for vg, lv, attr, seg_start, seg_size, ranges, extent, segtype in rows:
        names.setdefault(vg, set()).add(lv)
        pv, _, pes = ranges.partition(":")
        if pv not in pvs or attr[:1] not in ("-", "o"):
            continue
        if segtype != "linear" or " " in ranges:
            other.add((vg, lv))
            continue
        start, pe_start = pvs[pv]
        first = int(pes.split("-")[0])
        spans.setdefault((vg, lv), []).append(
            (start + pe_start + first * int(extent), int(seg_size), int(seg_start)))
    active = {k: v for k, v in spans.items()
              if k not in other and os.path.exists("/dev/{}/{}".format(*k))}
    return active, names


class View:
    """What a pass reads of one disk: the disk, with its LVs' bytes from their snapshots and its
    PVs' metadata areas as they were before the snapshots were made. close() removes them."""

    def __init__(self, name, say):
        self.say = say
        self.saved = []       # (offset on the disk, bytes): metadata areas before the snapshots
        self.snapshots = []   # [vg, snapshot, fd, spans]
        pvs = physical_volumes(name)
        spans, names = lv_spans(pvs) if pvs else ({}, {})
        if not spans:
            return
        fd = os.open("/dev/" + name, os.O_RDONLY)
        try:
            for start, pe_start in pvs.values():
                self.saved.append((start, _pread_all(fd, pe_start, start)))
        finally:
            os.close(fd)
        free = {row[0]: int(row[1]) for row in lvm_report(["vgs", "-o", "vg_name,vg_free"])}
        for (vg, lv), parts in sorted(spans.items()):
            snap = SNAPSHOT.format(lv)
            if snap in names.get(vg, ()):  # left by a pass that was killed
                _run(["lvm", "lvremove", "-f", "{}/{}".format(vg, snap)])
            size = sum(length for _, length, _ in parts)
            cow = min(free.get(vg, 0), max(size // 4, MIN_SNAPSHOT))
            if cow < MIN_SNAPSHOT:
                say("{}/{}: the volume group has no free space for a snapshot; this pass reads "
                    "it as it changes (the final sync corrects it)".format(vg, lv))
                continue
            if _run(["lvm", "lvcreate", "-q", "-s", "-n", snap, "-L", "{}b".format(cow),
                     "{}/{}".format(vg, lv)]) is None:
                say("{}/{}: LVM made no snapshot; this pass reads it as it changes (the final "
                    "sync corrects it)".format(vg, lv))
                continue
            free[vg] -= cow
            self.snapshots.append([vg, snap, None, parts])
            try:
                self.snapshots[-1][2] = os.open("/dev/{}/{}".format(vg, snap), os.O_RDONLY)
            except OSError as err:
                self.drop(self.snapshots[-1], "cannot be read ({})".format(err.strerror))
                continue
            say("{}/{}: read from the snapshot {} (a consistent view)".format(vg, lv, snap))

    def overlay(self, chunk, offset):
        """`chunk` (the disk's bytes at `offset`) with what the snapshots and saved metadata
        areas hold there."""
        end = offset + len(chunk)
        out = None
        for start, data in self.saved:
            lo, hi = max(offset, start), min(end, start + len(data))
            if lo < hi:
                out = out or bytearray(chunk)
                out[lo - offset:hi - offset] = data[lo - start:hi - start]
        for snapshot in list(self.snapshots):
            for start, length, lv_offset in snapshot[3]:
                lo, hi = max(offset, start), min(end, start + length)
                if lo >= hi:
                    continue
                try:
                    piece = _pread_all(snapshot[2], hi - lo, lv_offset + lo - start)
                except OSError as err:  # a snapshot that filled up reads EIO
                    self.drop(snapshot, "failed ({}): it filled up".format(err.strerror))
                    break
                out = out or bytearray(chunk)
                out[lo - offset:hi - offset] = piece
        return chunk if out is None else bytes(out)

    def drop(self, snapshot, why):
        vg, snap, fd, _ = snapshot
        if fd is not None:
            os.close(fd)
        _run(["lvm", "lvremove", "-f", "{}/{}".format(vg, snap)])
        self.snapshots.remove(snapshot)
        self.say("{}/{}: the snapshot {}; the rest of it is read as it changes (the final sync "
                 "corrects it)".format(vg, snap, why))

    def close(self):
        for vg, snap, fd, _ in self.snapshots:
            if fd is not None:
                os.close(fd)
            _run(["lvm", "lvremove", "-f", "{}/{}".format(vg, snap)])
        self.snapshots = []


# --- the pass ----------------------------------------------------------------------------------

def runs(indices):
    out = []
    for i in indices:
        if out and out[-1][0] + out[-1][1] == i:
            out[-1][1] += 1
        else:
            out.append([i, 1])
    return out


def image_digest(size, chunk_size, data, zero):
    """xenp2v.protocol.precopy_image_digest: the manifest with each data chunk's sha256."""
    h = hashlib.sha256()
    h.update("xenp2v-image v{} size={} chunk={}\n".format(VERSION, size, chunk_size).encode())
    for index in sorted(set(data) | set(zero)):
        line = "{} {}\n".format(index, data[index]) if index in data else "{} zero\n".format(index)
        h.update(line.encode())
    return PRECOPY_DIGEST + ":" + h.hexdigest()


def send_disk(server, job, disk, chunk_size, say):
    """Reads `disk` whole, sends the chunks whose sha256 the server lacks, declares all-zero
    chunks zero (a held one the source zeroed since is forgotten), and seals the version."""
    base = "{}/jobs/{}/disks/{}".format(API, job, disk["id"])
    listed = server.call("GET", base + "/chunks")
    held = {int(i): d for i, d in (listed.get("sha256") or {}).items()}
    size = disk["size"]
    data, zero, sent, changed = {}, [], 0, 0
    started = last = time.time()
    view = View(os.path.basename(disk["device"]), say)
    fd = os.open(disk["device"], os.O_RDONLY)
    try:
        for index in range((size + chunk_size - 1) // chunk_size):
            offset = index * chunk_size
            length = min(chunk_size, size - offset)
            chunk = view.overlay(_pread_all(fd, length, offset), offset)
            if chunk.count(0) == length:
                zero.append(index)
                continue
            digest = hashlib.sha256(chunk).hexdigest()
            data[index] = PRECOPY_DIGEST + ":" + digest
            if held.get(index) != digest:
                server.call("PUT", "{}/chunks/{}".format(base, index), body=chunk,
                            headers={DIGEST_HEADER: data[index],
                                     "Content-Type": "application/octet-stream"})
                sent += length
                changed += 1
            if time.time() - last >= 10:
                last = time.time()
                say("{}: {:.0f}% read, {} MiB sent".format(
                    disk["id"], 100.0 * (offset + length) / size, sent >> 20))
    finally:
        os.close(fd)
        view.close()
    server.call("POST", base + "/complete", body={
        "digest": image_digest(size, chunk_size, data, zero), "zero": runs(zero),
        "bad_ranges": []})
    say("{}: sealed, {} MiB in {} changed chunks sent, {} MiB read in {:.0f} s".format(
        disk["id"], sent >> 20, changed, size >> 20, time.time() - started))
    return sent


def _pread_all(fd, length, offset):
    """The bytes at `offset`, read from the disk itself: the whole disk's page cache is dropped
    first, since the mounted filesystems write through their partitions' own caches and a page
    cached by the last pass would hide what they wrote since."""
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    out = b""
    while len(out) < length:
        piece = os.pread(fd, length - len(out), offset + len(out))
        if not piece:  # past the end of a disk that shrank: what is not there reads zeros
            return out + bytes(length - len(out))
        out += piece
    return out


def run(args, say=print):
    """One pre-copy pass; returns the job id. PrecopyError says what went wrong."""
    names = [d.strip().replace("/dev/", "") for d in args.disks.split(",")] if args.disks \
        else whole_disks()
    if not names:
        raise PrecopyError("No disk found to copy; name them with --disks sda,sdb.")
    disks = [disk_record(n) for n in names]
    for d in disks:
        if not d["size"]:
            raise PrecopyError("There is no disk {}; name the machine's disks with --disks."
                               .format(d["id"]))
    inventory = {"name": args.name or socket.gethostname(), "pass": "precopy", "live": True,
                 "machine": machine(), "disks": disks, "request_id": uuid.uuid4().hex}
    if args.job:
        inventory["job"] = args.job
    server = Server(args.server, args.token, args.fingerprint)
    job = server.call("POST", API + "/jobs", body=inventory)
    if job.get("token"):
        server.token = job["token"]
    say("pre-copy pass into job {} (version {}) of {}".format(
        job["id"], job.get("version", 1), ", ".join(names)))
    geometry = {d["id"]: d["chunk_size"] for d in job["disks"]}
    for d in disks:
        send_disk(server, job["id"], d, geometry[d["id"]], say)
    return job["id"]


def add_arguments(p):
    p.add_argument("--server", required=True, metavar="URL", help="https://HOST:PORT of p2v-server")
    p.add_argument("--token", required=True, metavar="T", help="the token p2v-server printed")
    p.add_argument("--fingerprint", metavar="sha256:HEX", help="the server certificate's fingerprint")
    p.add_argument("--disks", metavar="LIST", help="sda,sdb (default: every whole disk)")
    p.add_argument("--job", metavar="ID", help="the pre-copy job to add a pass to (default: the "
                   "one of this machine with these disks, else a new one)")
    p.add_argument("--name", help="the job's name (default: the host name)")


def main(argv=None):
    p = argparse.ArgumentParser(prog="p2v-precopy", description="A pre-copy pass of warm "
                                "migration, on the running system.")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        run(args)
    except PrecopyError as err:
        print("Pre-copy failed: {}".format(err), file=sys.stderr)
        return 1
    except OSError as err:
        print("Pre-copy failed: cannot read {}: {}. Run it as root.".format(
            err.filename or "a disk", err.strerror), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

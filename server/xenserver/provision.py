"""The automatic path: a sealed job becomes a VM that boots the ISO, repairs, then boots its disk.

Everything done to the pool is written on the job (``records["xenserver"]``: object refs and UUIDs
in creation order, steps with times, adjustments), so an admin can see and undo it. A failed
provisioning destroys what it created, newest first, unless told to keep it.
"""

from __future__ import annotations

import logging
import time

import XenAPI

from xenp2v.protocol import DiskState, JobState
from server.xenserver import rules, vdi_import
from server.xenserver.pool import Pool, ToolsIso, XapiConfig, XenServerError, explain, tls_context
from server.xenserver.spec import (DiskSpec, VmSpec, cd_userdevices, disk_userdevices, fit_to_host,
                                   vm_spec)

log = logging.getLogger("xenp2v.xenserver")
RECORD_KEY = "xenserver"
NULL = "OpaqueRef:NULL"
TOKEN_KEY = "vm-data/xenp2v/token"  # agent.xenstore reads it in the VM
BOOT_CD_FIRST = "dc"         # HVM boot order letters: d = CD-ROM, c = first disk
BOOT_DISK_FIRST = "cd"
# A job in these states has its VM already: a second "sealed" must not make another.
BUSY_STATES = {JobState.PROVISIONING, JobState.REPAIRING, JobState.DONE}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def repair_ok(report: dict) -> bool:
    """The store's ``ok`` flag when given, else the repair runner's own ``status``."""
    if isinstance(report.get("ok"), bool):
        return report["ok"]
    return report.get("status") == "ok"


class _Run:
    """One provisioning of one job: creates, records, and can undo what it created."""

    def __init__(self, store, job_id: str, pool: Pool, config: XapiConfig):
        self.store, self.job_id, self.pool, self.config = store, job_id, pool, config
        self.x = pool.x
        self.rec: dict = {
            "pool": config.url, "product": pool.product.to_json(), "created": [], "steps": [],
            "adjustments": [], "kept_on_failure": config.keep_on_failure,
        }

    # --- the record on the job -----------------------------------------------------------------

    def save(self) -> None:
        self.store.record(self.job_id, RECORD_KEY, self.rec)

    def step(self, text: str, state: JobState = JobState.PROVISIONING) -> None:
        log.info("Job %s: %s", self.job_id, text)
        self.rec["steps"].append({"at": _now(), "step": text})
        self.save()
        self.store.set_state(self.job_id, state, text)

    def created(self, cls: str, ref: str, what: str) -> str:
        uuid = getattr(self.x, cls).get_uuid(ref)
        self.rec["created"].append({"class": cls, "ref": ref, "uuid": uuid, "what": what})
        self.save()
        return uuid

    # --- the steps -----------------------------------------------------------------------------

    def build(self) -> None:
        job = self.store.get_job(self.job_id)
        disk_ids = [d["id"] for d in job["disks"]]
        images = [self.store.sealed_image(self.job_id, d) for d in disk_ids]
        spec = vm_spec(job, keep_macs=self.config.keep_macs)
        spec = fit_to_host(spec, self.pool.host_cpus, self.pool.host_free_memory())
        sr, sr_rec = self.pool.sr()
        # Every version rule before anything is made: a refusal leaves the pool as it was.
        disks = [DiskSpec(image.disk, image.size) for image in images]
        choice = rules.choose(self.pool.product, self.pool.features(), spec, disks, sr_rec,
                              self.config.pv)
        self.rec["adjustments"] = list(spec.adjustments) + list(choice.notes)
        template = self.pool.template()
        network = self.pool.network() if spec.nics else None
        host = self.vm_host(sr_rec)
        iso = self.pool.iso(host)
        tools = self.pool.tools_iso(host)
        self.rec["sr"] = {"ref": sr, "uuid": sr_rec["uuid"], "name": sr_rec["name_label"],
                          "type": sr_rec["type"]}

        vm = self.create_vm(template, spec, choice)
        vdis = self.create_disks(vm, spec, images, sr, choice.disk_formats)
        send_zero = not vdi_import.zeroed(sr_rec["type"])
        for position, (image, vdi) in enumerate(zip(images, vdis), 1):
            self.step(f"Importing disk {image.disk} ({position} of {len(images)}, "
                      f"{image.size / 2**30:.1f} GiB) into its VDI"
                      + ("" if not send_zero else ", with zeros wherever the image has no "
                         "data: this SR's new disks may hold old bytes"))
            figures = vdi_import.import_image(
                self.x, self.import_url(sr_rec), self.pool.session.handle, vdi, image,
                send_zero, context=tls_context(self.config))
            self.rec.setdefault("imports", []).append({"disk": image.disk, "vdi": vdi, **figures})
            self.save()
        self.create_vifs(vm, spec, network)
        cd_slot, tools_slot = cd_userdevices(len(images), tools is not None and tools.plugged)
        self.insert_cd(vm, iso, cd_slot)
        self.insert_tools(vm, tools, tools_slot, len(images), host)
        # Known before the boot: the agent on the ISO asks for its job by this UUID at once.
        self.store.set_target_uuid(self.job_id, self.rec["vm"]["uuid"])
        self.step(f"Starting VM {spec.name} on the ISO")
        self.x.VM.start(vm, False, False)
        self.step(f"VM {spec.name} ({self.rec['vm']['uuid']}) runs on the ISO; the agent in it "
                  "repairs the disks and reports here", JobState.REPAIRING)

    def vm_host(self, sr_rec: dict) -> str:
        """Where the VM will run: the host of its local SR, else the master."""
        if sr_rec.get("shared") or not sr_rec.get("PBDs"):
            return self.pool.master
        return self.x.PBD.get_host(sr_rec["PBDs"][0])

    def import_url(self, sr_rec: dict) -> str:
        """The master for a shared SR; for a local SR the host that has it, as XAPI would redirect."""
        host = self.vm_host(sr_rec)
        if host == self.pool.master:
            return self.config.url
        scheme = self.config.url.split(":", 1)[0]
        return f"{scheme}://{self.x.host.get_address(host)}"

    def create_vm(self, template: str, spec: VmSpec, choice: rules.VmChoice) -> str:
        self.step(f"Creating VM {spec.name} from template {self.config.template!r}")
        vm = self.x.VM.clone(template, spec.name)
        uuid = self.created("VM", vm, f"the VM {spec.name}")
        self.rec["vm"] = {"ref": vm, "uuid": uuid, "name": spec.name}
        self.save()
        # The template's own disk recipe would add a blank disk: ours come from the image.
        if "disks" in self.x.VM.get_other_config(vm):
            self.x.VM.remove_from_other_config(vm, "disks")
        self.x.VM.provision(vm)
        self.x.VM.set_is_a_template(vm, False)
        self.x.VM.set_name_description(vm, f"Migrated by xenp2v (job {self.job_id})")
        self.x.VM.add_to_other_config(vm, "xenp2v_job", self.job_id)
        # The VM's agent speaks to us with this job's own token, read from XenStore
        # (vm-data/xenp2v/token): it can touch only this job and ends with it, so the repair's
        # guests never hold the token that opens every job. Never written on the job's record.
        self.x.VM.add_to_xenstore_data(vm, TOKEN_KEY, self.store.issue_token(self.job_id))
        # VCPUs_at_startup may never exceed VCPUs_max: raise the max first, lower it last.
        if spec.vcpus >= int(self.x.VM.get_VCPUs_max(vm)):
            self.x.VM.set_VCPUs_max(vm, str(spec.vcpus))
            self.x.VM.set_VCPUs_at_startup(vm, str(spec.vcpus))
        else:
            self.x.VM.set_VCPUs_at_startup(vm, str(spec.vcpus))
            self.x.VM.set_VCPUs_max(vm, str(spec.vcpus))
        static_min = min(int(self.x.VM.get_memory_static_min(vm)), spec.memory)
        memory = str(spec.memory)
        self.x.VM.set_memory_limits(vm, str(static_min), memory, memory, memory)
        self.x.VM.set_HVM_boot_policy(vm, "BIOS order")
        params = {"order": BOOT_CD_FIRST}
        if choice.firmware == "uefi":
            params["firmware"] = "uefi"
        self.x.VM.set_HVM_boot_params(vm, params)
        platform = dict(self.x.VM.get_platform(vm))
        platform["viridian"] = "true" if spec.windows else "false"
        if choice.firmware == "uefi":
            platform["secureboot"] = "true" if choice.secure_boot else "false"
        self.x.VM.set_platform(vm, platform)
        # The repair reads firmware and Secure Boot from here (xenp2v.protocol.vm_firmware).
        self.rec["vm"].update(vcpus=spec.vcpus, memory=spec.memory, firmware=choice.firmware,
                              secure_boot=choice.secure_boot, viridian=spec.windows)
        self.save()
        return vm

    def create_disks(self, vm: str, spec: VmSpec, images: list, sr: str,
                     formats: tuple[str, ...]) -> list[str]:
        self.step(f"Creating {len(images)} disk(s) on SR {self.rec['sr']['name']!r}")
        vdis = []
        for image, slot, image_format in zip(images, disk_userdevices(len(images)), formats):
            vdi = self.x.VDI.create({
                "name_label": f"{spec.name} {image.disk}",
                "name_description": f"xenp2v job {self.job_id}, source disk {image.disk}",
                "SR": sr, "virtual_size": str(image.size), "type": "system",
                "sharable": False, "read_only": False, "xenstore_data": {},
                "sm_config": {"image-format": image_format} if image_format else {},
                "tags": [], "other_config": {"xenp2v_job": self.job_id, "xenp2v_disk": image.disk},
            })
            self.created("VDI", vdi, f"the disk for source disk {image.disk}")
            vbd = self.x.VBD.create({
                "VM": vm, "VDI": vdi, "userdevice": slot, "bootable": slot == "0", "mode": "RW",
                "type": "Disk", "unpluggable": False, "empty": False, "other_config": {},
                "qos_algorithm_type": "", "qos_algorithm_params": {},
            })
            self.created("VBD", vbd, f"disk slot {slot} for {image.disk}")
            vdis.append(vdi)
        return vdis

    def create_vifs(self, vm: str, spec: VmSpec, network: str | None) -> None:
        """One VIF per source NIC, in order; each one's MAC (the pool's own under --new-macs) goes
        into the record, where a repair run from outside the VM reads it (protocol.job_inventory)."""
        made = []
        for device, nic in enumerate(spec.nics):
            vif = self.x.VIF.create({
                "device": str(device), "network": network, "VM": vm, "MAC": nic.mac,
                "MTU": "1500", "other_config": {"xenp2v_source_nic": nic.name},
                "qos_algorithm_type": "", "qos_algorithm_params": {},
            })
            self.created("VIF", vif, f"NIC {device} for source {nic.name}"
                         + (f" with MAC {nic.mac}" if nic.mac else ""))
            made.append({"device": device, "mac": str(self.x.VIF.get_MAC(vif)).lower(), "source": nic.name})
        self.rec["vm"]["nics"] = made
        self.save()

    def insert_cd(self, vm: str, iso: str, slot: str) -> None:
        self.step(f"Inserting the ISO {self.config.iso!r} in the VM's DVD drive")
        vbd = self.x.VBD.create({
            "VM": vm, "VDI": iso, "userdevice": slot, "bootable": True, "mode": "RO",
            "type": "CD", "unpluggable": True, "empty": False, "other_config": {},
            "qos_algorithm_type": "", "qos_algorithm_params": {},
        })
        uuid = self.created("VBD", vbd, "the DVD drive with the xenp2v ISO")
        self.rec["cd"] = {"ref": vbd, "uuid": uuid}
        self.save()

    def insert_tools(self, vm: str, tools: ToolsIso | None, slot: str | None,
                     disk_count: int, host: str) -> None:
        """The pool's tools ISO in a second CD drive, for the agent in the VM to install the guest
        agent from (it looks at the VM's CD drives). A step says why when it cannot be: no ISO, its SR
        not plugged on the VM's `host` (the VM would not start), no emulated slot left."""
        if tools is None:
            self.step("No tools ISO to attach (no tools SR holds one): the repair installs no guest "
                      "agent; install it by hand once the VM runs.")
            return
        if not tools.plugged:
            self.step(f"The tools ISO {tools.name} is not attached: its SR {tools.sr_name!r} is not plugged "
                      f"on host {self.x.host.get_name_label(host)}, and XAPI starts no VM with a disc there; plug it (xe pbd-plug, or "
                      "Repair in XenCenter / Xen Orchestra) and insert the ISO in the DVD drive once the VM "
                      "runs to install the guest agent by hand.")
            return
        if slot is None:
            self.step(f"The tools ISO {tools.name} is not attached: the VM's {disk_count} disks and its "
                      "DVD drive take the four emulated IDE slots a guest without PV drivers sees; "
                      "insert it in the DVD drive once the VM runs to install the guest agent by hand.")
            return
        self.step(f"Inserting the pool's tools ISO {tools.name!r} in a second CD drive (slot {slot})")
        vbd = self.x.VBD.create({
            "VM": vm, "VDI": tools.vdi, "userdevice": slot, "bootable": False, "mode": "RO",
            "type": "CD", "unpluggable": True, "empty": False, "other_config": {},
            "qos_algorithm_type": "", "qos_algorithm_params": {},
        })
        uuid = self.created("VBD", vbd, f"the CD drive with the pool's tools ISO {tools.name}")
        self.rec["tools_cd"] = {"ref": vbd, "uuid": uuid, "iso": tools.name, "userdevice": slot}
        self.save()

    # --- undo ----------------------------------------------------------------------------------

    def clean_up(self) -> None:
        """Destroy what this run created, newest first; record what went and what stayed."""
        vm = self.rec.get("vm", {}).get("ref")
        if vm:
            try:
                if self.x.VM.get_power_state(vm) != "Halted":
                    self.x.VM.hard_shutdown(vm)
            except XenAPI.Failure as failure:
                log.warning("Cannot shut down VM %s for clean-up: %s", vm, failure)
        removed, left = [], []
        for obj in reversed(self.rec["created"]):
            try:
                getattr(self.x, obj["class"]).destroy(obj["ref"])
                removed.append(obj)
            except XenAPI.Failure as failure:
                if failure.details and failure.details[0] == "HANDLE_INVALID":
                    removed.append(obj)  # went with its VM
                else:
                    left.append({**obj, "error": explain(failure)})
        self.rec["cleaned_up"] = removed
        self.rec["left_after_failure"] = left
        self.save()


class Provisioner:
    """The automatic path's two hooks: a job sealed, a repair reported."""

    def __init__(self, store, config: XapiConfig, connect=Pool):
        self.store, self.config, self.connect = store, config, connect

    def fail(self, job_id: str, message: str) -> None:
        log.error("Job %s: %s", job_id, message)
        self.store.set_state(job_id, JobState.FAILED, message)

    def provision(self, job_id: str) -> bool:
        """Build and start the VM for a sealed job; False (and the job says why) on failure."""
        job = self.store.get_job(job_id)
        made = ((job.get("records") or {}).get(RECORD_KEY) or {}).get("vm")
        if made and job["state"] in BUSY_STATES:
            log.info("Job %s already has VM %s (%s); not making another", job_id, made["name"],
                     made["uuid"])
            return False
        unsealed = [d["id"] for d in job["disks"] if d["state"] != DiskState.SEALED]
        if unsealed:
            self.fail(job_id, f"Disk {', '.join(unsealed)} is not sealed: the VM is made only "
                              "once every disk of the job is sealed.")
            return False
        self.store.set_state(job_id, JobState.PROVISIONING,
                             f"Connecting to the pool at {self.config.url}")
        try:
            pool = self.connect(self.config)
        except XenServerError as err:
            self.fail(job_id, f"Provisioning stopped: {err}")
            return False
        run = _Run(self.store, job_id, pool, self.config)
        try:
            run.build()
            return True
        except (XenServerError, vdi_import.VdiImportError) as err:
            message = str(err)
        except XenAPI.Failure as failure:
            message = explain(failure, self.config)
        except OSError as err:
            message = f"Reading the job's images failed ({err}); run p2v-server verify on it."
        try:
            if not run.rec["created"]:
                tail = ""
            elif self.config.keep_on_failure:
                tail = "What was created is kept (see the job's xenserver record)."
                run.save()
            else:
                run.clean_up()
                tail = ("What was created is removed." if not run.rec["left_after_failure"] else
                        "Some objects could not be removed: see the job's xenserver record.")
        finally:
            pool.logout()
        self.fail(job_id, f"Provisioning stopped: {message} {tail}".rstrip())
        return False

    def after_repair(self, job_id: str, report: dict) -> bool:
        """On a good report: eject the ISO, boot from disk (PV if asked), reboot."""
        job = self.store.get_job(job_id)
        rec = (job.get("records") or {}).get(RECORD_KEY)
        if not rec or "vm" not in rec:
            return False  # not a VM this server made: the manual path
        steps = rec.setdefault("steps", [])

        def note(text: str, state: JobState) -> None:
            steps.append({"at": _now(), "step": text})
            self.store.record(job_id, RECORD_KEY, rec)
            self.store.set_state(job_id, state, text)

        if not repair_ok(report):
            why = str(report.get("detail") or report.get("error") or "no reason given")
            note(f"The repair in VM {rec['vm']['name']} failed ({why}); the VM is left as it is, "
                 "on the ISO, for a look at its console.", JobState.FAILED)
            return False
        # The store may already call the job done from the report: it is done once the VM runs
        # from its disk.
        note(f"Repaired; ejecting the ISO and restarting VM {rec['vm']['name']} from its disk",
             JobState.REPAIRING)
        try:
            pool = self.connect(self.config)
        except XenServerError as err:
            note(f"The repair worked but the VM cannot be switched to its disk: {err}",
                 JobState.FAILED)
            return False
        x, vm = pool.x, rec["vm"]["ref"]
        try:
            cd = rec.get("cd", {}).get("ref")
            if cd and not x.VBD.get_empty(cd):
                x.VBD.eject(cd)
            steps.append({"at": _now(), "step": "Ejected the ISO"})
            tools_cd = rec.get("tools_cd", {}).get("ref")
            if tools_cd and not x.VBD.get_empty(tools_cd):
                x.VBD.eject(tools_cd)
                steps.append({"at": _now(), "step": "Ejected the tools ISO"})
            if self.config.pv and pool.product.pv:
                if x.VM.get_power_state(vm) == "Running":
                    x.VM.hard_shutdown(vm)
                x.VM.set_HVM_boot_policy(vm, "")
                x.VM.set_PV_bootloader(vm, "pygrub")
                x.VM.set_PV_args(vm, "")
                steps.append({"at": _now(), "step": "Switched the VM to PV (pygrub)"})
                x.VM.start(vm, False, False)
            else:
                params = dict(x.VM.get_HVM_boot_params(vm))
                params["order"] = BOOT_DISK_FIRST
                x.VM.set_HVM_boot_params(vm, params)
                steps.append({"at": _now(), "step": "Boot order: disk first"})
                if x.VM.get_power_state(vm) == "Running":
                    x.VM.hard_reboot(vm)
                else:
                    x.VM.start(vm, False, False)
        except XenAPI.Failure as failure:
            note(f"The repair worked but switching the VM to its disk failed: "
                 f"{explain(failure, self.config)}", JobState.FAILED)
            return False
        finally:
            pool.logout()
        note(f"VM {rec['vm']['name']} repaired and restarted from its disk", JobState.DONE)
        return True

"""The pool side: connect with the XenAPI SDK, learn the product, find template, SR, network, ISO.

Everything XAPI says goes through ``explain`` so that people read sentences, not error codes.
"""

from __future__ import annotations

import ssl
import xmlrpc.client
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import urlsplit

import XenAPI

DEFAULT_TEMPLATE = "Other install media"
# HVM guests with UEFI firmware: XenServer / Citrix Hypervisor 8.0 (API 2.12) and XCP-ng 8.x.
UEFI_API = (2, 12)
# PV guests are supported up to XenServer 7.x (and XCP-ng 7.x).
LAST_PV_MAJOR = 7
# The tools SR's tag in other_config (xapi_globs.tools_sr_tag), from before SR.is_tools_sr; the
# tools ISO's names: XenServer up to 7.x, then XenServer 8 and XCP-ng.
TOOLS_SR_TAG = "xenserver_tools_sr"
TOOLS_ISO_NAMES = ("guest-tools.iso", "xs-tools.iso")


class XenServerError(Exception):
    """Something the pool refused or lacks, said as a sentence with what to do next."""


@dataclass(frozen=True)
class XapiConfig:
    url: str                         # https://pool-master
    user: str
    password: str
    verify_tls: bool = True
    ca_file: str | None = None       # a CA bundle or the pool's self-signed certificate
    sr: str | None = None            # SR name; default: the pool's default SR
    network: str | None = None       # network name; default: the management network (xenbr0)
    iso: str | None = None           # the xenp2v ISO's name in an ISO SR
    template: str = DEFAULT_TEMPLATE
    keep_macs: bool = True           # the source's MACs on the VM; False: --new-macs
    pv: bool = False
    keep_on_failure: bool = False


def explain(failure: XenAPI.Failure, config: XapiConfig | None = None) -> str:
    """A XAPI error as a sentence."""
    details = [str(d) for d in (failure.details or [""])]
    code, params = details[0], details[1:]
    if code == "SESSION_AUTHENTICATION_FAILED":
        user = config.user if config else (params[0] if params else "?")
        return (f"The pool refused the login of user {user!r}: check the user name and the "
                "password file given to p2v-server.")
    if code in ("SR_BACKEND_FAILURE_44", "SR_FULL") or "insufficient space" in " ".join(params):
        return ("The storage repository has not enough free space for the VM's disks: free "
                "space there or choose another SR with --sr, then provision again.")
    if code == "HOST_IS_SLAVE":
        master = params[0] if params else "the pool master"
        return (f"This host is a pool member, not the master: give --xapi-url "
                f"https://{master} instead.")
    if code.startswith("SR_BACKEND_FAILURE"):
        text = next((p for p in params if p.strip()), code)
        return (f"The storage repository failed: {text.strip()}. Check the SR in XenCenter / "
                "Xen Orchestra, or choose another with --sr.")
    if code == "HOST_NOT_ENOUGH_FREE_MEMORY":
        need = int(params[0]) // 2**20 if params and params[0].isdigit() else "?"
        have = int(params[1]) // 2**20 if len(params) > 1 and params[1].isdigit() else "?"
        return (f"The host has not enough free memory to start the VM ({need} MiB needed, "
                f"{have} MiB free): stop other VMs or lower the VM's memory, then start it.")
    if code == "VM_BAD_POWER_STATE" and len(params) >= 3:
        return (f"The VM is {params[2]} but this step needs it {params[1]}: bring it to that "
                "state in XenCenter / Xen Orchestra and retry.")
    if code == "HANDLE_INVALID":
        return (f"The {params[0] if params else 'object'} this step uses no longer exists in the "
                "pool (deleted by someone else?): provision again.")
    return f"XAPI answered {code}" + (f" ({', '.join(params)})" if params else "") + "."


def _transport(config: XapiConfig):
    if urlsplit(config.url).scheme != "https" or not config.verify_tls:
        return None
    return xmlrpc.client.SafeTransport(context=ssl.create_default_context(cafile=config.ca_file))


def tls_context(config: XapiConfig) -> ssl.SSLContext | None:
    if urlsplit(config.url).scheme != "https":
        return None
    if not config.verify_tls:
        return ssl._create_unverified_context()  # noqa: S323 - asked for with --no-verify-tls
    return ssl.create_default_context(cafile=config.ca_file)


@dataclass(frozen=True)
class Product:
    """host.software_version's product_brand, product_version and platform_version, and the
    host's API version (API_version_major/minor): what each version rule reads."""

    brand: str
    version: str
    api: tuple[int, int]
    platform: str = ""

    @property
    def major(self) -> int:
        head = self.version.split(".")[0]
        return int(head) if head.isdigit() else 0

    @property
    def uefi(self) -> bool:
        return self.api >= UEFI_API

    @property
    def pv(self) -> bool:
        return 0 < self.major <= LAST_PV_MAJOR

    def to_json(self) -> dict:
        return {"brand": self.brand, "version": self.version, "platform": self.platform,
                "api": f"{self.api[0]}.{self.api[1]}"}


@dataclass(frozen=True)
class PoolFeatures:
    """What the pool has for guests beyond its version (Pool.features)."""

    secure_boot: bool = False                      # Secure Boot certificates ready for guests
    image_formats: dict[str, tuple[str, ...]] = field(default_factory=dict)  # SR type -> formats


class ToolsIso(NamedTuple):
    """The pool's tools ISO as provisioning finds it."""

    vdi: str
    name: str
    sr_name: str
    plugged: bool       # its SR is plugged on the VM's host: XAPI starts no VM with a disc elsewhere


class Pool:
    """A logged-in session on a pool, and the lookups provisioning needs."""

    def __init__(self, config: XapiConfig):
        self.config = config
        self.session = self._login()
        self.x = self.session.xenapi
        pool = self.x.pool.get_all()[0]
        self.master = self.x.pool.get_master(pool)
        self.pool_ref = pool
        host = self.x.host.get_record(self.master)
        software = host.get("software_version", {})
        self.product = Product(
            brand=software.get("product_brand") or host.get("API_version_vendor") or "XenServer",
            version=software.get("product_version") or software.get("platform_version") or "",
            api=(int(host["API_version_major"]), int(host["API_version_minor"])),
            platform=software.get("platform_version") or "",
        )
        cpus = host.get("cpu_info", {}).get("cpu_count")
        self.host_cpus = int(cpus) if cpus else len(host.get("host_CPUs", []))

    def _login(self) -> XenAPI.Session:
        config = self.config
        try:
            if urlsplit(config.url).scheme == "https" and not config.verify_tls:
                session = XenAPI.Session(config.url, ignore_ssl=True)
            else:
                session = XenAPI.Session(config.url, transport=_transport(config))
            session.xenapi.login_with_password(config.user, config.password, "2.0", "xenp2v")
            return session
        except XenAPI.Failure as failure:
            raise XenServerError(explain(failure, config)) from None
        except ssl.SSLCertVerificationError as err:
            raise XenServerError(
                f"The pool at {config.url} presented a certificate that cannot be verified "
                f"({err.verify_message}): give its certificate with --xapi-ca FILE, or use "
                "--no-verify-tls on a trusted network.") from None
        except (OSError, xmlrpc.client.ProtocolError) as err:
            raise XenServerError(f"Cannot reach the pool at {config.url} ({err}): check the "
                                 "address and that XAPI answers there.") from None

    def logout(self) -> None:
        try:
            self.x.session.logout()
        except (XenAPI.Failure, OSError):
            pass

    # --- discovery ---------------------------------------------------------------------------

    def features(self) -> PoolFeatures:
        """What this pool has for guests beyond its version: Secure Boot readiness, and the image
        formats each storage manager offers (SM.supported_image_formats, where XAPI has it)."""
        try:
            secure = self.x.pool.get_guest_secureboot_readiness(self.pool_ref) in (
                "ready", "ready_no_dbx")
        except XenAPI.Failure as failure:
            if not failure.details or failure.details[0] != "MESSAGE_METHOD_UNKNOWN":
                raise
            # Before the readiness call: the pool's certificates, where the field exists.
            secure = bool(self.x.pool.get_record(self.pool_ref).get("uefi_certificates"))
        formats = {rec["type"]: tuple(rec.get("supported_image_formats") or ())
                   for rec in self.x.SM.get_all_records().values()}
        return PoolFeatures(secure_boot=secure, image_formats=formats)

    def host_free_memory(self) -> int:
        return int(self.x.host.compute_free_memory(self.master))

    def template(self) -> str:
        name = self.config.template
        refs = [r for r in self.x.VM.get_by_name_label(name) if self.x.VM.get_is_a_template(r)]
        if not refs:
            raise XenServerError(
                f"The pool has no template named {name!r}: check the name (xe template-list), "
                "or restore the default templates on the pool master.")
        return refs[0]

    def sr(self) -> tuple[str, dict]:
        name = self.config.sr
        if name:
            found = [(r, rec) for r, rec in self.x.SR.get_all_records().items()
                     if rec["name_label"] == name or rec["uuid"] == name]
            if not found:
                raise XenServerError(f"The pool has no storage repository named {name!r}: "
                                     "check the name with xe sr-list, then pass it with --sr.")
            return found[0]
        ref = self.x.pool.get_default_SR(self.pool_ref)
        if ref == "OpaqueRef:NULL":
            raise XenServerError("The pool has no default storage repository: name one with --sr.")
        return ref, self.x.SR.get_record(ref)

    def network(self) -> str:
        records = self.x.network.get_all_records()
        name = self.config.network
        if name:
            found = [r for r, rec in records.items() if name in (rec["name_label"], rec["uuid"],
                                                                 rec.get("bridge"))]
            if not found:
                raise XenServerError(f"The pool has no network named {name!r}: check the name "
                                     "with xe network-list, then pass it with --network.")
            return found[0]
        found = [r for r, rec in records.items() if rec.get("bridge") == "xenbr0"]
        if not found:
            raise XenServerError("The pool has no network on bridge xenbr0: name the network "
                                 "for the VM's NICs with --network.")
        return found[0]

    def plugged(self, host: str) -> set[str]:
        """The SRs plugged on `host` (a PBD currently attached): the only ones whose VDIs a VM
        starting there may use (XAPI: VM_REQUIRES_SR)."""
        return {rec["SR"] for rec in self.x.PBD.get_all_records().values()
                if rec["host"] == host and rec.get("currently_attached")}

    def tools_iso(self, host: str) -> ToolsIso | None:
        """The pool's tools ISO: the VDI XAPI marks as one (is_tools_iso, from XenServer 7.0; before,
        sm_config xs-tools=true) in the tools SR (is_tools_sr, or the older other_config tag
        xenserver_tools_sr); else an ISO named as the vendors name theirs. One on an SR plugged on
        `host` (the VM's) first; None when the pool has none."""
        srs = self.x.SR.get_all_records()
        found = []
        for sr, rec in srs.items():
            if rec.get("is_tools_sr") or rec.get("other_config", {}).get(TOOLS_SR_TAG) == "true":
                for vdi in rec["VDIs"]:
                    vdi_rec = self.x.VDI.get_record(vdi)
                    # An old one's record stays after an update, missing, its is_tools_iso maybe stale.
                    if vdi_rec.get("missing"):
                        continue
                    if vdi_rec.get("is_tools_iso") or vdi_rec.get("sm_config", {}).get("xs-tools") == "true":
                        found.append((vdi, vdi_rec["name_label"], sr))
        for name in TOOLS_ISO_NAMES:
            for vdi in self.x.VDI.get_by_name_label(name):
                sr = self.x.VDI.get_SR(vdi)
                if srs.get(sr, {}).get("content_type") == "iso":
                    found.append((vdi, name, sr))
        if not found:
            return None
        plugged = self.plugged(host)
        vdi, name, sr = next((f for f in found if f[2] in plugged), found[0])
        return ToolsIso(vdi, name, srs[sr]["name_label"], sr in plugged)

    def iso(self, host: str) -> str:
        """The xenp2v ISO's VDI, in an ISO SR plugged on `host` (the VM's): XAPI starts no VM with
        a disc elsewhere. Raises XenServerError, before anything is made."""
        name = self.config.iso
        if not name:
            raise XenServerError("No ISO named: give the xenp2v ISO's name in an ISO SR with "
                                 "--iso, so the VM can boot it for the repair.")
        plugged, unplugged = self.plugged(host), []
        for sr, rec in self.x.SR.get_all_records().items():
            if rec.get("content_type") != "iso":
                continue
            for vdi in rec["VDIs"]:
                if self.x.VDI.get_name_label(vdi) == name:
                    if sr in plugged:
                        return vdi
                    unplugged.append(rec["name_label"])
        if unplugged:
            raise XenServerError(
                f"The ISO {name!r} is on SR {unplugged[0]!r}, which is not plugged on host "
                f"{self.x.host.get_name_label(host)}, and XAPI starts no VM with a disc there: plug it "
                "(xe pbd-plug, or Repair in XenCenter / Xen Orchestra), then provision again.")
        raise XenServerError(f"No ISO SR holds an ISO named {name!r}: copy the xenp2v ISO into "
                             "an ISO library (and rescan it), then provision again.")

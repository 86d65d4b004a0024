"""XAPI options for `p2v-server serve` (the automatic path) and `p2v-server provision JOB`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from server.datadir import add_data_dir, existing_store
from server.xenserver import rules
from server.xenserver.pool import DEFAULT_TEMPLATE, Pool, XapiConfig, XenServerError
from server.xenserver.provision import Provisioner
from server.xenserver.spec import NEW_MACS_WARNING

log = logging.getLogger("xenp2v.xenserver")


def add_xapi_arguments(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("XenServer / XCP-ng pool (the automatic path)")
    g.add_argument("--xapi-url", required=required, metavar="URL",
                   help="the pool master, e.g. https://xen1.example.org"
                        + ("" if required else "; without it no VM is made"))
    g.add_argument("--xapi-user", default="root", metavar="USER", help="default: root")
    g.add_argument("--xapi-password-file", type=Path, metavar="FILE",
                   help="a file whose first line is the password")
    g.add_argument("--xapi-ca", metavar="FILE",
                   help="CA bundle or the pool's own certificate to check it against")
    g.add_argument("--no-verify-tls", action="store_true",
                   help="do not check the pool's certificate (a trusted network only)")
    g.add_argument("--sr", metavar="NAME", help="SR for the disks (default: the pool's default SR)")
    g.add_argument("--network", metavar="NAME",
                   help="network for the NICs (default: the one on bridge xenbr0)")
    g.add_argument("--iso", metavar="NAME", help="the xenp2v ISO's name in an ISO SR")
    g.add_argument("--template", default=DEFAULT_TEMPLATE, metavar="NAME",
                   help=f"template to clone (default: {DEFAULT_TEMPLATE!r})")
    macs = g.add_mutually_exclusive_group()
    macs.add_argument("--new-macs", action="store_true",
                      help="give the VM's NICs new MACs (default: the source's, which DHCP "
                           "reservations, firewall rules and licences follow)")
    macs.add_argument("--keep-macs", action="store_true", help="the default; accepted for older scripts")
    g.add_argument("--pv", action="store_true",
                   help="after the repair, switch the VM to PV with pygrub (XenServer 7.x and older)")
    g.add_argument("--keep-on-failure", action="store_true",
                   help="leave what a failed provisioning made, for a look at it")


def config_from_args(args: argparse.Namespace) -> XapiConfig | None:
    """The pool settings, or None without --xapi-url; ValueError says what is missing."""
    if not args.xapi_url:
        return None
    if not args.xapi_password_file:
        raise ValueError("--xapi-url needs --xapi-password-file FILE (the pool user's password "
                         "on the first line).")
    try:
        lines = args.xapi_password_file.read_text().splitlines()
    except OSError as err:
        raise ValueError(f"Cannot read the password file {args.xapi_password_file}: "
                         f"{err.strerror}.") from None
    if not lines or not lines[0]:
        raise ValueError(f"The password file {args.xapi_password_file} is empty: put the "
                         "password on its first line.")
    if not args.iso:
        raise ValueError("--xapi-url needs --iso NAME: the xenp2v ISO in one of the pool's ISO "
                         "libraries, which the VM boots for the repair.")
    url = args.xapi_url.rstrip("/")
    if "://" not in url:
        url = "https://" + url
    return XapiConfig(
        url=url, user=args.xapi_user, password=lines[0],
        verify_tls=not args.no_verify_tls, ca_file=args.xapi_ca, sr=args.sr,
        network=args.network, iso=args.iso, template=args.template, keep_macs=not args.new_macs,
        pv=args.pv, keep_on_failure=args.keep_on_failure,
    )


def automatic_path(args: argparse.Namespace, store) -> dict:
    """``make_app`` hooks for `serve`: provision each sealed job, switch it after its repair.

    Checks the login once at start, so a wrong password shows at once rather than per job; a
    --pv the pool cannot do stops serve (ValueError): every job would fail after its transfer.
    """
    config = config_from_args(args)
    if config is None:
        return {}
    try:
        pool = Pool(config)
        product = pool.product
        pool.logout()
        print(f"XenServer automation: {config.url} ({product.brand} {product.version}, "
              f"API {product.api[0]}.{product.api[1]})", flush=True)
        if not config.keep_macs:
            print(f"XenServer automation: warning: {NEW_MACS_WARNING}", file=sys.stderr, flush=True)
    except XenServerError as err:
        print(f"XenServer automation: {err} Jobs will fail until this is fixed.", file=sys.stderr,
              flush=True)
    else:
        try:
            rules.check_pv(product, config.pv)
        except XenServerError as err:
            raise ValueError(f"XenServer automation: {err}") from None
    provisioner = Provisioner(store, config)
    return {"on_job_sealed": provisioner.provision, "on_repair_report": provisioner.after_repair}


def register(sub) -> None:
    p = sub.add_parser("provision", help="make and boot the XenServer VM of a sealed job",
                       description="Create the VM of a sealed job on a XenServer / XCP-ng pool, "
                                   "import its disks, boot it on the xenp2v ISO for the repair. "
                                   "`serve` with the same options does this by itself, and also "
                                   "boots the VM from its disk after the repair.")
    add_data_dir(p)
    p.add_argument("job", metavar="JOB")
    add_xapi_arguments(p, required=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        config = config_from_args(args)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    with existing_store(args) as store:
        ok = Provisioner(store, config).provision(args.job)
        job = store.get_job(args.job)
    print(job["detail"], file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1

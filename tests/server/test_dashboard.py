"""The dashboard in a real browser (Debian's chromium driven by Playwright) during a real capture
to a real p2v-server: sign-in, live progress, sealing, the repair's diff, an export equal to the
CLI's, an action, sign-out; a wrong token and a cross-site POST refused.

Set XENP2V_SCREENSHOTS=DIR to keep the pictures of the jobs list and the job page (docs/ has them).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import urllib3

from agent.transfer import capture
from agent.transfer.client import Client
from agent.transfer.progress import Progress
from agent.repair.runner import Request, repair
from agent.settings import Settings
from support import rescan, run

pytest.importorskip("playwright")
urllib3.disable_warnings()
from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

MiB = 1024 * 1024
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
FSTAB = "/dev/sda1 / ext4 errors=remount-ro 0 1\n/dev/sda2 none swap sw 0 0\n"


@pytest.fixture
def source_disk(loopdev, tmp_path):
    """A 112 MiB MBR disk: an ext4 root with a small Debian tree naming /dev/sda*, 40 MiB of
    files that do not compress, and swap."""
    dev = loopdev(112 * MiB, "source")
    run("sfdisk", "-q", dev, input="label: dos\n,96MiB,83\n,,82\n")
    root, swap = rescan(dev)
    run("mkfs.ext4", "-q", "-L", "root", root)
    run("mkswap", swap)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run("mount", root, str(mnt))
    try:
        for path, text in {"etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12"\nID=debian\n',
                           "etc/fstab": FSTAB,
                           "etc/network/interfaces": "auto ens3\niface ens3 inet dhcp\n",
                           "etc/initramfs-tools/initramfs.conf": "MODULES=dep\n",
                           "usr/sbin/grub-mkconfig": "", "usr/lib/grub/i386-pc/normal.mod": ""}.items():
            (mnt / path).parent.mkdir(parents=True, exist_ok=True)
            (mnt / path).write_text(text)
        for i in range(10):
            (mnt / f"data-{i}.bin").write_bytes(os.urandom(4 * MiB))
    finally:
        run("umount", str(mnt))
    return dev, root


def settings_for(server, **kw) -> Settings:
    return Settings(server=server.url, token=server.token, fingerprint=server.fingerprint, **kw)


def start_capture(server, dev: str, name: str, bwlimit: int | None) -> tuple[threading.Thread, dict]:
    """The agent's real capture in a thread; the dict gets "result" or "error"."""
    out: dict = {}

    def go():
        try:
            out["result"] = capture.run(
                settings_for(server, disks=[dev], name=name, bwlimit=bwlimit, compress="off"),
                Progress(interval=0.2), identity={"system_uuid": str(uuid.uuid4())})
        except Exception as err:  # the test reads it
            out["error"] = err

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, out


def browser_page(playwright, downloads: Path):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    context = browser.new_context(ignore_https_errors=True, accept_downloads=True,
                                  viewport={"width": 1100, "height": 900})
    return browser, context, context.new_page()


def cli_export(server, job: str, fmt: str, out: Path, disk: str) -> Path:
    run(sys.executable, "-m", "server.cli", "export", "--data-dir", str(server.data_dir), job,
        "--format", fmt, "--out", str(out), "--disk", disk, cwd=Path(__file__).parents[2])
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class _CrossSite(BaseHTTPRequestHandler):
    """Another site's page: a form that posts itself to the dashboard as soon as it loads."""

    target = ""

    def do_GET(self):
        body = (f'<!doctype html><form id="f" method="post" action="{self.target}">'
                '<input type="hidden" name="csrf" value="guessed"></form>'
                '<script>document.getElementById("f").submit()</script>').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def shot(page: Page, name: str) -> None:
    where = os.environ.get("XENP2V_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(where) / name), full_page=True)


def test_dashboard_follows_a_capture_in_a_browser(source_disk, p2v_server, tmp_path):
    dev, _ = source_disk
    disk_id = Path(dev).name
    seen_urls: list[str] = []
    with sync_playwright() as playwright:
        browser, context, page = browser_page(playwright, tmp_path)
        try:
            page.on("request", lambda r: seen_urls.append(r.url))

            # Not signed in: the sign-in page; a wrong token is refused and sets no cookie.
            page.goto(p2v_server.url + "/")
            expect(page).to_have_url(p2v_server.url + "/signin")
            page.fill("#secret", p2v_server.token + "x")
            page.press("#secret", "Enter")
            expect(page.locator("#refused")).to_be_visible()
            assert not context.cookies()
            page.goto(p2v_server.url + "/")
            expect(page).to_have_url(p2v_server.url + "/signin")

            page.fill("#secret", p2v_server.token)
            page.click("button[type=submit]")
            expect(page.locator("h1")).to_have_text("Jobs")
            (cookie,) = context.cookies()
            assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
            page.evaluate("window.notReloaded = true")

            # A capture held to 10 MiB/s, so the list shows it moving.
            thread, out = start_capture(p2v_server, dev, "web01", bwlimit=10 * MiB)
            job_card = page.locator("article.job").first
            expect(job_card).to_be_visible(timeout=30_000)
            bar = job_card.locator(f".disk[data-disk='{disk_id}'] progress")
            values, log_while_receiving = [], ""
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                state = job_card.get_attribute("data-state")
                values.append(int(bar.get_attribute("value")))
                if state == "receiving" and not log_while_receiving:
                    # The agent's log while it captures: fetched, then the job still receiving
                    # (the card may lag the seal by a refresh, after which the whole log comes).
                    job_id = job_card.get_attribute("data-job")
                    text = page.request.get(f"{p2v_server.url}/jobs/{job_id}/log").text()
                    if requests.get(f"{p2v_server.url}/api/v1/jobs/{job_id}", verify=False,
                                    headers=p2v_server.headers).json()["state"] == "receiving":
                        log_while_receiving = text
                if 30 < values[-1] < 95:   # the last of these is kept
                    shot(page, "dashboard-jobs.png")
                if state == "sealed":
                    break
                time.sleep(0.25)
            thread.join(timeout=60)
            assert "error" not in out, out.get("error")
            moving = [v for v in values if 0 < v < 100]
            assert len(set(moving)) >= 2 and moving == sorted(moving), values
            assert values[-1] == 100 and state == "sealed", values
            assert "used blocks only" in log_while_receiving, log_while_receiving
            expect(job_card.locator(".badge")).to_have_text("sealed")
            assert page.evaluate("window.notReloaded") is True   # updated in place

            # On a phone's width nothing runs off the side; the keyboard reaches the job first thing.
            page.set_viewport_size({"width": 390, "height": 844})
            shot(page, "dashboard-phone.png")
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            page.set_viewport_size({"width": 1100, "height": 900})
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.textContent") == "Skip to the content"
            tabs = 1
            while page.evaluate("document.activeElement.getAttribute('href')") != f"/jobs/{out['result'].job}":
                page.keyboard.press("Tab")
                tabs += 1
                assert tabs < 8, "the job's link is not reached by the keyboard"
            result = out["result"]
            job = result.job

            # The repair's plan of this very disk, reported to the server as the agent does.
            client = Client(p2v_server.url, p2v_server.token, p2v_server.fingerprint)
            inventory = client.job(job)["inventory"]
            report = repair(Request(disk=dev, dry_run=True, nics={"ens3": "enX0"},
                                    inventory=inventory), say=lambda _: None)
            client.request("POST", f"/api/v1/jobs/{job}/repair", json=report, ok=(204,),
                           what="send the repair report")
            uuid_line = next(line for s in report["steps"] for line in s["diff"].splitlines()
                             if line.startswith("+UUID=") and " / ext4" in line)

            # The job's page: inventory, the agent's log, the repair's diff.
            job_card.locator("h2 a").click()
            expect(page.locator("#job-state")).to_have_text("sealed")   # a dry run decides nothing
            expect(page.locator("#repair pre.diff .add", has_text=uuid_line)).to_be_visible()
            expect(page.locator("#repair pre.diff .del", has_text="/dev/sda1 / ext4")).to_be_visible()
            expect(page.locator("#log")).to_contain_text("sealed", timeout=10_000)
            partitions = page.locator("table").first
            expect(partitions).to_contain_text("ext4")
            expect(partitions).to_contain_text("swap")
            for nic in inventory["machine"].get("nics") or []:
                expect(page.locator("main")).to_contain_text(nic["mac"])
            shot(page, "dashboard-job.png")

            # An export downloaded from the page is the CLI's, byte for byte.
            for fmt in ("raw", "qcow2"):
                with page.expect_download() as info:
                    page.locator(f"a.export[href$='/export/{fmt}?disk={disk_id}']").click()
                got = tmp_path / f"download.{fmt}"
                info.value.save_as(got)
                want = cli_export(p2v_server, job, fmt, tmp_path / f"cli.{fmt}", disk_id)
                assert got.stat().st_size == want.stat().st_size and sha256(got) == sha256(want), fmt

            # An action goes through its confirmation page.
            page.locator("a.action-verify").click()
            expect(page.locator("h1")).to_contain_text("Verify job web01?")
            page.locator("#confirm").click()
            expect(page.locator("#verify .good")).to_have_text("All good", timeout=20_000)

            # Another site's page posting to the dashboard is refused; the job is still there.
            cross = ThreadingHTTPServer(("localhost", 0), _CrossSite)
            _CrossSite.target = f"{p2v_server.url}/jobs/{job}/delete"
            threading.Thread(target=cross.serve_forever, daemon=True).start()
            try:
                page.goto(f"http://localhost:{cross.server_address[1]}/")
                page.wait_for_url(f"{p2v_server.url}/jobs/{job}/delete")
                expect(page.locator("body")).to_contain_text("refused")
            finally:
                cross.shutdown()
            assert client.job(job)["id"] == job

            # Sign-out ends the session: pages send back to sign-in, the polled parts say 401.
            page.goto(p2v_server.url + "/")
            page.click("form.signout button")
            expect(page).to_have_url(p2v_server.url + "/signin")
            page.goto(p2v_server.url + f"/jobs/{job}")
            expect(page).to_have_url(p2v_server.url + "/signin")
            assert page.request.get(p2v_server.url + "/parts/jobs").status == 401
        finally:
            context.close()
            browser.close()
    assert not [u for u in seen_urls if p2v_server.token in u]
    server_log = p2v_server.log.read_text().split("p2v.mode=auto", 1)[1]
    assert p2v_server.token not in server_log


def signed_in(server) -> tuple[requests.Session, str]:
    """A requests session signed in as the browser is (Origin: the server), and its CSRF token."""
    http = requests.Session()
    http.verify, http.trust_env = False, False   # REQUESTS_CA_BUNDLE would override verify
    r = http.post(server.url + "/signin", data={"secret": server.token},
                  headers={"Origin": server.url}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == "/", r.text
    page = http.get(server.url + "/").text
    return http, re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_actions_need_this_servers_page_and_cancel_stops_a_capture(source_disk, p2v_server):
    dev, _ = source_disk
    http, csrf = signed_in(p2v_server)
    thread, out = start_capture(p2v_server, dev, "db02", bwlimit=4 * MiB)
    deadline = time.monotonic() + 30
    while not (jobs := requests.get(p2v_server.url + "/api/v1/jobs", headers=p2v_server.headers,
                                    verify=False).json()):
        assert time.monotonic() < deadline, "no job appeared"
        time.sleep(0.2)
    job = jobs[0]["id"]
    cancel = f"{p2v_server.url}/jobs/{job}/cancel"
    # Without the page's CSRF token, or from another origin, or without a session: refused.
    stale, elsewhere, ended = ("did not come from this server", "another site&#39;s page",
                               "session has ended")
    for data, headers, signed, why in (({}, {"Origin": p2v_server.url}, True, stale),
                                       ({"csrf": csrf + "x"}, {"Origin": p2v_server.url}, True, stale),
                                       ({"csrf": csrf}, {"Origin": "https://evil.example"}, True, elsewhere),
                                       ({"csrf": csrf}, {"Sec-Fetch-Site": "cross-site"}, True, elsewhere),
                                       ({"csrf": csrf}, {"Origin": p2v_server.url}, False, ended)):
        poster = http if signed else requests
        r = poster.post(cancel, data=data, headers=headers, allow_redirects=False, verify=False)
        assert r.status_code == (403 if why == elsewhere else 401) and why in r.text, r.text
    assert requests.get(f"{p2v_server.url}/api/v1/jobs/{job}", headers=p2v_server.headers,
                        verify=False).json()["state"] == "receiving"

    # With it: the job fails as cancelled and the agent stops saying so.
    r = http.post(cancel, data={"csrf": csrf}, headers={"Origin": p2v_server.url}, allow_redirects=False)
    assert r.status_code == 303, r.text
    thread.join(timeout=60)
    # Its job token answers job_cancelled (or its disks refuse the chunks): the agent stops
    # saying the job was cancelled, not that its token is wrong.
    assert "The job was cancelled on the server (by the admin)" in str(out.get("error")), out
    state = requests.get(f"{p2v_server.url}/api/v1/jobs/{job}", headers=p2v_server.headers,
                         verify=False).json()
    assert state["state"] == "failed" and "Cancelled from the dashboard" in state["detail"]

    r = http.post(f"{p2v_server.url}/jobs/{job}/delete", data={"csrf": csrf},
                  headers={"Origin": p2v_server.url}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == "/"
    assert not (p2v_server.data_dir / "jobs" / job).exists()
    assert requests.get(f"{p2v_server.url}/api/v1/jobs/{job}", headers=p2v_server.headers,
                        verify=False).status_code == 404


def test_the_admin_password_signs_in_and_is_kept_hashed(p2v_server):
    password = "correct horse battery"
    proc = subprocess.run([sys.executable, "-m", "server.cli", "password", "--data-dir",
                           str(p2v_server.data_dir)], input=password + "\n", text=True,
                          capture_output=True, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    stored = (p2v_server.data_dir / "admin-password").read_text()
    assert password not in stored and stored.startswith("scrypt$")
    assert (p2v_server.data_dir / "admin-password").stat().st_mode & 0o077 == 0
    for secret, status in ((password + "!", 401), (password, 303)):
        r = requests.post(p2v_server.url + "/signin", data={"secret": secret}, verify=False,
                          headers={"Origin": p2v_server.url}, allow_redirects=False)
        assert r.status_code == status, r.text
    assert password not in p2v_server.log.read_text()

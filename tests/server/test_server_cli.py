"""`p2v-server` from the command line: serve's flags and messages, `jobs`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

from server.datadir import new_token
from support import free_port
from wire import CHUNK, Wire


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_serve_is_the_default_and_takes_token_and_plain_http(tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", "--data-dir", str(tmp_path / "d"),
                                 "--listen", f"127.0.0.1:{port}", "--plain-http", "--token", "s3cret"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2) as r:
                    assert json.load(r)["protocol"] == 1
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        text = log.read_text()
        assert f"p2v.server=http://127.0.0.1:{port} p2v.token=s3cret p2v.mode=auto" in text
        assert "p2v.fingerprint" not in text
        assert not (tmp_path / "d" / "tls").exists() and not (tmp_path / "d" / "token").exists()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/jobs",
                                     headers={"Authorization": "Bearer s3cret"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.load(r) == []
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_serve_explains_what_it_cannot_do(tmp_path):
    out = cli("serve", "--data-dir", str(tmp_path), "--listen", "nowhere")
    assert out.returncode == 2 and "is not HOST:PORT" in out.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = cli("serve", "--data-dir", str(tmp_path), "--listen", f"127.0.0.1:{port}")
    assert out.returncode == 1 and f"Cannot listen on 127.0.0.1:{port}" in out.stderr
    (tmp_path / "file").write_text("")
    out = cli("serve", "--data-dir", str(tmp_path / "file" / "sub"), "--listen", "127.0.0.1:1")
    assert out.returncode == 1 and "Choose another with --data-dir" in out.stderr
    assert "Traceback" not in out.stderr
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "xenp2v.db").write_text("not a database")
    out = cli("serve", "--data-dir", str(tmp_path / "broken"), "--listen", "127.0.0.1:1")
    assert out.returncode == 1 and "file is not a database" in out.stderr
    assert "Traceback" not in out.stderr


def test_jobs_lists_jobs_as_a_table_and_as_json(p2v_server):
    assert cli("jobs", "--data-dir", str(p2v_server.data_dir)).stdout.strip() == "No jobs yet."
    wire = Wire(p2v_server)
    job = wire.create([{"id": "sda", "size": 3 * CHUNK, "chunk_size": CHUNK, "used": 2 * CHUNK,
                        "used_chunks": 2},
                       {"id": "nvme0n1", "size": 5 * CHUNK}], name="mail server").json()["id"]
    assert wire.put(job, "sda", 1, bytes(CHUNK)).status_code == 201
    out = cli("jobs", "--data-dir", str(p2v_server.data_dir))
    assert out.returncode == 0
    assert job in out.stdout and "mail server" in out.stdout and "receiving" in out.stdout
    assert "sda 192.0 KiB receiving (64.0 KiB of ~128.0 KiB)" in out.stdout
    listed = json.loads(cli("jobs", "--json", "--data-dir", str(p2v_server.data_dir)).stdout)
    assert [(j["id"], j["name"], j["state"]) for j in listed] == [(job, "mail server", "receiving")]
    assert [(d["id"], d["size"], d["state"]) for d in listed[0]["disks"]] == [
        ("sda", 3 * CHUNK, "receiving"), ("nvme0n1", 5 * CHUNK, "receiving")]


def test_jobs_and_verify_refuse_a_directory_without_server_data(tmp_path):
    for args in (("jobs",), ("verify", "somejob")):
        out = cli(*args, "--data-dir", str(tmp_path / "typo"))
        assert out.returncode == 1 and "There is no xenp2v server data in" in out.stderr
    assert not (tmp_path / "typo").exists()


def test_a_made_token_never_reads_as_a_command_line_option():
    tokens = [new_token() for _ in range(2000)]    # 1 in 64 of token_urlsafe's start with '-'
    assert not [t for t in tokens if t.startswith("-")]
    assert len(set(tokens)) == 2000 and {len(t) for t in tokens} == {32}


def test_p2v_server_without_the_server_libraries_says_what_to_install():
    # The agent's extra alone (the live ISO, a technician's laptop) installs p2v-server's entry
    # point too: it died with a ModuleNotFoundError traceback.
    import subprocess
    import sys
    code = ("import sys; sys.modules['aiohttp'] = None; from server.cli import main; "
            "sys.exit(main(['jobs', '--help']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == ("p2v-server needs the server's libraries, and aiohttp is not "
                                   "installed: install them with pip install 'xenp2v[server]' "
                                   "(or run make venv in a checkout)."), proc.stderr

"""Shared fixtures: real loop devices and real processes, cleaned up whatever happens."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import P2VServer, detach_loop, needs_root, run


@pytest.fixture
def loopdev(tmp_path: Path):
    """Factory: loopdev(size_bytes, name='disk') -> '/dev/loopN' backed by a sparse file.

    Partition nodes are made with partx because `losetup -P` does not always make them here;
    call `rescan(dev)` after partitioning. Everything is detached at the end of the test.
    """
    needs_root()
    made: list[tuple[str, Path]] = []

    def make(size: int, name: str = "disk") -> str:
        backing = tmp_path / f"{name}-{len(made)}.img"
        with open(backing, "wb") as f:
            f.truncate(size)
        dev = run("losetup", "--show", "-f", "-P", str(backing)).stdout.strip()
        made.append((dev, backing))
        return dev

    yield make
    for dev, backing in reversed(made):
        detach_loop(dev, backing)


@pytest.fixture
def p2v_server_factory(tmp_path: Path):
    """Factory: p2v_server_factory(plain=False, args=()) -> a started P2VServer; all stopped after."""
    made: list[P2VServer] = []

    def make(plain: bool = False, args: tuple[str, ...] = (), data_dir: Path | None = None) -> P2VServer:
        server = P2VServer(Path(data_dir or tmp_path / f"p2v-data-{len(made)}"), plain, args)
        made.append(server)
        return server.start()

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def p2v_server(p2v_server_factory) -> P2VServer:
    """A real TLS `p2v-server serve` on a free port with a fresh data directory."""
    return p2v_server_factory()

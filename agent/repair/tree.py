"""Read-only view of a guest's files under a root directory (a mounted guest or a test fixture)."""

from __future__ import annotations

from pathlib import Path


class GuestTree:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _host(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def read(self, path: str) -> str | None:
        """The file's text, or None when it does not exist (a dangling link counts as missing)."""
        host = self._host(path)
        try:
            return host.read_text(encoding="utf-8", errors="surrogateescape")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def exists(self, path: str) -> bool:
        return self._host(path).exists()

    def glob(self, pattern: str) -> list[str]:
        """Guest paths matching `pattern` (absolute, shell-style), sorted."""
        return sorted("/" + str(p.relative_to(self.root))
                      for p in self.root.glob(pattern.lstrip("/")) if p.is_file())

"""The dashboard's page and assets, from llm_proxy/control/static/: no data in them, served to anyone.

Only plain file names directly in that folder are served (no `..`, no
sub-paths, no hidden files), with a content type from a fixed table.
"""

from __future__ import annotations

import re
from pathlib import Path

STATIC_DIR = Path(__file__).with_name("static")
INDEX = "index.html"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".json": "application/json", ".map": "application/json", ".svg": "image/svg+xml", ".png": "image/png",
    ".ico": "image/x-icon", ".woff2": "font/woff2", ".txt": "text/plain; charset=utf-8",
}


def asset(name: str, directory: Path = STATIC_DIR) -> tuple[bytes, str] | None:
    """The bytes and content type of static asset `name`, or None if there is no such servable file."""
    if not _NAME.fullmatch(name) or ".." in name:
        return None
    content_type = CONTENT_TYPES.get(Path(name).suffix.lower())
    if content_type is None:
        return None
    path = directory / name
    try:
        if path.resolve().parent != directory.resolve() or not path.is_file():
            return None
        return path.read_bytes(), content_type
    except OSError:
        return None

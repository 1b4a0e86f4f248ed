"""The one place that decides where index data lives."""

from __future__ import annotations

import os
import re
from pathlib import Path

from retrieval.errors import UsageError

HOME_ENV = "RETRIEVAL_HOME"
DEFAULT_INDEX = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def resolve_home(home: Path | str | None = None) -> Path:
    """Return the folder holding all indexes: `home`, else $RETRIEVAL_HOME, else ./indexes."""
    if home is None:
        home = os.environ.get(HOME_ENV) or Path.cwd() / "indexes"
    return Path(home).expanduser().resolve()


def index_dir(name: str = DEFAULT_INDEX, home: Path | str | None = None) -> Path:
    """Return the folder of index `name` (not created); reject names that could escape the home."""
    if not _NAME.match(name) or name in {".", ".."}:
        raise UsageError(f"invalid index name {name!r}: use letters, digits, '.', '_' or '-' (max 64)")
    return resolve_home(home) / name

"""The one place that reads the environment and decides where index data lives."""

from __future__ import annotations

import os
import re
from pathlib import Path

from retrieval.errors import UsageError

APP_NAME = "retrieval"
HOME_ENV = "RETRIEVAL_HOME"
MILVUS_URI_ENV = "RETRIEVAL_MILVUS_URI"
RAY_ADDRESS_ENV = "RETRIEVAL_RAY_ADDRESS"
DEFAULT_INDEX = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def default_home() -> Path:
    """Where indexes live when nothing says otherwise: the user's data folder (on Linux
    $XDG_DATA_HOME/retrieval, else ~/.local/share/retrieval), never the current directory, so that every
    command finds the same indexes wherever it runs."""
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP_NAME, appauthor=False))


def resolve_home(home: Path | str | None = None) -> Path:
    """Return the folder holding all indexes: `home`, else $RETRIEVAL_HOME, else `default_home()`.
    Nothing is created here; a command that writes an index creates its folder."""
    if home is None:
        home = os.environ.get(HOME_ENV) or default_home()
    return Path(home).expanduser().resolve()


def index_dir(name: str = DEFAULT_INDEX, home: Path | str | None = None) -> Path:
    """Return the folder of index `name` (not created); reject names that could escape the home."""
    if not _NAME.match(name) or name in {".", ".."}:
        raise UsageError(f"invalid index name {name!r}: use letters, digits, '.', '_' or '-' (max 64)")
    return resolve_home(home) / name


def milvus_uri_from_env() -> str | None:
    """The Milvus server a new Milvus index uses when no URI is given (None: Milvus Lite in the index)."""
    return os.environ.get(MILVUS_URI_ENV) or None


def ray_address_from_env() -> str | None:
    """The Ray cluster `ingest --ray` joins when no address is given (None: start one here)."""
    return os.environ.get(RAY_ADDRESS_ENV) or None

"""The one place that reads the environment and decides where index data lives."""

from __future__ import annotations

import os
import re
from pathlib import Path

from retrieval.errors import UsageError

HOME_ENV = "RETRIEVAL_HOME"
MILVUS_URI_ENV = "RETRIEVAL_MILVUS_URI"
MILVUS_TOKEN_ENV = "RETRIEVAL_MILVUS_TOKEN"
MILVUS_USER_ENV = "RETRIEVAL_MILVUS_USER"
MILVUS_PASSWORD_ENV = "RETRIEVAL_MILVUS_PASSWORD"
MILVUS_DB_ENV = "RETRIEVAL_MILVUS_DB"
RAY_ADDRESS_ENV = "RETRIEVAL_RAY_ADDRESS"
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


def milvus_uri_from_env() -> str | None:
    """The Milvus server a new Milvus index uses when no URI is given (None: Milvus Lite in the index)."""
    return os.environ.get(MILVUS_URI_ENV) or None


def milvus_token_from_env() -> str | None:
    """Credentials for a Milvus server: $RETRIEVAL_MILVUS_TOKEN, else "$RETRIEVAL_MILVUS_USER:$..._PASSWORD"
    (None: no authentication). Never recorded in an index; read each time an index is opened."""
    token = os.environ.get(MILVUS_TOKEN_ENV)
    if token:
        return token
    user = os.environ.get(MILVUS_USER_ENV)
    return f"{user}:{os.environ.get(MILVUS_PASSWORD_ENV, '')}" if user else None


def milvus_db_from_env() -> str | None:
    """The Milvus database a new Milvus server index uses (None: the server's `default`)."""
    return os.environ.get(MILVUS_DB_ENV) or None


def ray_address_from_env() -> str | None:
    """The Ray cluster `ingest --ray` joins when no address is given (None: start one here)."""
    return os.environ.get(RAY_ADDRESS_ENV) or None

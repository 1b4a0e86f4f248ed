"""The one place that reads the environment and decides where index data lives."""

from __future__ import annotations

import os
import re
from pathlib import Path

from retrieval.errors import UsageError

APP_NAME = "retrieval"
HOME_ENV = "RETRIEVAL_HOME"
MILVUS_URI_ENV = "RETRIEVAL_MILVUS_URI"
MILVUS_TOKEN_ENV = "RETRIEVAL_MILVUS_TOKEN"
MILVUS_USER_ENV = "RETRIEVAL_MILVUS_USER"
MILVUS_PASSWORD_ENV = "RETRIEVAL_MILVUS_PASSWORD"
MILVUS_DB_ENV = "RETRIEVAL_MILVUS_DB"
RAY_ADDRESS_ENV = "RETRIEVAL_RAY_ADDRESS"
MAX_FILE_MB_ENV = "RETRIEVAL_MAX_FILE_MB"
DECODE_SECONDS_ENV = "RETRIEVAL_DECODE_SECONDS"
TOKEN_ENV = "RETRIEVAL_TOKEN"
TEXT_BATCH_ENV = "RETRIEVAL_TEXT_BATCH"
TEXT_BATCH_WINDOW_ENV = "RETRIEVAL_TEXT_BATCH_WINDOW_MS"
#: Ray's own token-auth variables (Ray >= 2.52), read by the driver's `ray.init` as by every node.
RAY_AUTH_MODE_ENV = "RAY_AUTH_MODE"
RAY_AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"
RAY_AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
#: The level of Ray's C++ log lines, which its driver writes to stderr.
RAY_BACKEND_LOG_LEVEL_ENV = "RAY_BACKEND_LOG_LEVEL"
DEFAULT_INDEX = "default"

# -- decoding budgets (retrieval.files.decoding) ----------------------------------------------------------

#: Pixels an image file may declare (ingest, queries by path): just under Pillow's own hard limit (2 x
#: Image.MAX_IMAGE_PIXELS, about 179 MP) so that the two never disagree; every camera sensor fits.
DEFAULT_MAX_PIXELS = 178_000_000
#: Pixels an uploaded query image may declare: a query needs 224 pixels a side, not a panorama, and the
#: server decodes uploads from anyone.
UPLOAD_MAX_PIXELS = 40_000_000
#: Largest image file read at all; a bigger one is a recorded failure. $RETRIEVAL_MAX_FILE_MB overrides.
DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024
#: Seconds one file may take to decode before it is a recorded failure. $RETRIEVAL_DECODE_SECONDS overrides.
DEFAULT_DECODE_SECONDS = 30.0

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


def ray_auth_env() -> dict[str, str]:
    """Ray's auth variables as a driver must give them to Ray: as set, plus RAY_AUTH_MODE=token when a
    token (RAY_AUTH_TOKEN, or a file in RAY_AUTH_TOKEN_PATH) is given without the mode, which Ray would
    otherwise ignore. Empty when none is set."""
    env = {
        name: os.environ[name]
        for name in (RAY_AUTH_MODE_ENV, RAY_AUTH_TOKEN_ENV, RAY_AUTH_TOKEN_PATH_ENV)
        if os.environ.get(name)
    }
    if RAY_AUTH_MODE_ENV not in env and (RAY_AUTH_TOKEN_ENV in env or RAY_AUTH_TOKEN_PATH_ENV in env):
        env[RAY_AUTH_MODE_ENV] = "token"
    return env


def ray_driver_env() -> dict[str, str]:
    """What the ingest's Ray driver puts in its environment before Ray reads it: `ray_auth_env()`, and Ray's
    C++ log level at "fatal" unless set (its driver writes warnings such as "constructor arguments in the
    object store" to stderr, under the CLI's one line; the session folder's logs keep the rest)."""
    return {RAY_BACKEND_LOG_LEVEL_ENV: os.environ.get(RAY_BACKEND_LOG_LEVEL_ENV) or "fatal"} | ray_auth_env()


def max_file_bytes() -> int:
    """The largest image file decoded: $RETRIEVAL_MAX_FILE_MB megabytes, else 512 MB."""
    megabytes = _positive_env(MAX_FILE_MB_ENV, "megabytes")
    return DEFAULT_MAX_FILE_BYTES if megabytes is None else max(1, int(megabytes * 1024 * 1024))


def decode_seconds() -> float:
    """The time budget of one decode: $RETRIEVAL_DECODE_SECONDS, else 30 s."""
    seconds = _positive_env(DECODE_SECONDS_ENV, "seconds")
    return DEFAULT_DECODE_SECONDS if seconds is None else seconds


def _positive_env(name: str, unit: str) -> float | None:
    """A positive, finite number from the environment; None when unset."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise UsageError(
            f"${name} must be a positive number of {unit}, got {text!r}; unset it for the default"
        )
    return value


def token_from_env() -> str | None:
    """The token `retrieval serve` requires on API calls when --token is not given (None: no token)."""
    return os.environ.get(TOKEN_ENV) or None


# -- text queries (retrieval.search.batching) -------------------------------------------------------------

#: Most texts of concurrent queries embedded in one forward of the text tower; 1 turns batching off.
DEFAULT_TEXT_BATCH = 32
#: Longest a shared forward waits for more texts, in milliseconds (only when the forwards before it were
#: shared: a lone query never waits). 0: a forward takes the texts that queued while the one before it ran,
#: and waits for none; a 3 ms window measured no better (BENCHMARKS.md, "Serving").
DEFAULT_TEXT_BATCH_WINDOW_MS = 0.0
MAX_TEXT_BATCH = 256
MAX_TEXT_BATCH_WINDOW_MS = 50.0


def text_batch() -> int:
    """Most texts one shared text forward takes: $RETRIEVAL_TEXT_BATCH (1: no batching), else 32."""
    text = os.environ.get(TEXT_BATCH_ENV, "").strip()
    if not text:
        return DEFAULT_TEXT_BATCH
    if not text.isdigit() or not 1 <= int(text) <= MAX_TEXT_BATCH:
        raise UsageError(
            f"${TEXT_BATCH_ENV} must be a whole number from 1 (no batching) to {MAX_TEXT_BATCH}, got {text!r}"
        )
    return int(text)


def text_batch_window() -> float:
    """Seconds a shared text forward may wait for more texts: $RETRIEVAL_TEXT_BATCH_WINDOW_MS, else 0."""
    text = os.environ.get(TEXT_BATCH_WINDOW_ENV, "").strip()
    if not text:
        return DEFAULT_TEXT_BATCH_WINDOW_MS / 1000
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= MAX_TEXT_BATCH_WINDOW_MS:
        raise UsageError(
            f"${TEXT_BATCH_WINDOW_ENV} must be a number of milliseconds from 0 to "
            f"{MAX_TEXT_BATCH_WINDOW_MS:g}, got {text!r}"
        )
    return value / 1000

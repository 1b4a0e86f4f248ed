"""The disk under an index: why it refuses a write, asked of the operating system itself.

SQLite reports a full, read-only or forbidden folder vaguely ("disk I/O error", "unable to open database
file"), which reads like damage. A small probe write in the folder gets the OS's own answer (ENOSPC,
EROFS, EACCES, EDQUOT ...), so that the user is told the truth and the data is not taken for lost.
"""

from __future__ import annotations

import errno
import os
import threading
from contextlib import suppress
from pathlib import Path

from retrieval.errors import IndexWriteError

#: What the probe writes: SQLite needs its 32 KiB shared-memory file (and a little more) to open a database.
PROBE_BYTES = 64 * 1024


def write_refusal(folder: Path) -> str | None:
    """The OS's reason ("No space left on device", "Read-only file system", "Permission denied", ...) for
    refusing a small write in `folder`, or None when the write succeeds (or the folder does not exist)."""
    probe = Path(folder) / f".retrieval-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        data = memoryview(bytes(PROBE_BYTES))
        while data:
            written = os.write(fd, data)
            if written <= 0:
                return os.strerror(errno.ENOSPC)
            data = data[written:]
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        os.close(fd)
        with suppress(OSError):
            os.unlink(probe)


def write_error(folder: Path, reason: str) -> IndexWriteError:
    """The one message for a write the disk refused: what, why, that nothing was lost, what to do."""
    return IndexWriteError(
        f"cannot write the index in {folder}: {reason}; the previous version is intact, "
        "make room (or fix the folder) and run the command again"
    )

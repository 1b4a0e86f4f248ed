"""The `Store` interface every vector store implements, and `StoreSpec`: which store an index uses and where.

Ingest, search, maps, duplicates, doctor and the engine only call what `Store` lists, so they work unchanged
over any implementation.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from retrieval.errors import IndexMismatchError, UsageError
from retrieval.settings import milvus_db_from_env, milvus_token_from_env, milvus_uri_from_env

if TYPE_CHECKING:  # the store's types only: `retrieval list` reads no vectors and needs no numpy
    import numpy as np

#: What users type (`--store`) → what the manifest records.
KINDS = {"hnswlib": "hnswlib-int8", "hnswlib-int8": "hnswlib-int8", "milvus": "milvus"}
DEFAULT_KIND = "hnswlib-int8"


class Store(Protocol):
    """Int64 id → L2-normalised float32 vector, searched by inner product. Ids are the database's content ids.

    `search(..., allowed=ids)` answers from those ids only (a filter; sorted unique int64, computed by the
    metadata store): absent ids are ignored, and fewer than k allowed vectors pad with id -1.
    `save()` makes every change durable (the database commits after it); `warm_up()` builds what the first
    searches would (a server's first request then does not wait for it); `reload_if_changed()` picks up
    changes saved by another process (`warm=True`: built like `warm_up` before searches switch to them);
    `garbled_ids()` lists stored vectors that are damaged.
    """

    dim: int
    writable: bool

    def __len__(self) -> int: ...
    def __contains__(self, id: object) -> bool: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
    @property
    def generation(self) -> int: ...
    def ids(self) -> np.ndarray: ...
    def ids_above(self, after: int) -> np.ndarray: ...
    def vectors(self, ids: Sequence[int]) -> np.ndarray: ...
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...
    def remove(self, ids: Iterable[int]) -> int: ...
    def search(
        self, queries: np.ndarray, k: int, *, ef: int | None = None, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...
    def save(self) -> int: ...
    def warm_up(self) -> None: ...
    def reload_if_changed(self, *, warm: bool = False) -> bool: ...
    def garbled_ids(self) -> np.ndarray: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class StoreSpec:
    """Which store an index uses and where: `kind` as recorded in the manifest; for Milvus, the server's URI
    (None = Milvus Lite inside the index folder, never with credentials in it), the collection's name, the
    server's database (None: its default) and the credentials (`milvus_token`, "user:password" or a token:
    from the settings or a URI's user part, never written to the manifest nor shown)."""

    kind: str = DEFAULT_KIND
    milvus_uri: str | None = None
    milvus_collection: str | None = None
    milvus_db: str | None = None
    milvus_token: str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def for_new_index(cls, index: str, store: str | None, milvus_uri: str | None) -> StoreSpec:
        """The spec of a new index from what the caller asked for. A URI alone means Milvus; for Milvus
        without one, $RETRIEVAL_MILVUS_URI names the server, else Milvus Lite runs inside the index folder.

        Raises:
            UsageError: an unknown store name, or a Milvus URI with another store.
        """
        kind = parse_kind(store) if store else None
        if milvus_uri and kind not in (None, "milvus"):
            raise UsageError(f"--milvus-uri goes with --store milvus, not --store {store}")
        if kind == "milvus" or milvus_uri:
            uri, token = split_credentials(milvus_uri or milvus_uri_from_env())
            safe = re.sub(r"[^A-Za-z0-9_]", "_", index)[:64]
            name = f"retrieval_{safe}_{secrets.token_hex(4)}"
            if uri is None:
                return cls("milvus", None, name)
            return cls("milvus", uri, name, milvus_db_from_env(), token or milvus_token_from_env())
        return cls(kind or DEFAULT_KIND)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> StoreSpec:
        kind = manifest.get("store") or DEFAULT_KIND
        if kind not in KINDS.values():
            raise UsageError(
                f"this index keeps its vectors in a {kind!r} store, which this version of retrieval does "
                f"not know ({', '.join(sorted(set(KINDS.values())))}); upgrade retrieval to open it"
            )
        uri, token = split_credentials(manifest.get("milvus_uri"))
        if uri is None:
            return cls(kind, None, manifest.get("milvus_collection"))
        return cls(
            kind,
            uri,
            manifest.get("milvus_collection"),
            manifest.get("milvus_db"),
            milvus_token_from_env() or token,
        )

    def to_manifest(self) -> dict[str, Any]:
        if self.kind == "milvus":
            out = {
                "store": self.kind,
                "milvus_uri": self.milvus_uri,
                "milvus_collection": self.milvus_collection,
            }
            return {**out, "milvus_db": self.milvus_db} if self.milvus_db else out
        return {"store": self.kind}

    def check_request(self, index: str, store: str | None, milvus_uri: str | None) -> None:
        """Refuse a store or URI asked for an existing index that records another one.

        Raises:
            IndexMismatchError: the index was created with another store or Milvus URI.
        """
        if store and parse_kind(store) != self.kind:
            raise IndexMismatchError(
                f"index {index!r} keeps its vectors in the {self.kind} store, not {parse_kind(store)}; "
                "drop --store (an index keeps the store it was created with) or choose another --index"
            )
        asked = split_credentials(milvus_uri)[0]
        if asked and (self.kind != "milvus" or asked != self.milvus_uri):
            where = f"Milvus at {self.milvus_uri}" if self.milvus_uri else f"the {self.kind} store"
            if self.kind == "milvus" and not self.milvus_uri:
                where = "Milvus Lite inside the index folder"
            raise IndexMismatchError(
                f"index {index!r} keeps its vectors in {where}, not at {asked}; drop --milvus-uri"
            )


def parse_kind(name: str) -> str:
    """The manifest's name for a `--store` value.

    Raises:
        UsageError: an unknown store.
    """
    try:
        return KINDS[name]
    except KeyError:
        raise UsageError(f"unknown store {name!r}; choose hnswlib (the default) or milvus") from None


_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^@/?#]*)@")


def split_credentials(uri: str | None) -> tuple[str | None, str | None]:
    """A server URI without its user part, and that part ("user:password", URL-decoded) if it had one:
    http://me:pw@host:19530 -> (http://host:19530, "me:pw")."""
    if not uri:
        return None, None
    match = _USERINFO.match(uri)
    if match is None:
        return uri, None
    from urllib.parse import unquote

    return match["scheme"] + uri[match.end() :], unquote(match["user"]) or None


def mask_secrets(text: str, *secrets_: str | None) -> str:
    """`text` with any URI's password and each of `secrets_` replaced by ***; a "user:password" secret's
    password alone too when it is long enough not to be an everyday word."""
    text = re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://[^:@/\s]*):[^@/\s]*@", r"\1:***@", text)
    for secret in filter(None, secrets_):
        assert secret is not None
        password = secret.partition(":")[2]
        for part in (secret, password if len(password) >= 8 else ""):
            if part:
                text = text.replace(part, "***")
    return text

"""retrieval: make a photo collection searchable by text and by image.

    from retrieval import Engine
    with Engine("photos", model="clip") as engine:
        engine.ingest("~/Pictures")
        hits = engine.search_text("a dog on a beach", k=10)

Names are imported lazily so that `import retrieval.errors` does not pull in torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Engine", "Query", "QueryPart", "SearchHit", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from retrieval.engine import Engine

        return Engine
    if name in {"Query", "QueryPart", "SearchHit"}:
        from retrieval import search

        return getattr(search, name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")

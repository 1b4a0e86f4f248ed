"""retrieval: make a photo collection searchable by text and by image.

    from retrieval import Engine
    with Engine("photos", model="clip") as engine:
        engine.ingest("~/Pictures")
        hits = engine.search_text("a dog on a beach", k=10)

Names are imported lazily so that `import retrieval.errors` does not pull in torch.
"""

from __future__ import annotations

import os
from typing import Any

# torch's OpenMP threads spin while they wait for each other. Ingest runs decode threads beside them and a
# shared machine runs other programs; a spinning thread then burns the core its partner needs, and on two
# busy cores a text query took 10x longer (BENCHMARKS.md, "Query latency"). Read once, when torch loads
# (after this); an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["Engine", "Filter", "Query", "QueryPart", "SearchHit", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from retrieval.engine import Engine

        return Engine
    if name == "Filter":
        from retrieval.metadata.filters import Filter

        return Filter
    if name in {"Query", "QueryPart", "SearchHit"}:
        from retrieval.search import queries as search

        return getattr(search, name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")

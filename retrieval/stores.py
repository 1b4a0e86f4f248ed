"""Kept importable because the README names it: the store interface lives in `retrieval.vectors`."""

from retrieval.vectors import Store, StoreSpec, create_store, open_store

__all__ = ["Store", "StoreSpec", "create_store", "open_store"]

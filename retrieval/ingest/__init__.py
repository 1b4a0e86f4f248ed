"""Ingest: turn a folder of photos into embedded, indexed rows, incrementally and crash-safely.

`pipeline` runs decode threads beside the model on this machine; `ray` runs the same stages on a Ray cluster.
"""

"""Search: queries (text, image, mixed, "more like this") and near-duplicate groups over an index.

Everything here reads the metadata and vector stores; nothing writes.
"""

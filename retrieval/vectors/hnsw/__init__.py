"""The default vector store: int8 codes in an HNSW graph over a PCA head, re-ranked exactly.

Generations are saved atomically with a checksummed manifest; float32 originals allow exact
re-scoring and repair.
"""

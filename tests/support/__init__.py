"""Helpers the tests share: photos drawn in the test, independent index checks, the ingest child, odd images,
and the real services (a Milvus server, a Ray cluster) the tests start."""

"""Serve: the HTTP API and the web page over one index.

HTTP only: every answer comes from `retrieval.Engine`'s public methods.
"""

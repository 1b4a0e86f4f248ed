"""Kept importable because the README names it: the app lives in `retrieval.serve.app`."""

from retrieval.serve.app import create_app, warm_up

__all__ = ["create_app", "warm_up"]

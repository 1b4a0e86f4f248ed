"""`python -m retrieval` runs the command-line interface."""

from retrieval_cli.main import run

run()

"""Prefect flows (ingest, query) and their command-line interfaces."""

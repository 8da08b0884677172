"""Thin Prefect task wrappers over the imgrag library: retries, cache policies, logging."""

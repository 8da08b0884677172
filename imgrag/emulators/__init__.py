"""Local EMULATORS of external services, for tests, demos and benchmarks only.

They speak the real wire protocols so that the real SDK clients (boto3, ...) run against
them unchanged; they are not models and produce no meaningful output beyond what tests need.
Import the submodules directly (e.g. ``imgrag.emulators.bedrock``); this package imports
nothing so that ``python -m imgrag.emulators.<name>`` works cleanly.
"""

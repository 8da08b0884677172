"""Prefect flows (ingest, query) and their command-line interfaces."""

import gc
import sys

if sys.argv[:1] == ["-m"]:
    # Being imported by ``python -m flows.ingest`` (or ``flows.query``): collection is paused
    # while the CLI imports Prefect, Chroma and boto3 and resumed by ``flows.cli.run_cli``.
    gc.disable()

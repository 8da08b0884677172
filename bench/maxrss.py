"""Run a command, then write its peak resident memory in KiB to a file.

``python -m bench.maxrss OUT_FILE -- CMD [ARGS...]`` exits with CMD's status. A child's
``ru_maxrss`` also counts the pages of the process it was forked from, so a large benchmark
process cannot read its children's peak directly; this launcher is small, so it can. Only the
standard library is imported here, to keep it small.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    code = subprocess.call(argv[2:])
    Path(argv[0]).write_text(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""First contact, timed: the CLIs as a new user meets them, in fresh processes.

Run: ``python -m bench.cli [--busy 1] [--repeats 3] [--out file.json]``.

Starts the Titan EMULATOR and a moto S3 server (own processes), fills the demo's bucket, then
times, as a user's shell would run them (wall seconds, best and median of ``--repeats``):

- ``--help`` of both CLIs, and a flag error (``-k 0``);
- the first ingest with **no Prefect server** on a **fresh Prefect home** (a temporary
  server is started and its database created), then again on the used home;
- ``flows.query "red" -k 3`` with no Prefect server (runs in process, not recorded);
- with a ``prefect server start`` running: the same ingest (nothing new) and query (a
  recorded ``query-images`` flow run).

``--busy N`` runs N CPU-bound processes beside everything (a loaded laptop, a shared CI
box). Each command's import time (``-X importtime``, all modules, best run) is printed
too: it is most of a short command's cost.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    clean_environ,
    format_table,
    hermetic_env,
    machine_load,
    run_child,
    start_fake_bedrock,
    start_moto,
    start_prefect_server,
    wait_http_ok,
    write_results,
)
from imgrag.emulators.demo import BUCKET, PREFIX, fill_bucket

REPO = Path(__file__).resolve().parent.parent


def spin() -> None:
    """A CPU-bound process (the 'one other process' of a busy machine)."""
    while True:
        pass


def import_ms(stderr: str) -> float:
    """All import time of a run, from ``-X importtime`` (top-level entries), in ms."""
    return sum(int(m.group(1)) for m in re.finditer(
        r"^import time:\s+\d+ \|\s+(\d+) \| \S", stderr, re.M)) / 1000


class Timer:
    """Runs commands as children and keeps a row per named measurement."""

    def __init__(self, env: dict[str, str], repeats: int) -> None:
        self.env = env
        self.repeats = repeats
        self.rows: list[dict[str, Any]] = []

    def time(self, name: str, args: list[str], *, env: dict[str, str] | None = None,
             repeats: int | None = None, expect: int = 0) -> None:
        walls, imports = [], []
        for _ in range(repeats or self.repeats):
            child = run_child([sys.executable, "-X", "importtime", *args], env or self.env,
                              cwd=REPO)
            if child.returncode != expect or "Traceback" in child.stderr:
                tail = [ln for ln in child.stderr.splitlines() if "import time" not in ln]
                raise RuntimeError(f"{name}: exit {child.returncode}: {tail[-5:]}")
            walls.append(child.wall_s)
            imports.append(import_ms(child.stderr))
        self.rows.append({
            "what": name, "runs": len(walls), "best_s": min(walls),
            "median_s": statistics.median(walls),
            "import_ms": min(imports),
        })
        print(f"  {name}: best {min(walls):.2f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cli", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per cheap command")
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes beside")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    base = clean_environ(hermetic_env(work))
    base.pop("PREFECT_LOGGING_LEVEL")  # the user's default console
    hogs = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.busy)]
    for hog in hogs:
        hog.start()
    services = []
    try:
        bedrock = start_fake_bedrock(0, None, base)
        moto = start_moto(base, work / "moto-recording")
        services += [bedrock, moto]
        wait_http_ok(f"{moto.url}/moto-api/", moto.proc, 60)
        fill_bucket(moto.url)
        env = base | {"AWS_ENDPOINT_URL_S3": moto.url,
                      "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": bedrock.url,
                      "IMGRAG_CHROMA_PATH": str(work / "store")}
        source = f"s3://{BUCKET}/{PREFIX}"  # the demo's sample bucket
        timer = Timer(env, args.repeats)
        print(f"machine: {machine_load()}, busy processes: {args.busy}")
        timer.time("query --help", ["-m", "flows.query", "--help"])
        timer.time("ingest --help", ["-m", "flows.ingest", "--help"])
        timer.time("query flag error (-k 0)", ["-m", "flows.query", "red", "-k", "0"],
                   expect=2)
        timer.time("first ingest, temporary server, fresh Prefect home",
                   ["-m", "flows.ingest", "--source", source], repeats=1)
        timer.time("ingest again, temporary server, used Prefect home",
                   ["-m", "flows.ingest", "--source", source], repeats=1)
        timer.time('query "red" -k 3, no Prefect server', ["-m", "flows.query", "red", "-k", "3"])
        server = start_prefect_server(env)
        services.append(server)
        wait_http_ok(f"{server.url}/health", server.proc, 300)
        with_server = env | {"PREFECT_API_URL": server.url}
        timer.time("ingest (nothing new), Prefect server running",
                   ["-m", "flows.ingest", "--source", source], env=with_server)
        timer.time('query "red" -k 3, Prefect server running (recorded flow run)',
                   ["-m", "flows.query", "red", "-k", "3"], env=with_server)
    finally:
        for service in services:
            service.stop()
        for hog in hogs:
            hog.terminate()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(format_table(timer.rows, ("what", "runs", "best_s", "median_s", "import_ms")))
    write_results(args.out, {"machine": machine_load(), "busy": args.busy, "rows": timer.rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

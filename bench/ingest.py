"""Ingest benchmark: the original notebook's loop against imgrag's flow, on loopback emulators.

Run: ``python -m bench.ingest --images N --latency-ms L [--quota-rps Q] [--out file.json]``.

Starts the Titan EMULATOR (per-call latency L, token-bucket quota Q answering 429
ThrottlingException beyond it), a moto S3 server and a Prefect API server, each in its own
process, fills a bucket with N synthetic photo-like JPEGs (mixed sizes, 10% 12-megapixel,
every object's bytes unique), then measures in this process:

- ``baseline``: the original notebook's way, one image at a time: GetObject, PIL open,
  convert RGB, thumbnail to 2048, save JPEG, InvokeModel, ``collection.add`` (default boto3
  clients, an embedded Chroma collection);
- ``first``: imgrag's first ingest through the real flow (``flows.ingest_flow.ingest_flow``, the
  function the CLI runs), default settings unless ``--concurrency``/``--batch-size``
  (given lists, e.g. ``--concurrency 8,16,32``, only first ingests are run, one per
  combination, each into a fresh store: a sweep to choose the defaults);
- ``rerun``: the same again with nothing changed (best of 5);
- ``empty``: an ingest of an empty bucket with the same store (best of 5): the fixed cost
  of a run, subtracted from ``rerun`` to get the cost per listed object;
- ``changed``: a re-run after 1% of the objects were rewritten (new ETags).

Per phase: wall time, images/s, Bedrock invoke requests (retries included) and 429s (the
emulator's counters), S3 GetObject requests (moto's server-side request recorder) and the
peak RSS of this process during the phase. Then, as subprocesses run the way a user runs
them: ``--rss-images A,B`` first ingests of nested prefixes holding exactly A and B objects
(peak RSS of each child from ``wait4``), and the Prefect overhead (``import prefect``, the
CLI's start-up and exit alone (``--help``), an empty-prefix CLI run against the running
server, the same in ephemeral mode).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    BedrockMeter,
    CpuMeter,
    PhotoFactory,
    RssSampler,
    S3Meter,
    Service,
    clean_environ,
    format_table,
    hermetic_env,
    machine_load,
    parallel,
    run_child,
    start_fake_bedrock,
    start_moto,
    start_prefect_server,
    wait_http_ok,
    write_results,
)

BUCKET = "bench-photos"
EMPTY_BUCKET = "bench-empty"
PREFIX = "photos/"
CHANGED_SHARE = 0.01
REPEATS = 5  # cheap phases (re-runs, empty prefix): best of this many (1 with --quick)
PHASES = ("baseline", "first", "rerun", "changed", "memory", "prefect")
TITAN = "amazon.titan-embed-image-v1"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Phase:
    """The figures of one measured phase."""

    name: str
    wall_s: float
    images: int  # images indexed by the phase
    bedrock_calls: int  # InvokeModel requests, retries included
    throttled: int  # 429 ThrottlingException answers among them
    s3_gets: int
    s3_lists: int
    peak_rss_mb: float
    failed: int = 0
    cpu: dict[str, float] | None = None  # CPU seconds by process: self, bedrock, s3, prefect

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s else 0.0

    def row(self) -> dict[str, Any]:
        row = asdict(self) | {"images_per_s": round(self.images_per_s, 2)}
        return row | (row.pop("cpu") or {})


def object_key(index: int, depth: int) -> str:
    """``photos/`` + ``x/``×depth + name: the nested prefixes of ``--rss-images``."""
    return f"{PREFIX}{'x/' * depth}img-{index:06d}.jpg"


def nesting(count: int, sizes: Sequence[int]) -> tuple[list[str], dict[int, str]]:
    """Keys for ``count`` objects, and a prefix holding exactly the first n for each size n.

    Object i sits ``depth(i)`` folders deep, depth(i) = #sizes above i, so the prefix with
    ``k`` ``x/`` levels holds the objects below the k-th largest size.
    """
    ordered = sorted(set(sizes))
    keys = [object_key(i, sum(1 for n in ordered if i < n)) for i in range(count)]
    prefixes = {n: PREFIX + "x/" * (len(ordered) - j) for j, n in enumerate(ordered)}
    return keys, prefixes


def notebook_ingest(bucket: str, prefix: str, chroma_path: Path) -> int:
    """The original notebook's loop: one image at a time, start to finish. Returns the count."""
    import base64
    import io

    import boto3
    import chromadb
    from chromadb.config import Settings as ChromaSettings
    from PIL import Image

    s3 = boto3.client("s3")
    bedrock = boto3.client("bedrock-runtime")
    client = chromadb.PersistentClient(str(chroma_path),
                                       settings=ChromaSettings(anonymized_telemetry=False))
    collection = client.get_or_create_collection(
        "baseline", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None)
    keys = [item["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])]
    for key in keys:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        image = Image.open(io.BytesIO(body)).convert("RGB")
        image.thumbnail((2048, 2048))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        request = {"inputImage": base64.b64encode(buffer.getvalue()).decode(),
                   "embeddingConfig": {"outputEmbeddingLength": 1024}}
        response = bedrock.invoke_model(modelId=TITAN, body=json.dumps(request),
                                        contentType="application/json", accept="application/json")
        embedding = json.loads(response["body"].read())["embedding"]
        collection.add(ids=[f"s3://{bucket}/{key}"], embeddings=[embedding],
                       metadatas=[{"bucket": bucket, "key": key, "size": len(body)}])
    return len(keys)


class Bench:
    """The services, meters and stores of one benchmark run."""

    def __init__(self, args: argparse.Namespace, workdir: Path, stack: ExitStack) -> None:
        self.args = args
        self.workdir = workdir
        self.base_env = clean_environ(hermetic_env(workdir))
        os.environ.clear()
        os.environ.update(self.base_env)  # before Prefect, boto3 or Chroma are imported
        recording = workdir / "moto-requests.jsonl"
        services: list[Service] = [
            start_fake_bedrock(args.latency_ms, args.quota_rps, self.base_env),
            start_moto(self.base_env, recording),
            start_prefect_server(self.base_env),
        ]
        for service in services:
            stack.callback(service.stop)
        bedrock, moto, prefect = services
        wait_http_ok(f"{moto.url}/moto-api/", moto.proc, timeout=60)
        wait_http_ok(f"{prefect.url}/health", prefect.proc, timeout=120)
        self.env = self.base_env | {
            "AWS_ENDPOINT_URL_S3": moto.url,
            "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": bedrock.url,
            "PREFECT_API_URL": prefect.url,
        }
        os.environ.update(self.env)
        self.bedrock = BedrockMeter(bedrock.url)
        self.s3_meter = S3Meter(moto.url, recording)
        self.rss = RssSampler()
        stack.callback(self.rss.close)
        self.cpu = CpuMeter({"bedrock": bedrock.proc.pid, "s3": moto.proc.pid,
                             "prefect": prefect.proc.pid})
        self.photos = PhotoFactory()
        self.store = workdir / "store"
        self.keys, self.prefixes = nesting(args.images, args.rss_images)

    # -- data --------------------------------------------------------------------------

    def s3_client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", config=Config(max_pool_connections=16))

    def fill_bucket(self) -> float:
        started = time.perf_counter()
        s3 = self.s3_client()
        for name in (BUCKET, EMPTY_BUCKET):
            s3.create_bucket(Bucket=name)
        parallel(range(len(self.keys)), lambda i: s3.put_object(
            Bucket=BUCKET, Key=self.keys[i], Body=self.photos.photo(i)))
        self.s3_meter.start()
        return time.perf_counter() - started

    def rewrite(self, indexes: Sequence[int]) -> None:
        """New bytes (and ETags) for some objects: same pixels, another JPEG comment."""
        s3 = self.s3_client()
        parallel(indexes, lambda i: s3.put_object(
            Bucket=BUCKET, Key=self.keys[i], Body=self.photos.photo(i, version=1)))

    # -- measuring ---------------------------------------------------------------------

    def measure(self, name: str, run: Callable[[], tuple[int, int]]) -> Phase:
        """Run ``run`` (→ images indexed, items failed) with every counter reset before."""
        self.bedrock.reset()
        self.s3_meter.reset()
        self.rss.reset()
        self.cpu.reset()
        started = time.perf_counter()
        images, failed = run()
        wall = time.perf_counter() - started
        calls = self.bedrock.read()
        s3 = self.s3_meter.read()
        return Phase(name, round(wall, 4), images, calls["requests"], calls["throttled"],
                     s3["s3_gets"], s3["s3_lists"], round(self.rss.peak_mb, 1), failed,
                     self.cpu.read())

    def best_of(self, name: str, run: Callable[[], tuple[int, int]]) -> Phase:
        repeats = 1 if self.args.quick else REPEATS
        return min((self.measure(name, run) for _ in range(repeats)), key=lambda p: p.wall_s)

    def flow_run(self, bucket: str, prefix: str, store: Path | None = None,
                 concurrency: int | None = None, batch_size: int | None = None,
                 ) -> Callable[[], tuple[int, int]]:
        from flows.ingest_flow import ingest_flow  # imported once the environment is set

        def run() -> tuple[int, int]:
            report = ingest_flow(source=f"s3://{bucket}/{prefix}",
                                 chroma_path=str(store or self.store),
                                 concurrency=concurrency or self.args.concurrency[0],
                                 batch_size=batch_size or self.args.batch_size[0])
            self.last_report = report
            return report.embedded, report.failed

        return run

    # -- subprocesses, run as a user runs them -----------------------------------------

    def cli_ingest(self, source: str, store: Path, env: dict[str, str],
                   measure_rss: bool = False) -> tuple[Any, dict]:
        cmd = [sys.executable, "-m", "flows.ingest", "--source", source,
               "--chroma-path", str(store), "--json"]
        for flag, value in (("--concurrency", self.args.concurrency[0]),
                            ("--batch-size", self.args.batch_size[0])):
            if value is not None:
                cmd += [flag, str(value)]
        child = run_child(cmd, env, cwd=REPO, measure_rss=measure_rss)
        if child.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {child.stderr[-2000:]}")
        return child, json.loads(child.stdout)

    def memory(self) -> list[dict[str, Any]]:
        """First ingests of nested prefixes in fresh subprocesses: peak RSS against N."""
        rows = []
        for size, prefix in sorted(self.prefixes.items()):
            child, report = self.cli_ingest(f"s3://{BUCKET}/{prefix}",
                                            self.workdir / f"store-rss-{size}", self.env,
                                            measure_rss=True)
            rows.append({"images": size, "embedded": report["embedded"],
                         "wall_s": round(child.wall_s, 2),
                         "peak_rss_mb": round(child.peak_rss_mb, 1)})
        return rows

    def prefect_overhead(self) -> dict[str, float]:
        """An empty-prefix CLI run against the server; unless --quick, interpreter and import
        times and the same run in ephemeral mode (fresh and existing Prefect database)."""
        source = f"s3://{EMPTY_BUCKET}/"
        timings = {"cli_empty_with_server_s": min(
            self.cli_ingest(source, self.workdir / "store-cli", self.env)[0].wall_s
            for _ in range(1 if self.args.quick else 2))}
        if self.args.quick:
            return {k: round(v, 3) for k, v in timings.items()}
        python = sys.executable
        timings |= {
            "python_startup_s": run_child([python, "-c", "pass"], self.env).wall_s,
            "import_prefect_s": run_child([python, "-c", "import prefect"], self.env).wall_s,
            "import_flows_ingest_s": run_child([python, "-c", "import flows.ingest"], self.env,
                                               cwd=REPO).wall_s,
            # the CLI's own start-up (its imports run with the collector paused) and exit
            "cli_help_s": run_child([python, "-m", "flows.ingest", "--help"], self.env,
                                    cwd=REPO).wall_s,
        }
        ephemeral = {k: v for k, v in self.env.items() if k != "PREFECT_API_URL"}
        ephemeral["PREFECT_HOME"] = str(self.workdir / "prefect-ephemeral")
        first = self.cli_ingest(source, self.workdir / "store-cli", ephemeral)[0].wall_s
        timings["cli_empty_ephemeral_first_s"] = first  # includes creating Prefect's database
        timings["cli_empty_ephemeral_s"] = self.cli_ingest(
            source, self.workdir / "store-cli", ephemeral)[0].wall_s
        timings["ephemeral_startup_s"] = (timings["cli_empty_ephemeral_s"]
                                          - timings["cli_empty_with_server_s"])
        return {k: round(v, 3) for k, v in timings.items()}


def targets(args: argparse.Namespace, phases: dict[str, Phase], results: dict[str, Any]
            ) -> list[dict[str, Any]]:
    """The issue's targets, each with whether this run's configuration is the one it names."""
    n, q, lat = args.images, args.quota_rps, args.latency_ms
    out: list[dict[str, Any]] = []

    def check(name: str, value: float | None, ok: bool | None, target: str, applies: bool
              ) -> None:
        if value is not None:
            out.append({"target": name, "value": round(value, 4), "goal": target,
                        "applies": applies, "ok": ok})

    first, base = phases.get("first"), phases.get("baseline")
    if first and base:
        speedup = base.wall_s / first.wall_s
        check("first ingest vs baseline (x)", speedup, speedup >= 12, ">= 12",
              not q and lat == 100 and n >= 1000)
    if first and q:
        share = first.images_per_s / q
        check("share of quota achieved", share, share >= 0.9, ">= 0.90", q == 20 and n >= 1000)
        throttled = first.throttled / max(first.bedrock_calls, 1)
        check("throttled share of calls", throttled, throttled <= 0.05, "<= 0.05",
              q == 20 and n >= 1000)
    rerun, empty, changed = phases.get("rerun"), phases.get("empty"), phases.get("changed")
    if rerun:
        check("rerun Bedrock calls + S3 GETs", rerun.bedrock_calls + rerun.s3_gets,
              rerun.bedrock_calls + rerun.s3_gets == 0, "== 0", True)
    if rerun and empty:
        per_object = (rerun.wall_s - empty.wall_s) / n * 1000
        check("rerun cost per listed object (ms)", per_object, per_object <= 0.5, "<= 0.5",
              n >= 4000)
    if rerun and first:
        share = rerun.wall_s / first.wall_s
        check("rerun wall / first ingest wall", share, share <= 0.05, "<= 0.05",
              q == 20 and n >= 1000)
    if changed:
        expected = results["changed_objects"]
        check("changed run: Bedrock calls - changed objects", changed.bedrock_calls - expected,
              changed.bedrock_calls == expected, "== 0", True)
    memory = results.get("memory") or []
    if len(memory) >= 2:
        ratio = memory[-1]["peak_rss_mb"] / memory[0]["peak_rss_mb"]
        check(f"peak RSS N={memory[-1]['images']} / N={memory[0]['images']}", ratio,
              ratio <= 1.25, "<= 1.25", memory[-1]["images"] >= 4 * memory[0]["images"] >= 4000)
    prefect = results.get("prefect") or {}
    if prefect:
        wall = prefect["cli_empty_with_server_s"]
        check("empty-prefix CLI run with a Prefect server (s)", wall, wall <= 3, "<= 3", True)
    return out


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    phases: dict[str, Phase] = {}
    results: dict[str, Any] = {"config": {k: v for k, v in vars(args).items() if k != "out"},
                               "load_before": machine_load()}
    with ExitStack() as stack:
        bench = Bench(args, workdir, stack)
        results["fill_s"] = round(bench.fill_bucket(), 2)
        empty_run = bench.flow_run(EMPTY_BUCKET, "")
        results["first_flow_call_s"] = bench.measure("warm-up", empty_run).wall_s
        wanted = set(args.phases)
        combinations = [(c, b) for c in args.concurrency for b in args.batch_size]
        if len(combinations) > 1:
            for c, b in combinations:
                name = f"first c={c or 'default'} b={b or 'default'}"
                phases[name] = bench.measure(name, bench.flow_run(
                    BUCKET, PREFIX, workdir / f"store-{c}-{b}", c, b))
            wanted = set()
        if "baseline" in wanted:
            phases["baseline"] = bench.measure("baseline", lambda: (notebook_ingest(
                BUCKET, PREFIX, workdir / "baseline-store"), 0))
        if wanted & {"first", "rerun", "changed"}:
            phases["first"] = bench.measure("first", bench.flow_run(BUCKET, PREFIX))
            results["first_report"] = bench.last_report.model_dump(
                mode="json", include={"listed", "new", "embedded", "failed", "billed_images"})
        if "rerun" in wanted:
            phases["empty"] = bench.best_of("empty", empty_run)
            phases["rerun"] = bench.best_of("rerun", bench.flow_run(BUCKET, PREFIX))
        if "changed" in wanted:
            count = max(1, round(args.images * CHANGED_SHARE))
            step = args.images / count
            bench.rewrite([int(i * step) for i in range(count)])
            results["changed_objects"] = count
            phases["changed"] = bench.measure("changed", bench.flow_run(BUCKET, PREFIX))
            results["changed_report"] = bench.last_report.model_dump(
                mode="json", include={"listed", "changed", "unchanged", "embedded", "failed"})
        if "memory" in wanted and args.rss_images:
            results["memory"] = bench.memory()
        if "prefect" in wanted:
            results["prefect"] = bench.prefect_overhead()
    results["phases"] = [p.row() for p in phases.values()]
    results["targets"] = targets(args, phases, results)
    results["load_after"] = machine_load()
    return results


def _listed(values: list[int | None]) -> str:
    return ",".join(str(v or "default") for v in values)


def print_results(results: dict[str, Any]) -> None:
    config = results["config"]
    print(f"\nimgrag ingest benchmark: {config['images']} images, latency {config['latency_ms']}"
          f" ms, quota {config['quota_rps'] or 'none'} rps, concurrency "
          f"{_listed(config['concurrency'])}, batch size {_listed(config['batch_size'])}")
    print(f"load before {results['load_before']}, after {results['load_after']}")
    print(f"bucket filled in {results['fill_s']} s; first flow call (client start) "
          f"{results['first_flow_call_s']} s\n")
    columns = ("name", "wall_s", "images", "images_per_s", "bedrock_calls", "throttled",
               "s3_gets", "s3_lists", "failed", "peak_rss_mb")
    print(format_table(results["phases"], columns))
    print("\nCPU seconds used during each phase, by process")
    print(format_table(results["phases"], ("name", "cpu_self_s", "cpu_bedrock_s", "cpu_s3_s",
                                           "cpu_prefect_s")))
    if results.get("memory"):
        print("\nfirst ingest as a CLI subprocess, by prefix size")
        print(format_table(results["memory"], ("images", "embedded", "wall_s", "peak_rss_mb")))
    if results.get("prefect"):
        print("\nPrefect overhead (subprocess wall times, s)")
        print(format_table([{"measure": k, "value": v} for k, v in results["prefect"].items()],
                           ("measure", "value")))
    print("\ntargets (applies = this run has the configuration the target names)")
    print(format_table(results["targets"], ("target", "value", "goal", "applies", "ok")))


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="objects in the bucket")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="per Bedrock call")
    parser.add_argument("--quota-rps", type=float, default=None, help="Bedrock quota (none)")
    parser.add_argument("--concurrency", type=_int_list, default=[None],
                        help="imgrag --concurrency (default: imgrag's); a list sweeps")
    parser.add_argument("--batch-size", type=_int_list, default=[None],
                        help="imgrag --batch-size (default: imgrag's); a list sweeps")
    parser.add_argument("--rss-images", type=_int_list,
                        default=[], help="e.g. 1000,4000: CLI first ingests of these sizes")
    parser.add_argument("--phases", type=lambda s: s.split(","), default=list(PHASES),
                        help=f"subset of {','.join(PHASES)} (default: all)")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: cheap phases once, no import or ephemeral timings")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if any(n > args.images for n in args.rss_images):
        parser.error("--rss-images sizes must not exceed --images")
    if unknown := set(args.phases) - set(PHASES):
        parser.error(f"unknown phases: {sorted(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="imgrag-bench-ingest-"))
    saved = dict(os.environ)
    try:
        results = run(args, workdir)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_results(results)
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

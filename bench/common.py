"""Shared pieces of the benchmarks: loopback services in subprocesses, synthetic photos, meters.

Everything the benchmarks talk to runs in its own process (the Titan EMULATOR, a moto S3
server, a Prefect API server), so none of it competes with the measured code for the GIL.
Nothing here imports Prefect: callers set the environment first (Prefect reads its settings
when it is imported).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from PIL import Image, ImageDraw

from imgrag.emulators.chroma_server import free_port

BIN = Path(sys.executable).parent


def hermetic_env(home: Path) -> dict[str, str]:
    """The variables every benchmark process runs with: no network, no telemetry, fake AWS."""
    return {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "DO_NOT_TRACK": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }


def clean_environ(extra: dict[str, str]) -> dict[str, str]:
    """``os.environ`` without user AWS/Prefect/imgrag settings, plus ``extra``."""
    drop = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "PREFECT_API_URL", "PREFECT_API_KEY",
            "PYTHONDONTWRITEBYTECODE")  # CLI children start as a user's do: bytecode cached
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("IMGRAG_")}
    env.update(extra)
    return env


def write_results(path: Path | None, results: dict) -> None:
    """Write a benchmark's figures as JSON when ``--out`` was given."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")


def http_json(url: str, method: str = "GET", timeout: float = 5.0) -> object:
    """One loopback request; the body parsed as JSON (None when it is not JSON)."""
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
    try:
        return json.loads(body)
    except ValueError:
        return None


def wait_http_ok(url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Poll ``url`` until it answers 2xx; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if 200 <= response.status < 300:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s")


@dataclass
class Service:
    """A server subprocess on loopback."""

    name: str
    proc: subprocess.Popen
    url: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_fake_bedrock(latency_ms: float, quota_rps: float | None, env: dict[str, str],
                       extra_args: Sequence[str] = ()) -> Service:
    """``python -m imgrag.emulators.bedrock`` with a latency and an optional quota."""
    cmd = [sys.executable, "-m", "imgrag.emulators.bedrock", "--port", "0",
           "--latency-ms", str(latency_ms), *extra_args]
    if quota_rps:
        cmd += ["--quota-rps", str(quota_rps)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    match = re.search(r"listening on (http://\S+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"fake Bedrock did not start: {line!r}")
    return Service("fake-bedrock", proc, match.group(1))


def start_moto(env: dict[str, str], recording: Path) -> Service:
    """``moto_server`` whose request recorder (off until started) logs to ``recording``."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env=env | {"MOTO_RECORDER_FILEPATH": str(recording)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    return Service("moto", proc, url)


def start_prefect_server(env: dict[str, str]) -> Service:
    """``prefect server start`` (no UI) on a free loopback port."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
         "--no-ui", "--analytics-off"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return Service("prefect", proc, f"http://127.0.0.1:{port}/api")


class BedrockMeter:
    """Invoke counters of the Titan emulator (its ``/_emulator`` endpoints)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def reset(self) -> None:
        http_json(f"{self.url}/_emulator/reset", "POST")

    def read(self) -> dict[str, int]:
        stats = http_json(f"{self.url}/_emulator/stats")
        assert isinstance(stats, dict)
        return stats


class S3Meter:
    """Server-side count of S3 requests, from moto's request recorder."""

    def __init__(self, url: str, recording: Path) -> None:
        self.url = url
        self.recording = recording

    def start(self) -> None:
        http_json(f"{self.url}/moto-api/recorder/start-recording", "POST")

    def reset(self) -> None:
        http_json(f"{self.url}/moto-api/recorder/reset-recording", "POST")

    def read(self) -> dict[str, int]:
        """GetObject and ListObjectsV2 requests recorded since the last reset."""
        gets = lists = 0
        if self.recording.exists():
            for line in self.recording.read_text().splitlines():
                entry = json.loads(line)
                path, _, query = entry["url"].partition("://")[2].partition("/")[2].partition("?")
                if entry["method"] != "GET":
                    continue
                if "/" in path.strip("/"):  # path-style /bucket/key: GetObject
                    gets += 1
                elif "list-type=2" in query:
                    lists += 1
        return {"s3_gets": gets, "s3_lists": lists}


class RssSampler:
    """Peak resident memory of this process, sampled in a background thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self._proc = psutil.Process()
        self._interval = interval
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def reset(self) -> None:
        self._peak = self._proc.memory_info().rss

    @property
    def peak_mb(self) -> float:
        return max(self._peak, self._proc.memory_info().rss) / 2**20

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class CpuMeter:
    """CPU seconds (user + system) used by this process and each service, with descendants."""

    def __init__(self, services: dict[str, int]) -> None:
        self._pids = {"self": os.getpid(), **services}
        self._start = self._now()

    @staticmethod
    def _cpu(pid: int, recursive: bool) -> float:
        try:
            proc = psutil.Process(pid)
            procs = [proc, *(proc.children(recursive=True) if recursive else [])]
            return sum(sum(p.cpu_times()[:2]) for p in procs if p.is_running())
        except psutil.Error:
            return 0.0

    def _now(self) -> dict[str, float]:
        return {name: self._cpu(pid, name != "self") for name, pid in self._pids.items()}

    def reset(self) -> None:
        self._start = self._now()

    def read(self) -> dict[str, float]:
        now = self._now()
        return {f"cpu_{k}_s": round(now[k] - self._start[k], 2) for k in now}


@dataclass
class ChildRun:
    """A finished subprocess: its output, wall time and (when measured) peak resident memory."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_mb: float | None = None


def run_child(cmd: Sequence[str], env: dict[str, str], cwd: Path | None = None,
              measure_rss: bool = False) -> ChildRun:
    """Run ``cmd`` to completion; with ``measure_rss``, through the ``bench.maxrss`` launcher."""
    peak_file = None
    if measure_rss:
        fd, peak_file = tempfile.mkstemp(prefix="maxrss-")
        os.close(fd)
        cmd = [sys.executable, "-m", "bench.maxrss", peak_file, "--", *cmd]
    started = time.perf_counter()
    done = subprocess.run(list(cmd), env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    peak = None
    if peak_file is not None:
        text = Path(peak_file).read_text()
        os.unlink(peak_file)
        peak = int(text) / 1024 if text else None
    return ChildRun(done.returncode, done.stdout, done.stderr, wall, peak)


# ----------------------------------------------------------------------- synthetic photos

#: (width, height, share of the objects): mostly phone/web sizes, some 12-megapixel photos.
PHOTO_SIZES = ((640, 480, 0.20), (1280, 960, 0.35), (1920, 1440, 0.35), (4000, 3000, 0.10))
_BASES_PER_SIZE = 6


def photo_size(index: int) -> tuple[int, int]:
    """A stable, well-mixed size for object ``index`` (shares as in PHOTO_SIZES)."""
    point = (zlib.crc32(index.to_bytes(8, "little")) % 1000) / 1000
    for width, height, share in PHOTO_SIZES:
        if point < share:
            return width, height
        point -= share
    return PHOTO_SIZES[-1][:2]


def synthetic_photo(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG: smooth colour field, a few shapes and sensor-like noise."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    image = field.resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1 = x0 + int(rng.integers(width // 20, width // 3))
        y1 = y0 + int(rng.integers(height // 20, height // 3))
        draw.ellipse((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    pixels = np.asarray(image, dtype=np.int16)
    pixels = pixels + rng.integers(-8, 9, (height, width, 1), dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a COM segment after SOI: same pixels, different bytes (and ETag)."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


class PhotoFactory:
    """Unique photo-like JPEGs per object index, from a few generated bases per size."""

    def __init__(self) -> None:
        self._bases: dict[tuple[int, int, int], bytes] = {}
        self._lock = threading.Lock()

    def photo(self, index: int, version: int = 0) -> bytes:
        width, height = photo_size(index)
        key = (width, height, index % _BASES_PER_SIZE)
        with self._lock:
            base = self._bases.get(key)
        if base is None:
            base = synthetic_photo(width, height, seed=hash(key) & 0xFFFF)
            with self._lock:
                base = self._bases.setdefault(key, base)
        return with_comment(base, f"imgrag-bench object {index} version {version}")


def parallel(items: Sequence[int], fn: Callable[[int], object], workers: int = 8) -> None:
    """Run ``fn`` over ``items`` on a small thread pool (re-raising the first error)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(fn, items):
            pass


# ----------------------------------------------------------------------- output


def format_table(rows: Sequence[dict[str, object]], columns: Sequence[str]) -> str:
    """A plain fixed-width table (numbers right-aligned)."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
        return "" if value is None else str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(
            v.rjust(w) if v[:1].isdigit() or v[:1] == "-" else v.ljust(w)
            for v, w in zip(r, widths, strict=True)
        ))
    return "\n".join(lines)


def machine_load() -> dict[str, object]:
    """CPU count and load averages (the machine is shared: say how busy it was)."""
    one, five, fifteen = os.getloadavg()
    return {"cpus": os.cpu_count(), "load_1m": round(one, 2), "load_5m": round(five, 2),
            "load_15m": round(fifteen, 2)}

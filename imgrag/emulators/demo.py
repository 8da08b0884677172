"""The offline demo (``make demo``): a real Prefect server, a moto S3 server and the Bedrock
EMULATOR on loopback, a generated sample bucket, then the real CLIs exactly as a user runs
them against that server:

1. ``python -m flows.ingest --source s3://imgrag-demo/catalog/``  (first ingest)
2. the same again                                                  (nothing to embed)
3. ``python -m flows.query "red" -k 4 --html .demo/red.html``      (hits + a gallery)

The bucket also holds a 6-second clip (green, red, blue scenes): the query finds it at its
red scene's time.

With ``--pgvector`` the index is a PostgreSQL table (pgvector) of a server started from the
pgserver wheel in ``.demo/pgdata`` instead of an embedded Chroma store.

No credentials, no network: AWS endpoints are redirected with AWS_ENDPOINT_URL_S3 and
AWS_ENDPOINT_URL_BEDROCK_RUNTIME, exactly as a user would point boto3 elsewhere. The Prefect
server keeps its database in ``.demo/prefect`` (kept between demos), so ``make ui`` shows the
demo's flow runs and artifacts afterwards.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from PIL import Image, ImageDraw

from imgrag.emulators.chroma_server import free_port

BUCKET = "imgrag-demo"
PREFIX = "catalog/"
PALETTE = {
    "red": (210, 30, 40), "green": (40, 170, 60), "blue": (30, 60, 200),
    "yellow": (240, 210, 40), "purple": (130, 50, 170), "orange": (240, 130, 30),
}
ITEMS = ("shirt", "mug", "sneaker")
CLIP_KEY = f"{PREFIX}promo-clip.mp4"
CLIP_SCENES = (("green", 2), ("red", 2), ("blue", 2))  # colour, seconds
CLIP_SIZE, CLIP_FPS = (160, 120), 10
SERVER_BUDGET_S = 240  # a first start migrates a new database: ~15 s idle, far more when busy
UI_PORT = 4200
# Server loops the demo has no use for (no schedules, workers, automations or leases):
# off, they take ~15% less CPU and wall time from a start on a busy 2-core machine.
IDLE_SERVICES = ("SCHEDULER", "LATE_RUNS", "FOREMAN", "CANCELLATION_CLEANUP",
                 "PAUSE_EXPIRATIONS", "REPOSSESSOR", "TRIGGERS", "DB_VACUUM")


class StepFailed(Exception):
    """A demo step failed (its own output, or the server log, says why)."""


def sample_image(colour: tuple[int, int, int], variant: int) -> bytes:
    """A photo-like JPEG: a light gradient background and a large object of one colour."""
    image = Image.linear_gradient("L").resize((640, 480)).convert("RGB")
    image = Image.blend(image, Image.new("RGB", image.size, (235, 235, 235)), 0.8)
    draw = ImageDraw.Draw(image)
    box = (120 + 20 * variant, 80, 520 - 20 * variant, 420)
    if variant == 0:
        draw.rectangle(box, fill=colour)
    elif variant == 1:
        draw.ellipse(box, fill=colour)
    else:
        draw.polygon([(320, 60), (540, 420), (100, 420)], fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def sample_clip() -> bytes:
    """A small H.264 MP4 of ``CLIP_SCENES``: one colour each, a moving bar so frames differ."""
    import av
    import numpy as np

    width, height = CLIP_SIZE
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "clip.mp4")
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=CLIP_FPS)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            index = 0
            for name, seconds in CLIP_SCENES:
                for _ in range(seconds * CLIP_FPS):
                    pixels = np.empty((height, width, 3), np.uint8)
                    pixels[:] = PALETTE[name]
                    pixels[-12:, : (index * 4) % width] = 235
                    frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                    container.mux(stream.encode(frame))
                    index += 1
            container.mux(stream.encode())
        return path.read_bytes()


def demo_env(workdir: Path) -> dict[str, str]:
    """The environment of every demo process: hermetic, the demo's own Prefect home."""
    env = dict(os.environ)
    env.update({
        "PREFECT_HOME": str(workdir / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": "demo",
        "AWS_SECRET_ACCESS_KEY": "demo",
        "AWS_DEFAULT_REGION": "us-east-1",
        "IMGRAG_CHROMA_PATH": str(workdir / "chroma_images_db"),
    })
    for name in ("AWS_PROFILE", "PREFECT_API_URL", "PREFECT_PROFILE", "IMGRAG_CHROMA_URL",
                 "IMGRAG_STORE_URL"):
        env.pop(name, None)
    return env


def prefect_command() -> list[str]:
    """``prefect`` of this interpreter's environment."""
    return [sys.executable, "-m", "prefect"]


@contextmanager
def prefect_server(env: dict[str, str], log_path: Path
                   ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``prefect server start`` on a free loopback port (no UI: ``make ui`` serves that);
    yields its API URL and process as soon as it is started; stops it on exit."""
    port = free_port()
    lean = env | {f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in IDLE_SERVICES}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*prefect_command(), "server", "start", "--host", "127.0.0.1", "--port", str(port),
             "--no-ui", "--analytics-off"],
            env=lean, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        yield f"http://127.0.0.1:{port}/api", proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_healthy(api_url: str, proc: subprocess.Popen[bytes], log_path: Path,
                 budget_s: float = SERVER_BUDGET_S) -> float:
    """Poll the server's health endpoint; the seconds it took. StepFailed when the server
    exits or the budget runs out."""
    print(f"waiting for the Prefect server at {api_url} (its first start creates the "
          f"database; allowing up to {budget_s:.0f} s) ...", flush=True)
    started = time.monotonic()
    while time.monotonic() - started < budget_s:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        if proc.poll() is not None:
            raise StepFailed(f"the Prefect server exited with status {proc.returncode} "
                             f"before it was healthy (see {log_path})")
        time.sleep(0.25)
    raise StepFailed(f"the Prefect server was not healthy after {budget_s:.0f} s "
                     f"(see {log_path})")


def run(step: str, args: list[str], env: dict[str, str]) -> float:
    """Run one step as a user would; its wall time. StepFailed when it exits non-zero."""
    print(f"\n=== {step}\n$ python {' '.join(args)}", flush=True)
    started = time.monotonic()
    code = subprocess.run([sys.executable, *args], env=env, stdin=subprocess.DEVNULL).returncode
    if code != 0:
        raise StepFailed(f"step {step!r} failed (python {' '.join(args)} exited {code})")
    took = time.monotonic() - started
    print(f"--- {step}: {took:.1f} s", flush=True)
    return took


def fill_bucket(s3_url: str) -> None:
    """The sample bucket: 18 product photos, a short video, one corrupt upload and a text
    file."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1",
                      aws_access_key_id="demo", aws_secret_access_key="demo")
    s3.create_bucket(Bucket=BUCKET)
    for name, rgb in PALETTE.items():
        for variant, item in enumerate(ITEMS):
            s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}{name}-{item}.jpg",
                          Body=sample_image(rgb, variant))
    s3.put_object(Bucket=BUCKET, Key=CLIP_KEY, Body=sample_clip())
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}broken-upload.jpg", Body=b"<html>oops")
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}README.txt", Body=b"not an image")


def reset_workdir(workdir: Path) -> None:
    """A fresh store and gallery; the Prefect home (the UI's history) is kept."""
    workdir.mkdir(exist_ok=True)
    for entry in workdir.iterdir():
        if entry.name != "prefect":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgrag.emulators.demo")
    parser.add_argument("--pgvector", action="store_true",
                        help="index into PostgreSQL with pgvector (a local pgserver)")
    pgvector = parser.parse_args(argv).pgvector
    from moto.server import ThreadedMotoServer

    from imgrag.emulators.bedrock import FakeBedrock
    from imgrag.emulators.postgres import PostgresServer, with_table

    began = time.monotonic()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    workdir = Path(".demo").resolve()
    reset_workdir(workdir)
    env = demo_env(workdir)
    server_log = workdir / "prefect-server.log"
    gallery = workdir / "red.html"
    s3_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    try:
        with ExitStack() as services:
            if pgvector:
                postgres = services.enter_context(PostgresServer(workdir / "pgdata"))
                env["IMGRAG_STORE_URL"] = with_table(postgres.url, "images")
                print(f"PostgreSQL with pgvector (pgserver) at {env['IMGRAG_STORE_URL']}")
            api_url, proc = services.enter_context(prefect_server(env, server_log))
            bedrock = services.enter_context(FakeBedrock())
            s3_server.start()  # the emulators start while the Prefect server imports
            host, port = s3_server.get_host_and_port()
            s3_url = f"http://{host}:{port}"
            fill_bucket(s3_url)
            print(f"S3 emulator (moto) at {s3_url}, bucket {BUCKET} with "
                  f"{len(PALETTE) * len(ITEMS)} images, a 6 s video (green, red, blue "
                  f"scenes), 1 corrupt file and 1 text file")
            print(f"Bedrock EMULATOR (not a model: colour-based vectors) at {bedrock.url}")
            env |= {"AWS_ENDPOINT_URL_S3": s3_url,
                    "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": bedrock.url}
            waited = wait_healthy(api_url, proc, server_log)
            print(f"Prefect server healthy after {waited:.1f} s; every step below runs "
                  f"against it (PREFECT_API_URL={api_url})")
            # the runs' "View at" links point at the UI that `make ui` serves afterwards
            env |= {"PREFECT_API_URL": api_url, "PREFECT_UI_URL": f"http://127.0.0.1:{UI_PORT}"}
            source = f"s3://{BUCKET}/{PREFIX}"
            run("first ingest", ["-m", "flows.ingest", "--source", source], env)
            print(f"Bedrock image calls: {bedrock.stats.image_calls}")
            bedrock.reset_stats()
            run("re-run, nothing changed", ["-m", "flows.ingest", "--source", source], env)
            print(f"Bedrock calls during the re-run: {bedrock.stats.requests}")
            run("query", ["-m", "flows.query", "red", "-k", "4", "--html", str(gallery)], env)
    except StepFailed as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    finally:
        s3_server.stop()
    store = "PostgreSQL data" if pgvector else "Chroma store"
    print(f"\nDemo done in {time.monotonic() - began:.0f} s. State ({store}, Prefect "
          f"home) is in {workdir}.\n"
          f"  gallery of the query's hits:  {gallery.as_uri()}\n"
          f"  the runs and their artifacts: make ui  (then open http://127.0.0.1:{UI_PORT})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

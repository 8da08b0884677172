"""The offline demo (``make demo``): a moto S3 server and the Bedrock EMULATOR on loopback, a
generated sample bucket, then the real CLIs exactly as a user runs them:

1. ``python -m flows.ingest --source s3://imgrag-demo/catalog/``  (first ingest)
2. the same again                                                  (nothing to embed)
3. ``python -m flows.query "red" -k 3``

No credentials, no network: AWS endpoints are redirected with AWS_ENDPOINT_URL_S3 and
AWS_ENDPOINT_URL_BEDROCK_RUNTIME, exactly as a user would point boto3 elsewhere.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
from PIL import Image, ImageDraw

from imgrag.emulators.bedrock import FakeBedrock

BUCKET = "imgrag-demo"
PREFIX = "catalog/"
PALETTE = {
    "red": (210, 30, 40), "green": (40, 170, 60), "blue": (30, 60, 200),
    "yellow": (240, 210, 40), "purple": (130, 50, 170), "orange": (240, 130, 30),
}
ITEMS = ("shirt", "mug", "sneaker")


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


def demo_env(workdir: Path, s3_url: str, bedrock_url: str) -> dict[str, str]:
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
        "AWS_ENDPOINT_URL_S3": s3_url,
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": bedrock_url,
        "IMGRAG_CHROMA_PATH": str(workdir / "chroma_images_db"),
    })
    env.pop("AWS_PROFILE", None)
    env.pop("PREFECT_API_URL", None)
    return env


class StepFailed(Exception):
    """A demo step's command exited non-zero (its own output says why)."""


def run(step: str, args: list[str], env: dict[str, str]) -> None:
    """Run one step as a user would; StepFailed when it exits non-zero."""
    print(f"\n=== {step}\n$ python {' '.join(args)}", flush=True)
    code = subprocess.run([sys.executable, *args], env=env).returncode
    if code != 0:
        raise StepFailed(f"step {step!r} failed (python {' '.join(args)} exited {code})")


def main() -> int:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    workdir = Path(".demo").resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    s3_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3_server.start()
    host, port = s3_server.get_host_and_port()
    s3_url = f"http://{host}:{port}"
    try:
        with FakeBedrock() as bedrock:
            env = demo_env(workdir, s3_url, bedrock.url)
            s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1",
                              aws_access_key_id="demo", aws_secret_access_key="demo")
            s3.create_bucket(Bucket=BUCKET)
            for name, rgb in PALETTE.items():
                for variant, item in enumerate(ITEMS):
                    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}{name}-{item}.jpg",
                                  Body=sample_image(rgb, variant))
            s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}broken-upload.jpg", Body=b"<html>oops")
            s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}README.txt", Body=b"not an image")
            print(f"S3 emulator (moto) at {s3_url}, bucket {BUCKET} with "
                  f"{len(PALETTE) * len(ITEMS)} images, 1 corrupt file and 1 text file")
            print(f"Bedrock EMULATOR (not a model: colour-based vectors) at {bedrock.url}")

            source = f"s3://{BUCKET}/{PREFIX}"
            run("first ingest", ["-m", "flows.ingest", "--source", source], env)
            print(f"Bedrock image calls so far: {bedrock.stats.image_calls}")
            bedrock.reset_stats()
            run("re-run, nothing changed", ["-m", "flows.ingest", "--source", source], env)
            print(f"Bedrock calls during the re-run: {bedrock.stats.requests}")
            run("query", ["-m", "flows.query", "red", "-k", "3"], env)
    except StepFailed as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    finally:
        s3_server.stop()
    print(f"\nDemo state (Chroma store, Prefect home) is in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

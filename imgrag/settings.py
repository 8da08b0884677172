"""Every knob of imgrag in one pydantic-settings model (env prefix ``IMGRAG_``, ``.env`` read)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from imgrag.embedders.models import DEFAULT_MODEL_ID, model_spec
from imgrag.normalize import MAX_SOURCE_PIXELS

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_TABLE_RE = re.compile(r"^[a-z_][a-z0-9_]{2,62}$")  # an unquoted PostgreSQL identifier


class Settings(BaseSettings):
    """Settings shared by ingestion and query; CLI flags override environment values."""

    model_config = SettingsConfigDict(
        env_prefix="IMGRAG_", env_file=".env", extra="ignore", validate_default=True
    )

    # Store
    store_url: str | None = Field(
        None, description="chroma://PATH, chroma+http(s)://HOST[:PORT] or"
        " postgresql://USER@HOST[:PORT]/DB?table=NAME (pgvector)."
    )
    chroma_path: Path = Field(Path("chroma_images_db"), description="Embedded Chroma directory.")
    chroma_url: str | None = Field(None, description="Chroma server URL (client-server mode).")
    chroma_auth_token: SecretStr | None = Field(None, description="Token for the Chroma server.")
    collection: str = Field("images", min_length=3, max_length=512)
    store_write_attempts: int = Field(
        6, ge=1, le=20, description="Attempts per store write (backoff from 0.5 s, doubling)."
    )
    state_dir: Path | None = Field(
        None, description="Ledger and local hash cache; default: inside the embedded store."
    )

    # Embedding model
    model: str = Field(
        DEFAULT_MODEL_ID, description="Bedrock model id or short name (titan, nova, cohere)."
    )
    dim: int | None = Field(None, description="Embedding length; default: the model's.")
    region: str | None = Field(None, description="AWS region; default: boto3's resolution.")
    bedrock_max_attempts: int = Field(8, ge=1, le=20, description="Attempts per Bedrock call.")
    bedrock_timeout_s: float = Field(
        60.0, gt=0, le=900, description="Read timeout of one Bedrock request attempt, seconds."
    )

    # Ingestion
    inventory: str | None = Field(
        None, description="s3://…/manifest.json of an S3 Inventory (CSV) report of the"
        " source bucket, read instead of listing it."
    )
    # Defaults from bench.ingest (L=100 ms, no quota): 32 threads keep 2 cores busy while
    # calls wait; 128-object batches cut Prefect's per-task cost 4x. See bench/ingest.py.
    batch_size: int = Field(128, ge=1, le=5000)
    concurrency: int = Field(32, ge=1, le=256, description="Parallel downloads/embeds.")
    max_side: int = Field(2048, ge=64, le=4096, description="Longest side sent to the model"
                          " (and never above the model's own limit).")
    s3_location: bool = Field(
        False, description="Let a model that reads S3 itself (Nova) fetch S3 images by"
        " s3Location: nothing downloaded or normalized here; width and height stay unknown.")
    max_object_bytes: int = Field(
        100 * 1024 * 1024, ge=1, description="Objects larger than this are not downloaded."
    )
    max_source_pixels: int = Field(
        MAX_SOURCE_PIXELS, ge=1, le=MAX_SOURCE_PIXELS,
        description="Declared pixel count above which a file is refused unread (at most"
        " Pillow's own decompression-bomb limit, 89.5 MP).",
    )

    # Videos (imgrag.video): frames kept at scene changes, at most max_interval apart
    video: bool = Field(True, description="Index videos as frames; off: only images.")
    video_max_interval_s: float = Field(
        10.0, gt=0, le=3600, description="Longest gap between two kept frames, seconds.")
    video_max_frames: int = Field(120, ge=1, le=5000, description="Frames kept per video.")
    video_sample_step_s: float = Field(
        0.5, gt=0, le=60, description="Scene-change sampling step, seconds.")
    video_scene_threshold: float = Field(
        0.12, gt=0, le=1, description="Mean pixel change (0..1) between two samples that"
        " counts as a scene change.")
    video_max_pixels: int = Field(
        8192 * 4320, ge=1, le=MAX_SOURCE_PIXELS, description="Largest frame (width x"
        " height) decoded: bounds the decoder's memory.")
    video_max_duration_s: float = Field(
        4 * 3600, gt=0, description="Longest video decoded, seconds.")
    video_decode_timeout_s: float = Field(
        300.0, gt=0, le=3600, description="Wall-clock budget to decode one video, seconds.")

    ocr: bool = Field(False, description="Read the text in images at ingest (imgrag[ocr]).")
    ocr_threads: int = Field(
        1, ge=1, le=64, description="Images OCR'd at once: the cores OCR may use."
    )

    # Cost estimate (USD); default: the model's on-demand list price
    price_per_image: float | None = Field(None, ge=0)
    price_per_1k_text_tokens: float | None = Field(None, ge=0)

    # Bedrock batch inference (imgrag.batch)
    mode: Literal["on-demand", "batch", "auto"] = Field(
        "on-demand", description="How images are embedded: InvokeModel calls, a batch"
        " inference job, or a job when a run has at least batch_auto_threshold images.")
    batch_auto_threshold: int = Field(
        5000, ge=100, description="Images to embed from which --mode auto uses a batch job.")
    batch_role_arn: str | None = Field(
        None, description="Service role Bedrock assumes to read and write the staging prefix.")
    batch_staging_uri: str | None = Field(
        None, description="s3://BUCKET/PREFIX for batch input and output files.")
    batch_price_factor: float = Field(0.5, ge=0, description="Batch price / on-demand price.")
    batch_poll_s: float = Field(60.0, gt=0, description="Seconds between job status checks.")
    batch_wait_s: float = Field(
        24 * 3600.0, ge=0, description="How long a run waits for its job (0: submit and"
        " return; a later run collects it).")

    # OpenAI list price of the default vision model (gpt-5.4-mini), USD per 1M tokens
    openai_price_per_1m_input_tokens: float = Field(0.75, ge=0)
    openai_price_per_1m_output_tokens: float = Field(4.5, ge=0)

    # Deletion guard: a larger share of a scope's records gone from one listing is withheld
    max_delete_fraction: float = Field(
        0.5, ge=0, le=1, description="Share of a scope's records (above 10) one run may"
        " delete without --allow-mass-delete."
    )

    # Query
    artifact_thumbnails: bool = Field(
        True, description="Inline thumbnails of the first hits in a query run's artifact"
        " (each original is fetched once, then served from the thumbnail cache)."
    )

    @field_validator("chroma_url")
    @classmethod
    def _url_is_scheme_host_port(cls, value: str | None) -> str | None:
        """``http(s)://host[:port]`` only; the messages never echo the value (it may hold
        a password)."""
        if not value:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("chroma_url must start with http:// or https://")
        url = urlsplit(value)
        if "@" in url.netloc:
            raise ValueError("chroma_url must not carry credentials; set"
                             " IMGRAG_CHROMA_AUTH_TOKEN instead")
        if url.path not in ("", "/") or url.query or url.fragment:
            raise ValueError("chroma_url must be http(s)://host[:port] (no path or query)")
        try:
            url.port  # noqa: B018 - parses the port
        except ValueError:
            raise ValueError("chroma_url has an invalid port") from None
        if not url.hostname:
            raise ValueError("chroma_url has no host")
        return value

    @model_validator(mode="after")
    def _model_facts(self) -> Settings:
        """The model's id, default dimension and prices, where not set explicitly."""
        spec = model_spec(self.model)
        self.model = spec.model_id
        if self.dim is None:
            self.dim = spec.default_dim
        elif self.dim not in spec.dims:
            raise ValueError(f"dim {self.dim} is not one of {spec.name}'s {spec.dims}")
        if self.price_per_image is None:
            self.price_per_image = spec.price_per_image
        if self.price_per_1k_text_tokens is None:
            self.price_per_1k_text_tokens = spec.price_per_1k_text_tokens
        if self.mode == "batch" and not spec.batch_inference:
            raise ValueError(f"{spec.name} does not support Bedrock batch inference;"
                             " use mode on-demand")
        if self.mode != "on-demand" and not (self.batch_role_arn and self.batch_staging_uri):
            raise ValueError(f"mode {self.mode} needs IMGRAG_BATCH_ROLE_ARN and"
                             " IMGRAG_BATCH_STAGING_URI (s3://BUCKET/PREFIX)")
        return self

    @property
    def model_id(self) -> str:
        """The Bedrock model id of ``model``."""
        return self.model

    @model_validator(mode="after")
    def _apply_store_url(self) -> Settings:
        """A ``chroma…://`` URL sets ``chroma_path`` or ``chroma_url``; a PostgreSQL URL
        names the table (its ``table`` parameter, default ``collection``). Messages never
        echo the URL (it may hold a user name)."""
        url = self.store_url
        if not url:
            return self
        if url.startswith(("chroma+http://", "chroma+https://")):
            self.chroma_url = self._url_is_scheme_host_port(url.removeprefix("chroma+"))
        elif url.startswith("chroma://"):
            if url != "chroma://":
                self.chroma_path = Path(url.removeprefix("chroma://"))
        elif url.startswith(POSTGRES_SCHEMES):
            parts = urlsplit(url)
            if parts.password:
                raise ValueError("the store URL must not carry a password; use PGPASSWORD"
                                 " or ~/.pgpass (libpq reads them)")
            table = dict(parse_qsl(parts.query)).get("table", self.collection)
            if not _TABLE_RE.match(table):
                raise ValueError("the table name must be 3-63 lower-case letters, digits or"
                                 " underscores, not starting with a digit")
            self.collection = table
        else:
            raise ValueError("store_url must start with chroma://, chroma+http(s):// or"
                             " postgresql://")
        return self

    @property
    def store_kind(self) -> Literal["chroma", "pgvector"]:
        """Which store implementation the settings select."""
        url = self.store_url or ""
        return "pgvector" if url.startswith(POSTGRES_SCHEMES) else "chroma"

    @property
    def postgres_conninfo(self) -> str:
        """The PostgreSQL URL as libpq takes it: the store URL without ``table``."""
        parts = urlsplit(self.store_url or "")
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "table"])
        return urlunsplit(parts._replace(query=query))

    @property
    def postgres_address(self) -> str:
        """The PostgreSQL table as messages may show it (no user name, no parameters)."""
        parts = urlsplit(self.store_url or "")
        port = f":{parts.port}" if parts.port else ""
        return f"postgresql://{parts.hostname or 'localhost'}{port}{parts.path}/{self.collection}"

    @property
    def resolved_state_dir(self) -> Path:
        """Where the failure ledger and local caches live."""
        if self.state_dir is not None:
            return self.state_dir
        if self.chroma_url or self.store_kind == "pgvector":
            return Path(".imgrag")
        return self.chroma_path

    def public_dict(self) -> dict[str, Any]:
        """Plain, hashable-friendly data without secrets: safe as Prefect task input."""
        return self.model_dump(mode="json", exclude={"chroma_auth_token"}, exclude_none=True)

    @classmethod
    def from_overrides(cls, **overrides: Any) -> Settings:
        """Settings from the environment, with non-None overrides (CLI flags) on top."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})

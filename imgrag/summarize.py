"""Vision summaries of search hits by an OpenAI (or OpenAI-compatible) chat model.

The top hits are sent with the query as downscaled JPEG ``data:`` URLs, each after its
label S1…Sn (no URIs or key names leave the machine); the model is asked to cite them as
[S1]…, and :attr:`Summary.sources` maps every label back to its record URI.

Configuration is the openai client's own: ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``,
``OPENAI_ORG_ID``…, and its retry policy (``max_retries``, 2 by default, honouring
``Retry-After``); no second retry loop is added here. ``openai`` is the optional extra
``imgrag[summaries]`` and is imported only when a summary is requested.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from imgrag.errors import ImgragError

if TYPE_CHECKING:  # a CLI's --help reads the defaults below: they load nothing heavy
    from imgrag.records import Hit
    from imgrag.settings import Settings
    from imgrag.thumbnails import Thumbnail, ThumbnailLoader

DEFAULT_OPENAI_MODEL = "gpt-5.4-mini"
"""A current small vision-capable model (openai 3.57's model list; not deprecated there)."""
DEFAULT_SUMMARY_IMAGES = 4
SUMMARY_IMAGE_SIDE = 512  # OpenAI's "low" detail works on a 512 px image
SYSTEM_PROMPT = (
    "You summarize image search results. The user gives a search query and images labelled "
    "S1, S2, … in order of relevance. In a few sentences, say what the images show in "
    "relation to the query, and which ones do not match it. Cite images only by their "
    "labels in square brackets, e.g. [S1] or [S2][S3]. Describe only what is visible."
)
_CITATION = re.compile(r"\bS(\d+)\b")


class SummaryError(ImgragError):
    """A summary could not be produced; the message is one line a user can act on."""


class SummarySource(BaseModel):
    """One image sent to the model: its label in the summary and its record id (URI)."""

    label: str
    id: str


class Summary(BaseModel):
    """The model's answer and the label → URI map of the images it was shown."""

    model: str
    query: str
    text: str
    sources: list[SummarySource]

    @property
    def cited(self) -> list[str]:
        """Labels the text actually cites, in order of first mention."""
        known = {s.label for s in self.sources}
        seen: list[str] = []
        for match in _CITATION.finditer(self.text):
            label = f"S{match.group(1)}"
            if label in known and label not in seen:
                seen.append(label)
        return seen

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` shape: model, text, sources (label, id) and the cited labels."""
        return {"model": self.model, "text": self.text,
                "sources": [s.model_dump() for s in self.sources], "cited": self.cited}

    def __str__(self) -> str:
        lines = [self.text, "", "Sources:"]
        lines += [f"  {s.label}  {s.id}" for s in self.sources]
        return "\n".join(lines)


def build_messages(query: str, images: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Chat messages: the instructions, then the query and each (label, JPEG data URL)."""
    content: list[dict[str, Any]] = [
        {"type": "text", "text": f"Search query: {query}\n"
                                 f"{len(images)} images follow, most relevant first."}
    ]
    for label, url in images:
        content.append({"type": "text", "text": label})
        content.append({"type": "image_url", "image_url": {"url": url, "detail": "low"}})
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


def make_openai_client(**options: Any) -> Any:
    """``openai.OpenAI(**options)`` from the standard environment; SummaryError if unusable."""
    try:
        import openai
    except ImportError:
        raise SummaryError(
            "summaries and re-ranking need the openai package: pip install 'imgrag[summaries]'"
        ) from None
    try:
        return openai.OpenAI(**options)
    except openai.OpenAIError:
        raise SummaryError(
            "summaries and re-ranking need an OpenAI API key: set OPENAI_API_KEY (and "
            "OPENAI_BASE_URL for an OpenAI-compatible server)"
        ) from None


def _api_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping) and body.get("message"):
        return " ".join(str(body["message"]).split())
    return " ".join(str(getattr(exc, "message", exc)).split())


def openai_error(exc: Exception, model: str, client: Any) -> SummaryError:
    """One line for an openai exception; never a traceback."""
    import openai

    if isinstance(exc, openai.RateLimitError):
        text = f"OpenAI rate limit or quota exceeded (429): {_api_message(exc)}"
    elif isinstance(exc, openai.AuthenticationError):
        text = f"OpenAI rejected the API key (401): {_api_message(exc)}"
    elif isinstance(exc, openai.NotFoundError):
        text = f"OpenAI model {model!r} not available (404): {_api_message(exc)}"
    elif isinstance(exc, openai.BadRequestError):
        text = f"OpenAI rejected the request (400): {_api_message(exc)}"
    elif isinstance(exc, openai.APIStatusError):
        text = f"OpenAI error {exc.status_code}: {_api_message(exc)}"
    elif isinstance(exc, openai.APITimeoutError):
        text = "OpenAI request timed out"
    elif isinstance(exc, openai.APIConnectionError):
        text = f"cannot reach OpenAI at {getattr(client, 'base_url', '?')}"
    else:
        text = f"OpenAI error: {type(exc).__name__}: {_api_message(exc)}"
    return SummaryError(text)


def summarize_images(
    query: str,
    hits: Sequence[Hit],
    thumbs: Sequence[Thumbnail],
    *,
    model: str = DEFAULT_OPENAI_MODEL,
    client: Any = None,
) -> Summary:
    """Ask ``model`` about the hits whose thumbnails loaded; labels follow rank order."""
    shown = [(hit, thumb.data_url) for hit, thumb in zip(hits, thumbs, strict=True)
             if thumb.data_url]
    if not shown:
        raise SummaryError("no hit image could be loaded to summarize")
    sources = [SummarySource(label=f"S{i}", id=hit.id) for i, (hit, _) in enumerate(shown, 1)]
    images = [(s.label, url) for s, (_, url) in zip(sources, shown, strict=True)]
    client = client or make_openai_client()
    import openai  # present: the client above is one

    try:
        completion = client.chat.completions.create(
            model=model, messages=build_messages(query, images)
        )
    except openai.OpenAIError as exc:
        raise openai_error(exc, model, client) from None
    choice = completion.choices[0] if completion.choices else None
    text = (choice.message.content or "").strip() if choice else ""
    if not text:
        reason = choice.finish_reason if choice else "no choices"
        raise SummaryError(f"OpenAI returned no text (finish_reason={reason})")
    return Summary(model=completion.model or model, query=query, text=text, sources=sources)


def summarize_hits(
    query: str,
    hits: Sequence[Hit],
    settings: Settings,
    *,
    n_images: int = DEFAULT_SUMMARY_IMAGES,
    model: str = DEFAULT_OPENAI_MODEL,
    client: Any = None,
    loader: ThumbnailLoader | None = None,
) -> Summary:
    """Summarize the top ``n_images`` hits: load their images, downscale, ask the model.

    ``loader`` (default: one for ``settings``) says where images come from; share one with
    a gallery of the same hits so each image is fetched once.
    """
    if n_images < 1:
        raise SummaryError("the number of summary images must be at least 1")
    if not hits:
        raise SummaryError("no hits to summarize")
    client = client or make_openai_client()  # fail on a missing key before any download
    top = list(hits[:n_images])
    if loader is None:
        from imgrag.thumbnails import ThumbnailLoader

        loader = ThumbnailLoader(settings)
    thumbs = loader.load(top, SUMMARY_IMAGE_SIDE)
    return summarize_images(query, top, thumbs, model=model, client=client)

"""Errors that stop a whole run (as opposed to per-item failures, which are recorded)."""


class ImgragError(Exception):
    """A run cannot proceed; the message is one line a user can act on."""


class ConfigError(ImgragError):
    """Invalid settings or command-line input."""


class SourceError(ImgragError):
    """The image source (bucket, folder) cannot be listed or reached."""


class StoreError(ImgragError):
    """The vector store cannot be opened, or holds another vector space."""


class StoreLockedError(StoreError):
    """Another process is writing to the same embedded store."""


class EmbeddingError(ImgragError):
    """The embedding service cannot be used at all (credentials, access, model)."""

"""``gs://BUCKET/PATH`` URLs as the command line takes them: parsed and checked, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigurationError
from .naming import validate_bucket_name, validate_object_name

__all__ = ["GSURL", "parse_gs_url"]


@dataclass(frozen=True)
class GSURL:
    """A bucket and a path in it (an object name or a prefix, without a trailing slash)."""

    bucket: str
    path: str

    def child(self, name: str) -> str:
        """The object name ``name`` under this path."""
        return f"{self.path}/{name}" if self.path else name

    def __str__(self) -> str:
        return f"gs://{self.bucket}/{self.path}" if self.path else f"gs://{self.bucket}"


def parse_gs_url(url: str) -> GSURL:
    """``gs://bucket/some/path`` -> GSURL; a clear ConfigurationError for anything else."""
    if not isinstance(url, str) or not url.startswith("gs://"):
        raise ConfigurationError(f"{url!r} is not a gs:// URL (expected gs://BUCKET/PREFIX)")
    bucket, _, path = url[len("gs://") :].partition("/")
    if not bucket:
        raise ConfigurationError(f"{url!r} names no bucket (expected gs://BUCKET/PREFIX)")
    validate_bucket_name(bucket)
    path = path.strip("/")
    if path:
        validate_object_name(path)
    return GSURL(bucket, path)

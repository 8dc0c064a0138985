"""Validation of bucket and object names, before anything is sent.

GCS answers a bad name with a 400 that says little, after a round trip; a log handler would
meet it only at its first upload, on a background thread. Checking here moves the error to
the line of code that made it. Rules: https://cloud.google.com/storage/docs/buckets#naming and
https://cloud.google.com/storage/docs/objects#naming
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from datetime import datetime, timezone

from .errors import ConfigurationError

__all__ = [
    "DEFAULT_TEMPLATE",
    "ObjectNameTemplate",
    "safe_field",
    "validate_bucket_name",
    "validate_object_name",
]

_BUCKET_COMPONENT = re.compile(r"[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MAX_OBJECT_NAME_BYTES = 1024


def validate_bucket_name(bucket: str) -> str:
    """Return ``bucket`` unchanged, or raise :class:`ConfigurationError` saying what is wrong."""
    if not isinstance(bucket, str):
        raise ConfigurationError(f"bucket name must be a str, not {type(bucket).__name__}")
    if bucket.startswith("gs://"):
        raise ConfigurationError(
            f"bucket name {bucket!r} includes the gs:// scheme; pass the bare bucket name"
        )
    too_long = len(bucket) > 222 or (len(bucket) > 63 and "." not in bucket)
    if len(bucket) < 3 or too_long:
        raise ConfigurationError(
            f"bucket name {bucket!r} must be 3 to 63 characters (222 with dots)"
        )
    components = bucket.split(".")
    if any(len(part) > 63 or not _BUCKET_COMPONENT.fullmatch(part) for part in components):
        raise ConfigurationError(
            f"bucket name {bucket!r} may hold only lowercase letters, digits, '-', '_' and "
            "'.', and must start and end with a letter or digit"
        )
    if _IPV4.fullmatch(bucket):
        raise ConfigurationError(f"bucket name {bucket!r} must not look like an IP address")
    if bucket.startswith("goog") or "google" in bucket or "g00gle" in bucket:
        raise ConfigurationError(
            f"bucket name {bucket!r} must not start with 'goog' or contain 'google'"
        )
    return bucket


def validate_object_name(name: str) -> str:
    """Return ``name`` unchanged, or raise :class:`ConfigurationError` saying what is wrong."""
    if not isinstance(name, str):
        raise ConfigurationError(f"object name must be a str, not {type(name).__name__}")
    if not name:
        raise ConfigurationError("object name must not be empty")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(
            f"object name {name!r} is not valid Unicode (it holds a lone surrogate)"
        ) from None
    if len(encoded) > _MAX_OBJECT_NAME_BYTES:
        raise ConfigurationError(
            f"object name is {len(encoded)} bytes in UTF-8; GCS allows at most "
            f"{_MAX_OBJECT_NAME_BYTES}"
        )
    if _CONTROL.search(name):
        raise ConfigurationError(
            f"object name {name!r} holds a control character (such as a newline)"
        )
    if name in (".", "..") or any(part in (".", "..") for part in name.split("/")):
        raise ConfigurationError(f"object name {name!r} must not have '.' or '..' segments")
    if name.startswith(".well-known/acme-challenge/"):
        raise ConfigurationError(
            f"object name {name!r} may not start with '.well-known/acme-challenge/'"
        )
    return name


# -- object-name templates for rotating handlers -------------------------------------------

TEMPLATE_FIELDS = ("prefix", "start", "host", "pid", "instance", "seq", "stream")
DEFAULT_TEMPLATE = "{prefix}{start:%Y/%m/%d/%H%M%S}-{host}-{pid}-{instance}-{seq:05d}.log"
_SAMPLE_START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
_UNSAFE_IN_FIELD = re.compile(r"[\x00-\x1f\x7f-\x9f/\\]")


def safe_field(value: str) -> str:
    """A host or stream name made safe to sit inside one path segment of an object name."""
    cleaned = _UNSAFE_IN_FIELD.sub("-", value).strip(".") or "-"
    return cleaned


@dataclass(frozen=True)
class ObjectNameTemplate:
    """How a rotating writer names its objects: one ``str.format`` template, checked once.

    Fields: ``prefix``, ``start`` (the window's start, a UTC ``datetime``), ``host``, ``pid``,
    ``instance`` (a random token per handler and process: two containers that share a
    hostname and pid 1 still name their objects apart),
    ``seq`` (a per-process counter), ``stream`` (a name the user gives). ``seq`` is required:
    it is what keeps two objects of one process apart, and what a writer bumps when a name
    is already taken by another process.
    """

    template: str
    prefix: str = ""
    fields: frozenset[str] = frozenset()

    @classmethod
    def parse(
        cls, template: str, *, prefix: str = "", needs_start: bool = True
    ) -> ObjectNameTemplate:
        """Check ``template`` and ``prefix`` now, so a bad one fails at construction.

        ``needs_start``: time rotation is on, so the name must show its window.
        """
        if not isinstance(template, str) or not template:
            raise ConfigurationError("name_template must be a non-empty str")
        if not isinstance(prefix, str):
            raise ConfigurationError(f"prefix must be a str, not {type(prefix).__name__}")
        fields: set[str] = set()
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ConfigurationError(f"name_template {template!r} is malformed: {exc}") from None
        for _, field, _, _ in parsed:
            if field is None:
                continue
            if field not in TEMPLATE_FIELDS:
                raise ConfigurationError(
                    f"name_template {template!r} uses {{{field}}}; the fields are "
                    + ", ".join(f"{{{name}}}" for name in TEMPLATE_FIELDS)
                )
            fields.add(field)
        if "seq" not in fields:
            raise ConfigurationError(
                f"name_template {template!r} lacks {{seq}}: without it two objects of one "
                "process would get the same name"
            )
        if needs_start and "start" not in fields:
            raise ConfigurationError(
                f"name_template {template!r} lacks {{start}}, which names the time window "
                "(or set rotate_seconds=None)"
            )
        result = cls(template=template, prefix=prefix, fields=frozenset(fields))
        result.render(
            start=_SAMPLE_START, seq=0, host="host", pid=1, stream="log", instance="a1b2c3"
        )
        return result

    def render(
        self, *, start: datetime, seq: int, host: str, pid: int, stream: str, instance: str
    ) -> str:
        """The object name for these values, validated; ConfigurationError if it is bad."""
        try:
            name = self.template.format(
                prefix=self.prefix,
                start=start,
                host=safe_field(host),
                pid=pid,
                instance=instance,
                seq=seq,
                stream=safe_field(stream),
            )
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"name_template {self.template!r} cannot be rendered: {exc}"
            ) from None
        try:
            return validate_object_name(name)
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"name_template {self.template!r} with prefix {self.prefix!r} makes a bad "
                f"object name: {exc}"
            ) from None

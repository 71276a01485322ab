"""Capability grants (network, secrets, env, config, filesystem) and their matching rules.

Default deny: an empty `Grants()` gives a module no network, no env, no files and no secrets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["FsGrant", "Grants", "NetPattern", "is_loopback"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_RE = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?$|^\[[0-9a-f:.]+\]$")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class NetPattern:
    """One parsed `Grants.net` entry: ``host``, ``host:port``, ``scheme://host[:port]``,
    ``*.example.com`` (any subdomain, not the bare domain). Without a scheme it means https
    (port 443 unless given); plain http is granted only as ``http://host[:port]``."""

    scheme: str | None
    host: str
    port: int | None

    @classmethod
    def parse(cls, text: str) -> NetPattern:
        """Parse a pattern; raises ValueError naming the accepted forms."""
        raw = text.strip().lower()
        scheme: str | None = None
        if "://" in raw:
            scheme, raw = raw.split("://", 1)
            if scheme not in _DEFAULT_PORTS:
                raise ValueError(f"net grant {text!r}: scheme must be http or https")
        raw = raw.rstrip("/")
        host, port = raw, None
        if raw.count(":") == 1 or (raw.startswith("[") and "]:" in raw):
            host, _, port_text = raw.rpartition(":")
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"net grant {text!r}: port must be 1-65535")
            port = int(port_text)
        if not _HOST_RE.match(host) or "/" in host:
            raise ValueError(
                f"net grant {text!r}: expected host, host:port, https://host or *.example.com"
            )
        # URLs name an IPv6 host in brackets, but the parsed URL's host has none: compare
        # bare addresses, or an IPv6 grant never matches.
        return cls(scheme, host.strip("[]"), port)

    @property
    def effective_scheme(self) -> str:
        """A pattern without a scheme means https: plain http must be granted by name
        (`http://host:port`), or a bare grant sent secrets in clear text to any port."""
        return self.scheme or "https"

    @property
    def effective_port(self) -> int:
        return self.port or _DEFAULT_PORTS[self.effective_scheme]

    def matches(self, scheme: str, host: str, port: int) -> bool:
        """Whether a request to scheme://host:port is allowed by this pattern."""
        if scheme != self.effective_scheme or port != self.effective_port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host

    def covers(self, other: NetPattern) -> bool:
        """Whether everything `other` allows is also allowed by this pattern."""
        if (other.effective_scheme, other.effective_port) != (
            self.effective_scheme,
            self.effective_port,
        ):
            return False
        if self.host.startswith("*."):
            return other.host.endswith(self.host[1:])
        return other.host == self.host


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: the only hosts a secret may reach over plain http."""
    return host == "localhost" or host == "::1" or host.startswith("127.")


def split_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL; raises ValueError otherwise."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"only absolute http:// or https:// URLs are allowed, got {url!r}")
    return scheme, parts.hostname.lower(), parts.port or _DEFAULT_PORTS[scheme]


class FsGrant(BaseModel):
    """A host directory preopened for the module at `guest` (an absolute guest path).

    ``mode="ro"`` opens it read-only: writes, creates, renames and deletes fail inside the guest.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(min_length=1)
    guest: str = Field(min_length=1)
    mode: Literal["ro", "rw"] = "ro"

    @field_validator("guest")
    @classmethod
    def _guest_is_absolute(cls, value: str) -> str:
        if not value.startswith("/") or ".." in value.split("/"):
            raise ValueError(f"guest path {value!r} must be absolute and free of '..'")
        return value


class Grants(BaseModel):
    """What a module may reach beyond its own memory. The default grants nothing.

    Attributes:
        net: host patterns `loom.http_request` may contact (see `NetPattern`).
        secrets: secret names whose values (passed to `run(secrets=...)`) the host substitutes
            for ``{{secret:NAME}}`` placeholders in requests to granted hosts; the guest only ever
            sees the placeholder.
        env: host environment variable names copied into the guest's WASI environment.
        config: plain values the guest reads with `loom.config_get`.
        fs: directories preopened with ro/rw access.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    net: list[str] = Field(default_factory=list)
    secrets: list[str] = Field(default_factory=list)
    env: list[str] = Field(default_factory=list)
    config: dict[str, str] = Field(default_factory=dict)
    fs: list[FsGrant] = Field(default_factory=list)

    @field_validator("net")
    @classmethod
    def _net_patterns_parse(cls, value: list[str]) -> list[str]:
        for pattern in value:
            NetPattern.parse(pattern)
        return value

    @field_validator("secrets", "env")
    @classmethod
    def _names_are_identifiers(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a valid name (letters, digits, underscore)")
        return value

    def net_patterns(self) -> list[NetPattern]:
        """The parsed `net` entries."""
        return [NetPattern.parse(p) for p in self.net]

    def allows_url(self, url: str) -> bool:
        """Whether `loom.http_request` may contact `url`."""
        try:
            scheme, host, port = split_url(url)
        except ValueError:
            return False
        return any(p.matches(scheme, host, port) for p in self.net_patterns())

    def widened_from(self, previous: Grants) -> list[str]:
        """Human-readable list of what `self` grants beyond `previous`; [] if not wider.

        Config values are data, not capabilities, so config changes never count as widening.
        """
        widened: list[str] = []
        old_net = previous.net_patterns()
        for text, pattern in zip(self.net, self.net_patterns(), strict=True):
            if not any(old.covers(pattern) for old in old_net):
                widened.append(f"net: +{text}")
        widened += [f"secrets: +{n}" for n in self.secrets if n not in previous.secrets]
        widened += [f"env: +{n}" for n in self.env if n not in previous.env]
        old_fs = {(g.host, g.guest): g.mode for g in previous.fs}
        for grant in self.fs:
            before = old_fs.get((grant.host, grant.guest))
            if before is None:
                widened.append(f"fs: +{grant.host} -> {grant.guest} ({grant.mode})")
            elif before == "ro" and grant.mode == "rw":
                widened.append(f"fs: {grant.host} -> {grant.guest} ro -> rw")
        return widened

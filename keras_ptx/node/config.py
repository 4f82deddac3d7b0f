"""What a node is told: its own address, who may call it, where results go, its model.

``NodeConfig`` is built by ``bin/serve-dicom`` from its options; :func:`parse_destination`
reads ``AE@host:port``. Every check that can fail on the user's input raises
:class:`NodeError` with the option's name.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from keras_ptx.errors import UserError

AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")     # 16 chars, no backslash (PS3.5 AE)


class NodeError(UserError):
    """A node setting that cannot work (bad AE title, address, TLS files, model)."""


@dataclass(frozen=True)
class Destination:
    """A C-STORE peer: the called AE title and its address."""
    ae_title: str
    host: str
    port: int

    def __str__(self):
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Tls:
    """Certificate and key the node presents, and the CA its peers' certificates must chain
    to (both directions: the node requires client certificates and checks servers')."""
    cert: str
    key: str
    ca: str


MAX_SECONDS = 7 * 24 * 3600             # the longest wait a node setting may ask for


@dataclass(frozen=True)
class NodeConfig:
    ae_title: str
    port: int
    spool: str
    allowed: tuple[str, ...]            # calling AE titles let in; empty only with allow_any
    destination: Destination | None = None
    stow_url: str | None = None
    host: str = "127.0.0.1"
    quiet_seconds: float = 10.0         # a study is answered once no instance arrived for this long
    retention_seconds: float = 0.0      # how long an answered study's spool is kept
    kinds: tuple[str, ...] = ("seg", "sr")
    tls: Tls | None = None
    max_backoff: float = 60.0           # longest wait between two attempts to send
    allow_any: bool = False

    def __post_init__(self):
        check_ae_title(self.ae_title, "--ae-title")
        for title in self.allowed:
            check_ae_title(title, "--allow")
        if not self.allowed and not self.allow_any:
            raise NodeError("no --allow AE title: name the PACS' calling AE titles (or pass "
                            "--allow-any to let every caller in)")
        if (self.destination is None) == (self.stow_url is None):
            raise NodeError("give exactly one of --send-to AE@host:port and --stow URL")
        for option, seconds, least in (("--quiet", self.quiet_seconds, 0.0),
                                       ("--retention", self.retention_seconds, 0.0),
                                       ("--max-backoff", self.max_backoff, 0.001)):
            if not (math.isfinite(seconds) and least <= seconds <= MAX_SECONDS):
                raise NodeError(f"{option} {seconds:g}: seconds from {least:g} to "
                                f"{MAX_SECONDS:g} (a week)")
        unknown = set(self.kinds) - {"seg", "sr", "sc"}
        if unknown or not self.kinds:
            raise NodeError(f"--objects {','.join(self.kinds)}: choose from seg, sr, sc")


def check_ae_title(title: str, option: str) -> None:
    if not AE_TITLE.match(title) or not title.strip():
        raise NodeError(f"{option} {title!r}: an AE title is 1-16 printable ASCII characters "
                        "without a backslash")


def parse_destination(text: str) -> Destination:
    """``AE@host:port`` -> :class:`Destination`."""
    match = re.fullmatch(r"([^@]+)@(\[[^\]]+\]|[^:]+):(\d{1,5})", text.strip())
    if not match or not 0 < int(match.group(3)) < 65536:
        raise NodeError(f"--send-to {text!r}: expected AE@host:port, e.g. PACS@10.0.0.5:104")
    check_ae_title(match.group(1), "--send-to")
    return Destination(match.group(1), match.group(2).strip("[]"), int(match.group(3)))

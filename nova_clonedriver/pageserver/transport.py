"""How a node gets a remote generation's metadata and chunks: pluggable.

Transports are stevedore plugins in the namespace
``nova_clonedriver.pageserver.transports``, chosen by the scheme of the
origin address a generation is attached from:

``peer://host:port`` (or plain ``host:port``)
    the origin node's page service, over mutual TLS (peer.py).
``local:///path/to/store``
    the origin's snapshot store on a file system this node mounts too
    (shared instance storage): chunks are read from its files.

Whatever the transport, the node caches what it gets, checks memory chunks
against their bless-time checksums and records a peer reference at the
origin. A transport for an object store would add one more plugin.
"""

from __future__ import annotations

import abc
import dataclasses
import ssl
from typing import Any

from stevedore import driver

NAMESPACE = "nova_clonedriver.pageserver.transports"
DEFAULT_SCHEME = "peer"


class Refused(Exception):
    """The origin answered, and refused (unknown generation, not opened,
    wrong access key)."""


class Unavailable(Exception):
    """The origin could not be reached within the fetch timeout."""


@dataclasses.dataclass(frozen=True)
class Opened:
    """The origin's answer to OPEN."""
    generation: dict[str, Any]  # its generation.json
    file_sizes: list[int]  # by FETCH file number


@dataclasses.dataclass(frozen=True)
class Context:
    """What every transport may need from the page service that loads it."""
    node: str  # this node's name: the peer reference it is known by
    ssl_context: ssl.SSLContext
    timeout_s: float
    max_inflight: int


class Transport(abc.ABC):
    def __init__(self, location: str, context: Context) -> None:
        """``location``: the origin address without its scheme."""
        self.location = location
        self.context = context

    @property
    @abc.abstractmethod
    def address(self) -> str:
        """The origin address, as generations record it."""

    @abc.abstractmethod
    async def open(self, generation_id: str, clones: list[str], key: str) -> Opened:
        """Record that this node holds ``clones`` of the generation.

        :param key: the generation's access key (Generation.access_key).
        :raises Refused: unknown generation, or not the right key.
        :raises Unavailable: the origin does not answer."""

    @abc.abstractmethod
    async def fetch(self, generation_id: str, file_number: int,
                    chunks: list[int]) -> dict[int, bytes | None]:
        """The chunks' bytes (``None``: all zeros)."""

    @abc.abstractmethod
    async def release(self, generation_id: str) -> None:
        """This node holds no clone of the generation any more."""

    @abc.abstractmethod
    async def working_set(self, generation_id: str) -> list[int]:
        """The recorded working set (empty if none yet)."""

    @abc.abstractmethod
    async def record_working_set(self, generation_id: str, chunks: list[int]) -> None:
        """Record the working set unless one is recorded already."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Let go of connections or files."""


def load(origin: str, context: Context) -> Transport:
    """The transport for ``origin`` (``scheme://location``, or a bare
    ``host:port`` for a peer)."""
    scheme, separator, location = origin.partition("://")
    if not separator:
        scheme, location = DEFAULT_SCHEME, origin
    try:
        plugin = driver.DriverManager(NAMESPACE, scheme).driver
    except Exception as exc:  # stevedore: no such plugin, or it failed to import
        raise ValueError(f"no page service transport {scheme!r} for {origin!r}") from exc
    return plugin(location, context)

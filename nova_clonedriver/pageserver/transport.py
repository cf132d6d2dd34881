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

from nova_clonedriver.engine import store as store_mod
from nova_clonedriver.pageserver import objectstore

NAMESPACE = "nova_clonedriver.pageserver.transports"
# A chunk's bytes as a transport got them (received into a bytearray of its
# own, or read into one: never copied again).
Chunk = bytes | bytearray
DEFAULT_SCHEME = "peer"


class Refused(Exception):
    """The origin answered, and refused (unknown generation, not opened,
    wrong access key)."""


class Unavailable(Exception):
    """The origin could not be reached within the fetch timeout."""


class Malformed(Exception):
    """The other side sent something the protocol does not allow."""


@dataclasses.dataclass(frozen=True)
class Opened:
    """The origin's answer to OPEN."""

    generation: store_mod.Generation  # as the origin has it (no directory)
    file_sizes: list[int]  # by FETCH file number
    # Where the origin published the generation's chunks, and the key that
    # opens them (objectstore.py); or whether it is publishing it still.
    object_store: dict[str, Any] | None = None
    object_store_pending: bool = False

    @classmethod
    def from_json(cls, reply: Any) -> Opened:
        """From the JSON an origin sends; raises Malformed."""
        try:
            generation = store_mod.Generation.from_json(reply["generation"])
            file_sizes = reply["file_sizes"]
        except (KeyError, TypeError, ValueError) as exc:
            raise Malformed(f"bad OPEN answer: {exc}") from None
        if not isinstance(file_sizes, list) or not all(
            isinstance(n, int) and n >= 0 for n in file_sizes
        ):
            raise Malformed("bad OPEN answer: file sizes are not byte counts")
        offered = reply.get("object_store")
        object_store = objectstore.offer_from_json(offered)
        if offered is not None and object_store is None:
            raise Malformed("bad OPEN answer: the object store offer is not one")
        return cls(generation, file_sizes, object_store, reply.get("object_store_pending") is True)


def chunk_list(value: object) -> list[int]:
    """A list of chunk numbers an origin sent (a working set); raises
    Malformed if it is not one."""
    if not isinstance(value, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value
    ):
        raise Malformed("a chunk list holds chunk numbers")
    return value


@dataclasses.dataclass(frozen=True)
class Context:
    """What every transport may need from the page service that loads it."""

    node: str  # this node's name: the peer reference it is known by
    ssl_context: ssl.SSLContext
    timeout_s: float
    max_inflight: int
    connections: int = 1  # to each origin, where the transport has connections


class Transport(abc.ABC):
    """How one node reaches one origin. Every coroutine may raise
    Unavailable (the origin did not answer within ``context.timeout_s``);
    those that name a generation raise Refused when the origin says no
    (unknown generation, not opened by this node, wrong key), and those that
    return what the origin sent raise Malformed when it is not what the
    protocol allows. The caller checks memory chunks against their
    checksums; a transport need not."""

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
        """Record at the origin that this node holds ``clones`` of the
        generation (an empty list: none yet, or none any more).

        :param key: the generation's access key (Generation.access_key).
        :returns: the generation's metadata and file sizes.
        :raises Refused: unknown generation, or not the right key."""

    @abc.abstractmethod
    async def fetch(
        self, generation_id: str, file_number: int, chunks: list[int]
    ) -> dict[int, Chunk | None]:
        """Each of ``chunks`` of FETCH file ``file_number`` (protocol.py).

        :returns: chunk -> its bytes, ``None`` for a chunk of zeros; every
            asked chunk is a key.
        :raises Refused: the node has not opened the generation."""

    @abc.abstractmethod
    async def release(self, generation_id: str) -> None:
        """Tell the origin this node holds no clone of the generation any
        more (it may then delete it)."""

    @abc.abstractmethod
    async def working_set(self, generation_id: str) -> list[int]:
        """:returns: the memory chunks of the recorded working set, in the
        order first read (empty if none is recorded yet)."""

    @abc.abstractmethod
    async def record_working_set(self, generation_id: str, chunks: list[int]) -> None:
        """Record ``chunks`` as the working set unless one is recorded
        already (the first node's clones define it)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Let go of connections or files; never raises."""

    def wants_open(self, generation_id: str) -> bool:
        """Whether an OPEN (which the registry repeats while this is true)
        would tell more than the last one: e.g. where the origin has
        published the generation by now."""
        return False


def load(origin: str, context: Context) -> Transport:
    """The transport for ``origin`` (``scheme://location``, or a bare
    ``host:port`` for a peer)."""
    scheme, separator, location = origin.partition("://")
    if not separator:
        scheme, location = DEFAULT_SCHEME, origin
    try:
        manager: driver.DriverManager[type[Transport]] = driver.DriverManager(NAMESPACE, scheme)
    except Exception as exc:  # stevedore: no such plugin, or it failed to import
        raise ValueError(f"no page service transport {scheme!r} for {origin!r}") from exc
    plugin = manager.driver
    if not (isinstance(plugin, type) and issubclass(plugin, Transport)):
        raise ValueError(f"page service transport {scheme!r} is not a Transport")
    return plugin(location, context)

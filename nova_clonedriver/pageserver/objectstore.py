"""Generations published to an object store the cloud already runs.

An origin whose page service has ``[pageserver] object_store`` set puts the
chunks of each generation blessed on it into the store once (publish.py),
and tells peers that OPEN the generation with its access key where they
are and the key that opens them. Peers then get chunks from the store
rather than from the origin (objectfetch.py), so that the origin's link and
CPU do not bound a burst across many hosts, and clones carry on when the
origin host's page service is gone.

The origin stays the authority: the store holds each chunk sealed with
AES-256-GCM under a key made for the generation, which only the origin
hands out, to peers it admits (OPEN, access key); memory chunks are still
checked against their bless-time SHA-256. A node with credentials for the
store but not the key gets ciphertext; a chunk changed in the store fails
to open (and its checksum), and is fetched from the origin instead.

Stores are stevedore plugins in the namespace
``nova_clonedriver.pageserver.object_stores``: ``swift`` (swift.py); a
Ceph RADOS plugin would be the same four operations on a pool.
"""

from __future__ import annotations

import abc
import os
import struct
from typing import Any

from cryptography.hazmat.primitives.ciphers import aead
from oslo_config import cfg
from stevedore import driver

NAMESPACE = "nova_clonedriver.pageserver.object_stores"
KEY_BYTES = 32
_NONCE = struct.Struct("!IQ")  # file number, chunk: unique under a generation's key


class NotFound(LookupError):
    """No such object (or container)."""


class StoreError(RuntimeError):
    """The store refused or failed a request."""


class ObjectStore(abc.ABC):
    """Blocking operations (the page service calls them from threads of
    its own). Containers hold one generation's objects each."""

    name: str = ""

    @abc.abstractmethod
    def __init__(self, conf: cfg.ConfigOpts) -> None:
        """Configured from the page service's options; ValueError if they
        do not say how to reach the store."""

    @abc.abstractmethod
    def create_container(self, container: str) -> None:
        """Make it (nothing if it exists); StoreError."""

    @abc.abstractmethod
    def put(self, container: str, name: str, data: bytes) -> None:
        """Store (or replace) an object; StoreError."""

    @abc.abstractmethod
    def get(self, container: str, name: str) -> bytes:
        """An object's bytes; NotFound, StoreError."""

    @abc.abstractmethod
    def delete_container(self, container: str) -> None:
        """Remove a container and every object in it (nothing if it does
        not exist); StoreError."""


def load(name: str, conf: cfg.ConfigOpts) -> ObjectStore:
    """The store plugin ``name``, configured from ``conf``; ValueError if
    there is no such plugin."""
    try:
        manager: driver.DriverManager[type[ObjectStore]] = driver.DriverManager(NAMESPACE, name)
    except Exception as exc:  # stevedore: no such plugin, or it failed to import
        raise ValueError(f"no object store {name!r} for the page service: {exc}") from exc
    plugin = manager.driver
    if not (isinstance(plugin, type) and issubclass(plugin, ObjectStore)):
        raise ValueError(f"object store {name!r} is not an ObjectStore")
    store: ObjectStore = plugin(conf)
    return store


def new_key() -> str:
    return os.urandom(KEY_BYTES).hex()


def object_name(file_number: int, chunk: int) -> str:
    return f"{file_number}/{chunk:08d}"


def _aad(generation_id: str, file_number: int, chunk: int) -> bytes:
    """What a sealed chunk is bound to: moved to another place, it fails."""
    return f"{generation_id}/{file_number}/{chunk}".encode()


def seal(
    key: str, generation_id: str, file_number: int, chunk: int, data: bytes | bytearray
) -> bytes:
    return aead.AESGCM(bytes.fromhex(key)).encrypt(
        _NONCE.pack(file_number, chunk), data, _aad(generation_id, file_number, chunk)
    )


def unseal(key: str, generation_id: str, file_number: int, chunk: int, sealed: bytes) -> bytes:
    """The chunk's bytes; ValueError if it is not what was sealed there."""
    try:
        return aead.AESGCM(bytes.fromhex(key)).decrypt(
            _NONCE.pack(file_number, chunk), sealed, _aad(generation_id, file_number, chunk)
        )
    except Exception as exc:  # cryptography's InvalidTag
        raise ValueError(
            f"chunk {chunk} of file {file_number} in the store does not open: {exc!r}"
        ) from None


def offer_from_json(data: Any) -> dict[str, Any] | None:
    """An origin's object store section of an OPEN answer, checked; None
    for one that does not say where and how to read."""
    if not isinstance(data, dict):
        return None
    zero_chunks = data.get("zero_chunks", {})
    if not (
        isinstance(data.get("store"), str)
        and isinstance(data.get("container"), str)
        and isinstance(data.get("key"), str)
        and len(data["key"]) == 2 * KEY_BYTES
        and isinstance(zero_chunks, dict)
        and all(
            isinstance(k, str)
            and k.isdigit()
            and isinstance(v, list)
            and all(isinstance(c, int) for c in v)
            for k, v in zero_chunks.items()
        )
    ):
        return None
    return data

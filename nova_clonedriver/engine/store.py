"""The on-disk snapshot store: generations and the clones that reference them.

Everything lives in files so that it survives the process that wrote it:
a generation is a directory (``generations/<id>``) that appears by an atomic
rename once complete, and each clone's reference is one small file in it
(``references/<clone uuid>.json``), written before the clone starts and
removed after it is gone. The reference count is the number of those files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import shutil
import tempfile
from typing import Any
from typing import TypeVar

GENERATION_FILE = "generation.json"
MEMORY_IMAGE_FILE = "memory.img"
DEVICE_STREAM_FILE = "device.stream"
REFERENCES_DIR = "references"
PEERS_DIR = "peers"


Record = TypeVar("Record")


class GenerationNotFound(LookupError):
    pass


class GenerationInUse(RuntimeError):
    pass


@dataclasses.dataclass
class Generation:
    id: str
    source_domain: str
    source_uuid: str
    created_at: str
    memory_bytes: int
    vcpus: int
    machine_type: str
    main_block: str
    chunk_size_bytes: int
    chunks: list[str | None]
    device_stream_sha256: str
    disks: list[dict[str, str]]  # target, format, base (relative to directory)
    domain_xml: str
    pause_ms: float
    has_genid: bool
    # What the caller bound the generation to at bless (the nova driver:
    # its live image or forked server, and the owner project); the engine
    # keeps it and never interprets it.
    bound_to: dict[str, str] = dataclasses.field(default_factory=dict)
    # The secret a peer node must present to OPEN the generation: only
    # those who may launch its clones learn it (see doc/source/security.rst).
    access_key: str = ""
    # The master ran qemu-guest-agent: launch sets each clone's clock and
    # hostname through it; and, when its kernel ignores the VM generation
    # ID, reseeds the clone's RNG (see engine/guestagent.py).
    guest_agent: bool = False
    agent_reseeds_rng: bool = False
    # Empty for a generation blessed on this node; for one presented here by
    # the page service, the address of the origin node's page service.
    origin: str = ""
    directory: str = ""

    @property
    def memory_image(self) -> str:
        return os.path.join(self.directory, MEMORY_IMAGE_FILE)

    @property
    def device_stream(self) -> str:
        return os.path.join(self.directory, DEVICE_STREAM_FILE)

    def admits(self, key: str) -> bool:
        """Whether ``key`` is this generation's access key (compared in
        constant time; a generation without one admits nobody)."""
        return bool(self.access_key) and hmac.compare_digest(
            key.encode(), self.access_key.encode()
        )

    def disk_base(self, disk: dict[str, str]) -> str:
        return os.path.join(self.directory, disk["base"])

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["directory"]
        return data

    @classmethod
    def from_json(cls, data: object, directory: str = "") -> Generation:
        """The generation ``to_json`` gave; raises ValueError for anything
        else (a damaged generation.json, a peer's bad answer)."""
        if not isinstance(data, dict):
            raise ValueError("generation metadata is not a JSON object")
        fields = [f for f in dataclasses.fields(cls) if f.name != "directory"]
        required = {
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        unknown = set(data) - {f.name for f in fields}
        missing = required - set(data)
        if unknown or missing:
            raise ValueError(
                "generation metadata "
                + (
                    f"lacks {', '.join(sorted(missing))}"
                    if missing
                    else f"has unknown keys {', '.join(sorted(unknown))}"
                )
            )
        return cls(directory=directory, **data)


@dataclasses.dataclass
class CloneReference:
    uuid: str
    name: str
    generation: str
    directory: str
    created_at: str
    overlays: dict[str, str]
    mac_addresses: list[str]
    started: bool = False  # False while a launch is still creating the clone
    caller_managed: bool = False  # see launch.CloneSpec


@dataclasses.dataclass
class PeerReference:
    """Another node's page service holds clones of a generation of this one
    (one file per node, rewritten as its clones come and go)."""

    node: str
    generation: str
    clones: list[str]
    updated_at: str


def write_json_atomic(path: str, data: Any, mode: int = 0o644) -> None:
    """Readers see the old file or the new one, whole. Each writer has a
    temporary file of its own: clones of one generation starting at once
    all write its ``verified.json``."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(path) + ".")
    try:
        os.fchmod(fd, mode)
        with open(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_records(directory: str, record: type[Record]) -> list[Record]:
    """Every ``*.json`` of a directory (none if it does not exist) as a record."""
    if not os.path.isdir(directory):
        return []
    records = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json"):
            try:
                with open(os.path.join(directory, name)) as f:
                    records.append(record(**json.load(f)))
            except FileNotFoundError:
                continue  # dropped meanwhile (a clone deleted in parallel)
    return records


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_traversable_dir(path: str) -> None:
    """``path`` and its missing parents, mode 0711: QEMU (an unprivileged
    user) must reach the files below it, but not list them."""
    os.makedirs(path, mode=0o711, exist_ok=True)
    os.chmod(path, 0o711)


class SnapshotStore:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.generations_dir = os.path.join(state_dir, "generations")
        self.clones_dir = os.path.join(state_dir, "clones")
        for path in (state_dir, self.generations_dir, self.clones_dir):
            make_traversable_dir(path)

    def new_generation_dir(self, generation_id: str) -> str:
        """A private directory to build a generation in; see publish(). What
        a build of the same generation left when its process died goes."""
        path = os.path.join(self.generations_dir, f".partial-{generation_id}")
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(os.path.join(path, REFERENCES_DIR))
        os.chmod(path, 0o711)
        return path

    def publish(self, generation: Generation, partial_dir: str) -> None:
        # Root's alone: it holds the generation's access key.
        write_json_atomic(
            os.path.join(partial_dir, GENERATION_FILE), generation.to_json(), mode=0o600
        )
        final = os.path.join(self.generations_dir, generation.id)
        os.rename(partial_dir, final)
        generation.directory = final

    def discard_partial(self, partial_dir: str) -> None:
        shutil.rmtree(partial_dir, ignore_errors=True)

    def generation_ids(self) -> list[str]:
        return sorted(
            name for name in os.listdir(self.generations_dir) if not name.startswith(".")
        )

    def load(self, generation_id: str) -> Generation:
        """The generation whose id is or starts with ``generation_id``."""
        matches = [g for g in self.generation_ids() if g.startswith(generation_id)]
        if not generation_id or len(matches) != 1:
            raise GenerationNotFound(
                f"no snapshot generation {generation_id!r}"
                if not matches
                else f"snapshot id {generation_id!r} is ambiguous: {', '.join(matches)}"
            )
        directory = os.path.join(self.generations_dir, matches[0])
        try:
            with open(os.path.join(directory, GENERATION_FILE)) as f:
                return Generation.from_json(json.load(f), directory)
        except (OSError, ValueError) as exc:
            raise GenerationNotFound(
                f"snapshot generation {matches[0]} is damaged: {exc}"
            ) from exc

    def add_reference(self, generation: Generation, ref: CloneReference) -> None:
        write_json_atomic(self._reference_path(generation, ref.uuid), dataclasses.asdict(ref))

    def drop_reference(self, generation: Generation, clone_uuid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._reference_path(generation, clone_uuid))

    def references(self, generation: Generation) -> list[CloneReference]:
        return _read_records(os.path.join(generation.directory, REFERENCES_DIR), CloneReference)

    def set_peer_reference(self, generation: Generation, ref: PeerReference) -> None:
        directory = os.path.join(generation.directory, PEERS_DIR)
        os.makedirs(directory, exist_ok=True)
        write_json_atomic(os.path.join(directory, f"{ref.node}.json"), dataclasses.asdict(ref))

    def drop_peer_reference(self, generation: Generation, node: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(generation.directory, PEERS_DIR, f"{node}.json"))

    def peer_references(self, generation: Generation) -> list[PeerReference]:
        return _read_records(os.path.join(generation.directory, PEERS_DIR), PeerReference)

    def remove_generation(self, generation: Generation) -> None:
        if self.references(generation):
            raise GenerationInUse(f"snapshot {generation.id} still has clones")
        peers = self.peer_references(generation)
        if peers:
            raise GenerationInUse(
                f"snapshot {generation.id} still has clones on " + ", ".join(p.node for p in peers)
            )
        # Rename first so a crash half-way never leaves a half generation
        # that looks whole.
        doomed = os.path.join(self.generations_dir, f".discard-{generation.id}")
        os.rename(generation.directory, doomed)
        shutil.rmtree(doomed)

    def clone_dir(self, clone_uuid: str) -> str:
        # Short: unix socket paths of consoles and channels live in it, and
        # those may not exceed 107 bytes.
        return os.path.join(self.clones_dir, clone_uuid.replace("-", "")[:16])

    def _reference_path(self, generation: Generation, clone_uuid: str) -> str:
        return os.path.join(generation.directory, REFERENCES_DIR, f"{clone_uuid}.json")

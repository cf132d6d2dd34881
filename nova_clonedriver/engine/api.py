"""CloneEngine: the engine's public API (used by nova-clone and the nova driver)."""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import datetime
import logging
import os
from typing import Any

import libvirt

from nova_clonedriver.engine import bless as bless_mod
from nova_clonedriver.engine import hostmem
from nova_clonedriver.engine import launch as launch_mod
from nova_clonedriver.engine import memimage
from nova_clonedriver.engine import store as store_mod

LOG = logging.getLogger(__name__)

BlessError = bless_mod.BlessError
BlessOptions = bless_mod.BlessOptions
current_top = bless_mod.current_top
NoGenerationID = bless_mod.NoGenerationID
NoFreshRandomness = bless_mod.NoFreshRandomness
LaunchError = launch_mod.LaunchError
Clone = launch_mod.Clone
CloneSpec = launch_mod.CloneSpec
LaunchOptions = launch_mod.LaunchOptions
Generation = store_mod.Generation
GenerationNotFound = store_mod.GenerationNotFound
GenerationInUse = store_mod.GenerationInUse


LAUNCH_GRACE_S = 600


def age_s(iso_time: str) -> float:
    """Seconds since ``iso_time`` (a ``created_at`` of the store)."""
    created = datetime.datetime.fromisoformat(iso_time)
    return (datetime.datetime.now(datetime.timezone.utc) - created).total_seconds()


class CloneNotFound(LookupError):
    pass


class CloneEngine:
    """Bless running domains and launch, list, measure and remove clones.

    :param conn: an open libvirt connection (read-write).
    :param state_dir: the node's snapshot store.
    """

    def __init__(
        self,
        conn: libvirt.virConnect,
        state_dir: str,
        bless_options: BlessOptions | None = None,
        launch_options: LaunchOptions | None = None,
        chown: Callable[[str, int, int], None] = os.chown,
    ) -> None:
        """``chown``: how to give files to QEMU's user (privileged)."""
        self.conn = conn
        self.store = store_mod.SnapshotStore(state_dir)
        self._bless_options = bless_options or BlessOptions()
        self._launch_options = launch_options or LaunchOptions()
        self._chown = chown

    def bless(self, domain_name: str, bound_to: dict[str, str] | None = None) -> Generation:
        """``bound_to``: what the caller binds the generation to (kept in it,
        for the caller's own checks; see Generation.bound_to)."""
        return bless_mod.bless(
            self.conn, self.store, domain_name, self._bless_options, self._chown, bound_to
        )

    def launch(
        self,
        generation_id: str,
        count: int = 1,
        name_prefix: str | None = None,
        specs: list[CloneSpec] | None = None,
        on_clone_started: Callable[[Clone], None] | None = None,
    ) -> list[Clone]:
        """``on_clone_started`` is called with each clone as it comes up."""
        return launch_mod.launch(
            self.conn,
            self.store,
            generation_id,
            count,
            name_prefix,
            specs,
            on_clone_started,
            self._launch_options,
        )

    def generations(self) -> list[Generation]:
        return [self.store.load(g) for g in self.store.generation_ids()]

    def clones(self, generation: Generation) -> list[store_mod.CloneReference]:
        """The generation's clones, after dropping those whose domain is gone
        (destroyed behind the engine's back, or whose launch died with its
        process): their overlays are freed. A launch still under way in
        another process is left alone for ``LAUNCH_GRACE_S``, and so are
        caller-managed clones (their caller says when they are gone)."""
        live = []
        for ref in self.store.references(generation):
            if (
                not ref.caller_managed
                and self._domain(ref.uuid) is None
                and (ref.started or age_s(ref.created_at) > LAUNCH_GRACE_S)
            ):
                LOG.info(
                    "Clone %s of %s no longer exists; freeing its files", ref.name, generation.id
                )
                self._free(generation, ref)
            else:
                live.append(ref)
        return live

    def find_clone(self, name_or_uuid: str) -> tuple[Generation, store_mod.CloneReference] | None:
        for generation in self.generations():
            for ref in self.store.references(generation):
                if name_or_uuid in (ref.name, ref.uuid):
                    return generation, ref
        return None

    def destroy_clone(self, name_or_uuid: str) -> None:
        """Stop a clone, free its overlay and drop its reference."""
        found = self.find_clone(name_or_uuid)
        if found is None:
            raise CloneNotFound(f"no clone {name_or_uuid!r}")
        generation, ref = found
        launch_mod.destroy_domain(self._domain(ref.uuid))
        self._free(generation, ref)
        LOG.info("Destroyed clone %s of %s", ref.name, generation.id)

    def discard(self, generation_id: str) -> None:
        """Free a generation; refused while any clone of it runs."""
        generation = self.store.load(generation_id)
        clones = self.clones(generation)
        if clones:
            raise GenerationInUse(
                f"snapshot {generation.id} still has {len(clones)} clone(s): "
                + ", ".join(c.name for c in clones)
            )
        self.store.remove_generation(generation)
        LOG.info("Discarded generation %s", generation.id)

    def stats(self) -> list[dict[str, Any]]:
        """Per generation: clones, image size, page-cache residency; per clone:
        its private (written) memory and its share of host memory (PSS)."""
        result = []
        for generation in self.generations():
            image = generation.memory_image
            clones = []
            for ref in self.clones(generation):
                pid = hostmem.qemu_pid(ref.name)
                entry: dict[str, Any] = {"name": ref.name, "uuid": ref.uuid}
                if pid:
                    mapping = hostmem.mapping_kib(pid, os.path.realpath(image))
                    rollup = hostmem.rollup_kib(pid)
                    entry.update(
                        private_written_mib=round(mapping.get("Private_Dirty", 0) / 1024, 1),
                        image_resident_mib=round(mapping.get("Rss", 0) / 1024, 1),
                        qemu_pss_mib=round(rollup.get("Pss", 0) / 1024, 1),
                    )
                clones.append(entry)
            result.append(
                {
                    "generation": generation.id,
                    "source_domain": generation.source_domain,
                    "created_at": generation.created_at,
                    "clones": clones,
                    "memory_mib": generation.memory_bytes >> 20,
                    **_image_use_mib(image),
                    "bless_pause_ms": generation.pause_ms,
                }
            )
        return result

    def _domain(self, uuid: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _free(self, generation: Generation, ref: store_mod.CloneReference) -> None:
        launch_mod.remove_clone_files(ref)
        self.store.drop_reference(generation, ref.uuid)


def _image_use_mib(image: str) -> dict[str, float | None]:
    """Disk and page cache a memory image uses; None for one presented by a
    page service that is not running (its file cannot be reached)."""
    try:
        return {
            "image_allocated_mib": round(os.stat(image).st_blocks * 512 / 2**20, 1),
            "image_cached_mib": round(memimage.resident_bytes(image) / 2**20, 1),
        }
    except OSError:
        return {"image_allocated_mib": None, "image_cached_mib": None}


def generation_summary(generation: Generation) -> dict[str, Any]:
    """The generation without its bulk and its secret."""
    data = dataclasses.asdict(generation)
    for left_out in ("chunks", "domain_xml", "access_key"):
        data.pop(left_out)
    return data

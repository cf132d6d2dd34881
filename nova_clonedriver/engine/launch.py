"""Launch: start clones of a generation as ordinary libvirt domains.

Each clone is restored through libvirt from a save image made of a fresh
header (the clone's own domain XML) and the generation's device stream. Its
RAM is the generation's memory image mapped privately, so nothing is copied
at launch and untouched pages stay shared between clones. Once it runs, its
NICs are swapped for ones with its own MAC (the guest kept the master's in
its memory), and its new VM generation ID has already told the guest to
reseed its RNG. Where the master ran qemu-guest-agent, the clone's clock,
hostname and (for a kernel that ignores the generation ID) RNG are set
through it before its own NICs are plugged.
"""

from __future__ import annotations

from collections.abc import Callable
import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import shutil
import time
from typing import Any
import uuid

import libvirt

from nova_clonedriver.engine import domainxml
from nova_clonedriver.engine import guestagent
from nova_clonedriver.engine import memimage
from nova_clonedriver.engine import qemuimg
from nova_clonedriver.engine import savefile
from nova_clonedriver.engine import store as store_mod

LOG = logging.getLogger(__name__)

VERIFIED_FILE = "verified.json"
RESTORE_FILE = "restore.save"  # the save image a clone is restored from
# An empty overlay on a generation disk, copied for each clone's disk.
OVERLAY_TEMPLATE = "clone-overlay-{target}.qcow2"


class LaunchError(RuntimeError):
    """No clone was left behind for the failures this reports;
    ``launched`` holds the clones that did start."""

    def __init__(self, message: str, launched: list[Clone] | None = None) -> None:
        super().__init__(message)
        self.launched = launched or []


@dataclasses.dataclass(frozen=True)
class CloneSpec:
    """Who a clone is, when the caller decides it (nova: the instance's
    name, UUID, folder and NICs) instead of the engine."""

    name: str
    uuid: str
    directory: str
    # Interface XML to plug once the clone runs (instead of the master's
    # NICs with new MACs); an empty list leaves the clone without NICs.
    interfaces: list[str] | None = None
    # The caller owns the folder and the clone's lifecycle (nova: a stopped
    # server has no domain but is no less there): the engine never reaps
    # the clone and, when it frees it, removes only the files it made.
    caller_managed: bool = False
    # Set in the guest through its agent, if it has one (None: left as the
    # master's).
    hostname: str | None = None


@dataclasses.dataclass(frozen=True)
class LaunchOptions:
    parallelism: int = 8  # clones started at the same time
    # The translation cache of TCG clones, see domainxml.clone_xml (0:
    # QEMU's default, which grows as the guest runs code).
    tcg_tb_cache_mib: int = 0
    # How long a clone's guest agent may take to answer after its restore.
    agent_timeout_s: float = 60.0

    @classmethod
    def from_group(cls, group: Any) -> LaunchOptions:
        """From the ``[clone]`` options (``CONF.clone``) of nova-clone or nova."""
        return cls(
            parallelism=group.launch_parallelism,
            tcg_tb_cache_mib=group.tcg_tb_cache_mib,
            agent_timeout_s=group.agent_timeout_s,
        )


@dataclasses.dataclass
class Clone:
    name: str
    uuid: str
    generation: str
    mac_addresses: list[str]
    restore_ms: float  # launch call to the clone's guest running
    ready_ms: float  # ... and to its new NICs plugged (old ones leave when the guest acks)
    # Where ready_ms went: overlays, save_image, libvirt_restore,
    # guest_agent (masters with qemu-guest-agent), nic_swap.
    phases_ms: dict[str, float] = dataclasses.field(default_factory=dict)


def launch(
    conn: libvirt.virConnect,
    store: store_mod.SnapshotStore,
    generation_id: str,
    count: int = 1,
    name_prefix: str | None = None,
    specs: list[CloneSpec] | None = None,
    on_clone_started: Callable[[Clone], None] | None = None,
    options: LaunchOptions | None = None,
) -> list[Clone]:
    """Start ``count`` clones of the generation (or one per spec),
    ``options.parallelism`` at a time.

    ``on_clone_started`` is called (in the caller's thread) with each clone
    as soon as it runs, in the order they come up; the result keeps the
    order of the specs."""
    if specs is not None:
        count = len(specs)
    if count < 1:
        raise LaunchError(f"clone count must be at least 1, not {count}")
    generation = store.load(generation_id)
    verify(generation)
    if specs is None:
        prefix = name_prefix or f"{generation.source_domain}-clone"
        specs = [_engine_spec(store, prefix) for _ in range(count)]
    options = options or LaunchOptions()
    with concurrent.futures.ThreadPoolExecutor(min(count, options.parallelism)) as pool:
        futures = [
            pool.submit(_launch_one, conn, store, generation, spec, options) for spec in specs
        ]
        if on_clone_started is not None:
            for future in concurrent.futures.as_completed(futures):
                if future.exception() is None:
                    _notify(on_clone_started, future.result())
        launched, errors = [], []
        for future in futures:
            try:
                launched.append(future.result())
            except Exception as exc:
                errors.append(str(exc))
    if errors:
        raise LaunchError(
            f"{len(errors)} of {count} clones failed to start: " + "; ".join(sorted(set(errors))),
            launched,
        )
    return launched


def _notify(callback: Callable[[Clone], None], clone: Clone) -> None:
    """A failing progress callback must not lose track of running clones."""
    try:
        callback(clone)
    except Exception:
        LOG.exception("Progress callback failed for clone %s", clone.name)


def verify(generation: store_mod.Generation) -> None:
    """Refuse a generation whose files are missing or damaged, or whose
    clones would damage it (blessed with a memory balloon before bless
    refused those).

    Chunk checksums are checked in full once, then again only when the memory
    image file changes (size, inode or mtime), so launches stay cheap. The
    memory of a generation presented by the page service (blessed on another
    node) is not read here: the page service checks every chunk as it
    arrives."""
    try:
        domainxml.check_no_memory_balloon(domainxml.parse(generation.domain_xml))
    except domainxml.DomainXMLError as exc:
        raise LaunchError(f"snapshot {generation.id} cannot be cloned: {exc}") from exc
    for path in [generation.memory_image, generation.device_stream] + [
        generation.disk_base(d) for d in generation.disks
    ]:
        if not os.path.exists(path):
            raise LaunchError(f"snapshot {generation.id} is damaged: {path} is missing")
    if store_mod.sha256_file(generation.device_stream) != generation.device_stream_sha256:
        raise LaunchError(f"snapshot {generation.id} is damaged: device state checksum mismatch")
    if generation.origin:
        return
    st = os.stat(generation.memory_image)
    fingerprint = {"size": st.st_size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns}
    marker = os.path.join(generation.directory, VERIFIED_FILE)
    try:
        with open(marker) as f:
            if json.load(f) == fingerprint:
                return
    except (OSError, ValueError):
        pass
    if st.st_size != generation.memory_bytes:
        raise LaunchError(
            f"snapshot {generation.id} is damaged: memory image is "
            f"{st.st_size} bytes, not {generation.memory_bytes}"
        )
    bad = memimage.find_bad_chunks(generation.memory_image, generation.chunks)
    if bad:
        raise LaunchError(
            f"snapshot {generation.id} is damaged: {len(bad)} memory "
            f"chunk(s) fail their checksum (first: chunk {bad[0]})"
        )
    store_mod.write_json_atomic(marker, fingerprint)


def _engine_spec(store: store_mod.SnapshotStore, prefix: str) -> CloneSpec:
    clone_uuid = str(uuid.uuid4())
    name = f"{prefix}-{clone_uuid[:8]}"
    return CloneSpec(
        name=name,
        uuid=clone_uuid,
        directory=store.clone_dir(clone_uuid),
        hostname=name if guestagent.is_valid_hostname(name) else None,
    )


def _launch_one(
    conn: libvirt.virConnect,
    store: store_mod.SnapshotStore,
    generation: store_mod.Generation,
    spec: CloneSpec,
    options: LaunchOptions,
) -> Clone:
    started = time.monotonic()
    clone_uuid, directory = spec.uuid, spec.directory
    identity = domainxml.CloneIdentity(
        name=spec.name,
        uuid=clone_uuid,
        genid=str(uuid.uuid4()),
        directory=directory,
        overlays={
            d["target"]: os.path.join(directory, f"{d['target']}.qcow2") for d in generation.disks
        },
    )
    ref = store_mod.CloneReference(
        uuid=clone_uuid,
        name=identity.name,
        generation=generation.id,
        directory=directory,
        overlays=identity.overlays,
        mac_addresses=[],
        created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        caller_managed=spec.caller_managed,
    )
    store.add_reference(generation, ref)
    domain = None
    try:
        os.makedirs(directory, exist_ok=True)  # nova makes the instance folder first
        os.chmod(directory, 0o711)
        for disk in generation.disks:
            _copy_overlay_template(generation, disk, identity.overlays[disk["target"]])
        overlays_at = time.monotonic()
        xml = domainxml.clone_xml(
            generation.domain_xml,
            identity,
            generation.memory_image,
            generation.memory_bytes,
            options.tcg_tb_cache_mib,
        )
        save_path = os.path.join(directory, RESTORE_FILE)
        with open(save_path, "wb") as save, open(generation.device_stream, "rb") as stream:
            save.write(savefile.build_header(xml))
            shutil.copyfileobj(stream, save)
        saved_at = time.monotonic()
        try:
            conn.restoreFlags(save_path, None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
        finally:
            os.unlink(save_path)
        domain = conn.lookupByUUIDString(clone_uuid)
        restored_at = time.monotonic()
        restore_ms = (restored_at - started) * 1000
        _unplug_master_nics(domain)
        unplugged_at = time.monotonic()
        if generation.guest_agent:
            _set_identity(domain, generation, spec, options.agent_timeout_s)
        agent_done_at = time.monotonic()
        ref.mac_addresses = _plug_nics(domain, generation, spec.interfaces)
        phases_s = {
            "overlays": overlays_at - started,
            "save_image": saved_at - overlays_at,
            "libvirt_restore": restored_at - saved_at,
            **({"guest_agent": agent_done_at - unplugged_at} if generation.guest_agent else {}),
            "nic_swap": (unplugged_at - restored_at) + (time.monotonic() - agent_done_at),
        }
        phases_ms = {name: round(seconds * 1000, 1) for name, seconds in phases_s.items()}
        LOG.debug(
            "Start of clone %s: %s",
            identity.name,
            ", ".join(f"{name} {ms:.0f} ms" for name, ms in phases_ms.items()),
        )
        ref.started = True
        store.add_reference(generation, ref)
    except Exception as exc:
        LOG.error("Clone %s of %s failed to start: %s", identity.name, generation.id, exc)
        destroy_domain(domain)
        remove_clone_files(ref)
        store.drop_reference(generation, clone_uuid)
        message = exc.get_error_message() if isinstance(exc, libvirt.libvirtError) else exc
        raise LaunchError(f"clone {identity.name}: {message}") from exc
    clone = Clone(
        name=identity.name,
        uuid=clone_uuid,
        generation=generation.id,
        mac_addresses=ref.mac_addresses,
        restore_ms=round(restore_ms, 1),
        ready_ms=round((time.monotonic() - started) * 1000, 1),
        phases_ms=phases_ms,
    )
    LOG.info(
        "Clone %s of %s running after %.0f ms, ready after %.0f ms",
        clone.name,
        generation.id,
        clone.restore_ms,
        clone.ready_ms,
    )
    return clone


def _copy_overlay_template(
    generation: store_mod.Generation, disk: dict[str, str], overlay: str
) -> None:
    """A clone's disk: a copy of an empty overlay on the generation's frozen
    disk, made by qemu-img once per generation and host. An empty qcow2
    overlay holds nothing of its own, so every clone's starts alike, and a
    copy of its few KiB costs a clone no qemu-img run (8-17 ms and a process
    each, measured here)."""
    template = os.path.join(generation.directory, OVERLAY_TEMPLATE.format(target=disk["target"]))
    if not os.path.exists(template):
        partial = f"{template}.{uuid.uuid4().hex[:8]}.partial"
        try:
            qemuimg.create_overlay(generation.disk_base(disk), disk["format"], partial)
            os.replace(partial, template)  # parallel launches: the last one wins
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
    shutil.copyfile(template, overlay)


def remove_clone_files(ref: store_mod.CloneReference) -> None:
    """The clone's folder, or only the engine's files in a caller's folder."""
    if not ref.caller_managed:
        shutil.rmtree(ref.directory, ignore_errors=True)
        return
    for path in [*ref.overlays.values(), os.path.join(ref.directory, RESTORE_FILE)]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _unplug_master_nics(domain: libvirt.virDomain) -> None:
    """Unplug the master's NICs (isolated in the restore XML). The unplug is
    asynchronous (the guest acknowledges it a moment later): the clone's own
    NICs are plugged without waiting for the old ones to go."""
    for interface in domainxml.interfaces(domainxml.parse(domain.XMLDesc(0))):
        alias = interface.find("alias")
        if alias is None:
            raise LaunchError(f"NIC {domainxml.to_string(interface)!r} has no alias")
        domain.detachDeviceAlias(alias.get("name"), libvirt.VIR_DOMAIN_AFFECT_LIVE)


def _plug_nics(
    domain: libvirt.virDomain, generation: store_mod.Generation, replacements: list[str] | None
) -> list[str]:
    """Plug the clone's own NICs: ``replacements``, or else copies of the
    master's with new MACs. Returns their MACs."""
    if replacements is None:
        replacements = [
            domainxml.interface_with_mac(i, domainxml.random_mac())
            for i in domainxml.interfaces(domainxml.parse(generation.domain_xml))
        ]
    for interface_xml in replacements:
        domain.attachDeviceFlags(interface_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    return [domainxml.mac_of(xml) for xml in replacements]


def _set_identity(
    domain: libvirt.virDomain,
    generation: store_mod.Generation,
    spec: CloneSpec,
    agent_timeout_s: float,
) -> None:
    """Through the guest agent: fresh randomness where the kernel ignores
    the generation ID (without it the clone must not run), then the clock
    and the hostname (without them it runs on, and the log says so)."""
    agent = guestagent.GuestAgent(domain)
    steps_s: dict[str, float] = {}
    try:
        steps_s["connect"] = agent.wait_connected(agent_timeout_s)
        if generation.agent_reseeds_rng:
            steps_s["rng"] = _timed(agent.reseed_rng)
    except guestagent.AgentError as exc:
        if generation.agent_reseeds_rng:
            raise LaunchError(
                f"its kernel ignores the VM generation ID and its RNG could not be "
                f"reseeded through the guest agent: {exc}"
            ) from exc
        LOG.error("Clone %s keeps its master's clock and hostname: %s", spec.name, exc)
        return
    fixes: list[tuple[str, Callable[[], None]]] = [("clock", agent.set_time)]
    if spec.hostname:
        hostname = spec.hostname
        fixes.append(("hostname", lambda: agent.set_hostname(hostname)))
    for what, fix in fixes:
        try:
            steps_s[what] = _timed(fix)
        except guestagent.AgentError as exc:
            LOG.error("Clone %s keeps its master's %s: %s", spec.name, what, exc)
    LOG.debug(
        "Guest agent of clone %s: %s",
        spec.name,
        ", ".join(f"{step} {seconds * 1000:.0f} ms" for step, seconds in steps_s.items()),
    )


def _timed(step: Callable[[], None]) -> float:
    started = time.monotonic()
    step()
    return time.monotonic() - started


def destroy_domain(domain: libvirt.virDomain | None) -> None:
    if domain is None:
        return
    try:
        domain.destroy()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            LOG.warning("Could not destroy %s: %s", domain.name(), exc)

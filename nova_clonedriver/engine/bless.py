"""Bless: freeze a running domain into a snapshot generation.

The master's RAM goes out through a live (pre-copy) migration into a pipe
that this process reads, so the master keeps running while its memory is
copied. QEMU pauses it only for the last few dirty pages: with the
``pause-before-switchover`` capability it then waits, CPUs stopped, while we
switch its disks to new overlays (the old images become the frozen base of
every clone, consistent with the memory at that instant). After that the
last pages and the device state are sent and the master resumes. The
pause is measured from seeing the master stopped to its resume.

Under TCG (domain type ``qemu``) QEMU before 9.0 loses guest writes made
after the second dirty-bitmap sync of a migration: a sync clears the dirty
bits without resetting the CPU's TLB, so later writes through cached TLB
entries are not tracked, and pages sent after that sync can miss them (seen
here as clones crashing on a kernel stack one write behind). Every write
after the first sync is tracked, though. So for such domains the downtime
limit is 0: QEMU then never syncs while the guest runs after its first
sync; it sends every page once, stops the guest, and sends what the guest
dirtied meanwhile. The pause is longer (it carries those pages) but the
snapshot is exact.

The master's disks: at the pause its current image becomes a frozen base
(read-only to everyone, hard-linked into the generation) and the master
writes to a new qcow2 overlay on it, ``<disk>.live-<id>``, where ``<disk>``
is the path the master's owner knows the disk by (e.g. nova's ``<instance
dir>/disk``). Every file keeps its name, so libvirt's record of the running
domain's backing chain stays true (a save and restore works). The symlink
``<disk>.top`` names the overlay the master writes to now (current_top):
whoever starts the domain again from their own records (nova: a hard
reboot, stop and start) must start it on that, or it meets a read-only
frozen base.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import dataclasses
import datetime
import logging
import os
import re
import secrets
import shutil
import time
from typing import Any
from typing import BinaryIO
import uuid
import xml.etree.ElementTree as ET

import libvirt

from nova_clonedriver.engine import domainxml
from nova_clonedriver.engine import guestagent
from nova_clonedriver.engine import hostinfo
from nova_clonedriver.engine import memimage
from nova_clonedriver.engine import migstream
from nova_clonedriver.engine import native
from nova_clonedriver.engine import qemuimg
from nova_clonedriver.engine import qmp
from nova_clonedriver.engine import store as store_mod

LOG = logging.getLogger(__name__)

_POLL_INTERVAL_S = 0.001
_PIPE_BUFFER_BYTES = 1 << 20


_LIVE_SUFFIX = re.compile(r"\.live-[0-9a-f]{8}$")
_TOP_SUFFIX = ".top"
_FROZEN_MODE = 0o444


class BlessError(RuntimeError):
    """The domain could not be blessed; it runs on as before."""


class NoGenerationID(BlessError):
    """The domain has no VM generation ID, and the caller requires one."""


class NoFreshRandomness(BlessError):
    """The guest's kernel ignores the VM generation ID and its agent cannot
    reseed it: every clone would draw its master's random numbers."""


@dataclasses.dataclass(frozen=True)
class _DiskLayers:
    """What a bless does to one of the master's disks: ``disk.path``, the
    image it writes to now, becomes the clones' frozen base."""

    disk: domainxml.DiskInfo
    overlay: str  # the master's new top, on disk.path
    top: str  # the symlink that names the master's top

    @classmethod
    def plan(cls, disk: domainxml.DiskInfo, generation_id: str) -> _DiskLayers:
        stable = _LIVE_SUFFIX.sub("", disk.path)
        return cls(disk, f"{stable}.live-{generation_id[:8]}", stable + _TOP_SUFFIX)


def current_top(path: str) -> str:
    """The image a master's disk ``path`` (as its owner knows it) writes to
    now: the overlay of its last bless, or ``path`` if it was never blessed."""
    top = path + _TOP_SUFFIX
    if not os.path.islink(top):
        return path
    return os.path.join(os.path.dirname(path), os.readlink(top))


class _StreamReader(native.thread_class()):  # type: ignore[misc]
    """Splits the migration stream while QEMU writes it."""

    def __init__(
        self, source: BinaryIO, splitter: migstream.StreamSplitter, device_out: BinaryIO
    ) -> None:
        super().__init__(name="bless-stream", daemon=True)
        self._source = source
        self._device_out = device_out
        self.splitter = splitter
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.splitter.split(self._source)
        except Exception as exc:  # reported by the thread that joins us
            self.error = exc
        finally:
            self._source.close()
            self._device_out.close()


@dataclasses.dataclass(frozen=True)
class BlessOptions:
    downtime_limit_ms: int = 10
    timeout_s: float = 300.0
    max_disk_layers: int = 16  # a disk's backing chain, its top included
    require_genid: bool = False

    @classmethod
    def from_group(cls, group: Any, **overrides: Any) -> BlessOptions:
        """From the ``[clone]`` options (``CONF.clone``) of nova-clone or nova."""
        return cls(
            downtime_limit_ms=group.bless_downtime_limit_ms,
            timeout_s=group.bless_timeout_s,
            max_disk_layers=group.max_disk_layers,
            **overrides,
        )


def bless(
    conn: libvirt.virConnect,
    store: store_mod.SnapshotStore,
    domain_name: str,
    options: BlessOptions,
    chown: Callable[[str, int, int], None] = os.chown,
    bound_to: dict[str, str] | None = None,
) -> store_mod.Generation:
    """Freeze the running domain ``domain_name``; return the new generation.

    ``chown`` gives the memory image to QEMU's user (clones map it): a
    caller that is not root passes a privileged one (nova: privsep).
    ``bound_to`` is kept in the generation for the caller's own checks.
    Nothing is changed when a check refuses the domain."""
    try:
        domain = conn.lookupByName(domain_name)
    except libvirt.libvirtError as exc:
        raise BlessError(f"no domain {domain_name!r}: {exc.get_error_message()}") from exc
    if domain.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
        raise BlessError(f"domain {domain_name!r} is not running")
    master_xml = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_MIGRATABLE)
    root = domainxml.parse(master_xml)
    if domainxml.is_clone(root):
        raise BlessError(
            f"domain {domain_name!r} is a live clone: clones of clones "
            "are not supported (bless its master instead)"
        )
    if options.require_genid and not domainxml.has_genid(root):
        raise NoGenerationID(
            f"domain {domain_name!r} has no VM generation ID (<genid/>): its clones "
            "would all continue with its kernel's RNG state"
        )
    try:
        domainxml.check_no_memory_balloon(root)
        disks = domainxml.writable_disks(root)
    except domainxml.DomainXMLError as exc:
        raise BlessError(f"cannot bless {domain_name!r}: {exc}") from exc
    for disk in disks:
        _check_backing(disk, options.max_disk_layers)
    guest_agent = domainxml.has_agent_channel(root)
    agent_reseeds_rng = guest_agent and _agent_must_reseed(domain, root)

    generation_id = uuid.uuid4().hex
    layers = [_DiskLayers.plan(disk, generation_id) for disk in disks]
    workdir = store.new_generation_dir(generation_id)
    try:
        memory_size = domainxml.memory_bytes(root)
        image = memimage.MemoryImageWriter(
            os.path.join(workdir, store_mod.MEMORY_IMAGE_FILE), memory_size
        )
        device_path = os.path.join(workdir, store_mod.DEVICE_STREAM_FILE)
        started = time.monotonic()
        reader, pause_ms = _migrate(
            domain, root.get("type", ""), image, device_path, layers, generation_id, options
        )
        chunks = image.close()
        frozen = [_keep_frozen_base(disk, workdir) for disk in disks]
        uid, gid = hostinfo.qemu_user_ids(conn)
        chown(image.path, uid, gid)
        generation = store_mod.Generation(
            id=generation_id,
            source_domain=domain_name,
            source_uuid=domain.UUIDString(),
            created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
            memory_bytes=memory_size,
            vcpus=domainxml.vcpus(root),
            machine_type=reader.splitter.machine_type,
            main_block=(reader.splitter.main_block or b"").decode(),
            chunk_size_bytes=memimage.CHUNK_SIZE_BYTES,
            chunks=chunks,
            device_stream_sha256=store_mod.sha256_file(device_path),
            disks=frozen,
            domain_xml=master_xml,
            pause_ms=round(pause_ms, 2),
            has_genid=domainxml.has_genid(root),
            bound_to=dict(bound_to or {}),
            access_key=secrets.token_hex(32),
            guest_agent=guest_agent,
            agent_reseeds_rng=agent_reseeds_rng,
        )
        store.publish(generation, workdir)
    except BaseException:
        store.discard_partial(workdir)
        raise
    if agent_reseeds_rng:
        LOG.info(
            "The kernel of %s ignores the VM generation ID: its guest agent "
            "will reseed each clone's RNG",
            domain_name,
        )
    elif not generation.has_genid:
        LOG.warning(
            "Domain %s has no <genid/>: its clones cannot be told they "
            "are clones and will share RNG state",
            domain_name,
        )
    LOG.info(
        "Blessed %s as generation %s in %.0f ms (master paused %.1f ms, "
        "%d of %d chunks hold data)",
        domain_name,
        generation_id,
        (time.monotonic() - started) * 1000,
        pause_ms,
        sum(1 for c in chunks if c),
        len(chunks),
    )
    return generation


def _agent_must_reseed(domain: libvirt.virDomain, root: ET.Element) -> bool:
    """Whether clones need their RNG reseeded through the guest agent (the
    kernel ignores the generation ID); checks that the agent answers, and
    that it can reseed by doing so once on the master (harmless there)."""
    agent = guestagent.GuestAgent(domain)
    name = domain.name()
    try:
        agent.command("guest-ping")
    except guestagent.AgentError as exc:
        raise BlessError(
            f"domain {name!r} has a guest agent channel but its agent does not "
            f"answer ({exc}): its clones could not be given their own clock, "
            "hostname and randomness; bless it once qemu-guest-agent runs"
        ) from exc
    if domainxml.has_genid(root) and agent.kernel_uses_genid():
        return False
    try:
        agent.reseed_rng()
    except guestagent.AgentError as exc:
        raise NoFreshRandomness(
            f"the kernel of {name!r} ignores the VM generation ID and its guest "
            f"agent cannot reseed its RNG ({exc}): every clone would draw the "
            "master's random numbers (give the guest a kernel with "
            "CONFIG_VMGENID, or perl and guest-exec for the agent)"
        ) from exc
    return True


def _migrate(
    domain: libvirt.virDomain,
    domain_type: str,
    image: memimage.MemoryImageWriter,
    device_path: str,
    layers: list[_DiskLayers],
    generation_id: str,
    options: BlessOptions,
) -> tuple[_StreamReader, float]:
    saved = qmp.command(domain, "query-migrate-parameters")
    read_fd, write_fd = os.pipe()
    device_out = open(device_path, "wb")  # noqa: SIM115 (the reader closes it)
    splitter = migstream.StreamSplitter(image, device_out, domainxml.CLONE_RAM_BACKEND_ID.encode())
    reader = _StreamReader(
        os.fdopen(read_fd, "rb", buffering=_PIPE_BUFFER_BYTES), splitter, device_out
    )
    reader.start()  # reads until every writer of the pipe has closed it
    fdname = f"clone-bless-{generation_id[:8]}"
    disks_switched = False
    try:
        _prepare_overlays(layers)
        qmp.command(
            domain,
            "migrate-set-capabilities",
            capabilities=[{"capability": "pause-before-switchover", "state": True}],
        )
        downtime_limit_ms = options.downtime_limit_ms
        if domain_type == "qemu":
            downtime_limit_ms = 0  # see the module's docstring
        parameters: dict[str, Any] = {
            "downtime-limit": downtime_limit_ms,
            "max-bandwidth": 1 << 40,
        }
        qmp.command(domain, "migrate-set-parameters", **parameters)
        try:
            qmp.command(domain, "getfd", files=[write_fd], fdname=fdname)
        finally:
            os.close(write_fd)  # QEMU holds its own copy now
        qmp.command(domain, "migrate", uri=f"fd:{fdname}")
        deadline = time.monotonic() + options.timeout_s
        _wait_for(domain, ("pre-switchover",), deadline)
        paused_at = time.monotonic()
        _freeze_disks(domain, layers, generation_id)
        disks_switched = True
        for layer in layers:
            _point(layer.top, layer.overlay)
        frozen_at = time.monotonic()
        qmp.command(domain, "migrate-continue", state="pre-switchover")
        info = _wait_for(domain, ("completed",), deadline)
        completed_at = time.monotonic()
        _wait_until_finalized(domain, deadline)
        domain.resume()
        resumed_at = time.monotonic()
        # From seeing it paused to resumed: QEMU stopped it at most one poll
        # (about a millisecond) earlier. QEMU's own "downtime" is not used:
        # it leaves out the resume, and reads 0 when polled right at completion.
        pause_ms = (resumed_at - paused_at) * 1000
        LOG.debug(
            "Bless pause of %s: %.1f ms (disks %.1f ms, final pages and "
            "device state %.1f ms, resume %.1f ms; QEMU says downtime %s ms)",
            domain.name(),
            pause_ms,
            (frozen_at - paused_at) * 1000,
            (completed_at - frozen_at) * 1000,
            (resumed_at - completed_at) * 1000,
            info.get("downtime"),
        )
    except BaseException as exc:
        _abort(domain, fdname)
        reader.join()
        if not disks_switched:  # the master never wrote to them
            for layer in layers:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(layer.overlay)
        raise BlessError(f"bless of {domain.name()} failed: {exc}") from exc
    finally:
        _restore_settings(domain, saved)
    reader.join()
    if reader.error:
        raise BlessError(
            f"bless of {domain.name()} produced a stream this engine cannot use: {reader.error}"
        )
    return reader, pause_ms


def _wait_for(
    domain: libvirt.virDomain, states: tuple[str, ...], deadline: float
) -> dict[str, Any]:
    while True:
        info: dict[str, Any] = qmp.command(domain, "query-migrate")
        status = info.get("status")
        if status in states:
            return info
        if status in ("failed", "cancelled"):
            raise BlessError(f"migration {status}: {info.get('error-desc', '')}")
        if time.monotonic() > deadline:
            raise BlessError(
                f"migration did not reach {states[0]} in time "
                "(is the guest dirtying memory faster than it streams?)"
            )
        time.sleep(_POLL_INTERVAL_S)


def _wait_until_finalized(domain: libvirt.virDomain, deadline: float) -> None:
    """QEMU reports the migration completed a moment before it leaves the
    finish-migrate run state; "cont" is refused until then."""
    while qmp.command(domain, "query-status").get("status") == "finish-migrate":
        if time.monotonic() > deadline:
            raise BlessError("migration completed but QEMU did not finalize it in time")
        time.sleep(_POLL_INTERVAL_S)


def _prepare_overlays(layers: list[_DiskLayers]) -> None:
    """Create the master's new overlays before the pause, so that while
    paused libvirt only has to switch to them (REUSE_EXT)."""
    for layer in layers:
        qemuimg.create_overlay(layer.disk.path, layer.disk.format, layer.overlay)


def _freeze_disks(
    domain: libvirt.virDomain, layers: list[_DiskLayers], generation_id: str
) -> None:
    if not layers:
        return
    entries = "".join(
        f"<disk name='{layer.disk.target}' snapshot='external'>"
        f"<source file='{layer.overlay}'/></disk>"
        for layer in layers
    )
    domain.snapshotCreateXML(
        f"<domainsnapshot><name>clone-{generation_id}</name><disks>{entries}</disks>"
        "</domainsnapshot>",
        libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
        | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
        | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC,
    )


def _point(link: str, overlay: str) -> None:
    """Make ``link`` a symlink to ``overlay`` (atomically: it is never
    missing). Relative, so that the folder may move as a whole."""
    new = f"{link}.new"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(new)
    os.symlink(os.path.basename(overlay), new)
    os.rename(new, link)


def _abort(domain: libvirt.virDomain, fdname: str) -> None:
    """Cancel the migration (QEMU then closes the pipe) and let the master run."""
    cancel: list[tuple[str, dict[str, Any]]] = [
        ("migrate_cancel", {}),
        ("closefd", {"fdname": fdname}),
    ]
    for command, arguments in cancel:
        try:
            qmp.command(domain, command, **arguments)
        except qmp.QMPError as exc:
            LOG.debug("%s during bless abort: %s", command, exc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = qmp.command(domain, "query-migrate").get("status")
        if status in (None, "cancelled", "failed", "completed"):
            break
        time.sleep(0.01)
    _wait_until_finalized(domain, deadline)  # when the cancel came too late
    if domain.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
        domain.resume()


def _restore_settings(domain: libvirt.virDomain, saved: dict[str, Any]) -> None:
    try:
        qmp.command(
            domain,
            "migrate-set-capabilities",
            capabilities=[{"capability": "pause-before-switchover", "state": False}],
        )
        qmp.command(
            domain,
            "migrate-set-parameters",
            **{"downtime-limit": saved["downtime-limit"], "max-bandwidth": saved["max-bandwidth"]},
        )
    except qmp.QMPError:
        LOG.exception("Could not restore migration settings of %s", domain.name())


def _check_backing(disk: domainxml.DiskInfo, max_layers: int) -> None:
    if disk.format != "qcow2":
        return
    backing = qemuimg.backing_file(disk.path)
    if backing and not os.path.isabs(backing):
        raise BlessError(
            f"disk {disk.target} has a relative backing file "
            f"({backing}); clones need an absolute one"
        )
    # Every bless adds a layer under the master; past the limit, reads of
    # old blocks walk too far. Flattening (a block pull) resets the count.
    layers = qemuimg.chain_length(disk.path)
    if layers + 1 > max_layers:
        raise BlessError(
            f"disk {disk.target} already has {layers} layers in its backing chain "
            f"and a bless adds one: more than the limit of {max_layers} (flatten "
            f"the disk first, e.g. virsh blockpull <domain> {disk.target} --wait)"
        )


def _keep_frozen_base(disk: domainxml.DiskInfo, workdir: str) -> dict[str, str]:
    """Make the frozen image read-only to everyone (a mistake then fails
    instead of changing every clone's disk), and give the generation its
    own name for it, so it outlives the master's files (a hard link; a
    copy across filesystems)."""
    relative = os.path.join("disks", f"{disk.target}.{disk.format}")
    base = os.path.join(workdir, relative)
    os.makedirs(os.path.dirname(base), exist_ok=True)
    os.chmod(disk.path, _FROZEN_MODE)
    try:
        os.link(disk.path, base)
    except OSError:
        shutil.copyfile(disk.path, base)
        os.chmod(base, _FROZEN_MODE)
    return {"target": disk.target, "format": disk.format, "base": relative}

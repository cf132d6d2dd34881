"""The nova compute driver: nova's libvirt driver plus live clones.

A thin adapter: nova concepts in, clone-engine calls out. Every instance
and image that is not about cloning takes LibvirtDriver's path unchanged.

* A snapshot whose image has ``clone_live=true`` blesses the server instead
  of copying its disk; the image gets the generation's identity as
  properties and a small JSON manifest as data. The generation is bound to
  that image and its project.
* A server whose flavor has ``clone:enabled=true`` and whose image is such
  a live image is launched as a clone: nova's name, UUID, instance folder
  and NICs, the generation's memory and disks. Only the image a generation
  is bound to launches it, so Glance's visibility decides who may clone.
* Deleting a clone frees its overlay and its reference to the generation.
* Every domain it boots the normal way gets a VM generation ID, so that its
  clones can be told apart (their kernels reseed their RNGs).

What a user can set (image properties, server metadata) only selects; who
may clone what is decided by the records of nova, Glance and the engine.
See doc/source/security.rst.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from lxml import etree
from nova import context as nova_context
from nova import exception
from nova import objects
from nova.compute import task_states
from nova.privsep import path as nova_privsep_path
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt.libvirt import utils as libvirt_utils
from oslo_concurrency import lockutils
from oslo_log import log as logging
from oslo_utils import netutils
from oslo_utils import strutils

from nova_clonedriver import live_image
from nova_clonedriver.conf import CONF
from nova_clonedriver.engine import api
from nova_clonedriver.engine import hostmem
from nova_clonedriver.pageserver import control
from nova_clonedriver.virt import extra_specs

LOG = logging.getLogger(__name__)

TRAIT_LIVE_CLONE = "CUSTOM_LIVE_CLONE"
# In the compute node's stats (nova's database): where its page service is.
STAT_PAGE_SERVICE = "clone_page_service"


def is_clone_flavor(flavor: Any) -> bool:
    # The same reading of booleans as nova's extra-spec validator.
    return strutils.bool_from_string((flavor.extra_specs or {}).get(extra_specs.ENABLED))


def guest_xml_for_clones(xml: str) -> str:
    """nova's domain XML with what cloning needs: a VM generation ID (any
    server may become a master, and its clones get new ones; nova itself
    never writes one), no memory balloon (a clone's would damage its
    generation: engine.domainxml.check_no_memory_balloon; so no balloon
    statistics either), and a blessed master's disks on the overlays of its
    last bless (its images are its clones' read-only frozen bases)."""
    root = etree.fromstring(xml)
    if root.find("genid") is None:
        root.find("uuid").addnext(etree.Element("genid"))
    devices = root.find("devices")
    for balloon in devices.findall("memballoon"):
        devices.remove(balloon)
    etree.SubElement(devices, "memballoon", model="none")
    for disk in root.iterfind("devices/disk[@type='file']"):
        source = disk.find("source")
        path = source.get("file") if source is not None else None
        top = api.current_top(path) if path else path
        if top != path:
            source.set("file", top)
            disk.find("driver").set("type", "qcow2")  # every overlay is
    return etree.tostring(root, encoding="unicode")


def _call_or_error(function: Any, *args: Any) -> Any:
    """``function(*args)``, or the exception it raised: logged outside the
    handler, so oslo.log does not append the error a second time."""
    try:
        return function(*args)
    except Exception as exc:
        return exc


class CloneDriver(libvirt_driver.LibvirtDriver):
    """Loaded with ``[DEFAULT] compute_driver = clonedriver.CloneDriver``."""

    def __init__(self, virtapi: Any, read_only: bool = False) -> None:
        super().__init__(virtapi, read_only)
        self._engine: api.CloneEngine | None = None

    @property
    def clone_engine(self) -> api.CloneEngine:
        """The engine, on nova's own libvirt connection (opened lazily, as
        LibvirtDriver opens it)."""
        if self._engine is None:
            self._engine = api.CloneEngine(
                self._host.get_connection(),
                CONF.clone.state_dir,
                bless_options=api.BlessOptions.from_group(CONF.clone, require_genid=True),
                launch_options=api.LaunchOptions.from_group(CONF.clone),
                # nova-compute runs as an unprivileged user in real clouds.
                chown=nova_privsep_path.chown,
            )
        return self._engine

    # -- bless ---------------------------------------------------------------

    def snapshot(self, context: Any, instance: Any, image_id: str, update_task_state: Any) -> None:
        image = self._image_api.get(context, image_id)
        if not strutils.bool_from_string(image.get("properties", {}).get(live_image.LIVE)):
            return super().snapshot(context, instance, image_id, update_task_state)
        update_task_state(task_state=task_states.IMAGE_PENDING_UPLOAD)
        generation = self._bless(
            instance,
            {live_image.BOUND_IMAGE: image_id, live_image.BOUND_PROJECT: instance.project_id},
        )
        properties = dict(image.get("properties", {}))
        properties.update(
            {
                live_image.GENERATION: generation.id,
                live_image.ORIGIN_HOST: CONF.host,
                # Glance shows it to those who may see the image: those who may
                # clone it, on any host.
                live_image.ACCESS_KEY: generation.access_key,
                live_image.MASTER: instance.uuid,
                live_image.MEMORY_MB: str(generation.memory_bytes >> 20),
                live_image.VCPUS: str(generation.vcpus),
                live_image.BLESS_PAUSE_MS: str(generation.pause_ms),
            }
        )
        metadata = {
            "status": "active",
            "disk_format": "raw",
            "container_format": "bare",
            "properties": properties,
        }
        manifest = json.dumps(api.generation_summary(generation), sort_keys=True)
        update_task_state(
            task_state=task_states.IMAGE_UPLOADING, expected_state=task_states.IMAGE_PENDING_UPLOAD
        )
        self._image_api.update(
            context, image_id, metadata, io.BytesIO(manifest.encode()), purge_props=False
        )
        LOG.info(
            "Blessed %s as generation %s for live image %s (master paused %.1f ms)",
            instance.uuid,
            generation.id,
            image_id,
            generation.pause_ms,
            instance=instance,
        )

    def _bless(self, instance: Any, bound_to: dict[str, str]) -> api.Generation:
        try:
            return self.clone_engine.bless(instance.name, bound_to)
        except api.NoGenerationID as exc:
            raise exception.NovaException(
                f"cannot make a live image of {instance.uuid}: {exc}. It was started "
                "before nova-clonedriver gave every server one: hard reboot it "
                "('openstack server reboot --hard') and try again"
            ) from exc
        except api.BlessError as exc:
            raise exception.NovaException(f"live image of {instance.uuid}: {exc}") from exc

    def _get_guest_xml(self, *args: Any, **kwargs: Any) -> str:
        return guest_xml_for_clones(super()._get_guest_xml(*args, **kwargs))

    def _create_images_and_backing(
        self,
        context: Any,
        instance: Any,
        instance_dir: str,
        disk_info: Any,
        fallback_from_host: Any = None,
    ) -> None:
        # A blessed master's layers are backed by its frozen images in its
        # own folder, not by nova's image cache: nothing to fetch for them
        # (nova would download the image under the frozen file's name).
        disk_info = [
            info
            for info in disk_info
            if not (
                info.get("backing_file")
                and os.path.exists(os.path.join(instance_dir, info["backing_file"]))
            )
        ]
        super()._create_images_and_backing(
            context, instance, instance_dir, disk_info, fallback_from_host
        )

    def get_available_resource(self, nodename: str) -> dict[str, Any]:
        # Where other hosts reach this host's page service, published in
        # nova's own record of this compute node (never taken from an image).
        resources = super().get_available_resource(nodename)
        stats = dict(resources.get("stats") or {})
        stats[STAT_PAGE_SERVICE] = (
            CONF.pageserver.advertise_address
            or f"{netutils.escape_ipv6(CONF.my_ip)}:{CONF.pageserver.listen_port}"
        )
        resources["stats"] = stats
        return resources

    # -- launch --------------------------------------------------------------

    def spawn(
        self,
        context: Any,
        instance: Any,
        image_meta: Any,
        injected_files: Any,
        admin_password: Any,
        allocations: Any,
        network_info: Any = None,
        block_device_info: Any = None,
        power_on: bool = True,
        accel_info: Any = None,
    ) -> None:
        clone = is_clone_flavor(instance.flavor)
        fork_of = (instance.metadata or {}).get(live_image.CLONE_OF)
        if clone and fork_of:
            generation = self._fork_generation(context, instance, fork_of)
            self._check_free_memory(generation)
            self._launch_clone(instance, image_meta, generation.id, network_info or [])
            return
        properties = self._live_image_properties(context, instance)
        generation_id = properties.get(live_image.GENERATION)
        if generation_id is None and not clone:
            return super().spawn(
                context,
                instance,
                image_meta,
                injected_files,
                admin_password,
                allocations,
                network_info,
                block_device_info,
                power_on,
                accel_info,
            )
        if generation_id is None:
            raise exception.ImageUnacceptable(
                image_id=instance.image_ref,
                reason=f"flavor {instance.flavor.name} is a clone flavor "
                f"({extra_specs.ENABLED}=true) but the image is not a live "
                f"image (made with --property {live_image.LIVE}=true)",
            )
        if not clone:
            raise exception.ImageUnacceptable(
                image_id=instance.image_ref,
                reason=f"the image is a live image; boot it with a clone flavor "
                f"({extra_specs.ENABLED}=true) (generation {generation_id})",
            )
        generation = self._generation_for(context, instance, generation_id, properties)
        self._check_free_memory(generation)
        self._launch_clone(instance, image_meta, generation.id, network_info or [])

    def _launch_clone(
        self, instance: Any, image_meta: Any, generation_id: str, network_info: Any
    ) -> None:
        self.plug_vifs(instance, network_info)
        interfaces = [
            self.vif_driver.get_config(
                instance, vif, image_meta, instance.flavor, CONF.libvirt.virt_type
            ).to_xml()
            for vif in network_info
        ]
        spec = api.CloneSpec(
            name=instance.name,
            uuid=instance.uuid,
            directory=libvirt_utils.get_instance_path(instance),
            interfaces=interfaces,
            caller_managed=True,
            hostname=instance.hostname,
        )
        try:
            [launched] = self.clone_engine.launch(generation_id, specs=[spec])
        except api.LaunchError as exc:
            self.unplug_vifs(instance, network_info)
            raise exception.InstanceDeployFailure(reason=str(exc)) from exc
        LOG.info(
            "Started as a clone of generation %s in %.0f ms",
            generation_id,
            launched.ready_ms,
            instance=instance,
        )

    def _restart_clone(self, instance: Any, network_info: Any) -> bool:
        """Start a clone again from its snapshot's instant (its RAM and disk
        writes are dropped); False if ``instance`` is not a clone."""
        found = self.clone_engine.find_clone(instance.uuid)
        if found is None:
            return False
        generation, _ = found
        self.clone_engine.destroy_clone(instance.uuid)
        self._launch_clone(instance, instance.image_meta, generation.id, network_info or [])
        return True

    def power_on(
        self,
        context: Any,
        instance: Any,
        network_info: Any,
        block_device_info: Any = None,
        accel_info: Any = None,
        share_info: Any = None,
    ) -> None:
        if not self._restart_clone(instance, network_info):
            super().power_on(
                context, instance, network_info, block_device_info, accel_info, share_info
            )

    def resume_state_on_host_boot(
        self,
        context: Any,
        instance: Any,
        network_info: Any,
        share_info: Any,
        block_device_info: Any = None,
    ) -> None:
        # Clones are transient domains: after a host reboot they start again
        # (a clone whose domain still runs is left alone).
        try:
            if self._host.get_guest(instance).is_active():
                return
        except exception.InstanceNotFound:
            pass
        if not self._restart_clone(instance, network_info):
            super().resume_state_on_host_boot(
                context, instance, network_info, share_info, block_device_info
            )

    def reboot(
        self,
        context: Any,
        instance: Any,
        network_info: Any,
        reboot_type: str,
        block_device_info: Any = None,
        bad_volumes_callback: Any = None,
        accel_info: Any = None,
        share_info: Any = None,
    ) -> None:
        # Soft or hard alike: a clone's guest cannot boot from the live
        # image (its data is a manifest, not a disk).
        if not self._restart_clone(instance, network_info):
            super().reboot(
                context,
                instance,
                network_info,
                reboot_type,
                block_device_info,
                bad_volumes_callback,
                accel_info,
                share_info,
            )

    def _live_image_properties(self, context: Any, instance: Any) -> dict[str, str]:
        if not instance.image_ref:
            return {}
        return self._image_api.get(context, instance.image_ref).get("properties", {})

    def _fork_generation(self, context: Any, instance: Any, master_uuid: str) -> api.Generation:
        """A generation of the running server ``master_uuid``: one blessed in
        the last ``[clone] fork_reuse_s`` seconds, else a new bless. One lock
        per master, so a burst of requests shares one bless."""
        master = self._fork_master(context, instance, master_uuid)
        with lockutils.lock(f"clone-fork-{master.uuid}"):
            recent = [
                g
                for g in self.clone_engine.generations()
                if g.bound_to.get(live_image.BOUND_FORK_OF) == master.uuid
                and api.age_s(g.created_at) <= CONF.clone.fork_reuse_s
            ]
            if recent:
                generation = max(recent, key=lambda g: g.created_at)
            else:
                generation = self._bless(
                    master,
                    {
                        live_image.BOUND_FORK_OF: master.uuid,
                        live_image.BOUND_PROJECT: master.project_id,
                    },
                )
        self._check_matches(instance, generation)
        return generation

    def _fork_master(self, context: Any, instance: Any, master_uuid: str) -> Any:
        """nova's record of the server to fork, once the requester may fork
        it: ``[clone] fork_policy``, the server's project, and this host. A
        server of another project is refused as if it did not exist."""

        def refuse(why: str) -> exception.InvalidInput:
            return exception.InvalidInput(
                reason=f"{live_image.CLONE_OF}={master_uuid}: cannot fork this server "
                f"on host {CONF.host}: {why}"
            )

        policy = CONF.clone.fork_policy
        if policy == "disabled":
            raise refuse(
                "forking servers is disabled in this cloud ([clone] fork_policy=disabled)"
            )
        if policy == "admin" and not context.is_admin:
            raise refuse("only admins may fork servers in this cloud ([clone] fork_policy=admin)")
        try:
            master = objects.Instance.get_by_uuid(context, master_uuid)
        except exception.InstanceNotFound:
            master = None
        if master is None or (policy == "project" and master.project_id != instance.project_id):
            raise refuse(f"project {instance.project_id} has no such server")
        if master.host != CONF.host:
            raise refuse(f"it runs on another host (fork on host {master.host})")
        return master

    def _generation_for(
        self, context: Any, instance: Any, generation_id: str, properties: dict[str, str]
    ) -> api.Generation:
        """The generation from this host's store; one blessed on another host
        is attached through this host's page service first. Either way it
        must be bound to the instance's image."""
        attached = False
        if generation_id not in self.clone_engine.store.generation_ids():
            origin_host = properties.get(live_image.ORIGIN_HOST)
            if not origin_host or origin_host == CONF.host:
                raise exception.ImageUnacceptable(
                    image_id=instance.image_ref,
                    reason=f"snapshot generation {generation_id} is not on host "
                    f"{CONF.host} and the live image names no other origin "
                    f"host ({live_image.ORIGIN_HOST})",
                )
            self._attach(
                instance,
                generation_id,
                self._page_service_of(instance, origin_host),
                properties.get(live_image.ACCESS_KEY, ""),
            )
            attached = True
        generation = self.clone_engine.store.load(generation_id)
        bound_image = generation.bound_to.get(live_image.BOUND_IMAGE)
        if bound_image != instance.image_ref:
            if attached:
                self._release_quietly(generation_id)
            raise exception.ImageUnacceptable(
                image_id=instance.image_ref,
                reason=f"snapshot generation {generation_id} belongs to another live "
                "image; only the image made by its bless launches it",
            )
        self._check_matches(instance, generation)
        return generation

    def _page_service_of(self, instance: Any, host: str) -> str:
        """The page service address that ``host`` publishes in nova's record
        of it (see get_available_resource)."""
        admin = nova_context.get_admin_context()
        try:
            nodes = objects.ComputeNodeList.get_all_by_host(admin, host)
        except exception.ComputeHostNotFound:
            nodes = []
        addresses = [
            n.stats.get(STAT_PAGE_SERVICE) for n in nodes if (n.stats or {}).get(STAT_PAGE_SERVICE)
        ]
        if not addresses:
            raise exception.ImageUnacceptable(
                image_id=instance.image_ref,
                reason=f"the live image's origin host {host} is not a compute host "
                "of this cloud with a page service",
            )
        return addresses[0]

    def _page_service(self) -> control.PageServiceClient:
        return control.PageServiceClient(
            control.socket_path(CONF.clone.state_dir, CONF.pageserver.control_socket)
        )

    def _release_quietly(self, generation_id: str) -> None:
        try:
            self._page_service().release(generation_id)
        except control.PageServiceError as exc:
            LOG.warning("Could not release generation %s: %s", generation_id, exc)

    def _attach(self, instance: Any, generation_id: str, origin_address: str, key: str) -> None:
        prefetch = (instance.flavor.extra_specs or {}).get(extra_specs.PREFETCH, "none")
        try:
            reply = self._page_service().attach(generation_id, origin_address, key, prefetch)
        except control.PageServiceUnavailable as exc:
            # This host's fault: let nova try another one.
            raise exception.ComputeResourcesUnavailable(reason=str(exc)) from exc
        except control.PageServiceError as exc:
            raise exception.ImageUnacceptable(
                image_id=instance.image_ref,
                reason=f"cannot present snapshot generation {generation_id} of "
                f"{origin_address} on host {CONF.host}: {exc}",
            ) from exc
        LOG.info(
            "Attached generation %s of %s (prefetch %s: %s)",
            generation_id,
            origin_address,
            prefetch,
            reply,
            instance=instance,
        )

    def _check_matches(self, instance: Any, generation: api.Generation) -> None:
        memory_mb = generation.memory_bytes >> 20
        if (instance.flavor.memory_mb, instance.flavor.vcpus) != (memory_mb, generation.vcpus):
            raise exception.ImageUnacceptable(
                image_id=instance.image_ref,
                reason=f"a clone must match its master: flavor {instance.flavor.name} "
                f"has {instance.flavor.memory_mb} MB and {instance.flavor.vcpus} "
                f"vCPUs but the live image's master had {memory_mb} MB and "
                f"{generation.vcpus} vCPUs",
            )

    def _check_free_memory(self, generation: api.Generation) -> None:
        """Clones share memory until they write it; refuse a new one when the
        host is really short, so nova reschedules it instead of this host
        swapping or meeting the OOM killer."""
        floor_mib = CONF.clone.min_free_memory_mib
        available_mib = hostmem.mem_available_mib()
        if available_mib < floor_mib:
            raise exception.ComputeResourcesUnavailable(
                reason=f"host {CONF.host} has {available_mib} MiB of memory "
                f"available, below [clone] min_free_memory_mib={floor_mib}; "
                f"not starting another clone of {generation.id}"
            )

    # -- lifecycle -----------------------------------------------------------

    def destroy(
        self,
        context: Any,
        instance: Any,
        network_info: Any,
        block_device_info: Any = None,
        destroy_disks: bool = True,
        destroy_secrets: bool = True,
    ) -> None:
        super().destroy(
            context, instance, network_info, block_device_info, destroy_disks, destroy_secrets
        )
        try:
            self.clone_engine.destroy_clone(instance.uuid)
        except api.CloneNotFound:
            return  # not a clone

    def manage_image_cache(self, context: Any, all_instances: Any) -> None:
        super().manage_image_cache(context, all_instances)
        generations = self.clone_engine.generations()  # one read of the store
        self._free_generations_of_deleted_images(generations)
        self._free_unused_forks(generations)

    def _free_unused_forks(self, generations: list[api.Generation]) -> None:
        """A fork's generation serves the burst that made it: once older
        than ``fork_reuse_s`` it is freed with its last clone."""
        for generation in generations:
            if (
                not generation.bound_to.get(live_image.BOUND_FORK_OF)
                or api.age_s(generation.created_at) <= CONF.clone.fork_reuse_s
            ):
                continue
            try:
                self.clone_engine.discard(generation.id)
            except api.GenerationInUse:
                continue
            LOG.info(
                "Freed generation %s of a fork of %s: no clone uses it any more",
                generation.id,
                generation.bound_to[live_image.BOUND_FORK_OF],
            )

    def _free_generations_of_deleted_images(self, generations: list[api.Generation]) -> None:
        """Glance does not tell nova when an image is deleted: ask it about
        the live image of each generation blessed here."""
        live = [
            (g.id, g.bound_to[live_image.BOUND_IMAGE])
            for g in generations
            if not g.origin and live_image.BOUND_IMAGE in g.bound_to
        ]
        if not live:
            return
        # The periodic task's context carries no token, so Glance is asked
        # as nova's service user ([service_user], which nova also needs for
        # its service tokens); it must see every project's images.
        context = _call_or_error(nova_context.get_nova_service_user_context)
        if isinstance(context, Exception):  # bad configuration or keystone down
            LOG.warning(
                "Cannot ask Glance whether the live images of generations "
                "%s still exist, so they are kept: %s: %s",
                ", ".join(g for g, _ in live),
                type(context).__name__,
                context,
            )
            return
        for generation_id, image_id in live:
            if self._live_image_exists(context, image_id):
                continue
            try:
                self.clone_engine.discard(generation_id)
            except api.GenerationInUse as exc:
                LOG.debug("Live image %s is deleted, keeping its generation: %s", image_id, exc)
                continue
            except api.GenerationNotFound:
                continue  # freed meanwhile
            LOG.info(
                "Freed generation %s: its live image %s is deleted and no clone uses it any more",
                generation_id,
                image_id,
            )

    def _live_image_exists(self, context: Any, image_id: str) -> bool:
        """False only when Glance says the image is gone; an error keeps it."""
        image = _call_or_error(self._image_api.get, context, image_id)
        if isinstance(image, exception.ImageNotFound):
            return False
        if isinstance(image, Exception):  # Glance unreachable or refusing
            LOG.warning(
                "Cannot ask Glance whether live image %s still exists, "
                "keeping its generation: %s: %s",
                image_id,
                type(image).__name__,
                image,
            )
            return True
        return image.get("status") != "deleted"

    def update_provider_tree(
        self, provider_tree: Any, nodename: str, allocations: Any = None
    ) -> None:
        super().update_provider_tree(provider_tree, nodename, allocations)
        provider_tree.add_traits(nodename, TRAIT_LIVE_CLONE)

    # -- operations clones do not support --------------------------------------

    def _refuse_for_clone(self, instance: Any, operation: str) -> str | None:
        if self.clone_engine.find_clone(instance.uuid) is None:
            return None
        return (
            f"{operation} is not supported for live clones: the clone's "
            "memory is a private mapping of a snapshot on this host"
        )

    def _refuse_for_clone_or_master(self, instance: Any, operation: str) -> str | None:
        reason = self._refuse_for_clone(instance, operation)
        disk = os.path.join(libvirt_utils.get_instance_path(instance), "disk")
        if reason or api.current_top(disk) == disk:
            return reason
        # The disk is a chain of frozen layers in the instance folder,
        # which nova would not carry along.
        return (
            f"{operation} is not supported for a server that has been blessed "
            "(a live image or fork was made of it): its disk is a chain of "
            "frozen layers on this host"
        )

    def migrate_disk_and_power_off(
        self,
        context: Any,
        instance: Any,
        dest: str,
        flavor: Any,
        network_info: Any,
        block_device_info: Any = None,
        timeout: int = 0,
        retry_interval: int = 0,
    ) -> Any:
        reason = self._refuse_for_clone_or_master(instance, "resize and cold migration")
        if reason:
            raise exception.InstanceFaultRollback(
                inner_exception=exception.ResizeError(reason=reason)
            )
        return super().migrate_disk_and_power_off(
            context,
            instance,
            dest,
            flavor,
            network_info,
            block_device_info,
            timeout,
            retry_interval,
        )

    def check_can_live_migrate_source(
        self, context: Any, instance: Any, dest_check_data: Any, block_device_info: Any = None
    ) -> Any:
        reason = self._refuse_for_clone_or_master(instance, "live migration")
        if reason:
            raise exception.MigrationPreCheckError(reason=reason)
        return super().check_can_live_migrate_source(
            context, instance, dest_check_data, block_device_info
        )

    def suspend(self, context: Any, instance: Any) -> None:
        reason = self._refuse_for_clone(instance, "suspend")
        if reason:
            raise exception.InstanceSuspendFailure(reason=reason)
        return super().suspend(context, instance)

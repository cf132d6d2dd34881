"""minicloud: wait for the nova services, the compute node in placement,
the neutron agents and heat-engine, then upload the test guests and make
their flavors (idempotent):

- the busybox guest (kernel, ramdisk, an empty raw root): image "guest",
  flavors m1.guest and m1.guest.clone;
- the Debian guest (tools/build-debian-guest.sh; its generic kernel and
  initramfs, and its qcow2 root): image "debian" (with qemu-guest-agent,
  the guest hook off) and "debian-hook" (no agent, the guest hook on),
  flavors m1.debian and m1.debian.clone.

Run by tools/minicloud (cloud_setup) with MC, GUEST_DIR, DEBIAN_GUEST_DIR and
ETC set; it reads the admin's credentials from $ETC/openrc.
"""

import os
import subprocess
import sys
import time

import openstack

env = {}
with open(os.path.join(os.environ["ETC"], "openrc")) as openrc:
    for line in openrc:
        if line.startswith("export OS_"):
            k, v = line[len("export ") :].strip().split("=", 1)
            env[k] = v
conn = openstack.connect(
    auth_url=env["OS_AUTH_URL"],
    username=env["OS_USERNAME"],
    password=env["OS_PASSWORD"],
    project_name=env["OS_PROJECT_NAME"],
    user_domain_name="Default",
    project_domain_name="Default",
    region_name=env["OS_REGION_NAME"],
)


def wait(what, cond, timeout=180):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except Exception as e:  # a service still starting
            last = e
        else:
            last = None
        if time.monotonic() > deadline:
            sys.exit(f"minicloud: {what} not ready after {timeout} s ({last})")
        time.sleep(1)


def services_up():
    up = {s.binary for s in conn.compute.services() if s.state == "up" and s.status == "enabled"}
    return {"nova-conductor", "nova-scheduler", "nova-compute"} <= up


wait("nova-conductor, nova-scheduler, nova-compute", services_up)
wait("the compute node in placement", lambda: list(conn.placement.resource_providers()))
NEUTRON_AGENTS = {"Open vSwitch agent", "DHCP agent", "Metadata agent"}
wait(
    ", ".join(sorted(NEUTRON_AGENTS)),
    lambda: {a.agent_type for a in conn.network.agents() if a.is_alive} >= NEUTRON_AGENTS,
)
wait(
    "heat-engine",
    lambda: any(
        s["status"] == "up" for s in conn.orchestration.get("/services").json()["services"]
    ),
)

guest = os.environ["GUEST_DIR"]


def image(name, path, disk_format, **props):
    found = conn.image.find_image(name)
    if found and found.status == "active":
        return found
    if found:
        conn.image.delete_image(found)
    return conn.image.create_image(
        name=name,
        filename=path,
        disk_format=disk_format,
        container_format=disk_format if disk_format in ("aki", "ari") else "bare",
        visibility="public",
        wait=True,
        allow_duplicates=True,
        **props,
    )


kernel = image("guest-kernel", os.path.join(guest, "vmlinuz"), "aki")
ramdisk = image("guest-ramdisk", os.path.join(guest, "initrd.img"), "ari")
root = os.path.join(os.environ["MC"], "guest-root.raw")
if not os.path.exists(root):
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", root, "1M"], check=True)
image(
    "guest",
    root,
    "raw",
    kernel_id=kernel.id,
    ramdisk_id=ramdisk.id,
    os_command_line="console=ttyS0 quiet clone_agent.fill=32:4242",
)

debian = os.environ["DEBIAN_GUEST_DIR"]
debian_kernel = image("debian-kernel", os.path.join(debian, "vmlinuz-generic"), "aki")
debian_ramdisk = image("debian-ramdisk", os.path.join(debian, "initrd-generic"), "ari")
# "debian": the agent sets a clone's clock and name, the guest hook is off.
# "debian-hook": as a user's image without the agent, where the guest hook
# (tools/guest-hook) takes a clone's name from the metadata service.
for name, hook, properties in (
    ("debian", "nova_clone_hook=off", {"hw_qemu_guest_agent": "yes"}),
    ("debian-hook", "", {}),
):
    image(
        name,
        os.path.join(debian, "disk.qcow2"),
        "qcow2",
        kernel_id=debian_kernel.id,
        ramdisk_id=debian_ramdisk.id,
        os_command_line=f"root=/dev/vda rw console=ttyS0 quiet {hook}".strip(),
        **properties,
    )

for name, ram_mib, disk_gib in (("m1.guest", 256, 1), ("m1.debian", 512, 2)):
    for flavor_name, specs in ((name, {}), (f"{name}.clone", {"clone:enabled": "true"})):
        if not conn.compute.find_flavor(flavor_name):
            flavor = conn.compute.create_flavor(
                name=flavor_name, ram=ram_mib, vcpus=1, disk=disk_gib
            )
            if specs:
                conn.compute.create_flavor_extra_specs(flavor, specs)

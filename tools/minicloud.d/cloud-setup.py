"""minicloud: wait for the nova services, the compute node in placement
and heat-engine, then upload the test guest (kernel, ramdisk, an empty raw
root) and make the flavors m1.guest and m1.guest.clone (idempotent).

Run by tools/minicloud (cloud_setup) with MC, GUEST_DIR and ETC set; it
reads the admin's credentials from $ETC/openrc.
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
        container_format="bare" if disk_format == "raw" else disk_format,
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

for name, specs in (("m1.guest", {}), ("m1.guest.clone", {"clone:enabled": "true"})):
    flavor = conn.compute.find_flavor(name)
    if not flavor:
        flavor = conn.compute.create_flavor(name=name, ram=256, vcpus=1, disk=1)
        if specs:
            conn.compute.create_flavor_extra_specs(flavor, specs)

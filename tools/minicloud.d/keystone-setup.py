"""minicloud: the service projects, roles and users, heat's stack domain and
the catalog's services and endpoints, in keystone (idempotent).

Run by tools/minicloud (keystone_setup) with PW, IP and REGION set, as the
bootstrap admin.
"""

import os

import openstack

pw, ip, region = os.environ["PW"], os.environ["IP"], os.environ["REGION"]
conn = openstack.connect(
    auth_url=f"http://{ip}:5000/v3",
    username="admin",
    password=pw,
    project_name="admin",
    user_domain_name="Default",
    project_domain_name="Default",
    region_name=region,
)
idt = conn.identity
default = idt.find_domain("default")
service = idt.find_project("service", domain_id=default.id) or idt.create_project(
    name="service", domain_id=default.id
)
admin_role = idt.find_role("admin")
for role in ("member", "reader", "service", "heat_stack_owner", "heat_stack_user"):
    idt.find_role(role) or idt.create_role(name=role)
admin_user = idt.find_user("admin", domain_id=default.id)
admin_project = idt.find_project("admin", domain_id=default.id)
idt.assign_project_role_to_user(admin_project, admin_user, idt.find_role("heat_stack_owner"))
for name in ("glance", "placement", "neutron", "nova", "heat", "swift"):
    user = idt.find_user(name, domain_id=default.id) or idt.create_user(
        name=name, password=pw, domain_id=default.id
    )
    idt.assign_project_role_to_user(service, user, admin_role)
    # keystonemiddleware accepts service tokens (X-Service-Token, which
    # nova sends with user tokens) only with this role.
    idt.assign_project_role_to_user(service, user, idt.find_role("service"))
# Heat's domain for the users it makes for stacks.
heat_domain = idt.find_domain("heat") or idt.create_domain(name="heat")
heat_admin = idt.find_user("heat_domain_admin", domain_id=heat_domain.id) or idt.create_user(
    name="heat_domain_admin", password=pw, domain_id=heat_domain.id
)
idt.assign_domain_role_to_user(heat_domain, heat_admin, admin_role)

catalog = {
    "glance": ("image", f"http://{ip}:9292"),
    "placement": ("placement", f"http://{ip}:8778"),
    "neutron": ("network", f"http://{ip}:9696"),
    "nova": ("compute", f"http://{ip}:8774/v2.1"),
    "heat": ("orchestration", f"http://{ip}:8004/v1/%(tenant_id)s"),
    "swift": ("object-store", f"http://{ip}:8080/v1/AUTH_%(project_id)s"),
}
for name, (stype, url) in catalog.items():
    svc = next((s for s in idt.services() if s.type == stype), None) or idt.create_service(
        name=name, type=stype, is_enabled=True
    )
    have = {e.interface for e in idt.endpoints(service_id=svc.id)}
    for interface in ("public", "internal", "admin"):
        if interface not in have:
            idt.create_endpoint(service_id=svc.id, interface=interface, url=url, region_id=region)

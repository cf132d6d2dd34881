# shellcheck shell=bash
# minicloud: Open vSwitch with its userspace ("netdev") datapath, the data
# plane of neutron's Open vSwitch agent. These kernels have no openvswitch
# module (no modules at all): the switch is ovs-vswitchd itself, reading and
# writing every port through AF_PACKET sockets, so it needs nothing of the
# kernel but veth and tap. Its database is $MC/ovs/conf.db; its socket is
# Open vSwitch's default (/run/openvswitch/db.sock, and its pid files and
# control sockets beside it), where libvirt's own ovs-vsctl calls look for
# it when it plugs an instance's tap.

OVS_RUN=/run/openvswitch
OVS_DB_SOCK=$OVS_RUN/db.sock
# The bridge behind neutron's provider network physnet1 (tenant VLANs): no
# uplink, so tenant traffic stays on this host.
OVS_PHYSICAL_BRIDGE=br-phys

configure_ovs() {  # the database, made once (the bridges are neutron's)
    install -d "$MC/ovs" "$OVS_RUN"
    [[ -f $MC/ovs/conf.db ]] || ovsdb-tool create "$MC/ovs/conf.db" \
        /usr/share/openvswitch/vswitch.ovsschema
}

start_ovs() {  # ovsdb-server, then ovs-vswitchd, then the provider bridge
    spawn ovsdb-server ovsdb-server "$MC/ovs/conf.db" --remote="punix:$OVS_DB_SOCK" \
        --remote=db:Open_vSwitch,Open_vSwitch,manager_options --pidfile
    wait_for ovsdb-server 30 ovs-vsctl --no-wait show
    ovs-vsctl --no-wait init
    # Without it ovs-vswitchd hands on a guest's or a namespace's packets
    # with the checksum still left to the NIC (offloaded), and whoever gets
    # them drops them (tried: ARP between two namespaces resolved, TCP timed
    # out). With it, it keeps the virtio-net header that says so.
    ovs-vsctl --no-wait set Open_vSwitch . other_config:userspace-tso-enable=true
    spawn ovs-vswitchd ovs-vswitchd "unix:$OVS_DB_SOCK" --pidfile
    wait_for ovs-vswitchd 30 ovs-appctl -t ovs-vswitchd version
    ovs-vsctl --may-exist add-br "$OVS_PHYSICAL_BRIDGE" -- \
        set Bridge "$OVS_PHYSICAL_BRIDGE" datapath_type=netdev
}

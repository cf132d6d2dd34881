#!/bin/bash
# devstack plugin of nova-clonedriver: installs the package and makes
# nova-compute load CloneDriver. (Page service, flavors and scheduler
# settings come with the issues that build them.)

if [[ "$1" == "stack" && "$2" == "install" ]]; then
    # Not editable: nova finds the driver only as nova/virt/clonedriver in
    # its own package folder, which an editable install does not create.
    pip_install "$NOVA_CLONEDRIVER_DIR"
elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
    iniset "$NOVA_CPU_CONF" DEFAULT compute_driver clonedriver.CloneDriver
    iniset "$NOVA_CPU_CONF" clone state_dir "$NOVA_CLONEDRIVER_STATE_DIR"
    sudo install -d -m 0711 "$NOVA_CLONEDRIVER_STATE_DIR"
fi
if [[ "$1" == "clean" ]]; then
    sudo rm -rf "$NOVA_CLONEDRIVER_STATE_DIR"
fi

"""The clone engine: bless running libvirt domains, launch lazy clones.

Knows libvirt and QEMU, nothing of nova.
"""

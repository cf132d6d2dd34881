"""Parts of nova-clonedriver that run in nova's scheduler."""

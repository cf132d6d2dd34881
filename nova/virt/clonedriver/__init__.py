# nova loads compute drivers only from its own namespace
# (nova.virt.<compute_driver>), so compute_driver = clonedriver.CloneDriver
# resolves here. This module only re-exports the driver.
from nova_clonedriver.virt.driver import CloneDriver

__all__ = ["CloneDriver"]

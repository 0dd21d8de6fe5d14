"""virtio 1.x devices: split virtqueues, the MMIO transport, and the blk, rng and console
devices. :mod:`.attach` is how the machine builds them from QEMU options."""

"""PCI: the host bridge and config access (host.py), bus 0 (root.py), a function's config
space (config.py), BAR placement (allocator.py), MSI-X (msix.py, sinks.py), and the builder
that wires QEMU's ``-device *-pci`` options (builder.py)."""

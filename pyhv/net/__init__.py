"""Host network back-ends for guest NICs: TAP and QEMU's stream/dgram sockets (``-netdev``)."""

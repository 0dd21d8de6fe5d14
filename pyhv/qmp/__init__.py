"""QEMU's machine protocol (QMP) served by a pyhv VM process."""

"""Test support shipped with pyhv: the differential harness that checks the software CPU
against the real CPU behind /dev/kvm (see :mod:`pyhv.testing.differential`)."""

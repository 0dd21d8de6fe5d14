"""Management as libvirt does it: domain XML, a store of domains, a virsh-like CLI."""

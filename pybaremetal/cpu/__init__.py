"""How flat binaries execute.  kvm: hardware virtualization over the machine's own memory."""

"""The contract's numbers (baremetal-api.md), read from the C core: nothing is typed twice.

The function codes are libBareMetal.h's, the physical map, sizes and limits are native/base.h's
and net.h's, all declared to cffi in native/*.cdef and read here from ``lib``.  Names keep
upstream's spellings so a BareMetal programmer recognises them.  Only what C does not define
is written here: the names of the call table's entries."""
from ._native import lib

# b_system function codes: every upper-case name of lib that is not the core's own (BM_*)
FUNCTION_CODES = {name: getattr(lib, name) for name in dir(lib)
                  if name.isupper() and not name.startswith("BM_")}
globals().update(FUNCTION_CODES)

# sizes
SECTOR_SIZE = lib.BM_SECTOR_SIZE         # b_nvs_* sectors, whatever the medium's own
PAGE_SIZE = lib.BM_PAGE_SIZE             # upstream's page: 2 MiB
SYSTEM_SIZE = lib.BM_SYSTEM_SIZE         # the low 2 MiB mirror the physical map
FRAME_MIN = lib.BM_FRAME_MIN             # b_net_tx: an Ethernet header
FRAME_MAX = lib.BM_FRAME_MAX             # upstream's limit (1518 + VLAN tag)

# the physical memory map (section 4): BM_INFOMAP_* -> INFOMAP_*, ...
for _name in dir(lib):
    if _name.startswith("BM_INFOMAP") or _name in ("BM_KERNEL", "BM_CALL_TABLE", "BM_SMP_TABLE"):
        globals()[_name[3:]] = getattr(lib, _name)
SYSVAR_FREE_MIB = lib.BM_SYSVAR_FREE_MIB  # u32: the kernel's copy of free memory
APP_BASE = lib.BM_APP_VIRTUAL             # where flat binaries are linked to run
# the call table at CALL_TABLE holds 8 bytes per call, in this order:
CALLS = ("b_input", "b_output", "b_net_tx", "b_net_rx", "b_nvs_read", "b_nvs_write", "b_system")

__all__ = sorted(name for name in globals() if name.isupper())

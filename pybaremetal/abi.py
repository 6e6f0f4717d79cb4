"""The contract's numbers (baremetal-api.md): function codes, sizes, addresses, InfoMap offsets.

Names keep upstream's spellings so a BareMetal programmer recognises them."""

# b_system function codes
TIMECOUNTER = 0x00
FREE_MEMORY = 0x01
SMP_ID = 0x10
SMP_NUMCORES = 0x11
SMP_SET = 0x12
SMP_GET = 0x13
SMP_LOCK = 0x14
SMP_UNLOCK = 0x15
SMP_BUSY = 0x16
TSC = 0x1F
SCREEN_LFB_GET = 0x20
SCREEN_X_GET = 0x21
SCREEN_Y_GET = 0x22
SCREEN_PPSL_GET = 0x23
SCREEN_BPP_GET = 0x24
NET_STATUS = 0x30
NET_CONFIG = 0x31
BUS_READ = 0x50
BUS_WRITE = 0x51
STDOUT_SET = 0x52
STDOUT_GET = 0x53
CALLBACK_TIMER = 0x60
CALLBACK_NETWORK = 0x61
CALLBACK_KEYBOARD = 0x62
DUMP_MEM = 0x70
DUMP_RAX = 0x71
DELAY = 0x72
RESET = 0x7D
REBOOT = 0x7E
SHUTDOWN = 0x7F

FUNCTION_CODES = {name: value for name, value in globals().items() if name.isupper()}

# sizes
SECTOR_SIZE = 4096                 # b_nvs_* sectors, whatever the medium's own
PAGE_SIZE = 2 << 20                # upstream's page: 2 MiB
SYSTEM_SIZE = 2 << 20              # the low 2 MiB mirror the physical map
FRAME_MIN = 14                     # b_net_tx: an Ethernet header
FRAME_MAX = 1522                   # upstream's limit (1518 + VLAN tag)

# the physical memory map (section 4)
INFOMAP = 0x5000
INFOMAP_BSP_ID = 0x5008            # u32
INFOMAP_CPU_MHZ = 0x5010           # u16
INFOMAP_CORES_ACTIVE = 0x5012      # u16
INFOMAP_CORES_DETECTED = 0x5014    # u16
INFOMAP_RAM_MIB = 0x5020           # u32
INFOMAP_LFB_BASE = 0x5080          # u64
INFOMAP_LFB_X = 0x5088             # u16
INFOMAP_LFB_Y = 0x508A             # u16
INFOMAP_LFB_PPSL = 0x508C          # u16
INFOMAP_LFB_BPP = 0x508E           # u16
INFOMAP_APIC_IDS = 0x5100          # u32 per core
KERNEL = 0x100000
CALL_TABLE = 0x100010              # 8 bytes per call, in this order:
CALLS = ("b_input", "b_output", "b_net_tx", "b_net_rx", "b_nvs_read", "b_nvs_write", "b_system")
SYSVAR_FREE_MIB = 0x110104         # u32: the kernel's copy of free memory
SMP_TABLE = 0x1FF800               # u64 per core: bit 0 present, bit 1 active, code in 63:4
APP_BASE = 0xFFFF800000000000      # where flat binaries are linked to run

"""What the machine says about itself, through b_system and the InfoMap in flat memory.

    baremetal run examples/sysinfo.py [--cores N] [--memory SIZE]
"""
import pybaremetal as bm


def u16(memory, address):
    return int(memory[address:address + 2].view("<u2")[0])


def u32(memory, address):
    return int(memory[address:address + 4].view("<u4")[0])


def main():
    machine = bm.current_machine()
    mem = machine.memory
    cores = bm.b_system(bm.SMP_NUMCORES)
    lines = [
        "BareMetal system information (hosted by pybaremetal)",
        f"  cores            {cores} (this is core {bm.b_system(bm.SMP_ID)})",
        f"  memory           {machine.memory_size >> 20} MiB",
        f"  free memory      {bm.b_system(bm.FREE_MEMORY)} MiB",
        f"  time counter     {bm.b_system(bm.TIMECOUNTER)} ns since boot",
        f"  TSC              {bm.b_system(bm.TSC)}",
        "InfoMap (flat memory at 0x5000):",
        f"  BSP APIC id      {u32(mem, bm.INFOMAP_BSP_ID)}",
        f"  CPU speed        {u16(mem, bm.INFOMAP_CPU_MHZ)} MHz",
        f"  cores active     {u16(mem, bm.INFOMAP_CORES_ACTIVE)}",
        f"  cores detected   {u16(mem, bm.INFOMAP_CORES_FOUND)}",
        f"  RAM              {u32(mem, bm.INFOMAP_RAM_MIB)} MiB",
        f"  APIC ids         {[u32(mem, bm.INFOMAP_APIC_IDS + 4 * i) for i in range(cores)]}",
        f"  kernel free word {u32(mem, bm.SYSVAR_FREE_MIB)} MiB (at 0x110104)",
    ]
    bm.b_output("\n".join(lines) + "\n")
    return 0

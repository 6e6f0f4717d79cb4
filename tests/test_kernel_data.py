"""What the kernel leaves in memory for apps (issue 17 item 4): the empty, terminated PCI bus
table at 0x118000, the NIC table at 0x11A000, storage flags, InfoMap 0x5010/0x5016/0x5017,
and one memory accounting (RAM, the kernel's free word, FREE_MEMORY), read the way apps read
them: from Python, from a flat binary under KVM, and from a C app through the low window."""
import os
import subprocess

import pytest

import pybaremetal as bm
from pybaremetal.apps import binary
from pybaremetal.cpu import kvm

MACS = ["10:11:12:00:1A:F4", "02:00:00:00:00:0B"]


def u8(m, p):
    return int(m.memory[p])


def u16(m, p):
    return int(m.memory[p:p + 2].view("<u2")[0])


def u32(m, p):
    return int(m.memory[p:p + 4].view("<u4")[0])


def address_sizes():
    """(physical, virtual) address bits, as /proc/cpuinfo reports CPUID 0x80000008."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("address sizes"):
                words = line.split(":")[1].split()
                return int(words[0]), int(words[3])
    return 0, 0


@pytest.fixture
def drive(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(1 << 20))
    return str(path)


def test_tables_and_flags_describe_the_machine(drive):
    nics = [f"wire,mac={mac}" for mac in MACS]
    with bm.Machine(cores=2, memory="64M", console="capture", input=False, pin=False,
                    nics=nics, drives=[drive]) as m:
        m.boot()
        assert m.memory[0x118000:0x118010].tobytes() == b"\xff" * 16     # empty bus table, ended
        assert u8(m, 0x110303) == 0                                      # no PCI bus modelled
        for i, mac in enumerate(MACS):
            at = 0x11A000 + 128 * i + 8
            assert m.memory[at:at + 6].tobytes() == bytes.fromhex(mac.replace(":", ""))
        assert (u8(m, 0x11031B), u8(m, 0x110304)) == (2, 1)             # NIC count, enabled
        assert u16(m, 0x110208) == 1                                     # storage: NVMe bit
        assert u16(m, 0x5010) == 0                                       # current loaders: 0 MHz
        assert (u8(m, 0x5016), u8(m, 0x5017)) == address_sizes()
        assert u16(m, 0x110200) == 2


def test_a_machine_without_nics_or_drives_says_so():
    with bm.Machine(cores=1, memory="16M", console="capture", input=False) as m:
        m.boot()
        assert (u8(m, 0x11031B), u8(m, 0x110304), u16(m, 0x110208)) == (0, 0, 0)
        assert m.memory[0x11A008:0x11A00E].tobytes() == bytes(6)


@pytest.mark.parametrize("screen, ram", [(None, 256), ("1024x768", 252)])
def test_one_memory_accounting_ram_free_word_and_free_memory(screen, ram):
    """Upstream: the kernel keeps 2 MiB and reports RAM - 2 as free, in its word and through
    FREE_MEMORY.  Hosted RAM is the memory less the frame buffer (3 MiB -> two 2 MiB pages)."""
    with bm.Machine(cores=1, memory="256M", console="capture", input=False, screen=screen) as m:
        free = m.run(lambda: bm.b_system(bm.FREE_MEMORY))
        assert (u32(m, 0x5020), u32(m, 0x110104), free) == (ram, ram - 2, ram - 2)


SCAN = """BITS 64
DEFAULT REL
ORG 0xFFFF800000000000
    mov rsi, 0x118000            ; walk the bus table as sysinfo does
    xor ebx, ebx
next:
    lodsq
    cmp ax, 0xFFFF
    je done
    inc ebx
    lodsq
    jmp next
done:
    mov rsi, 0x11A008            ; NIC 0's MAC, as hello_http prints it
    mov ecx, 6
    call [abs 0x100018]
    mov ecx, 1                   ; FREE_MEMORY
    call [abs 0x100040]
    cmp eax, [abs 0x110104]      ; the free word is FREE_MEMORY (the image's pages taken out)
    jne bad
    mov edx, [abs 0x5020]
    cmp edx, 32                  ; RAM: the machine's 32 MiB
    jne bad
    mov eax, ebx                 ; the number of bus records: 0
    ret
bad:
    mov eax, 77
    ret
"""


@pytest.mark.skipif(not kvm.available(), reason="needs /dev/kvm")
def test_a_flat_binary_reads_the_bus_and_nic_tables(tmp_path):
    source, image = tmp_path / "scan.asm", tmp_path / "scan.app"
    source.write_text(SCAN)
    subprocess.run(["nasm", "-f", "bin", str(source), "-o", str(image)], check=True)
    with bm.Machine(cores=1, memory="32M", console="capture", input=False,
                    nics=[f"wire,mac={MACS[0]}"]) as m:
        code = binary.run(m, str(image), [])
        out = m.console.output()
    assert code == 0 and out == bytes.fromhex(MACS[0].replace(":", ""))


def test_a_c_app_reads_them_through_the_low_window(tmp_path):
    from pybaremetal.apps import c as capps
    path = tmp_path / "tables.c"
    path.write_text(r"""#include "libBareMetal.h"
#include <stdio.h>
int main(void)
{
	int records = 0;
	for (u16 *record = (u16 *)0x118000; *record != 0xFFFF; record += 8)
		records++;
	u8 *mac = (u8 *)0x11A008;
	printf("%d %02X:%02X:%02X:%02X:%02X:%02X %u %u %lu\n", records, mac[0], mac[1], mac[2],
	       mac[3], mac[4], mac[5], *(u32 *)0x5020, *(u32 *)0x110104, b_system(FREE_MEMORY, 0, 0));
	return 0;
}
""")
    out = tmp_path / "out.txt"
    with bm.Machine(cores=1, memory="32M", console="capture", input=False,
                    nics=[f"wire,mac={MACS[0]}"]) as m:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT)
        saved = os.dup(1)
        os.dup2(fd, 1)
        try:
            assert capps.run(m, str(path), []) == 0
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(fd)
    assert out.read_text() == f"0 {MACS[0]} 32 30 30\n"

/* kernel_data.c -- the data upstream's loader (Pure64) and kernel leave in the system area for
 * apps to read, filled from the machine this process hosts (baremetal-api.md section 4):
 *
 * - InfoMap: 0x5010 core speed is 0 (current loaders leave it so); 0x5016/0x5017 the CPU's
 *   physical and linear address bits, from CPUID 0x80000008 as Pure64 reads them; 0x5020 RAM.
 * - One memory accounting, upstream's: the kernel keeps 2 MiB of RAM for itself and reports
 *   the rest as free (os_MemAmount at 0x110104 = RAM - 2, and FREE_MEMORY returns that word).
 *   Hosted, RAM is the machine's memory less what hosted devices take out of it before boot
 *   (the frame buffer, which on a real machine is not RAM), and the kernel's 2 MiB is the
 *   system area's page.  So at boot FREE_MEMORY == [0x110104] == [0x5020] - 2; memory the app
 *   allocates later (machine.alloc, a binary's image, a screen asked for at run time) lowers
 *   FREE_MEMORY and the word together.
 * - The kernel's copies of InfoMap values (cores, core speed, screen) at 0x110200.., 0x1100C0.
 * - The PCI bus table at 0x118000: a hosted machine models no PCI devices (BUS_READ reads
 *   nothing), so it is empty: just the end record, 16 bytes of 0xFF, which apps look for.
 * - The network table at 0x11A000: per NIC (NET_STATUS order) 128 bytes, its MAC at +8 in wire
 *   byte order; the NIC count at 0x11031B and the "network enabled" byte at 0x110304.
 * - Storage flags at 0x110208: drives are served as the kernel's NVMe driver serves them
 *   (bit 0) when the machine has any.
 */
#include <cpuid.h>
#include <string.h>
#include "machine.h"
#include "kernel_data.h"

static void put8(struct bm_machine *m, u64 p, u8 v) { m->mem[p] = v; }
static void put16(struct bm_machine *m, u64 p, u16 v) { memcpy(m->mem + p, &v, 2); }
static void put32(struct bm_machine *m, u64 p, u32 v) { memcpy(m->mem + p, &v, 4); }
static void put64(struct bm_machine *m, u64 p, u64 v) { memcpy(m->mem + p, &v, 8); }
static u16 get16(struct bm_machine *m, u64 p) { u16 v; memcpy(&v, m->mem + p, 2); return v; }
static u64 get64(struct bm_machine *m, u64 p) { u64 v; memcpy(&v, m->mem + p, 8); return v; }

/* address_bits -- the CPU's physical and linear address widths, as Pure64 records them
 *  IN:  phys, virt = where to store them
 * OUT:  nothing (0 and 0 when CPUID has no leaf 0x80000008) */
static void address_bits(u8 *phys, u8 *virt)
{
	unsigned a = 0, b, c, d;
	*phys = *virt = 0;
	if (__get_cpuid_max(0x80000000, NULL) >= 0x80000008 && __get_cpuid(0x80000008, &a, &b, &c, &d)) {
		*phys = (u8)(a & 0xFF);
		*virt = (u8)((a >> 8) & 0xFF);
	}
}

/* bm_kernel_data_write -- fill what the loader and kernel leave for apps (see the top); called
 * at boot after the InfoMap and the free-memory word are written
 *  IN:  m, booting (no core runs)
 * OUT:  nothing */
void bm_kernel_data_write(struct bm_machine *m)
{
	u32 free_mib = (u32)(m->pages_free * (BM_PAGE_SIZE >> 20));
	u8 phys, virt;
	address_bits(&phys, &virt);
	put16(m, BM_INFOMAP_CPU_MHZ, 0);
	put8(m, BM_INFOMAP_PHYS_BITS, phys);
	put8(m, BM_INFOMAP_VIRT_BITS, virt);
	put32(m, BM_INFOMAP_RAM_MIB, free_mib + (u32)(BM_SYSTEM_SIZE >> 20));
	put32(m, BM_SYSVAR_FREE_MIB, free_mib);

	put16(m, BM_SYSVAR_NUM_CORES, get16(m, BM_INFOMAP_CORES_ACTIVE));
	put16(m, BM_SYSVAR_CORE_SPEED, 0);
	put64(m, BM_SYSVAR_SCREEN_LFB, get64(m, BM_INFOMAP_LFB_BASE));
	for (u64 i = 0; i < 4; i++)                  /* x, y, pixels per scan line, bits per pixel */
		put16(m, BM_SYSVAR_SCREEN_X + 2 * i, get16(m, BM_INFOMAP_LFB_X + 2 * i));

	put8(m, BM_SYSVAR_BUS_ENABLED, 0);
	memset(m->mem + BM_BUS_TABLE, 0xFF, 16);

	u32 nics = 0;
	for (; nics < BM_NET_TABLE_MAX; nics++) {
		u64 mac = bm_net_status(m, nics);
		if (mac == 0)
			break;
		u8 *entry = m->mem + BM_NET_TABLE + nics * BM_NET_TABLE_ENTRY;
		memset(entry, 0, BM_NET_TABLE_ENTRY);
		for (int i = 0; i < 6; i++)
			entry[BM_NET_TABLE_MAC + i] = (u8)(mac >> (8 * (5 - i)));
	}
	put8(m, BM_SYSVAR_NET_COUNT, (u8)nics);
	put8(m, BM_SYSVAR_NET_ENABLED, nics > 0);
	put16(m, BM_SYSVAR_NVS_FLAGS, atomic_load(&m->nvs.num_drives) > 0 ? BM_NVS_FLAG_NVME : 0);
}

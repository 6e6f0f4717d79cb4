/* kernel_data.h -- what upstream's loader and kernel leave in the system area (kernel_data.c). */
#ifndef BM_KERNEL_DATA_H
#define BM_KERNEL_DATA_H

#define BM_INFOMAP_PHYS_BITS    0x5016ull   /* u8: physical address bits (CPUID 0x80000008) */
#define BM_INFOMAP_VIRT_BITS    0x5017ull   /* u8: linear address bits */
#define BM_SYSVAR_SCREEN_LFB    0x1100C0ull /* u64: the kernel's copy of the frame buffer base */
#define BM_SYSVAR_NUM_CORES     0x110200ull /* u16 */
#define BM_SYSVAR_CORE_SPEED    0x110202ull /* u16: MHz, copied from 0x5010 */
#define BM_SYSVAR_NVS_FLAGS     0x110208ull /* u16: bit 0 NVMe, 1 AHCI, 2 virtio SCSI, 3 virtio block */
#define BM_SYSVAR_SCREEN_X      0x11020Aull /* u16 x, y, ppsl, bpp follow, 2 bytes each */
#define BM_SYSVAR_BUS_ENABLED   0x110303ull /* u8: 1 PCI, 2 PCIe, 0 none */
#define BM_SYSVAR_NET_ENABLED   0x110304ull /* u8: 1 if a NIC was enabled */
#define BM_SYSVAR_NET_COUNT     0x11031Bull /* u8: number of NICs (os_net_icount) */
#define BM_BUS_TABLE            0x118000ull /* 16-byte records, ended by one of 0xFF bytes */
#define BM_NET_TABLE            0x11A000ull /* 128 bytes per NIC; its MAC at +8 */
#define BM_NET_TABLE_ENTRY      128ull
#define BM_NET_TABLE_MAC        8ull
#define BM_NET_TABLE_MAX        64u         /* 0x11A000..0x11C000 */
#define BM_NVS_FLAG_NVME        1u

void bm_kernel_data_write(struct bm_machine *m);

#endif

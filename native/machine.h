/* machine.h -- the internal structs every C file of the core shares.
 *
 * A hosted BareMetal machine is a `struct bm_machine`: one flat memory region (the app's
 * "physical" memory: byte p of the contract's memory map is mem[p]), a set of cores (threads),
 * a console, drives and NICs.  Each subsystem owns its part of the struct in its own header
 * (io.h, smp.h, nvs.h, net.h) so that a change to one touches no other.
 *
 * Which machine does a plain C call like b_output() act on?  The calling thread's: every
 * core thread has `bm_self` (thread-local) pointing at its struct bm_core, which points at its
 * machine.  A thread that is not a core of any machine gets upstream's "nothing" value and a
 * recorded error (BM_ERR_NO_MACHINE) that the Python face turns into an exception.
 */
#ifndef BM_MACHINE_H
#define BM_MACHINE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include "libBareMetal.h"

/* The contract's physical map (baremetal-api.md section 4). */
#define BM_INFOMAP              0x5000ull
#define BM_INFOMAP_BSP_ID       0x5008ull   /* u32 */
#define BM_INFOMAP_CPU_MHZ      0x5010ull   /* u16 */
#define BM_INFOMAP_CORES_ACTIVE 0x5012ull   /* u16 */
#define BM_INFOMAP_CORES_FOUND  0x5014ull   /* u16 */
#define BM_INFOMAP_RAM_MIB      0x5020ull   /* u32 */
#define BM_INFOMAP_LFB_BASE     0x5080ull   /* u64 */
#define BM_INFOMAP_LFB_X        0x5088ull   /* u16 */
#define BM_INFOMAP_LFB_Y        0x508Aull   /* u16 */
#define BM_INFOMAP_LFB_PPSL     0x508Cull   /* u16 */
#define BM_INFOMAP_LFB_BPP      0x508Eull   /* u16 */
#define BM_INFOMAP_APIC_IDS     0x5100ull   /* u32 per core */
#define BM_KERNEL               0x100000ull
#define BM_CALL_TABLE           0x100010ull /* 8 bytes per call */
#define BM_SYSVARS              0x110000ull
#define BM_SYSVAR_FREE_MIB      0x110104ull /* u32 */
#define BM_SMP_TABLE            0x1FF800ull /* u64 per core */
#define BM_SYSTEM_SIZE          (2ull << 20) /* the low 2 MiB: the system area */
#define BM_PAGE_SIZE            (2ull << 20) /* upstream's page: 2 MiB */
#define BM_SECTOR_SIZE          4096ull
#define BM_MAX_CORES            256

/* Error codes recorded for the Python face (C callers get upstream's return values). */
enum bm_error_code {
	BM_OK = 0,
	BM_ERR_NO_MACHINE,      /* the calling thread is not a core of any machine */
	BM_ERR_ARGUMENT,        /* a bad argument (alignment, length, unknown id, ...) */
	BM_ERR_RANGE,           /* an address or sector outside what exists */
	BM_ERR_IO,              /* the host refused (errno in the message) */
	BM_ERR_STATE,           /* not possible in the machine's current state */
	BM_ERR_FULL,            /* out of memory / queue full / ring full */
};

struct bm_error {
	int code;
	char message[240];
};

/* The calling thread's last error.  Public calls clear it on entry. */
/* initial-exec TLS: one %fs-relative load instead of a __tls_get_addr call per access */
#define BM_TLS __thread __attribute__((tls_model("initial-exec")))
extern BM_TLS struct bm_error bm_error;
#define bm_error_clear() (bm_error.code = BM_OK)
/* Record an error (printf-style message); returns 0 so callers can `return bm_fail(...)`. */
u64 bm_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

struct bm_machine;
struct bm_guest;
#include "io.h"
#include "smp.h"
#include "nvs.h"
#include "net.h"

/* The linear frame buffer, described to the app by SCREEN_* and the InfoMap. */
struct bm_screen {
	u64 lfb;                /* physical address in flat memory, 0 when there is no screen */
	u32 x, y, ppsl, bpp;
};

enum bm_machine_state { BM_STATE_NEW, BM_STATE_RUNNING, BM_STATE_SHUTDOWN, BM_STATE_REBOOT, BM_STATE_HALTED };

struct bm_machine {
	u8 *mem;                /* flat memory, 2 MiB aligned; mem[p] is physical address p */
	u64 mem_size;           /* bytes, a multiple of 2 MiB */
	u32 num_cores;
	u32 cpu_mhz;            /* for the InfoMap; 0 when unknown */
	u64 boot_ns;            /* CLOCK_MONOTONIC at boot: TIMECOUNTER counts from here */
	_Atomic int state;      /* enum bm_machine_state */

	/* page allocator over [BM_SYSTEM_SIZE, mem_size), 2 MiB pages */
	pthread_mutex_t pages_lock;
	u64 num_pages;          /* pages in the whole region, system area included */
	u64 pages_free;
	u32 *page_run;          /* page_run[i] = length of the allocation starting at page i, 0 if none */
	u8 *page_used;

	_Atomic u64 callback[3]; /* CALLBACK_TIMER, _NETWORK, _KEYBOARD: function addresses */
	struct bm_guest *_Atomic guest; /* the run of a flat binary (guest.c), else NULL */
	_Atomic u32 guest_users;        /* threads that may be using `guest` (guest.c) */

	struct bm_console console;
	struct bm_smp smp;
	struct bm_nvs nvs;
	struct bm_net net;
	struct bm_screen screen;
};

/* The calling thread's core, NULL if the thread is not a core.  Defined in smp.c. */
extern BM_TLS struct bm_core *bm_self;

/* The calling thread's machine, or NULL with BM_ERR_NO_MACHINE recorded. */
static inline struct bm_machine *bm_current(void)
{
	struct bm_core *core = bm_self;
	if (__builtin_expect(core == NULL, 0)) {
		bm_fail(BM_ERR_NO_MACHINE, "this thread is not a core of a running machine");
		return NULL;
	}
	return core->machine;
}

/* A process address for physical address p of machine m. */
static inline void *bm_phys(struct bm_machine *m, u64 p) { return m->mem + p; }

/* 1 if [addr, addr+len) lies inside m's flat memory. */
static inline int bm_in_memory(struct bm_machine *m, const void *addr, u64 len)
{
	uintptr_t a = (uintptr_t)addr, base = (uintptr_t)m->mem;
	return a >= base && len <= m->mem_size && a - base <= m->mem_size - len;
}

u64 bm_now_ns(void);

/* system.c: errors, the machine's life, memory pages (IN/OUT comments at each definition) */
int bm_error_code(void);
const char *bm_error_message(void);
struct bm_machine *bm_machine_new(u8 *mem, u64 mem_size, u32 num_cores, int out_fd, int in_fd);
int bm_machine_boot(struct bm_machine *m);
void bm_machine_halt(struct bm_machine *m);
void bm_machine_stop_cores(struct bm_machine *m);
void bm_machine_free(struct bm_machine *m);
int bm_machine_state(struct bm_machine *m);
void bm_machine_set_cpu_mhz(struct bm_machine *m, u32 mhz);
void bm_screen_configure(struct bm_machine *m, u64 lfb, u32 x, u32 y, u32 ppsl, u32 bpp);
struct bm_core *bm_bind(struct bm_machine *m, u32 core_id);
void bm_unbind(struct bm_core *previous);
int bm_run_main(struct bm_machine *m, int (*app_main)(int, char **), int argc, char **argv, int *exit_code);
u64 bm_mem_alloc(struct bm_machine *m, u64 nbytes);
u64 bm_mem_reserve(struct bm_machine *m, u64 phys, u64 nbytes);
u64 bm_mem_free(struct bm_machine *m, u64 phys);
void bm_mem_reset(struct bm_machine *m);
u64 bm_dump_mem(u64 address, u64 shown, u64 length);

#endif

/* machine.c -- the machine's life: create, boot, reboot, halt, free; the system area; which
 * thread is which core (binding); the page allocator.
 *
 * C owns the whole lifecycle, so each step is one call from Python:
 *  - bm_machine_boot writes the system area, starts the clock, the cores and the callback
 *    service thread;
 *  - bm_machine_reboot (upstream's REBOOT) stops the other cores, zeroes memory, forgets every
 *    allocation but the screen's, and boots again;
 *  - bm_machine_halt tears everything down in one order: the service thread (no callback runs
 *    after it), the cores (no call is under way after them), the drives (flushed, closed, their
 *    final counters kept), the NICs (closed, counters kept), the low window.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "machine.h"
#include "lowmap.h"
#include "kernel_data.h"

/* ---- creation ------------------------------------------------------------------------------ */

/* bm_machine_new -- a machine over memory the caller mapped
 *  IN:  mem = 2 MiB-aligned region, mem_size = its size (multiple of 2 MiB, >= 4 MiB),
 *       num_cores = 1..256, out_fd / in_fd = console (in_fd -1: no input)
 * OUT:  the machine, or NULL with the error recorded */
struct bm_machine *bm_machine_new(u8 *mem, u64 mem_size, u32 num_cores, int out_fd, int in_fd)
{
	bm_error_clear();
	if (((uintptr_t)mem & (BM_PAGE_SIZE - 1)) != 0 || mem_size % BM_PAGE_SIZE != 0)
		return (void *)bm_fail(BM_ERR_ARGUMENT, "memory must be 2 MiB aligned and a multiple of 2 MiB");
	if (mem_size < 2 * BM_PAGE_SIZE)
		return (void *)bm_fail(BM_ERR_ARGUMENT, "memory must be at least 4 MiB");
	if (num_cores < 1 || num_cores > BM_MAX_CORES)
		return (void *)bm_fail(BM_ERR_ARGUMENT, "cores must be 1..%d, not %u", BM_MAX_CORES, num_cores);
	struct bm_machine *m = calloc(1, sizeof *m);
	if (m == NULL)
		return (void *)bm_fail(BM_ERR_FULL, "out of host memory");
	m->mem = mem;
	m->mem_size = mem_size;
	m->num_cores = num_cores;
	m->num_pages = mem_size / BM_PAGE_SIZE;
	m->page_run = calloc(m->num_pages, sizeof *m->page_run);
	m->page_used = calloc(m->num_pages, 1);
	pthread_mutex_init(&m->pages_lock, NULL);
	pthread_mutex_init(&m->service.lock, NULL);
	atomic_store(&m->service.timer_period_ns, BM_TIMER_DEFAULT_NS);
	bm_console_init(&m->console, out_fd, in_fd);
	if (m->page_run == NULL || m->page_used == NULL || bm_smp_init(m) != 0) {
		free(m->page_run);
		free(m->page_used);
		free(m);
		return (void *)bm_fail(BM_ERR_FULL, "out of host memory");
	}
	m->page_used[0] = 1;                       /* the system area */
	m->pages_free = m->num_pages - 1;
	atomic_store(&m->state, BM_STATE_NEW);
	return m;
}

/* bm_machine_set_owner / bm_machine_owner -- the Python object owning m (a cffi handle; C only
 * keeps it and hands it back) */
void bm_machine_set_owner(struct bm_machine *m, void *owner) { m->owner = owner; }
void *bm_machine_owner(struct bm_machine *m) { return m->owner; }

/* bm_current_owner -- the owner of the calling thread's machine, NULL if the thread is not a
 * core (Python's current_machine() asks this, on any core, in any callback) */
void *bm_current_owner(void)
{
	struct bm_machine *m = bm_self_machine;
	return m != NULL ? m->owner : NULL;
}

/* bm_user -- the call table's entry 0x100048 (upstream's b_user): returns at once, as the
 * kernel's does (it is its `ret` stub)
 *  IN:  nothing
 * OUT:  nothing */
void bm_user(void) { }

/* bm_machine_set_cpu_mhz -- core speed for the InfoMap (0: unknown) */
void bm_machine_set_cpu_mhz(struct bm_machine *m, u32 mhz) { m->cpu_mhz = mhz; }

/* bm_machine_state -- enum bm_machine_state */
int bm_machine_state(struct bm_machine *m) { return atomic_load(&m->state); }

/* ---- the system area ------------------------------------------------------------------------ */

static void put16(struct bm_machine *m, u64 p, u16 v) { memcpy(m->mem + p, &v, 2); }
static void put32(struct bm_machine *m, u64 p, u32 v) { memcpy(m->mem + p, &v, 4); }
static void put64(struct bm_machine *m, u64 p, u64 v) { memcpy(m->mem + p, &v, 8); }

/* write_screen_info -- the InfoMap's frame buffer fields */
static void write_screen_info(struct bm_machine *m)
{
	put64(m, BM_INFOMAP_LFB_BASE, m->screen.lfb ? (u64)(uintptr_t)bm_phys(m, m->screen.lfb) : 0);
	put16(m, BM_INFOMAP_LFB_X, (u16)m->screen.x);
	put16(m, BM_INFOMAP_LFB_Y, (u16)m->screen.y);
	put16(m, BM_INFOMAP_LFB_PPSL, (u16)m->screen.ppsl);
	put16(m, BM_INFOMAP_LFB_BPP, (u16)m->screen.bpp);
}

/* write_free_memory -- the kernel's free-memory word (pages_lock held, or no core running) */
static void write_free_memory(struct bm_machine *m)
{
	put32(m, BM_SYSVAR_FREE_MIB, (u32)(m->pages_free * (BM_PAGE_SIZE >> 20)));
}

/* write_system_area -- fill the low 2 MiB as upstream's loader and kernel leave it:
 * InfoMap, call table, free-memory word (the SMP slot table is smp.c's, at start) */
static void write_system_area(struct bm_machine *m)
{
	put32(m, BM_INFOMAP_BSP_ID, 0);
	put16(m, BM_INFOMAP_CPU_MHZ, (u16)(m->cpu_mhz > 0xFFFF ? 0xFFFF : m->cpu_mhz));
	put16(m, BM_INFOMAP_CORES_ACTIVE, (u16)m->num_cores);
	put16(m, BM_INFOMAP_CORES_FOUND, (u16)m->num_cores);
	put32(m, BM_INFOMAP_RAM_MIB, (u32)(m->mem_size >> 20));
	write_screen_info(m);
	for (u32 i = 0; i < m->num_cores; i++)
		put32(m, BM_INFOMAP_APIC_IDS + 4 * i, i);
	const void *calls[8] = { (void *)b_input, (void *)b_output, (void *)b_net_tx, (void *)b_net_rx,
				 (void *)b_nvs_read, (void *)b_nvs_write, (void *)b_system, (void *)bm_user };
	for (int i = 0; i < 8; i++)
		put64(m, BM_CALL_TABLE + 8 * i, (u64)(uintptr_t)calls[i]);
	write_free_memory(m);
	bm_kernel_data_write(m);                    /* PCI and NIC tables, accounting (kernel_data.c) */
}

/* bm_screen_configure -- describe the frame buffer; written into the InfoMap at boot, or at
 * once when the machine is already running
 *  IN:  lfb = physical address of the buffer in flat memory (0: no screen), x, y, ppsl, bpp */
void bm_screen_configure(struct bm_machine *m, u64 lfb, u32 x, u32 y, u32 ppsl, u32 bpp)
{
	m->screen = (struct bm_screen){ .lfb = lfb, .x = x, .y = y, .ppsl = ppsl, .bpp = bpp };
	if (atomic_load(&m->state) == BM_STATE_RUNNING)
		write_screen_info(m);
}

/* mem_reset -- forget every allocation (reboot) */
static void mem_reset(struct bm_machine *m)
{
	pthread_mutex_lock(&m->pages_lock);
	memset(m->page_run, 0, m->num_pages * sizeof *m->page_run);
	memset(m->page_used + 1, 0, m->num_pages - 1);
	m->pages_free = m->num_pages - 1;
	pthread_mutex_unlock(&m->pages_lock);
}

/* ---- life ---------------------------------------------------------------------------------- */

/* bm_machine_boot -- bring the machine up: system area written, clock started, cores and the
 * callback service thread started
 *  IN:  m (new, or stopped by bm_machine_reboot)
 * OUT:  0, or -1 with the error recorded (nothing left running) */
int bm_machine_boot(struct bm_machine *m)
{
	bm_error_clear();
	int state = atomic_load(&m->state);
	if (state == BM_STATE_RUNNING)
		return 0;
	if (state == BM_STATE_HALTED)
		return (int)bm_fail(BM_ERR_STATE, "this machine was halted; make a new one") - 1;
	write_system_area(m);
	for (int i = 0; i < 3; i++)                 /* a (re)booted machine has no callbacks, */
		atomic_store(&m->callback[i], 0);
	atomic_store(&m->console.output, NULL);     /* and writes to its console */
	atomic_store(&m->service.timer_period_ns, BM_TIMER_DEFAULT_NS);
	m->boot_ns = bm_now_ns();
	atomic_store(&m->state, BM_STATE_RUNNING);
	if (bm_smp_start(m) != 0 || bm_service_start(m) != 0) {
		struct bm_error error = bm_error;
		bm_machine_halt(m);
		bm_error = error;
		return -1;
	}
	return 0;
}

/* bm_machine_reboot -- upstream's REBOOT: the other cores stopped, memory zeroed, every
 * allocation forgotten (the screen keeps its pages), the clock restarted, callbacks and
 * STDOUT_SET forgotten, cores started again.  Drives and NICs stay attached.
 *  IN:  m (running, or ended by SHUTDOWN/REBOOT); the caller is core 0 or no core
 * OUT:  0, or -1 with the error recorded */
int bm_machine_reboot(struct bm_machine *m)
{
	bm_error_clear();
	int state = atomic_load(&m->state);
	if (state == BM_STATE_NEW || state == BM_STATE_HALTED)
		return (int)bm_fail(BM_ERR_STATE, "reboot: the machine is not running") - 1;
	bm_smp_stop(m);
	atomic_store(&m->state, BM_STATE_REBOOT);   /* the service thread runs no callback now */
	madvise(m->mem, m->mem_size, MADV_DONTNEED);  /* private anonymous memory reads as zeroes */
	bm_lowmap_clear(m);                         /* a shared low window does not: zeroed */
	mem_reset(m);
	if (m->screen.lfb != 0 &&
	    bm_mem_reserve(m, m->screen.lfb, (u64)m->screen.ppsl * m->screen.y * (m->screen.bpp / 8)) == 0)
		return -1;
	return bm_machine_boot(m);
}

/* bm_machine_halt -- stop everything, in this order: the service thread, the cores, the
 * drives (flushed and closed; their final counters stay readable), the NICs (closed; counters
 * kept), the low window.  Idempotent.
 *  IN:  m
 * OUT:  nothing */
void bm_machine_halt(struct bm_machine *m)
{
	if (atomic_exchange(&m->state, BM_STATE_HALTED) == BM_STATE_HALTED)
		return;
	bm_service_stop(m);
	bm_smp_stop(m);
	bm_nvs_close_all(m);
	bm_net_close_all(m);
	bm_lowmap_release(m);
}

/* bm_machine_free -- release the struct (not the memory, which the caller mapped)
 *  IN:  m (halted first if it was not) */
void bm_machine_free(struct bm_machine *m)
{
	if (m == NULL)
		return;
	bm_machine_halt(m);
	bm_smp_free(m);
	bm_trace_free(m);
	free(m->page_run);
	free(m->page_used);
	free(m);
}

/* bm_machine_add_nic -- give a NIC to a machine and have the service thread arm it now
 *  IN:  m, nic (the machine owns it from now: closed on halt)
 * OUT:  its iid, or -1 with the error recorded (see bm_net_add); the nic is then the caller's */
int bm_machine_add_nic(struct bm_machine *m, struct bm_nic *nic)
{
	int iid = bm_net_add(m, nic);
	if (iid >= 0)
		bm_service_wake(m);
	return iid;
}

/* ---- the calling thread as a core --------------------------------------------------------- */

/* bm_bind -- make the calling thread core `core_id` of m (core 0 = the BSP running the app)
 *  IN:  m, core_id
 * OUT:  the thread's previous core (to hand back to bm_unbind), or NULL */
struct bm_core *bm_bind(struct bm_machine *m, u32 core_id)
{
	struct bm_core *previous = bm_self;
	if (core_id < m->num_cores)
		bm_set_self(&m->smp.cores[core_id], m);
	else
		bm_set_self(NULL, NULL);
	return previous;
}

/* bm_unbind -- restore the binding bm_bind returned */
void bm_unbind(struct bm_core *previous)
{
	bm_set_self(previous, previous != NULL ? previous->machine : NULL);
}

/* ---- the run outcome ---------------------------------------------------------------------- */

/* bm_outcome_set -- start an outcome afresh
 *  IN:  out, how = enum bm_end, core, message (NULL: none) */
void bm_outcome_set(struct bm_outcome *out, int how, u32 core, const char *message)
{
	memset(out, 0, sizeof *out);
	out->how = how;
	out->core = core;
	out->vector = -1;
	if (message != NULL) {
		strncpy(out->message, message, sizeof out->message - 1);
	}
}

/* ---- memory pages ----------------------------------------------------------------------- */

/* bm_mem_alloc -- a run of contiguous 2 MiB pages (first fit)
 *  IN:  m, nbytes (> 0)
 * OUT:  physical address of the run, 0 with BM_ERR_FULL when no run is free */
u64 bm_mem_alloc(struct bm_machine *m, u64 nbytes)
{
	bm_error_clear();
	if (nbytes == 0)
		return bm_fail(BM_ERR_ARGUMENT, "cannot allocate 0 bytes");
	u64 want = (nbytes + BM_PAGE_SIZE - 1) / BM_PAGE_SIZE, found = 0;
	pthread_mutex_lock(&m->pages_lock);
	for (u64 start = 1, run = 0; start + run < m->num_pages && want <= m->pages_free;) {
		if (m->page_used[start + run]) {
			start += run + 1;
			run = 0;
		} else if (++run == want) {
			found = start;
			break;
		}
	}
	if (found) {
		memset(m->page_used + found, 1, want);
		m->page_run[found] = (u32)want;
		m->pages_free -= want;
		write_free_memory(m);
	}
	pthread_mutex_unlock(&m->pages_lock);
	if (!found)
		return bm_fail(BM_ERR_FULL, "no %lu MiB run of free memory (%lu MiB free)",
			       (u64)(want * (BM_PAGE_SIZE >> 20)), (u64)(m->pages_free * (BM_PAGE_SIZE >> 20)));
	return found * BM_PAGE_SIZE;
}

/* bm_mem_reserve -- claim the pages of [phys, phys+nbytes) (a binary's load address)
 *  IN:  m, phys (2 MiB aligned, >= 2 MiB), nbytes (> 0)
 * OUT:  phys; 0 with BM_ERR_FULL if a page there is taken, BM_ERR_ARGUMENT/RANGE for a bad range */
u64 bm_mem_reserve(struct bm_machine *m, u64 phys, u64 nbytes)
{
	bm_error_clear();
	u64 first = phys / BM_PAGE_SIZE, count = (nbytes + BM_PAGE_SIZE - 1) / BM_PAGE_SIZE;
	if (phys % BM_PAGE_SIZE != 0 || first == 0 || nbytes == 0)
		return bm_fail(BM_ERR_ARGUMENT, "cannot reserve 0x%lx (+%lu bytes)", phys, nbytes);
	if (first >= m->num_pages || count > m->num_pages - first)
		return bm_fail(BM_ERR_RANGE, "0x%lx (+%lu bytes) is beyond the machine's memory", phys, nbytes);
	u64 taken = 0;
	pthread_mutex_lock(&m->pages_lock);
	for (u64 i = 0; i < count; i++)
		taken |= m->page_used[first + i];
	if (!taken) {
		memset(m->page_used + first, 1, count);
		m->page_run[first] = (u32)count;
		m->pages_free -= count;
		write_free_memory(m);
	}
	pthread_mutex_unlock(&m->pages_lock);
	if (taken)
		return bm_fail(BM_ERR_FULL, "memory at 0x%lx (+%lu bytes) is already in use", phys, nbytes);
	return phys;
}

/* bm_mem_free -- give back a run bm_mem_alloc returned
 *  IN:  m, physical address of the run
 * OUT:  bytes freed, 0 with BM_ERR_ARGUMENT if the address is not the start of a run */
u64 bm_mem_free(struct bm_machine *m, u64 phys)
{
	bm_error_clear();
	u64 page = phys / BM_PAGE_SIZE, run = 0;
	pthread_mutex_lock(&m->pages_lock);
	if (phys % BM_PAGE_SIZE == 0 && page > 0 && page < m->num_pages && m->page_run[page]) {
		run = m->page_run[page];
		m->page_run[page] = 0;
		memset(m->page_used + page, 0, run);
		m->pages_free += run;
		write_free_memory(m);
	}
	pthread_mutex_unlock(&m->pages_lock);
	if (!run)
		return bm_fail(BM_ERR_ARGUMENT, "0x%lx is not an allocated region", phys);
	return run * BM_PAGE_SIZE;
}

/* system.c -- b_system, and the machine's life: create, boot, halt, memory pages.
 *
 * b_system is one switch over upstream's function codes.  Codes that belong to a subsystem
 * (SMP_*, NET_*) call that subsystem's function; the rest are answered here.  Unknown codes
 * and codes >= 0x80 return 0 (upstream leaves var1 in RAX: a documented difference).
 *
 * SHUTDOWN and REBOOT end the app's run.  When the calling core is running a C main through
 * bm_run_main, they unwind straight back to it (longjmp); otherwise (a Python app) they only
 * set the machine's state and return, and the Python face raises so the run ends there.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>
#include "machine.h"
#include "lowmap.h"
#include "kernel_data.h"

BM_TLS struct bm_error bm_error;

/* bm_fail -- record the calling thread's error for the Python face
 *  IN:  code = enum bm_error_code, fmt... = message
 * OUT:  0, so that a call can `return bm_fail(...)` with upstream's error value */
u64 bm_fail(int code, const char *fmt, ...)
{
	va_list ap;
	bm_error.code = code;
	va_start(ap, fmt);
	vsnprintf(bm_error.message, sizeof bm_error.message, fmt, ap);
	va_end(ap);
	return 0;
}

/* bm_error_code / bm_error_message -- the calling thread's last error (0 / "" if none) */
int bm_error_code(void) { return bm_error.code; }
const char *bm_error_message(void) { return bm_error.code ? bm_error.message : ""; }

/* bm_now_ns -- CLOCK_MONOTONIC in nanoseconds */
u64 bm_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (u64)ts.tv_sec * 1000000000ull + (u64)ts.tv_nsec;
}

/* ---- machine life ---------------------------------------------------------------------- */

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

static void put16(struct bm_machine *m, u64 p, u16 v) { memcpy(m->mem + p, &v, 2); }
static void put32(struct bm_machine *m, u64 p, u32 v) { memcpy(m->mem + p, &v, 4); }
static void put64(struct bm_machine *m, u64 p, u64 v) { memcpy(m->mem + p, &v, 8); }

/* write_system_area -- fill the low 2 MiB as upstream's loader and kernel leave it:
 * InfoMap, call table, free-memory word, SMP slot table (present bits) */
static void write_system_area(struct bm_machine *m)
{
	put32(m, BM_INFOMAP_BSP_ID, 0);
	put16(m, BM_INFOMAP_CPU_MHZ, (u16)(m->cpu_mhz > 0xFFFF ? 0xFFFF : m->cpu_mhz));
	put16(m, BM_INFOMAP_CORES_ACTIVE, (u16)m->num_cores);
	put16(m, BM_INFOMAP_CORES_FOUND, (u16)m->num_cores);
	put32(m, BM_INFOMAP_RAM_MIB, (u32)(m->mem_size >> 20));
	put64(m, BM_INFOMAP_LFB_BASE, m->screen.lfb ? (u64)(uintptr_t)bm_phys(m, m->screen.lfb) : 0);
	put16(m, BM_INFOMAP_LFB_X, (u16)m->screen.x);
	put16(m, BM_INFOMAP_LFB_Y, (u16)m->screen.y);
	put16(m, BM_INFOMAP_LFB_PPSL, (u16)m->screen.ppsl);
	put16(m, BM_INFOMAP_LFB_BPP, (u16)m->screen.bpp);
	for (u32 i = 0; i < m->num_cores; i++)
		put32(m, BM_INFOMAP_APIC_IDS + 4 * i, i);
	const void *calls[8] = { (void *)b_input, (void *)b_output, (void *)b_net_tx, (void *)b_net_rx,
				 (void *)b_nvs_read, (void *)b_nvs_write, (void *)b_system, (void *)bm_user };
	for (int i = 0; i < 8; i++)
		put64(m, BM_CALL_TABLE + 8 * i, (u64)(uintptr_t)calls[i]);
	put32(m, BM_SYSVAR_FREE_MIB, (u32)(m->pages_free * (BM_PAGE_SIZE >> 20)));
	bm_kernel_data_write(m);                    /* PCI and NIC tables, accounting (kernel_data.c) */
}

/* bm_machine_boot -- bring the machine up: system area written, clock started, cores started
 *  IN:  m (new or halted after a reboot)
 * OUT:  0, or -1 with the error recorded */
int bm_machine_boot(struct bm_machine *m)
{
	bm_error_clear();
	write_system_area(m);
	for (int i = 0; i < 3; i++)                 /* a (re)booted machine has no callbacks, */
		atomic_store(&m->callback[i], 0);
	atomic_store(&m->console.output, NULL);     /* and writes to its console */
	m->boot_ns = bm_now_ns();
	atomic_store(&m->state, BM_STATE_RUNNING);
	if (bm_smp_start(m) != 0) {
		atomic_store(&m->state, BM_STATE_HALTED);
		return -1;
	}
	return 0;
}

/* bm_machine_stop_cores -- stop every core but the caller (halt, reboot)
 *  IN:  m
 * OUT:  nothing */
void bm_machine_stop_cores(struct bm_machine *m)
{
	bm_smp_stop(m);
}

/* bm_machine_halt -- stop cores, flush and close drives, close NICs; idempotent
 *  IN:  m
 * OUT:  nothing */
void bm_machine_halt(struct bm_machine *m)
{
	if (atomic_exchange(&m->state, BM_STATE_HALTED) == BM_STATE_HALTED)
		return;
	bm_smp_stop(m);
	bm_nvs_close_all(m);
	bm_net_close_all(m);
}

/* bm_machine_free -- release the struct (not the memory, which the caller mapped)
 *  IN:  m, halted */
void bm_machine_free(struct bm_machine *m)
{
	if (m == NULL)
		return;
	bm_machine_halt(m);
	bm_smp_free(m);
	free(m->page_run);
	free(m->page_used);
	free(m);
}

/* bm_machine_state -- enum bm_machine_state */
int bm_machine_state(struct bm_machine *m) { return atomic_load(&m->state); }

/* bm_screen_configure -- describe the frame buffer (called before boot)
 *  IN:  lfb = physical address of the buffer in flat memory (0: no screen), x, y, ppsl, bpp */
void bm_screen_configure(struct bm_machine *m, u64 lfb, u32 x, u32 y, u32 ppsl, u32 bpp)
{
	m->screen = (struct bm_screen){ .lfb = lfb, .x = x, .y = y, .ppsl = ppsl, .bpp = bpp };
}

/* ---- the calling thread as a core -------------------------------------------------------- */

/* bm_bind -- make the calling thread core `core_id` of m (core 0 = the BSP running the app)
 *  IN:  m, core_id
 * OUT:  the thread's previous core (to hand back to bm_unbind), or NULL */
struct bm_core *bm_bind(struct bm_machine *m, u32 core_id)
{
	struct bm_core *previous = bm_self;
	bm_self = (core_id < m->num_cores) ? &m->smp.cores[core_id] : NULL;
	return previous;
}

/* bm_unbind -- restore the binding bm_bind returned */
void bm_unbind(struct bm_core *previous) { bm_self = previous; }

/* bm_run_main -- run a C app's main on the calling core (bound to m), catching SHUTDOWN/REBOOT
 *  IN:  m, main, argc, argv; *exit_code receives main's return value
 * OUT:  BM_STATE_RUNNING if main returned, BM_STATE_SHUTDOWN or BM_STATE_REBOOT if it called them */
int bm_run_main(struct bm_machine *m, int (*app_main)(int, char **), int argc, char **argv, int *exit_code)
{
	struct bm_core *self = bm_self;
	jmp_buf here, *outer = self->exit_jmp;
	int how = setjmp(here);
	if (how == 0) {
		self->exit_jmp = &here;
		*exit_code = app_main(argc, argv);
		how = BM_STATE_RUNNING;
	} else {
		*exit_code = 0;
	}
	self->exit_jmp = outer;
	(void)m;
	return how;
}

/* end_run -- SHUTDOWN / REBOOT: record it and, under a C main, unwind to bm_run_main */
static u64 end_run(struct bm_machine *m, int state)
{
	atomic_store(&m->state, state);
	struct bm_core *self = bm_self;
	if (self->exit_jmp != NULL)
		longjmp(*self->exit_jmp, state);
	return 1;
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
		put32(m, BM_SYSVAR_FREE_MIB, (u32)(m->pages_free * (BM_PAGE_SIZE >> 20)));
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
		put32(m, BM_SYSVAR_FREE_MIB, (u32)(m->pages_free * (BM_PAGE_SIZE >> 20)));
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
		put32(m, BM_SYSVAR_FREE_MIB, (u32)(m->pages_free * (BM_PAGE_SIZE >> 20)));
	}
	pthread_mutex_unlock(&m->pages_lock);
	if (!run)
		return bm_fail(BM_ERR_ARGUMENT, "0x%lx is not an allocated region", phys);
	return run * BM_PAGE_SIZE;
}

/* bm_mem_reset -- forget every allocation (reboot) */
void bm_mem_reset(struct bm_machine *m)
{
	pthread_mutex_lock(&m->pages_lock);
	memset(m->page_run, 0, m->num_pages * sizeof *m->page_run);
	memset(m->page_used + 1, 0, m->num_pages - 1);
	m->pages_free = m->num_pages - 1;
	pthread_mutex_unlock(&m->pages_lock);
}

/* ---- b_system ----------------------------------------------------------------------------- */

static const char hex_digits[] = "0123456789ABCDEF";

/* dump_hex -- `bytes` bytes of v, most significant first, as upper-case hex into out */
static void dump_hex(char *out, u64 v, int bytes)
{
	for (int i = 0; i < 2 * bytes; i++)
		out[i] = hex_digits[(v >> (4 * (2 * bytes - 1 - i))) & 0xF];
}

/* bm_dump_mem -- upstream's DUMP_MEM: "0x" + 16 hex digits of the address, newline, then lines
 * of up to 16 bytes, each byte " XX", each line ending in a newline.
 *  IN:  address = the memory to dump (any readable process memory), shown = the address to
 *       print (the app's own view of it), length
 * OUT:  bytes dumped; 0 with BM_ERR_RANGE when the range is not readable (nothing printed) */
u64 bm_dump_mem(u64 address, u64 shown, u64 length)
{
	if (length == 0)
		return 0;
	char line[16 * 3 + 1], head[2 + 16 + 1] = "0x";
	u8 chunk[16];
	/* check the whole range first, so that a bad range prints nothing */
	for (u64 done = 0; done < length;) {
		u8 probe[4096];
		u64 n = length - done < sizeof probe ? length - done : sizeof probe;
		struct iovec local = { probe, n }, remote = { (void *)(uintptr_t)(address + done), n };
		if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != (ssize_t)n)
			return bm_fail(BM_ERR_RANGE, "DUMP_MEM: 0x%lx..0x%lx is not readable memory",
				       shown, shown + length);
		done += n;
	}
	dump_hex(head + 2, shown, 8);
	head[18] = '\n';
	b_output(head, 19);
	for (u64 done = 0; done < length; done += 16) {
		u64 n = length - done < 16 ? length - done : 16;
		memcpy(chunk, (const void *)(uintptr_t)(address + done), n);
		for (u64 i = 0; i < n; i++) {
			line[3 * i] = ' ';
			dump_hex(line + 3 * i + 1, chunk[i], 1);
		}
		line[3 * n] = '\n';
		b_output(line, 3 * n + 1);
	}
	return length;
}

/* delay_us -- DELAY: busy-wait short delays (< 1 ms, for precision), sleep long ones */
static void delay_us(u64 us)
{
	u64 end = bm_now_ns() + us * 1000ull;
	if (us >= 1000) {
		struct timespec ts = { .tv_sec = (time_t)(end / 1000000000ull), .tv_nsec = (long)(end % 1000000000ull) };
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
			;
		return;
	}
	while (bm_now_ns() < end)
		__builtin_ia32_pause();
}

/* b_system -- everything else, by function code (baremetal-api.md section 2)
 *  IN:  function = code, var1, var2 = its arguments
 * OUT:  the code's result; 0 for unknown codes, codes >= 0x80, and errors (recorded) */
u64 b_system(u64 function, u64 var1, u64 var2)
{
	bm_error_clear();
	struct bm_machine *m = bm_current();
	if (m == NULL)
		return 0;
	switch (function) {
	case TIMECOUNTER:
		return bm_now_ns() - m->boot_ns;
	case FREE_MEMORY:
		return m->pages_free * (BM_PAGE_SIZE >> 20);
	case SMP_ID:
		return bm_smp_id(m);
	case SMP_NUMCORES:
		return m->num_cores;
	case SMP_SET:
		return bm_smp_set(m, var1, var2);
	case SMP_GET:
		return bm_smp_get(m);
	case SMP_LOCK:                             /* below 2 MiB: the system area (lowmap.c) */
		return bm_smp_lock(bm_low_address(m, var1, 2));
	case SMP_UNLOCK:
		return bm_smp_unlock(bm_low_address(m, var1, 2));
	case SMP_BUSY:
		return bm_smp_busy(m);
	case TSC:
		return __rdtsc();
	case SCREEN_LFB_GET:
		return m->screen.lfb ? (u64)(uintptr_t)bm_phys(m, m->screen.lfb) : 0;
	case SCREEN_X_GET:
		return m->screen.x;
	case SCREEN_Y_GET:
		return m->screen.y;
	case SCREEN_PPSL_GET:
		return m->screen.ppsl;
	case SCREEN_BPP_GET:
		return m->screen.bpp;
	case NET_STATUS:
		return bm_net_status(m, var2);
	case NET_CONFIG:
		return bm_net_config(m, var1, var2);
	case BUS_READ:
	case BUS_WRITE:
		return 0;                          /* no PCI devices are modelled */
	case STDOUT_SET:
		atomic_store_explicit(&m->console.output, (bm_output_fn)(uintptr_t)var1, memory_order_release);
		return var1;
	case STDOUT_GET: {
		bm_output_fn fn = atomic_load_explicit(&m->console.output, memory_order_acquire);
		return (u64)(uintptr_t)(fn ? fn : bm_default_output);
	}
	case CALLBACK_TIMER:
	case CALLBACK_NETWORK:
	case CALLBACK_KEYBOARD:
		atomic_store(&m->callback[function - CALLBACK_TIMER], var1);
		bm_net_service_wake(m);            /* the service thread that runs callbacks */
		return var1;
	case DUMP_MEM:
		return bm_dump_mem(bm_low_address(m, var1, var2), var1, var2);
	case DUMP_RAX: {
		char digits[16];
		dump_hex(digits, var1, 8);
		b_output(digits, 16);
		return var1;
	}
	case DELAY:
		delay_us(var1);
		return var1;
	case RESET:
		return bm_smp_reset(m);
	case REBOOT:
		return end_run(m, BM_STATE_REBOOT);
	case SHUTDOWN:
		return end_run(m, BM_STATE_SHUTDOWN);
	default:
		return 0;
	}
}

/* bm_user -- the call table's entry 0x100048 (upstream's b_user): returns at once, as the
 * kernel's does (it is its `ret` stub)
 *  IN:  nothing
 * OUT:  nothing */
void bm_user(void) { }

/* bm_machine_set_cpu_mhz -- core speed for the InfoMap (0: unknown) */
void bm_machine_set_cpu_mhz(struct bm_machine *m, u32 mhz) { m->cpu_mhz = mhz; }

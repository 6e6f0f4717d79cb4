/* system.c -- b_system: one switch over upstream's function codes, DUMP_*, DELAY, SLEEP.
 *
 * Codes that belong to a subsystem (SMP_*, NET_*) call that subsystem's function, the callback
 * codes and TIMER_SET tell the service thread (service.c); the rest are answered here.  Unknown
 * codes and codes >= 0x80 return 0 (upstream leaves var1 in RAX: a documented difference).
 *
 * SHUTDOWN and REBOOT end the app's run.  When the calling core is running a C main through
 * bm_run_main (capps.c), they unwind straight back to it (longjmp); otherwise (a Python app)
 * they only set the machine's state and return, and the Python face raises so the run ends
 * there.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>
#include "machine.h"
#include "lowmap.h"
#include "signals.h"

/* end_run -- SHUTDOWN / REBOOT: record it and, under a C main, unwind to bm_run_main */
static u64 end_run(struct bm_machine *m, int state)
{
	atomic_store(&m->state, state);
	struct bm_core *self = bm_self;
	if (self->exit_jmp != NULL)
		longjmp(*self->exit_jmp, state);
	return 1;
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

#define DELAY_MAX_US   (1ull << 40)        /* longer DELAYs (over 12 days) are cut to this */
#define DELAY_SLICE_NS 10000000ull         /* a long DELAY looks at the machine this often */

/* delay_us -- DELAY: busy-wait short delays (< 1 ms, for precision), sleep long ones in slices
 * of 10 ms, ending early when the machine stops running (a stop signal, SHUTDOWN, halt)
 *  IN:  m, us = microseconds, cut to DELAY_MAX_US */
static void delay_us(struct bm_machine *m, u64 us)
{
	if (us > DELAY_MAX_US)
		us = DELAY_MAX_US;
	u64 now = bm_now_ns(), end = now + us * 1000ull;
	if (us < 1000) {
		while (bm_now_ns() < end)
			__builtin_ia32_pause();
		return;
	}
	for (; now < end && !bm_stop_requested(m); now = bm_now_ns()) {
		u64 until = end - now > DELAY_SLICE_NS ? now + DELAY_SLICE_NS : end;
		struct timespec ts = { .tv_sec = (time_t)(until / 1000000000ull), .tv_nsec = (long)(until % 1000000000ull) };
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
	}
}

/* sleep_ns -- SLEEP: sleep `ns` nanoseconds, in slices of at most 10 ms, ending early once the
 * machine stops running (SHUTDOWN, REBOOT, halt) */
static void sleep_ns(struct bm_machine *m, u64 ns)
{
	u64 now = bm_now_ns(), end = now + ns < now ? ~0ull : now + ns;
	while (now < end && atomic_load(&m->state) == BM_STATE_RUNNING && !atomic_load(&m->smp.stop)) {
		u64 slice = end - now < 10000000ull ? end - now : 10000000ull;
		struct timespec ts = { (time_t)(slice / 1000000000ull), (long)(slice % 1000000000ull) };
		nanosleep(&ts, NULL);
		now = bm_now_ns();
	}
}

/* wallclock -- WALLCLOCK: seconds since the Unix epoch (the host's clock) */
static u64 wallclock(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (u64)ts.tv_sec;
}

/* timer_set -- TIMER_SET: the period of the timer CALLBACK_TIMER runs on
 *  IN:  m, ns = period in nanoseconds (0: the default, 1 ms; below 10 us: 10 us)
 * OUT:  the period now in effect */
static u64 timer_set(struct bm_machine *m, u64 ns)
{
	if (ns == 0)
		ns = BM_TIMER_DEFAULT_NS;
	else if (ns < BM_TIMER_MIN_NS)
		ns = BM_TIMER_MIN_NS;
	atomic_store(&m->service.timer_period_ns, ns);
	bm_service_wake(m);
	return ns;
}

/* system_call -- b_system's body: one switch over the function codes
 *  IN:  m, function = code, var1, var2 = its arguments
 * OUT:  the code's result; 0 for unknown codes, codes >= 0x80, and errors (recorded) */
static inline __attribute__((always_inline)) u64 system_call(struct bm_machine *m, u64 function, u64 var1, u64 var2)
{
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
		bm_service_wake(m);                /* the service thread that runs callbacks */
		return var1;
	case TIMER_SET:
		return timer_set(m, var1);
	case WALLCLOCK:
		return wallclock();
	case DUMP_MEM:
		return bm_dump_mem(bm_low_address(m, var1, var2), var1, var2);
	case DUMP_RAX: {
		char digits[16];
		dump_hex(digits, var1, 8);
		b_output(digits, 16);
		return var1;
	}
	case DELAY:
		delay_us(m, var1);
		bm_stop_point(m);                  /* a C main stops here when the machine does */
		return var1;
	case SLEEP:
		sleep_ns(m, var1);
		bm_stop_point(m);                  /* as DELAY */
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

/* system_traced -- system_call with its trace line (trace.h).  SHUTDOWN / REBOOT may unwind to
 * a C main (end_run): their line is written first.  DUMP_*'s own b_output calls are quiet. */
BM_TRACED_PATH u64 system_traced(struct bm_machine *m, u64 function, u64 var1, u64 var2)
{
	u64 t0 = bm_now_ns(), args[3] = { function, var1, var2 };
	if (function == SHUTDOWN || function == REBOOT) {
		bm_trace_call(m, BM_TRACE_SYSTEM, t0, args, 1, NULL);
		return system_call(m, function, var1, var2);
	}
	u32 quiet = function == DUMP_MEM || function == DUMP_RAX;
	bm_trace_quiet += quiet;
	u64 result = system_call(m, function, var1, var2);
	bm_trace_quiet -= quiet;
	bm_trace_call(m, BM_TRACE_SYSTEM, t0, args, result, NULL);
	return result;
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
	if (bm_traced(m))                                /* trace.h */
		return system_traced(m, function, var1, var2);
	return system_call(m, function, var1, var2);
}

/* base.c -- recorded errors, the clock, and the calling thread's core and machine (base.h).
 * Depends on nothing else of the core. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <sched.h>
#include <time.h>
#include "base.h"

BM_TLS struct bm_error bm_error;
BM_TLS struct bm_core *bm_self;
BM_TLS struct bm_machine *bm_self_machine;

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

/* bm_block_async_signals -- see base.h */
void bm_block_async_signals(sigset_t *old)
{
	sigset_t all;
	sigfillset(&all);
	sigdelset(&all, SIGSEGV);
	sigdelset(&all, SIGBUS);
	sigdelset(&all, SIGFPE);
	sigdelset(&all, SIGILL);
	pthread_sigmask(SIG_SETMASK, &all, old);
}

/* bm_nic_lock -- take a spin lock (NICs, pcap writers)
 *  IN:  lock, wait_ns = give up after this long (0: wait as long as it takes)
 * OUT:  1 taken, 0 not taken within wait_ns */
int bm_nic_lock(_Atomic int *lock, u64 wait_ns)
{
	u64 deadline = 0;
	for (u32 spins = 0;; spins++) {
		if (!atomic_load_explicit(lock, memory_order_relaxed) &&
		    !atomic_exchange_explicit(lock, 1, memory_order_acquire))
			return 1;
		if (spins < 64) {
			__builtin_ia32_pause();
			continue;
		}
		if (wait_ns) {
			u64 now = bm_now_ns();
			if (deadline == 0)
				deadline = now + wait_ns;
			else if (now > deadline)
				return 0;
		}
		sched_yield();
	}
}

/* bm_nic_unlock -- release a lock bm_nic_lock took */
void bm_nic_unlock(_Atomic int *lock) { atomic_store_explicit(lock, 0, memory_order_release); }

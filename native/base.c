/* base.c -- recorded errors, the clock, and the calling thread's core and machine (base.h).
 * Depends on nothing else of the core. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
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

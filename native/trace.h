/* trace.h -- the call trace (--trace[=FILE], Machine(trace=...)): one line per call an app
 * makes, written by trace.c.
 *
 * Off by default.  When off, each call pays one predictable branch on the machine's `trace`
 * pointer (NULL).  When on, each of the seven calls' public functions (b_input, b_output in
 * io.c, b_nvs_read/_write in nvs.c, b_net_tx/_rx in net.c, b_system in system.c) times its
 * body and hands the result to bm_trace_call, which formats one line and writes it with one
 * write(2) on the trace's own fd (stderr or a file opened O_APPEND): lines from several cores
 * never interleave, and tracing never goes through b_output (the console).
 *
 * Exactly once per call an app makes: Python apps reach the same C functions through cffi and
 * C apps call them directly.  A flat binary's call is traced where the CPU backend decodes it
 * (its registers, in guest addresses); the C functions that call then makes on its behalf are
 * quiet (bm_trace_quiet), as is the b_output DUMP_MEM/DUMP_RAX make inside b_system.
 *
 * Unwinding: SHUTDOWN/REBOOT under a C main (and stop points, faults) may leave a call by
 * longjmp.  The traced path keeps no thread state across the call for that reason: the line of
 * SHUTDOWN/REBOOT is written before the call; a call left by a fault or a stop has no line.
 * The quiet count is only raised around calls that cannot unwind (a binary's decoded call,
 * DUMP_*'s output).
 */
#ifndef BM_TRACE_H
#define BM_TRACE_H

#include "base.h"

/* which call a line is about */
enum bm_trace_call {
	BM_TRACE_INPUT, BM_TRACE_OUTPUT, BM_TRACE_NET_TX, BM_TRACE_NET_RX,
	BM_TRACE_NVS_READ, BM_TRACE_NVS_WRITE, BM_TRACE_SYSTEM,
};

struct bm_trace;

/* nonzero while the runtime makes calls on an app's behalf (not traced) on this thread */
extern BM_TLS u32 bm_trace_quiet;

/* 1 when calls of m made by the calling thread are traced (cold: the trace is off by default) */
#define bm_traced(m) (__builtin_expect((m)->trace != NULL, 0) && bm_trace_quiet == 0)

/* a call's traced path: out of line, so that the untraced path keeps its registers */
#define BM_TRACED_PATH static __attribute__((noinline, cold))

void bm_trace_call(struct bm_machine *m, int call, u64 t0, const u64 *args, u64 result,
		   const void *data);
void bm_trace_guest_call(struct bm_machine *m, unsigned n, u64 t0, const u64 *before,
			 const u64 *after, const void *data);
int bm_trace_attach(struct bm_machine *m, int fd);
void bm_trace_free(struct bm_machine *m);
u64 bm_trace_lines(struct bm_machine *m);

#endif

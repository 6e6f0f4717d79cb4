/* trace.c -- the call trace: one line per call an app makes (see trace.h for where the hooks
 * are and why each call is traced exactly once).
 *
 * A line:
 *
 *   0.000213415 core 1 b_system(SMP_ID) = 1 <88 ns>
 *   0.000250017 core 0 b_output("Hello, world!\n", 14) <3104 ns>
 *   0.000391200 core 0 b_nvs_read(0x7f3a40200000, 99999, 1, 0) = 0 error: b_nvs_read: ... <410 ns>
 *
 * seconds since boot (the TIMECOUNTER clock) when the call began, the calling core ("core 0
 * callback" for the service thread running CALLBACK_* functions), the call with its arguments
 * (b_system's function by its upstream name, and only the arguments that function takes;
 * addresses in hex, counts in decimal, b_output's first 40 bytes as a C string), the result
 * (none for the calls that return nothing), the error the call recorded if any, and how long
 * the call took.  A flat binary's calls show its registers' values: guest addresses.
 *
 * Each line is formatted in a buffer on the stack and written with one write(2) on the trace's
 * fd, a dup of stderr or of a file Python opened with O_APPEND: lines from several cores
 * never interleave.  A write the host refuses (a full disk) loses that line only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
#include "machine.h"
#include "trace.h"

#define PREVIEW 40                      /* bytes of b_output's data shown */

struct bm_trace {
	int fd;                             /* ours (a dup): closed by bm_trace_free */
	_Atomic u64 lines, lost;            /* lines written, lines the host refused */
};

BM_TLS u32 bm_trace_quiet;

/* ---- formatting --------------------------------------------------------------------------- */

struct line {
	char text[640];
	size_t len;
};

/* put -- append printf-style text to a line (cut at its end) */
static void __attribute__((format(printf, 2, 3))) put(struct line *l, const char *fmt, ...)
{
	if (l->len >= sizeof l->text)
		return;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(l->text + l->len, sizeof l->text - l->len, fmt, ap);
	va_end(ap);
	if (n > 0)
		l->len = l->len + (size_t)n < sizeof l->text ? l->len + (size_t)n : sizeof l->text - 1;
}

/* b_system's codes: upstream's name and which values are addresses (shown in hex) */
#define HEX1 1                              /* var1 */
#define HEX2 2                              /* var2 */
#define HEXR 4                              /* the result */
struct code_info {
	const char *name;
	u8 nargs;                           /* 0: none shown, 1: var1, 2: var1 and var2 */
	u8 hex;
};

/* code_of -- upstream's name and arguments of a b_system function code, NULL name if unknown */
static struct code_info code_of(u64 function)
{
	switch (function) {
	case TIMECOUNTER:       return (struct code_info){ "TIMECOUNTER", 0, 0 };
	case FREE_MEMORY:       return (struct code_info){ "FREE_MEMORY", 0, 0 };
	case WALLCLOCK:         return (struct code_info){ "WALLCLOCK", 0, 0 };
	case SMP_ID:            return (struct code_info){ "SMP_ID", 0, 0 };
	case SMP_NUMCORES:      return (struct code_info){ "SMP_NUMCORES", 0, 0 };
	case SMP_SET:           return (struct code_info){ "SMP_SET", 2, HEX1 | HEXR };
	case SMP_GET:           return (struct code_info){ "SMP_GET", 0, HEXR };
	case SMP_LOCK:          return (struct code_info){ "SMP_LOCK", 1, HEX1 };
	case SMP_UNLOCK:        return (struct code_info){ "SMP_UNLOCK", 1, HEX1 };
	case SMP_BUSY:          return (struct code_info){ "SMP_BUSY", 0, 0 };
	case TSC:               return (struct code_info){ "TSC", 0, 0 };
	case SCREEN_LFB_GET:    return (struct code_info){ "SCREEN_LFB_GET", 0, HEXR };
	case SCREEN_X_GET:      return (struct code_info){ "SCREEN_X_GET", 0, 0 };
	case SCREEN_Y_GET:      return (struct code_info){ "SCREEN_Y_GET", 0, 0 };
	case SCREEN_PPSL_GET:   return (struct code_info){ "SCREEN_PPSL_GET", 0, 0 };
	case SCREEN_BPP_GET:    return (struct code_info){ "SCREEN_BPP_GET", 0, 0 };
	case NET_STATUS:        return (struct code_info){ "NET_STATUS", 2, HEXR };
	case NET_CONFIG:        return (struct code_info){ "NET_CONFIG", 2, HEX1 };
	case BUS_READ:          return (struct code_info){ "BUS_READ", 2, HEX1 | HEXR };
	case BUS_WRITE:         return (struct code_info){ "BUS_WRITE", 2, HEX1 | HEX2 };
	case STDOUT_SET:        return (struct code_info){ "STDOUT_SET", 1, HEX1 | HEXR };
	case STDOUT_GET:        return (struct code_info){ "STDOUT_GET", 0, HEXR };
	case CALLBACK_TIMER:    return (struct code_info){ "CALLBACK_TIMER", 1, HEX1 | HEXR };
	case CALLBACK_NETWORK:  return (struct code_info){ "CALLBACK_NETWORK", 1, HEX1 | HEXR };
	case CALLBACK_KEYBOARD: return (struct code_info){ "CALLBACK_KEYBOARD", 1, HEX1 | HEXR };
	case TIMER_SET:         return (struct code_info){ "TIMER_SET", 1, 0 };
	case DUMP_MEM:          return (struct code_info){ "DUMP_MEM", 2, HEX1 };
	case DUMP_RAX:          return (struct code_info){ "DUMP_RAX", 1, HEX1 | HEXR };
	case DELAY:             return (struct code_info){ "DELAY", 1, 0 };
	case SLEEP:             return (struct code_info){ "SLEEP", 1, 0 };
	case RESET:             return (struct code_info){ "RESET", 0, 0 };
	case REBOOT:            return (struct code_info){ "REBOOT", 0, 0 };
	case SHUTDOWN:          return (struct code_info){ "SHUTDOWN", 0, 0 };
	default:                return (struct code_info){ NULL, 2, HEX1 | HEX2 | HEXR };
	}
}

/* put_value -- a value in hex (addresses) or decimal */
static void put_value(struct line *l, u64 v, int hex) { put(l, hex ? "0x%lx" : "%lu", v); }

/* put_system -- "b_system(NAME, var1, var2) = result" */
static void put_system(struct line *l, const u64 *a, u64 result)
{
	struct code_info c = code_of(a[0]);
	if (c.name != NULL)
		put(l, "b_system(%s", c.name);
	else
		put(l, "b_system(0x%lx", a[0]);
	for (int i = 1; i <= c.nargs; i++) {
		put(l, ", ");
		put_value(l, a[i], c.hex & (i == 1 ? HEX1 : HEX2));
	}
	put(l, ") = ");
	put_value(l, result, c.hex & HEXR);
}

/* put_bytes -- up to PREVIEW bytes at `data` (any process address) as a C string literal,
 * "..." after it when there were more; the address instead when they cannot be read */
static void put_bytes(struct line *l, const void *data, u64 shown, u64 n)
{
	u8 copy[PREVIEW];
	u64 take = n < PREVIEW ? n : PREVIEW;
	struct iovec local = { copy, take }, remote = { (void *)data, take };
	if (take > 0 && (data == NULL || process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != (ssize_t)take)) {
		put(l, "0x%lx", shown);
		return;
	}
	put(l, "\"");
	for (u64 i = 0; i < take; i++) {
		u8 c = copy[i];
		if (c == '\n')
			put(l, "\\n");
		else if (c == '\t')
			put(l, "\\t");
		else if (c == '\r')
			put(l, "\\r");
		else if (c == '"' || c == '\\')
			put(l, "\\%c", c);
		else if (c >= 0x20 && c < 0x7F)
			put(l, "%c", c);
		else
			put(l, "\\x%02x", c);
	}
	put(l, n > take ? "\"..." : "\"");
}

/* put_call -- the call, its arguments and result (see the table in bm_trace_call) */
static void put_call(struct line *l, int call, const u64 *a, u64 result, const void *data)
{
	switch (call) {
	case BM_TRACE_INPUT:
		put(l, "b_input() = %lu", result);
		if (result >= 0x20 && result < 0x7F)
			put(l, " '%c'", (char)result);
		break;
	case BM_TRACE_OUTPUT:
		put(l, "b_output(");
		put_bytes(l, data, a[0], a[1]);
		put(l, ", %lu)", a[1]);
		break;
	case BM_TRACE_NET_TX:
		put(l, "b_net_tx(0x%lx, %lu, %lu)", a[0], a[1], a[2]);
		break;
	case BM_TRACE_NET_RX:
		put(l, "b_net_rx(%lu) = %lu", a[0], result);
		if (result != 0)
			put(l, ", frame at 0x%lx", a[1]);
		break;
	case BM_TRACE_NVS_READ:
	case BM_TRACE_NVS_WRITE:
		put(l, "%s(0x%lx, %lu, %lu, %lu) = %lu", call == BM_TRACE_NVS_READ ? "b_nvs_read" : "b_nvs_write",
		    a[0], a[1], a[2], a[3], result);
		break;
	case BM_TRACE_SYSTEM:
		put_system(l, a, result);
		break;
	default:
		put(l, "call %d", call);
	}
}

/* write_line -- one write(2) of the line (the rest again only after a short write) */
static void write_line(struct bm_trace *t, struct line *l)
{
	const char *p = l->text;
	size_t left = l->len;
	while (left > 0) {
		ssize_t done = write(t->fd, p, left);
		if (done > 0) {
			p += done;
			left -= (size_t)done;
		} else if (!(done < 0 && errno == EINTR)) {
			atomic_fetch_add_explicit(&t->lost, 1, memory_order_relaxed);
			return;
		}
	}
	atomic_fetch_add_explicit(&t->lines, 1, memory_order_relaxed);
}

/* bm_trace_call -- write the line of one call that has just returned, on the calling core
 *  IN:  m (traced), call = enum bm_trace_call, t0 = bm_now_ns() before the call, result,
 *       args = the arguments as the app gave them:
 *         BM_TRACE_INPUT      none                       result = the byte
 *         BM_TRACE_OUTPUT     str, nbr                   data = where str's bytes can be read
 *         BM_TRACE_NET_TX     mem, len, iid
 *         BM_TRACE_NET_RX     iid, the frame's address   result = its length
 *         BM_TRACE_NVS_*      mem, start, num, drive     result = sectors
 *         BM_TRACE_SYSTEM     function, var1, var2       result
 *       the calling thread's recorded error (bm_error) is the call's
 * OUT:  nothing */
void bm_trace_call(struct bm_machine *m, int call, u64 t0, const u64 *args, u64 result, const void *data)
{
	u64 end = bm_now_ns(), since = t0 > m->boot_ns ? t0 - m->boot_ns : 0;
	struct bm_core *self = bm_self;
	struct line l = { .len = 0 };
	put(&l, "%lu.%09lu core %u%s ", since / 1000000000ul, since % 1000000000ul, self ? self->id : 0,
	    self && self->counter_slot == BM_NIC_SERVICE_SLOT ? " callback" : "");
	put_call(&l, call, args, result, data);
	if (bm_error.code != BM_OK)
		put(&l, " error: %s", bm_error.message);
	put(&l, " <%lu ns>", end - t0);
	if (l.len > sizeof l.text - 2)
		l.len = sizeof l.text - 2;
	l.text[l.len++] = '\n';
	write_line(m->trace, &l);
}

/* bm_trace_guest_call -- write the line of one call a flat binary made (upstream's register
 * ABI, baremetal-api.md section 4), in guest terms
 *  IN:  m (traced), n = the call's number in the call table (8: the console output function
 *       STDOUT_GET gives, traced as b_output), t0 = bm_now_ns() before it,
 *       before = RAX, RCX, RDX, RSI, RDI at the call, after = RAX, RCX, RDI when it returned,
 *       data = b_output's bytes in the process (NULL: outside memory)
 * OUT:  nothing */
void bm_trace_guest_call(struct bm_machine *m, unsigned n, u64 t0, const u64 *before, const u64 *after,
			 const void *data)
{
	enum { RAX, RCX, RDX, RSI, RDI };
	switch (n) {
	case 0:
		bm_trace_call(m, BM_TRACE_INPUT, t0, NULL, after[0] & 0xFF, NULL);
		break;
	case 1:
	case 8:
		bm_trace_call(m, BM_TRACE_OUTPUT, t0, (u64[]){ before[RSI], before[RCX] }, 0, data);
		break;
	case 2:
		bm_trace_call(m, BM_TRACE_NET_TX, t0, (u64[]){ before[RSI], before[RCX], before[RDX] }, 0, NULL);
		break;
	case 3:
		bm_trace_call(m, BM_TRACE_NET_RX, t0, (u64[]){ before[RDX], after[2] }, after[1], NULL);
		break;
	case 4:
	case 5:
		bm_trace_call(m, n == 4 ? BM_TRACE_NVS_READ : BM_TRACE_NVS_WRITE, t0,
			      (u64[]){ n == 4 ? before[RDI] : before[RSI], before[RAX], before[RCX], before[RDX] },
			      after[1], NULL);
		break;
	case 6:
		bm_trace_call(m, BM_TRACE_SYSTEM, t0, (u64[]){ before[RCX], before[RAX], before[RDX] }, after[0], NULL);
		break;
	default:
		break;
	}
}

/* ---- the trace's life ---------------------------------------------------------------------- */

/* bm_trace_attach -- trace every call of m's apps to fd (the machine keeps a dup of it)
 *  IN:  m (not booted yet), fd = where lines go (stderr, or a file opened O_APPEND)
 * OUT:  0, -1 with the error recorded (running machine, bad fd, out of memory) */
int bm_trace_attach(struct bm_machine *m, int fd)
{
	bm_error_clear();
	if (atomic_load(&m->state) != BM_STATE_NEW)
		return (int)bm_fail(BM_ERR_STATE, "trace: give it before the machine boots") - 1;
	if (m->trace != NULL)
		return (int)bm_fail(BM_ERR_STATE, "trace: this machine is traced already") - 1;
	struct bm_trace *t = calloc(1, sizeof *t);
	if (t == NULL)
		return (int)bm_fail(BM_ERR_FULL, "trace: out of host memory") - 1;
	t->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (t->fd < 0) {
		int e = errno;
		free(t);
		return (int)bm_fail(BM_ERR_ARGUMENT, "trace: fd %d: %s", fd, strerror(e)) - 1;
	}
	m->trace = t;
	return 0;
}

/* bm_trace_lines -- lines written so far (0 when the machine is not traced) */
u64 bm_trace_lines(struct bm_machine *m)
{
	return m->trace != NULL ? atomic_load(&m->trace->lines) : 0;
}

/* bm_trace_free -- stop tracing m and close the trace's fd (machine free: no core runs)
 *  IN:  m
 * OUT:  nothing */
void bm_trace_free(struct bm_machine *m)
{
	struct bm_trace *t = m->trace;
	if (t == NULL)
		return;
	m->trace = NULL;
	close(t->fd);
	free(t);
}

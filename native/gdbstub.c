/* gdbstub.c -- a gdb remote-serial-protocol stub for core 0 of a flat binary (`--gdb PORT`).
 *
 * Python accepts gdb's connection (pybaremetal/cpu/gdb.py) and hands the socket here; guest.c
 * then runs core 0 through bm_gdb_serve instead of the backend's run, so the app is stopped
 * before its first instruction.  The stub talks to the CPU only through the backend table
 * (guest.h): get_state/set_state for registers, debug for single steps and breakpoints, run to
 * resume, stop to interrupt.  So the same stub serves the emulated CPU and KVM.
 *
 * Protocol (gdb's "Remote Protocol" appendix): packets $data#cs, acknowledged with +/- until
 * QStartNoAckMode.  Served: ? g G p P m M c s C S (the signal is dropped) Z0 Z1 z0 z1 k D vKill qSupported (PacketSize,
 * qXfer:features:read: the target description below, so gdb knows the register layout: the
 * amd64 general registers, segment selectors, x87 (shown as zeros: not tracked), SSE, and
 * fs_base/gs_base), qAttached, qC, qfThreadInfo/qsThreadInfo (one thread: core 0), H, T.
 * Anything else gets the empty reply (unsupported), as the protocol wants.
 *
 * Memory is read and written at virtual addresses, translated through the guest's own page
 * tables (CR3: 4-level, 2 MiB / 1 GiB pages as well as 4 KiB ones); every physical address is
 * bounds-checked against the machine's memory.  Breakpoints of both kinds (Z0 "software" and
 * Z1 "hardware") are address breakpoints of the backend (the emulated CPU: any number; KVM:
 * the 4 debug registers), so code is never patched and the app cannot see them.
 *
 * While core 0 runs (c), a watcher thread reads the socket: a Ctrl-C (0x03) from gdb sets
 * g->debug_break (bm_guest_must_stop then says BM_GUEST_DEBUG for core 0) and stops the vCPU.
 * A fault stops core 0 with the signal a process would get (SIGSEGV, SIGILL, ...) at the
 * faulting rip; resuming after it, kill, detach or gdb going away end the run with the fault.
 * Other cores are not stopped: gdb sees core 0 only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "gdbstub.h"

#define PACKET_MAX 4096                  /* what qSupported offers gdb (PacketSize, hex 1000) */
#define SIGINT_ 2
#define SIGTRAP_ 5

struct bm_gdb {
	int fd;
	int no_ack;                      /* QStartNoAckMode was agreed */
	int gone;                        /* gdb closed the connection */
	struct bm_cpu_debug debug;       /* the breakpoints gdb set */
	struct bm_guest_cpu *cpu;
	pthread_t watcher;
	_Atomic int running;             /* core 0 is in ops->run: the watcher reads the socket */
	char in[PACKET_MAX + 1];
	char out[2 * PACKET_MAX + 8];
};

/* The target description gdb reads (qXfer:features:read:target.xml). */
static const char target_xml[] =
	"<?xml version=\"1.0\"?><!DOCTYPE target SYSTEM \"gdb-target.dtd\">"
	"<target version=\"1.0\"><architecture>i386:x86-64</architecture>"
	"<feature name=\"org.gnu.gdb.i386.core\">"
	"<flags id=\"i386_eflags\" size=\"4\"><field name=\"CF\" start=\"0\" end=\"0\"/>"
	"<field name=\"\" start=\"1\" end=\"1\"/><field name=\"PF\" start=\"2\" end=\"2\"/>"
	"<field name=\"AF\" start=\"4\" end=\"4\"/><field name=\"ZF\" start=\"6\" end=\"6\"/>"
	"<field name=\"SF\" start=\"7\" end=\"7\"/><field name=\"TF\" start=\"8\" end=\"8\"/>"
	"<field name=\"IF\" start=\"9\" end=\"9\"/><field name=\"DF\" start=\"10\" end=\"10\"/>"
	"<field name=\"OF\" start=\"11\" end=\"11\"/></flags>"
	"<reg name=\"rax\" bitsize=\"64\" type=\"int64\"/><reg name=\"rbx\" bitsize=\"64\" type=\"int64\"/>"
	"<reg name=\"rcx\" bitsize=\"64\" type=\"int64\"/><reg name=\"rdx\" bitsize=\"64\" type=\"int64\"/>"
	"<reg name=\"rsi\" bitsize=\"64\" type=\"int64\"/><reg name=\"rdi\" bitsize=\"64\" type=\"int64\"/>"
	"<reg name=\"rbp\" bitsize=\"64\" type=\"data_ptr\"/><reg name=\"rsp\" bitsize=\"64\" type=\"data_ptr\"/>"
	"<reg name=\"r8\" bitsize=\"64\" type=\"int64\"/><reg name=\"r9\" bitsize=\"64\" type=\"int64\"/>"
	"<reg name=\"r10\" bitsize=\"64\" type=\"int64\"/><reg name=\"r11\" bitsize=\"64\" type=\"int64\"/>"
	"<reg name=\"r12\" bitsize=\"64\" type=\"int64\"/><reg name=\"r13\" bitsize=\"64\" type=\"int64\"/>"
	"<reg name=\"r14\" bitsize=\"64\" type=\"int64\"/><reg name=\"r15\" bitsize=\"64\" type=\"int64\"/>"
	"<reg name=\"rip\" bitsize=\"64\" type=\"code_ptr\"/>"
	"<reg name=\"eflags\" bitsize=\"32\" type=\"i386_eflags\"/>"
	"<reg name=\"cs\" bitsize=\"32\" type=\"int32\"/><reg name=\"ss\" bitsize=\"32\" type=\"int32\"/>"
	"<reg name=\"ds\" bitsize=\"32\" type=\"int32\"/><reg name=\"es\" bitsize=\"32\" type=\"int32\"/>"
	"<reg name=\"fs\" bitsize=\"32\" type=\"int32\"/><reg name=\"gs\" bitsize=\"32\" type=\"int32\"/>"
	"<reg name=\"st0\" bitsize=\"80\" type=\"i387_ext\"/><reg name=\"st1\" bitsize=\"80\" type=\"i387_ext\"/>"
	"<reg name=\"st2\" bitsize=\"80\" type=\"i387_ext\"/><reg name=\"st3\" bitsize=\"80\" type=\"i387_ext\"/>"
	"<reg name=\"st4\" bitsize=\"80\" type=\"i387_ext\"/><reg name=\"st5\" bitsize=\"80\" type=\"i387_ext\"/>"
	"<reg name=\"st6\" bitsize=\"80\" type=\"i387_ext\"/><reg name=\"st7\" bitsize=\"80\" type=\"i387_ext\"/>"
	"<reg name=\"fctrl\" bitsize=\"32\" type=\"int\" group=\"float\"/>"
	"<reg name=\"fstat\" bitsize=\"32\" type=\"int\" group=\"float\"/>"
	"<reg name=\"ftag\" bitsize=\"32\" type=\"int\" group=\"float\"/>"
	"<reg name=\"fiseg\" bitsize=\"32\" type=\"int\" group=\"float\"/>"
	"<reg name=\"fioff\" bitsize=\"32\" type=\"int\" group=\"float\"/>"
	"<reg name=\"foseg\" bitsize=\"32\" type=\"int\" group=\"float\"/>"
	"<reg name=\"fooff\" bitsize=\"32\" type=\"int\" group=\"float\"/>"
	"<reg name=\"fop\" bitsize=\"32\" type=\"int\" group=\"float\"/></feature>"
	"<feature name=\"org.gnu.gdb.i386.sse\">"
	"<vector id=\"v2d\" type=\"ieee_double\" count=\"2\"/><vector id=\"v4f\" type=\"ieee_single\" count=\"4\"/>"
	"<vector id=\"v2u64\" type=\"uint64\" count=\"2\"/><vector id=\"v4u32\" type=\"uint32\" count=\"4\"/>"
	"<vector id=\"v16u8\" type=\"uint8\" count=\"16\"/>"
	"<union id=\"vec128\"><field name=\"v2_double\" type=\"v2d\"/><field name=\"v4_float\" type=\"v4f\"/>"
	"<field name=\"v2_int64\" type=\"v2u64\"/><field name=\"v4_int32\" type=\"v4u32\"/>"
	"<field name=\"v16_int8\" type=\"v16u8\"/><field name=\"uint128\" type=\"uint128\"/></union>"
	"<reg name=\"xmm0\" bitsize=\"128\" type=\"vec128\"/><reg name=\"xmm1\" bitsize=\"128\" type=\"vec128\"/>"
	"<reg name=\"xmm2\" bitsize=\"128\" type=\"vec128\"/><reg name=\"xmm3\" bitsize=\"128\" type=\"vec128\"/>"
	"<reg name=\"xmm4\" bitsize=\"128\" type=\"vec128\"/><reg name=\"xmm5\" bitsize=\"128\" type=\"vec128\"/>"
	"<reg name=\"xmm6\" bitsize=\"128\" type=\"vec128\"/><reg name=\"xmm7\" bitsize=\"128\" type=\"vec128\"/>"
	"<reg name=\"xmm8\" bitsize=\"128\" type=\"vec128\"/><reg name=\"xmm9\" bitsize=\"128\" type=\"vec128\"/>"
	"<reg name=\"xmm10\" bitsize=\"128\" type=\"vec128\"/><reg name=\"xmm11\" bitsize=\"128\" type=\"vec128\"/>"
	"<reg name=\"xmm12\" bitsize=\"128\" type=\"vec128\"/><reg name=\"xmm13\" bitsize=\"128\" type=\"vec128\"/>"
	"<reg name=\"xmm14\" bitsize=\"128\" type=\"vec128\"/><reg name=\"xmm15\" bitsize=\"128\" type=\"vec128\"/>"
	"<reg name=\"mxcsr\" bitsize=\"32\" type=\"int\" group=\"vector\"/></feature>"
	"<feature name=\"org.gnu.gdb.i386.segments\">"
	"<reg name=\"fs_base\" bitsize=\"64\" type=\"int\"/><reg name=\"gs_base\" bitsize=\"64\" type=\"int\"/>"
	"</feature></target>";

/* The registers in target_xml's order: size in bytes (the 'g' packet is them back to back). */
#define REGS 59
static unsigned reg_size(unsigned n)
{
	if (n < 17 || n >= 57)
		return 8;                /* gprs, rip; fs_base, gs_base */
	if (n >= 24 && n < 32)
		return 10;               /* st0..st7 */
	if (n >= 40 && n < 56)
		return 16;               /* xmm */
	return 4;                        /* eflags, selectors, x87 control, mxcsr */
}

/* reg_bytes -- register n of s, little-endian, into out (reg_size(n) bytes) */
static void reg_bytes(const struct bm_cpu_state *s, unsigned n, u8 *out)
{
	u64 v = 0;
	memset(out, 0, reg_size(n));
	if (n < 16)
		v = s->gpr[n];
	else if (n == 16)
		v = s->rip;
	else if (n == 17)
		v = s->rflags;
	else if (n < 24)
		v = s->seg[n - 18];
	else if (n == 32)
		v = 0x37F;                       /* fctrl: the x87 is not tracked; its reset value */
	else if (n >= 40 && n < 56) {
		memcpy(out, s->xmm[n - 40], 16);
		return;
	} else if (n == 56)
		v = s->mxcsr;
	else if (n == 57)
		v = s->fs_base;
	else if (n == 58)
		v = s->gs_base;
	memcpy(out, &v, reg_size(n) < 8 ? reg_size(n) : 8);
}

/* set_reg -- register n of s from `in` (reg_size(n) bytes); x87 and selectors are ignored */
static void set_reg(struct bm_cpu_state *s, unsigned n, const u8 *in)
{
	u64 v = 0;
	memcpy(&v, in, reg_size(n) < 8 ? reg_size(n) : 8);
	if (n < 16)
		s->gpr[n] = v;
	else if (n == 16)
		s->rip = v;
	else if (n == 17)
		s->rflags = v;
	else if (n >= 40 && n < 56)
		memcpy(s->xmm[n - 40], in, 16);
	else if (n == 56)
		s->mxcsr = (u32)v;
	else if (n == 57)
		s->fs_base = v;
	else if (n == 58)
		s->gs_base = v;
}

/* ---- memory through the guest's page tables --------------------------------------------- */

/* translate -- the physical address of virtual `va` through the page tables at cr3, and how
 * many bytes follow it in the same page
 *  IN:  m, cr3, va
 * OUT:  0 with *phys, *left; -1 if va is not mapped (or a table lies outside memory) */
static int translate(struct bm_machine *m, u64 cr3, u64 va, u64 *phys, u64 *left)
{
	const u64 address_bits = 0x000FFFFFFFFFF000ull;
	if ((u64)((int64_t)(va << 16) >> 16) != va)
		return -1;                                   /* not canonical */
	u64 table = cr3 & address_bits;
	for (int level = 4; level >= 1; level--) {
		unsigned shift = 12 + 9 * (unsigned)(level - 1);
		u64 at = table + 8 * ((va >> shift) & 511);
		if (at + 8 > m->mem_size)
			return -1;
		u64 entry;
		memcpy(&entry, m->mem + at, 8);
		if (!(entry & 1))
			return -1;
		if (level == 1 || ((level == 2 || level == 3) && (entry & 0x80))) {
			u64 size = 1ull << shift;
			*phys = (entry & address_bits & ~(size - 1)) + (va & (size - 1));
			*left = size - (va & (size - 1));
			return 0;
		}
		table = entry & address_bits;
	}
	return -1;
}

/* access -- copy guest virtual [va, va+n) out to buf (write 0) or in from buf (write 1)
 *  IN:  m, cr3, va, buf, n, write
 * OUT:  0; -1 if any byte is unmapped or outside memory (nothing written then) */
static int access_memory(struct bm_machine *m, u64 cr3, u64 va, u8 *buf, u64 n, int write)
{
	for (int pass = write ? 0 : 1; pass < 2; pass++)     /* a write checks every page first */
		for (u64 done = 0; done < n;) {
			u64 phys, left;
			if (translate(m, cr3, va + done, &phys, &left) != 0)
				return -1;
			u64 chunk = n - done < left ? n - done : left;
			if (phys > m->mem_size || chunk > m->mem_size - phys)
				return -1;
			if (pass == 1 && write)
				memcpy(m->mem + phys, buf + done, chunk);
			else if (pass == 1)
				memcpy(buf + done, m->mem + phys, chunk);
			done += chunk;
		}
	return 0;
}

/* ---- packets ---------------------------------------------------------------------------- */

static const char hex_digits[] = "0123456789abcdef";

static int hex_value(int ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* to_hex -- n bytes as 2n hex digits at out (NUL-terminated); returns out + 2n */
static char *to_hex(char *out, const u8 *bytes, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		*out++ = hex_digits[bytes[i] >> 4];
		*out++ = hex_digits[bytes[i] & 15];
	}
	*out = 0;
	return out;
}

/* from_hex -- up to n bytes from hex text; returns how many were read */
static size_t from_hex(const char *text, u8 *bytes, size_t n)
{
	size_t i = 0;
	for (; i < n && hex_value(text[2 * i]) >= 0 && hex_value(text[2 * i + 1]) >= 0; i++)
		bytes[i] = (u8)(hex_value(text[2 * i]) << 4 | hex_value(text[2 * i + 1]));
	return i;
}

/* read_byte -- the next byte from gdb; -1 when the connection is gone */
static int read_byte(struct bm_gdb *s)
{
	u8 ch;
	for (;;) {
		ssize_t n = recv(s->fd, &ch, 1, 0);
		if (n == 1)
			return ch;
		if (n < 0 && errno == EINTR)
			continue;
		s->gone = 1;
		return -1;
	}
}

/* send_packet -- $data#checksum, resent until gdb acknowledges it (unless no-ack mode)
 *  IN:  s, data (NUL-terminated)
 * OUT:  0, or -1 when the connection is gone */
static int send_packet(struct bm_gdb *s, const char *data)
{
	size_t n = strlen(data);
	char *frame = malloc(n + 5);
	if (frame == NULL)
		return -1;
	u8 sum = 0;
	for (size_t i = 0; i < n; i++)
		sum = (u8)(sum + (u8)data[i]);
	frame[0] = '$';
	memcpy(frame + 1, data, n);
	snprintf(frame + 1 + n, 4, "#%c%c", hex_digits[sum >> 4], hex_digits[sum & 15]);
	int result = -1;
	for (int tries = 0; tries < 10; tries++) {
		if (send(s->fd, frame, n + 4, MSG_NOSIGNAL) != (ssize_t)(n + 4))
			break;
		int ack = s->no_ack ? '+' : read_byte(s);
		if (ack == '+') {
			result = 0;
			break;
		}
		if (ack != '-')
			break;
	}
	free(frame);
	if (result != 0)
		s->gone = 1;
	return result;
}

/* read_packet -- the next packet's data into s->in (NUL-terminated); bytes between packets
 * (acks, a Ctrl-C while stopped) are skipped; a bad checksum is answered '-'
 *  IN:  s
 * OUT:  0, or -1 when the connection is gone */
static int read_packet(struct bm_gdb *s)
{
	for (;;) {
		int ch;
		while ((ch = read_byte(s)) != '$')
			if (ch < 0)
				return -1;
		size_t n = 0;
		u8 sum = 0;
		int overflow = 0;
		while ((ch = read_byte(s)) != '#') {
			if (ch < 0)
				return -1;
			sum = (u8)(sum + ch);
			if (n < PACKET_MAX)
				s->in[n++] = (char)ch;
			else
				overflow = 1;
		}
		s->in[n] = 0;
		int high = read_byte(s), low = read_byte(s);
		if (low < 0)
			return -1;
		int ok = !overflow && hex_value(high) >= 0 && hex_value(low) >= 0 &&
			 (hex_value(high) << 4 | hex_value(low)) == sum;
		if (!s->no_ack && send(s->fd, ok ? "+" : "-", 1, MSG_NOSIGNAL) != 1)
			return s->gone = 1, -1;
		if (ok)
			return 0;
	}
}

/* ---- running ---------------------------------------------------------------------------- */

/* watch -- while core 0 runs: a Ctrl-C from gdb (or gdb going away) stops it */
static void *watch(void *arg)
{
	struct bm_gdb *s = arg;
	struct bm_guest_cpu *c = s->cpu;
	int stopping = 0;
	while (atomic_load(&s->running)) {
		if (stopping) {                              /* repeated: a stop may come too early */
			c->guest->ops->stop(c);
			struct timespec pause = { 0, 1000000 };
			nanosleep(&pause, NULL);
			continue;
		}
		struct pollfd p = { s->fd, POLLIN, 0 };
		if (poll(&p, 1, 20) <= 0)
			continue;
		u8 ch;
		ssize_t n = recv(s->fd, &ch, 1, 0);
		if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
			s->gone = 1;
		if (s->gone || (n == 1 && ch == 0x03)) {
			atomic_store(&c->guest->debug_break, 1);
			stopping = 1;
		}
	}
	return NULL;
}

/* resume -- run core 0 once with `d` (a step or breakpoints), Ctrl-C watched
 *  IN:  s, c, d
 * OUT:  the run's enum bm_guest_end */
static int resume(struct bm_gdb *s, struct bm_guest_cpu *c, const struct bm_cpu_debug *d)
{
	const struct bm_cpu_ops *ops = c->guest->ops;
	if (ops->debug(c, d) != 0)
		return BM_GUEST_FAULT;
	atomic_store(&s->running, 1);
	int watching = !d->step && pthread_create(&s->watcher, NULL, watch, s) == 0;
	int end = ops->run(c);
	atomic_store(&s->running, 0);
	if (watching)
		pthread_join(s->watcher, NULL);
	return end;
}

/* has_breakpoint -- whether gdb set a breakpoint at `at` */
static int has_breakpoint(const struct bm_gdb *s, u64 at)
{
	for (unsigned i = 0; i < s->debug.n; i++)
		if (s->debug.at[i] == at)
			return 1;
	return 0;
}

/* go -- gdb's c (step 0) or s (step 1): from a breakpoint's address, one step first, so it
 * is not hit again at once
 *  IN:  s, c, step, rip = where core 0 stands
 * OUT:  the run's enum bm_guest_end */
static int go(struct bm_gdb *s, struct bm_guest_cpu *c, int step, u64 rip)
{
	struct bm_cpu_debug one = { .step = 1 };
	if (step)
		return resume(s, c, &one);
	if (has_breakpoint(s, rip)) {
		int end = resume(s, c, &one);
		if (end != BM_GUEST_DEBUG || atomic_load(&c->guest->debug_break))
			return end;
	}
	s->debug.step = 0;
	return resume(s, c, &s->debug);
}

/* breakpoint -- Z0/Z1/z0/z1: add or remove an address breakpoint
 *  IN:  s, c, insert, text = "type,addr,kind"
 * OUT:  the reply */
static const char *breakpoint(struct bm_gdb *s, struct bm_guest_cpu *c, int insert, const char *text)
{
	unsigned type;
	unsigned long long at;
	if (sscanf(text, "%u,%llx", &type, &at) != 2 || type > 1)
		return "";                                   /* watchpoints: not supported */
	for (unsigned i = 0; i < s->debug.n; i++)
		if (s->debug.at[i] == at) {
			if (insert)
				return "OK";
			s->debug.at[i] = s->debug.at[--s->debug.n];
			return "OK";
		}
	if (!insert)
		return "OK";
	if (s->debug.n == BM_CPU_BREAKPOINTS)
		return "E28";
	s->debug.at[s->debug.n++] = at;
	s->debug.step = 0;
	if (c->guest->ops->debug(c, &s->debug) != 0) {  /* e.g. KVM: only 4 debug registers */
		s->debug.n--;
		c->guest->ops->debug(c, &s->debug);
		return "E28";
	}
	return "OK";
}

/* memory -- m / M packets
 *  IN:  s, c, state (for CR3), text (after the letter), write
 * OUT:  the reply in s->out */
static void memory(struct bm_gdb *s, struct bm_guest_cpu *c, const struct bm_cpu_state *state,
		   const char *text, int write)
{
	unsigned long long at, n;
	int used = 0;
	static u8 bytes[PACKET_MAX];
	if (sscanf(text, "%llx,%llx%n", &at, &n, &used) != 2 || n > PACKET_MAX / 2 ||
	    (write && text[used] != ':')) {
		strcpy(s->out, "E16");
		return;
	}
	struct bm_machine *m = c->guest->m;
	if (write) {
		if (from_hex(text + used + 1, bytes, n) != n) {
			strcpy(s->out, "E16");
			return;
		}
		struct bm_cpu_debug flush = s->debug;
		flush.code_changed = 1;
		int ok = access_memory(m, state->cr3, at, bytes, n, 1) == 0;
		c->guest->ops->debug(c, &flush);
		strcpy(s->out, ok ? "OK" : "E0e");
	} else if (access_memory(m, state->cr3, at, bytes, n, 0) == 0) {
		to_hex(s->out, bytes, n);
	} else {
		strcpy(s->out, "E0e");
	}
}

/* features -- qXfer:features:read:target.xml:OFFSET,LENGTH */
static void features(struct bm_gdb *s, const char *text)
{
	unsigned long offset, length;
	if (strncmp(text, "target.xml:", 11) != 0 || sscanf(text + 11, "%lx,%lx", &offset, &length) != 2) {
		strcpy(s->out, "E00");
		return;
	}
	size_t total = sizeof target_xml - 1;
	if (offset > total)
		offset = total;
	if (length > PACKET_MAX - 2)
		length = PACKET_MAX - 2;
	size_t n = total - offset < length ? total - offset : length;
	s->out[0] = offset + n < total ? 'm' : 'l';
	memcpy(s->out + 1, target_xml + offset, n);
	s->out[1 + n] = 0;
}

/* registers -- the whole register file as hex (g) */
static void registers(struct bm_gdb *s, const struct bm_cpu_state *state)
{
	char *out = s->out;
	for (unsigned n = 0; n < REGS; n++) {
		u8 bytes[16];
		reg_bytes(state, n, bytes);
		out = to_hex(out, bytes, reg_size(n));
	}
}

/* set_registers -- G (n = -1: all) or P n=value; applied to the vCPU
 *  IN:  s, c, state (updated), text
 * OUT:  the reply */
static const char *set_registers(struct bm_guest_cpu *c, struct bm_cpu_state *state, const char *text, int n)
{
	u8 bytes[16];
	for (unsigned r = n < 0 ? 0 : (unsigned)n; r < (n < 0 ? REGS : (unsigned)n + 1); r++) {
		if (from_hex(text, bytes, reg_size(r)) != reg_size(r))
			return "E16";
		set_reg(state, r, bytes);
		text += 2 * reg_size(r);
	}
	return c->guest->ops->set_state(c, state) == 0 ? "OK" : "E01";
}

/* stop_reply -- what gdb is told after a run: T<signal> stopped, W<code> exited, X<signal>
 * killed by a fault */
static void stop_reply(struct bm_gdb *s, char kind, int value)
{
	if (kind == 'T')
		snprintf(s->out, sizeof s->out, "T%02xthread:1;", value & 0xFF);
	else
		snprintf(s->out, sizeof s->out, "%c%02x", kind, value & 0xFF);
}

/* bm_gdb_open -- a stub over gdb's connected socket (Python accepted it)
 *  IN:  fd (taken over: bm_gdb_close closes it)
 * OUT:  the stub, or NULL (out of memory; fd closed) */
struct bm_gdb *bm_gdb_open(int fd)
{
	struct bm_gdb *s = calloc(1, sizeof *s);
	if (s == NULL) {
		close(fd);
		return (void *)bm_fail(BM_ERR_FULL, "out of host memory");
	}
	s->fd = fd;
	return s;
}

/* bm_gdb_close -- close the connection and free the stub (NULL: nothing) */
void bm_gdb_close(struct bm_gdb *s)
{
	if (s == NULL)
		return;
	if (s->fd >= 0)
		close(s->fd);
	free(s);
}

/* bm_gdb_serve -- core 0's run under gdb (guest.c calls it instead of ops->run): serve gdb's
 * packets from the first instruction on until the run ends
 *  IN:  s, c (core 0's vCPU, registers set, on its own thread)
 * OUT:  enum bm_guest_end as ops->run; BM_GUEST_FAULT with the error recorded (the app's fault,
 *       or "killed from gdb") */
int bm_gdb_serve(struct bm_gdb *s, struct bm_guest_cpu *c, bm_guest_state_fn *guest_state)
{
	struct bm_guest *g = c->guest;
	const struct bm_cpu_ops *ops = g->ops;
	struct bm_cpu_state state;
	struct bm_error fault = { 0 };
	int faulted = 0, detach = 0;
	s->cpu = c;
	if (ops->get_state == NULL || ops->debug == NULL)
		return bm_fail(BM_ERR_STATE, "the %s CPU cannot be debugged", ops->name), BM_GUEST_FAULT;
	if (guest_state(c, &state) != 0)
		return BM_GUEST_FAULT;
	while (!detach && read_packet(s) == 0) {
		char *p = s->in;
		const char *reply = NULL;
		int end = BM_GUEST_GO_ON;
		s->out[0] = 0;
		switch (p[0]) {
		case '?':
			stop_reply(s, 'T', faulted ? g->fault_signal : SIGTRAP_);
			break;
		case 'g':
			registers(s, &state);
			break;
		case 'G':
			reply = set_registers(c, &state, p + 1, -1);
			break;
		case 'p': {
			unsigned n = (unsigned)strtoul(p + 1, NULL, 16);
			if (n >= REGS) {
				reply = "E00";
				break;
			}
			u8 bytes[16];
			reg_bytes(&state, n, bytes);
			to_hex(s->out, bytes, reg_size(n));
			break;
		}
		case 'P': {
			char *value = strchr(p, '=');
			unsigned n = (unsigned)strtoul(p + 1, NULL, 16);
			reply = value == NULL || n >= REGS ? "E00" : set_registers(c, &state, value + 1, (int)n);
			break;
		}
		case 'm':
		case 'M':
			memory(s, c, &state, p + 1, p[0] == 'M');
			break;
		case 'Z':
		case 'z':
			reply = breakpoint(s, c, p[0] == 'Z', p + 1);
			break;
		case 'C':                                    /* Csig[;addr]: the app has no signal handlers */
		case 'S': {
			char *addr = strchr(p, ';');
			p[0] = p[0] == 'C' ? 'c' : 's';
			memmove(p + 1, addr ? addr + 1 : "", addr ? strlen(addr + 1) + 1 : 1);
		}
			/* fall through */
		case 'c':
		case 's':
			if (faulted) {                               /* the app cannot go on */
				stop_reply(s, 'X', g->fault_signal);
				send_packet(s, s->out);
				bm_error = fault;
				return BM_GUEST_FAULT;
			}
			if (p[1]) {
				state.rip = strtoull(p + 1, NULL, 16);
				ops->set_state(c, &state);
			}
			end = go(s, c, p[0] == 's', state.rip);
			break;
		case 'k':
			detach = 2;
			break;
		case 'D':
			reply = "OK";
			detach = 1;
			break;
		case 'H':
		case 'T':
			reply = "OK";
			break;
		case 'v':
			if (strncmp(p, "vKill", 5) == 0) {
				reply = "OK";
				detach = 2;
			}
			break;
		case 'q':
			if (strncmp(p, "qSupported", 10) == 0)
				reply = "PacketSize=1000;qXfer:features:read+;QStartNoAckMode+";
			else if (strncmp(p, "qXfer:features:read:", 20) == 0)
				features(s, p + 20);
			else if (strcmp(p, "qAttached") == 0)
				reply = "0";
			else if (strcmp(p, "qC") == 0)
				reply = "QC1";
			else if (strcmp(p, "qfThreadInfo") == 0)
				reply = "m1";
			else if (strcmp(p, "qsThreadInfo") == 0)
				reply = "l";
			break;
		case 'Q':
			if (strcmp(p, "QStartNoAckMode") == 0) {
				send_packet(s, "OK");
				s->no_ack = 1;
				continue;
			}
			break;
		default:
			break;
		}
		if (detach == 2)
			break;
		if (end != BM_GUEST_GO_ON) {                         /* after c or s */
			int interrupted = atomic_exchange(&g->debug_break, 0);
			if (s->gone && end != BM_GUEST_RETURNED && end != BM_GUEST_SHUTDOWN && end != BM_GUEST_REBOOT) {
				detach = 2;
				break;
			}
			if (end == BM_GUEST_DEBUG) {
				stop_reply(s, 'T', interrupted ? SIGINT_ : SIGTRAP_);
			} else if (end == BM_GUEST_FAULT) {
				fault = bm_error;
				faulted = 1;
				stop_reply(s, 'T', g->fault_signal);
			} else {                                 /* returned, shut down, rebooted */
				if (guest_state(c, &state) == 0 && end == BM_GUEST_RETURNED)
					stop_reply(s, 'W', (int)state.gpr[0]);
				else
					stop_reply(s, 'W', 0);
				send_packet(s, s->out);
				return end;
			}
			if (guest_state(c, &state) != 0)
				return BM_GUEST_FAULT;
			if (faulted)
				state.rip = g->fault.rip;
		}
		if (send_packet(s, reply ? reply : s->out) != 0)
			break;
	}
	/* gdb detached (1), killed the app or went away (2) */
	if (faulted) {
		bm_error = fault;
		return BM_GUEST_FAULT;
	}
	if (detach != 1)
		return bm_fail(BM_ERR_STATE, s->gone ? "gdb went away: the app was stopped"
						     : "the app was killed from gdb"), BM_GUEST_FAULT;
	atomic_store(&g->debug_break, 0);
	ops->debug(c, NULL);
	return ops->run(c);
}

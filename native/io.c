/* io.c -- b_output and b_input: the console.
 *
 * b_output writes exactly the bytes it is given (binary-safe) to the machine's output
 * function when the app installed one with STDOUT_SET, else to the console fd (stdout, a
 * capture memfd, a file).  b_input never blocks: it polls the input fd with a zero timeout
 * and hands out bytes from a small buffer, 0 when nothing is waiting or input has ended.
 *
 * Keys arrive as upstream's kernel hands them to apps: its serial driver turns Enter (0x0D)
 * into 0x1C and Backspace (0x7F) into 0x0E, the values its PS/2 layout gives those keys.
 * Hosted input also comes from pipes and files, whose lines end in 0x0A: that is Enter too
 * (0x1C), once per line (the 0x0A of a CR LF pair is dropped).  Every other byte is as read.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <string.h>
#include <unistd.h>
#include "machine.h"
#include "lowmap.h"
#include "signals.h"

/* bm_console_init -- set up a console
 *  IN:  c = console, out_fd = where b_output writes, in_fd = where b_input reads (-1: none)
 * OUT:  nothing */
void bm_console_init(struct bm_console *c, int out_fd, int in_fd)
{
	c->out_fd = out_fd;
	atomic_store(&c->output, NULL);
	c->in_fd = in_fd;
	c->in_eof = 0;
	c->in_after_cr = 0;
	c->in_pos = c->in_len = 0;
	atomic_store(&c->in_keys, 0);
	atomic_store(&c->lost_bytes, 0);
	atomic_store(&c->lost_errno, 0);
	pthread_mutex_init(&c->in_lock, NULL);
}

/* console_write -- write all of [str, str+nbr) to the console's fd, retrying short writes
 * and EINTR
 *  IN:  c = console, str, nbr
 * OUT:  nothing; on a hard error (a closed pipe, a full disk) the rest is counted in
 *       c->lost_bytes and the first errno kept in c->lost_errno (bm_console_lost) */
static void console_write(struct bm_console *c, const char *str, u64 nbr)
{
	int fd = c->out_fd;
	while (nbr > 0) {
		ssize_t done = write(fd, str, nbr);
		if (done > 0) {
			str += done;
			nbr -= (u64)done;
		} else if (done < 0 && errno == EAGAIN) {
			struct pollfd p = { .fd = fd, .events = POLLOUT };
			poll(&p, 1, -1);
		} else if (!(done < 0 && errno == EINTR)) {
			if (done < 0 && errno == EPIPE)
				bm_signals_broken_pipe();    /* an armed run ends as SIGPIPE would */
			int none = 0;
			atomic_compare_exchange_strong(&c->lost_errno, &none, done < 0 ? errno : EIO);
			atomic_fetch_add(&c->lost_bytes, nbr);
			return;
		}
	}
}

/* bm_default_output -- the output function b_output uses when none is set (STDOUT_GET
 * returns its address); writes to the calling core's machine console
 *  IN:  str = bytes, nbr = how many
 * OUT:  nothing */
void bm_default_output(const char *str, u64 nbr)
{
	struct bm_machine *m = bm_current();
	if (m != NULL)
		console_write(&m->console, str, nbr);
}

/* console_output -- b_output's body: nbr bytes to the app's output function or the console */
static inline __attribute__((always_inline)) void console_output(struct bm_machine *m, const char *str, u64 nbr)
{
	if (nbr == 0)
		return;
	str = (const char *)(uintptr_t)bm_low_address(m, (u64)(uintptr_t)str, nbr);  /* system area */
	bm_output_fn fn = atomic_load_explicit(&m->console.output, memory_order_acquire);
	if (fn != NULL) {
		fn(str, nbr);
		return;
	}
	if (m->console.flush_stdio && __fpending(stdout) != 0)   /* unlocked peek: no lock when empty */
		fflush(stdout);
	console_write(&m->console, str, nbr);
}

/* output_traced -- console_output and its trace line (trace.h) */
BM_TRACED_PATH void output_traced(struct bm_machine *m, const char *str, u64 nbr)
{
	u64 t0 = bm_now_ns();
	console_output(m, str, nbr);
	const void *bytes = (const void *)(uintptr_t)bm_low_address(m, (u64)(uintptr_t)str, nbr);
	bm_trace_call(m, BM_TRACE_OUTPUT, t0, (u64[]){ (u64)(uintptr_t)str, nbr }, 0, bytes);
}

/* b_output -- write exactly nbr bytes (NUL bytes included) to the current output
 *  IN:  str = address of the bytes, nbr = number of bytes
 * OUT:  nothing.  No machine: nothing written, BM_ERR_NO_MACHINE recorded */
void b_output(const char *str, u64 nbr)
{
	bm_error_clear();
	struct bm_machine *m = bm_current();
	if (m == NULL)
		return;
	if (bm_traced(m))                                /* trace.h */
		output_traced(m, str, nbr);
	else
		console_output(m, str, nbr);
}

/* upstream_key -- a byte read from the input as upstream's kernel hands it to apps
 *  IN:  c = console (its CR state, updated), raw = the byte read
 * OUT:  the key: 0x1C for Enter (0x0D, or 0x0A not after 0x0D), 0x0E for Backspace (0x7F),
 *       0 for the 0x0A that follows a 0x0D (skipped), else raw */
static u8 upstream_key(struct bm_console *c, u8 raw)
{
	int after_cr = c->in_after_cr;
	c->in_after_cr = raw == 0x0D;
	if (raw == 0x0D)
		return 0x1C;
	if (raw == 0x0A)
		return after_cr ? 0 : 0x1C;
	if (raw == 0x7F)
		return 0x0E;
	return raw;
}

/* fill -- with the buffer empty, read what is waiting on the input without blocking (or see
 * its end)
 *  IN:  c (in_lock held, in_fd valid) */
static void fill(struct bm_console *c)
{
	if (c->in_pos != c->in_len || c->in_eof)
		return;
	struct pollfd p = { .fd = c->in_fd, .events = POLLIN };
	if (poll(&p, 1, 0) > 0) {
		ssize_t got = read(c->in_fd, c->in_buf, sizeof c->in_buf);
		if (got > 0) {
			c->in_pos = 0;
			c->in_len = (u32)got;
		} else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
			c->in_eof = 1;
		}
	}
}

/* console_input -- b_input's body: the next key of m's input, 0 if none */
static u8 console_input(struct bm_machine *m)
{
	if (m->console.in_fd < 0)
		return 0;
	struct bm_console *c = &m->console;
	u8 key = 0;
	pthread_mutex_lock(&c->in_lock);
again:
	fill(c);
	if (c->in_pos < c->in_len) {
		key = upstream_key(c, c->in_buf[c->in_pos++]);
		if (key == 0)
			goto again;                /* the LF of CR LF: take the next byte, if any */
		atomic_fetch_add_explicit(&c->in_keys, 1, memory_order_relaxed);
	}
	pthread_mutex_unlock(&c->in_lock);
	return key;
}

/* bm_console_key_waiting -- a key is waiting for b_input (read from the input into the buffer
 * if need be, never blocking)
 *  IN:  m
 * OUT:  1 or 0 */
int bm_console_key_waiting(struct bm_machine *m)
{
	struct bm_console *c = &m->console;
	if (c->in_fd < 0)
		return 0;
	pthread_mutex_lock(&c->in_lock);
	fill(c);
	int waiting = c->in_pos < c->in_len;
	pthread_mutex_unlock(&c->in_lock);
	return waiting;
}

/* bm_console_keys_read -- how many keys b_input has handed out so far
 *  IN:  m
 * OUT:  the count */
u64 bm_console_keys_read(struct bm_machine *m)
{
	return atomic_load_explicit(&m->console.in_keys, memory_order_relaxed);
}

/* input_traced -- console_input and its trace line (trace.h) */
BM_TRACED_PATH u8 input_traced(struct bm_machine *m)
{
	u64 t0 = bm_now_ns();
	u8 key = console_input(m);
	bm_trace_call(m, BM_TRACE_INPUT, t0, NULL, key, NULL);
	return key;
}

/* b_input -- the next key of input, never blocking (keys mapped as upstream: see the top)
 *  IN:  nothing
 * OUT:  the key; 0 when nothing is waiting, input has ended, or there is no machine (a C main
 *       polling for a key unwinds there when the machine stops: bm_stop_point) */
u8 b_input(void)
{
	bm_error_clear();
	struct bm_machine *m = bm_current();
	if (m == NULL)
		return 0;
	u8 key = bm_traced(m) ? input_traced(m) : console_input(m);     /* trace.h */
	if (key == 0 && bm_stop_requested(m))
		bm_stop_point(m);
	return key;
}

/* bm_console_set_flush_stdio -- flush C stdio before each b_output (for C apps using printf) */
void bm_console_set_flush_stdio(struct bm_machine *m, int on) { m->console.flush_stdio = on; }

/* bm_console_lost -- how much output b_output could not write
 *  IN:  m, err = where to store the errno of the first failed write (0: none)
 * OUT:  the bytes lost */
u64 bm_console_lost(struct bm_machine *m, int *err)
{
	*err = atomic_load(&m->console.lost_errno);
	return atomic_load(&m->console.lost_bytes);
}

/* bm_console_input_ended -- 1 when b_input has seen the end of its input (a closed pipe, the
 * end of a file) or has none, so a program reading lines can stop; 0 while more may come
 *  IN:  m
 * OUT:  1 or 0 */
int bm_console_input_ended(struct bm_machine *m)
{
	struct bm_console *c = &m->console;
	pthread_mutex_lock(&c->in_lock);
	int ended = c->in_fd < 0 || (c->in_eof && c->in_pos == c->in_len);
	pthread_mutex_unlock(&c->in_lock);
	return ended;
}

/* bm_console_wait_input -- wait up to timeout_ms for a key on m's input (a guest `hlt`)
 *  IN:  m, timeout_ms
 * OUT:  1 a key may be waiting (read it with b_input), 0 none yet, -1 the input has ended (or
 *       there is none): no key will come */
int bm_console_wait_input(struct bm_machine *m, int timeout_ms)
{
	struct bm_console *c = &m->console;
	for (int round = 0;; round++) {
		int state = 0;
		pthread_mutex_lock(&c->in_lock);
		if (c->in_fd >= 0)
			fill(c);                           /* readable: the bytes, or the end */
		if (c->in_pos < c->in_len)
			state = 1;
		else if (c->in_fd < 0 || c->in_eof)
			state = -1;
		int fd = c->in_fd;
		pthread_mutex_unlock(&c->in_lock);
		if (state != 0 || round == 1)
			return state;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, timeout_ms) <= 0)
			return 0;
	}
}

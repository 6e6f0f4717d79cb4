/* io.h -- the console: where b_output writes and b_input reads. */
#ifndef BM_IO_H
#define BM_IO_H

#include "base.h"

typedef void (*bm_output_fn)(const char *str, u64 nbr);

struct bm_console {
	int out_fd;                     /* default destination of b_output */
	_Atomic(bm_output_fn) output;   /* STDOUT_SET function, NULL = write to out_fd */
	int flush_stdio;                /* fflush(stdout) before each b_output (C apps using printf) */
	int in_fd;                      /* source of b_input, -1 = none */
	pthread_mutex_t in_lock;
	int in_eof;
	int in_after_cr;                /* the last byte read was 0x0D (its 0x0A is not a 2nd Enter) */
	u32 in_pos, in_len;
	u8 in_buf[4096];
	_Atomic u64 in_keys;            /* keys b_input has handed out (the keyboard callback's progress) */
	_Atomic u64 lost_bytes;         /* bytes b_output could not write (a full disk, /dev/full) */
	_Atomic int lost_errno;         /* errno of the first failed write, 0 = none */
};

void bm_console_init(struct bm_console *c, int out_fd, int in_fd);
void bm_default_output(const char *str, u64 nbr);
void bm_console_set_flush_stdio(struct bm_machine *m, int on);
int bm_console_input_ended(struct bm_machine *m);
int bm_console_wait_input(struct bm_machine *m, int timeout_ms);
int bm_console_key_waiting(struct bm_machine *m);
u64 bm_console_keys_read(struct bm_machine *m);
u64 bm_console_lost(struct bm_machine *m, int *err);

#endif

/* signals.h -- ending a run on SIGTERM / SIGINT / SIGHUP or a timeout while native code runs,
 * and giving the terminal back however the process ends (see signals.c). */
#ifndef BM_SIGNALS_H
#define BM_SIGNALS_H

#include "machine.h"

#define BM_SIGNALS_GRACE_NS (50ull * 1000000ull) /* Python has this long to end the run itself */
#define BM_SIGNALS_MACHINES 4                    /* machines armed at once, at most */
#define BM_EXIT_TIMEOUT 124                      /* exit status after --timeout, as timeout(1) */
#define BM_TERMINALS 4                           /* terminals in raw mode at once, at most */

int bm_signals_arm(struct bm_machine *m, u64 timeout_ms, u64 grace_ms);
void bm_signals_disarm(struct bm_machine *m);
int bm_signals_received(void);
int bm_signals_exit_status(void);
void bm_signals_broken_pipe(void);
void bm_signals_finishing(u64 ms);
void bm_stop_point(struct bm_machine *m);
int bm_stop_requested(struct bm_machine *m);

int bm_terminal_raw(int fd);
int bm_terminal_restore(int fd);
void bm_terminal_restore_all(void);

#endif

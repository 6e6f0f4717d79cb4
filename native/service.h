/* service.h -- the machine's callback thread: CALLBACK_TIMER, CALLBACK_NETWORK (see service.c). */
#ifndef BM_SERVICE_H
#define BM_SERVICE_H

#include "base.h"

#define BM_TIMER_DEFAULT_NS 1000000ull   /* TIMER_SET's default: the timer ticks every 1 ms */
#define BM_TIMER_MIN_NS     10000ull     /* shortest period TIMER_SET accepts (10 us) */

struct bm_service {
	pthread_t thread;
	int running;                    /* the thread exists */
	int wake_fd;                    /* eventfd: wakes the thread (stop, callbacks changed) */
	pthread_mutex_t lock;           /* start / stop */
	_Atomic int stop;
	_Atomic u64 timer_period_ns;    /* TIMER_SET */
	_Atomic u64 timer_ticks, network_calls, keyboard_calls;
	struct bm_core *core;           /* its own core struct (id 0, see service.c) */
};

int bm_service_start(struct bm_machine *m);
void bm_service_stop(struct bm_machine *m);
void bm_service_wake(struct bm_machine *m);
u64 bm_service_count(struct bm_machine *m, int which);

#endif

/* lab.h -- the scheduling lab's real runs: a precomputed open-loop schedule of requests served
 * by run-to-completion policies on a machine's cores (or by a pthread pool peer), every request
 * stamped with the TSC.  The model of the same runs is lab_sim.h. */
#ifndef BM_LAB_H
#define BM_LAB_H

#include "machine.h"

enum bm_lab_policy {
	BM_LAB_CFCFS = 0,       /* the machine's work queue, shared by every core */
	BM_LAB_DFCFS = 1,       /* one queue per core, request i to queue target[i] */
	BM_LAB_STEAL = 2,       /* d-FCFS queues; a core that finds its own empty steals */
	BM_LAB_POOL = 3,        /* peer: pthreads on the same CPUs, one mutex+condvar queue */
};

enum bm_lab_mode {
	BM_LAB_PUBLISHED = 0,   /* every worker publishes the requests whose time has come */
	BM_LAB_GENERATOR = 1,   /* core 0 (the pool: a thread on cpus[0]) sends, the rest serve */
};

/* One run.  Times are TSC ticks after `base` (set by the run, a little after the call). */
struct bm_lab_run {
	u32 policy;             /* enum bm_lab_policy */
	u32 mode;               /* enum bm_lab_mode */
	u64 count;              /* requests */
	const u64 *arrival;     /* [count], non-decreasing: each request's scheduled time */
	const u64 *arg;         /* [count]: the argument each request's task gets */
	const u32 *target;      /* [count]: d-FCFS / steal: the worker whose queue it joins */
	u64 code;               /* the task: void code(u64 arg) */
	u64 late_ticks;         /* published (sent) more than this after its time: late */
	const int *cpus;        /* the pool: the CPU of each thread (-1: not pinned) */
	u32 threads;            /* the pool: threads (workers, plus the generator in that mode) */
	u64 *publish;           /* [count] out: when the request reached the policy's queue */
	u64 *start, *end;       /* [count] out: when its task started and returned */
	u32 *core;              /* [count] out: the core (pool: the thread) that ran it */
	u64 late;               /* out: requests published late */
	u64 base;               /* out: the TSC at time 0 */
	/* the host's stalls each core saw while it ran (machine policies): a gap longer than
	 * stall_ticks between two clock reads of an idle turn or of the spin task */
	u64 stall_ticks;        /* 0: record none */
	u64 stall_cap;          /* room per core in stall_start / stall_length */
	u64 *stall_start;       /* [cores * stall_cap] out: core c's at c * stall_cap, ticks after base */
	u64 *stall_length;      /* [cores * stall_cap] out */
	u64 *stall_count;       /* [cores] out: stalls kept per core */
};

int bm_lab_run(struct bm_machine *m, struct bm_lab_run *run);
int bm_lab_pool_run(struct bm_lab_run *run);
void bm_lab_spin(u64 ticks);
u64 bm_lab_spin_code(void);
double bm_lab_tsc_hz(void);
int bm_lab_line_ticks(int cpu0, int cpu1, u64 n, u64 gap_ticks, u64 *out);
u64 bm_lab_tsc(void);
void bm_lab_time_task(u64 code, const u64 *arg, u64 count, u64 *ticks);

#endif

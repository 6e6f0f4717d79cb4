/* lab.c -- the scheduling lab's real runs (the model of the same runs is lab_sim.c).
 *
 * A run is a precomputed open-loop schedule: request i is due at arrival[i] TSC ticks after
 * time 0 and, served, runs code(arg[i]) to completion.  Each request gets four TSC stamps:
 * its scheduled time (given), when it reached the policy's queue (publish), when its task
 * started and when it returned; latency is end - arrival, so a late publisher cannot hide
 * queueing.  Requests published more than late_ticks after their time are counted late.
 *
 * Two ways requests reach the queues:
 *  - published by time (BM_LAB_PUBLISHED): every worker, each time it looks for work, first
 *    claims (CAS on `next`) the requests whose time has passed and puts them in the policy's
 *    queue itself.  No core is spent on a generator (a 2-CPU machine keeps two workers), and
 *    the queue's real cost (the enqueue, the line moving between cores) stays in the run.  A
 *    request due while every worker is busy is published when one finishes: late, counted.
 *  - a generator (BM_LAB_GENERATOR): core 0 (the pool: thread 0) sends each request at its
 *    time and serves none; cores 1..n-1 serve.
 *
 * Policies on the machine's cores (cores 1..n-1 run the lab's loop as their SMP_SET slot task,
 * core 0 runs it in the caller):
 *  - c-FCFS: the machine's work queue (bm_smp_enqueue, b_smp_dequeue): one shared FCFS queue.
 *  - d-FCFS: one queue per worker (a ring guarded by an SMP_LOCK word), request i joins queue
 *    target[i] (the caller draws targets at random, as IX's NIC hashing does), and a worker
 *    serves only its own queue.
 *  - steal: the d-FCFS queues, but a worker that finds its own empty takes the head of the
 *    first non-empty queue after it (ZygOS's work stealing, without its IPIs).
 * The peer (bm_lab_pool_run): pthreads pinned to the same CPUs around one mutex-guarded ring;
 * with a generator, idle workers sleep on a condition variable the generator signals; published
 * by time, idle workers poll the clock (as our cores do) and publish under the mutex.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <x86intrin.h>
#include "lab.h"
#include "fault.h"

typedef void (*lab_task_fn)(u64 arg);

/* record an error, evaluate to -1 */
#define LAB_FAIL(...) (bm_fail(__VA_ARGS__), -1)

/* tsc -- the TSC, read after every earlier instruction has executed (rdtsc alone may run
 * ahead of them: a start stamp before the take that it follows) */
static inline u64 tsc(void)
{
	_mm_lfence();
	return __rdtsc();
}
static inline void relax(void) { __builtin_ia32_pause(); }

/* One worker's queue (d-FCFS, steal): room for every request that targets it, so never full. */
struct lab_queue {
	u16 lock;                       /* an SMP_LOCK word */
	_Atomic u64 head, tail;         /* changed under the lock; read without it to peek */
	u64 *ids;
} __attribute__((aligned(BM_CACHE_LINE)));

/* A per-core counter on its own line, written by its core only. */
struct lab_counter {
	_Atomic u64 value;
} __attribute__((aligned(BM_CACHE_LINE)));

struct lab_state;

/* A core's (a pool thread's) own record of what it did, scattered into the run's arrays after
 * the run: written only by its core, so stamping a request moves no cache line between cores
 * (the run's arrays, indexed by request, would put neighbouring requests served on different
 * cores in one line, and a core's next locked instruction would wait for that line). */
struct lab_log {
	u64 *served;                    /* id, start, end: three words a request served */
	u64 served_n;
	u64 *published;                 /* id, publish: two words a request published */
	u64 published_n;
} __attribute__((aligned(BM_CACHE_LINE)));

/* What a core's slot task gets as its argument. */
struct lab_core {
	struct lab_state *state;
	u32 id;
} __attribute__((aligned(BM_CACHE_LINE)));

struct lab_state {
	struct bm_lab_run *run;
	struct bm_machine *m;
	u32 workers;                    /* cores (threads) that serve */
	u32 first_worker;               /* core id of worker 0: 0 published, 1 with a generator */
	u32 cores;
	struct lab_queue *queues;       /* [workers] (d-FCFS, steal) */
	struct lab_counter *done;       /* [cores]: requests each core served */
	struct lab_counter *late;       /* [cores]: requests each core published late */
	struct lab_core *core_args;     /* [cores] */
	struct lab_log *logs;           /* [cores] */
	_Atomic u64 next __attribute__((aligned(BM_CACHE_LINE)));   /* next request to publish */
	_Atomic u32 exited __attribute__((aligned(BM_CACHE_LINE))); /* slot tasks that returned */
	_Atomic int failed;
	const char *why;                /* what stopped the run when failed */
	u32 faults_at_start;            /* the machine's fault count when the run began */
	/* the pool */
	pthread_mutex_t mutex;
	pthread_cond_t cond;
	u64 *ring;                      /* [count]: ids, FIFO; never full */
	_Atomic u64 ring_head, ring_tail, pool_done;
	u32 waiting;
};

/* ---- the clock ------------------------------------------------------------------------------ */

/* paired_read -- CLOCK_MONOTONIC (ns) and the TSC at one instant: of 16 tries, the TSC read
 * between the two closest clock reads (a preemption in between only widens a bracket) */
static void paired_read(double *ns, u64 *ticks)
{
	double best = -1;
	for (int i = 0; i < 16; i++) {
		struct timespec a, b;
		clock_gettime(CLOCK_MONOTONIC, &a);
		u64 t = tsc();
		clock_gettime(CLOCK_MONOTONIC, &b);
		double na = (double)a.tv_sec * 1e9 + (double)a.tv_nsec, nb = (double)b.tv_sec * 1e9 + (double)b.tv_nsec;
		if (best < 0 || nb - na < best) {
			best = nb - na;
			*ns = (na + nb) / 2;
			*ticks = t;
		}
	}
}

/* bm_lab_tsc_hz -- TSC ticks per second, measured once against CLOCK_MONOTONIC over 50 ms */
double bm_lab_tsc_hz(void)
{
	static double hz;
	if (hz == 0) {
		struct timespec nap = { 0, 50000000 };
		double ns0, ns1;
		u64 c0, c1;
		paired_read(&ns0, &c0);
		nanosleep(&nap, NULL);
		paired_read(&ns1, &c1);
		hz = (double)(c1 - c0) * 1e9 / (ns1 - ns0);
	}
	return hz;
}

/* bm_lab_tsc -- the TSC now */
u64 bm_lab_tsc(void) { return tsc(); }

/* Where a core records the host's stalls during a run: gaps in its idle turns, and a spin
 * task that overran its deadline (a stall covered the deadline; for a spin, stalls inside it
 * before the deadline change nothing). */
struct stall_log {
	u64 *start, *length;            /* this core's part of the run's arrays */
	u64 count, cap;
	u64 threshold, base;            /* ticks */
};

/* note_gap -- the clock jumped from `before` to `now`: a stall if longer than the threshold */
static inline void note_gap(struct stall_log *log, u64 before, u64 now)
{
	if (now - before > log->threshold && log->count < log->cap) {
		log->start[log->count] = before - log->base;
		log->length[log->count] = now - before;
		log->count++;
	}
}

/* bm_lab_spin -- the built-in task: busy for `ticks` TSC ticks
 *  IN:  ticks */
void bm_lab_spin(u64 ticks)
{
	u64 end = __rdtsc() + ticks;            /* the work itself: no fence needed */
	while (__rdtsc() < end)
		;
}

/* bm_lab_spin_code -- bm_lab_spin's address as a task's code address */
u64 bm_lab_spin_code(void) { return (u64)(uintptr_t)bm_lab_spin; }

/* bm_lab_time_task -- run code(arg[i]) for i < count on the calling thread, one after the other
 *  IN:  code, arg[count], ticks[count]
 * OUT:  ticks[i] = TSC ticks code(arg[i]) took */
void bm_lab_time_task(u64 code, const u64 *arg, u64 count, u64 *ticks)
{
	for (u64 i = 0; i < count; i++) {
		u64 start = tsc();
		((lab_task_fn)(uintptr_t)code)(arg[i]);
		ticks[i] = tsc() - start;
	}
}

/* now_ticks -- ticks since time 0 (0 before it) */
static inline u64 now_ticks(const struct bm_lab_run *run)
{
	u64 t = tsc();
	return t > run->base ? t - run->base : 0;
}

static void wait_for_start(const struct bm_lab_run *run)
{
	while (tsc() < run->base)
		relax();
}

static inline void count_one(struct lab_counter *counter)
{
	atomic_store_explicit(&counter->value, atomic_load_explicit(&counter->value, memory_order_relaxed) + 1,
			      memory_order_relaxed);
}

/* serve -- run request id on core (thread) `core`, stamping it in the core's log; with a
 * stall log and the spin task, a spin that ended past its deadline by more than the threshold
 * was stalled across its deadline: logged from the task's start (when in the spin the stall
 * began is unknown, and the model's start for it is a little earlier than the real one, so a
 * stall logged from the deadline on would miss the model's deadline) */
static inline void serve(struct lab_state *st, u32 core, u64 id, struct stall_log *stalls)
{
	struct bm_lab_run *run = st->run;
	u64 start = tsc();
	((lab_task_fn)(uintptr_t)run->code)(run->arg[id]);
	u64 end = tsc();
	if (stalls != NULL && run->code == (u64)(uintptr_t)bm_lab_spin &&
	    end - start > run->arg[id] + stalls->threshold)
		note_gap(stalls, start, end);
	struct lab_log *log = &st->logs[core];
	u64 *entry = &log->served[3 * log->served_n++];
	entry[0] = id;
	entry[1] = start - run->base;
	entry[2] = end - run->base;
}

/* stamp_published -- request id reached its queue at `now` (ticks after time 0), on `core`;
 * count it late if it is */
static inline void stamp_published(struct lab_state *st, u32 core, u64 id, u64 now)
{
	struct lab_log *log = &st->logs[core];
	u64 *entry = &log->published[2 * log->published_n++];
	entry[0] = id;
	entry[1] = now;
	if (now > st->run->arrival[id] + st->run->late_ticks)
		count_one(&st->late[core]);
}

/* scatter_logs -- after the run: every core's log into the run's arrays */
static void scatter_logs(struct lab_state *st)
{
	struct bm_lab_run *run = st->run;
	for (u32 c = 0; c < st->cores; c++) {
		struct lab_log *log = &st->logs[c];
		for (u64 k = 0; k < log->served_n; k++) {
			u64 id = log->served[3 * k];
			run->start[id] = log->served[3 * k + 1];
			run->end[id] = log->served[3 * k + 2];
			run->core[id] = c;
		}
		for (u64 k = 0; k < log->published_n; k++)
			run->publish[log->published[2 * k]] = log->published[2 * k + 1];
	}
}

/* stop_run -- end the run early on every core (the first reason is kept) */
static void stop_run(struct lab_state *st, const char *why)
{
	int was = 0;
	if (atomic_compare_exchange_strong(&st->failed, &was, 1))
		st->why = why;
}

/* faulted -- a task faulted on one of the machine's cores since the run began */
static int faulted(struct lab_state *st)
{
	return st->m != NULL && bm_smp_fault_count(st->m) != st->faults_at_start;
}

/* ---- per-worker queues (d-FCFS, steal) ------------------------------------------------- */

static void queue_push(struct lab_queue *q, u64 id)
{
	bm_smp_lock((u64)(uintptr_t)&q->lock);
	u64 tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
	q->ids[tail] = id;
	atomic_store_explicit(&q->tail, tail + 1, memory_order_release);
	bm_smp_unlock((u64)(uintptr_t)&q->lock);
}

/* queue_pop -- the queue's oldest id; 0 when it is empty */
static int queue_pop(struct lab_queue *q, u64 *id)
{
	if (atomic_load_explicit(&q->head, memory_order_relaxed) ==
	    atomic_load_explicit(&q->tail, memory_order_acquire))
		return 0;
	int got = 0;
	bm_smp_lock((u64)(uintptr_t)&q->lock);
	u64 head = atomic_load_explicit(&q->head, memory_order_relaxed);
	if (head != atomic_load_explicit(&q->tail, memory_order_relaxed)) {
		*id = q->ids[head];
		atomic_store_explicit(&q->head, head + 1, memory_order_relaxed);
		got = 1;
	}
	bm_smp_unlock((u64)(uintptr_t)&q->lock);
	return got;
}

/* ---- the machine's policies -------------------------------------------------------------- */

/* take -- a request for core `core` to serve under the run's policy; 0 if none */
static int take(struct lab_state *st, u32 core, u64 *id)
{
	switch (st->run->policy) {
	case BM_LAB_CFCFS:
		return b_smp_dequeue(id) != 0;
	case BM_LAB_DFCFS:
		return queue_pop(&st->queues[core - st->first_worker], id);
	default: {                                      /* steal: own queue, then the others' */
		u32 own = core - st->first_worker;
		for (u32 d = 0; d < st->workers; d++)
			if (queue_pop(&st->queues[(own + d) % st->workers], id))
				return 1;
		return 0;
	}
	}
}

/* publish -- put request id in the policy's queue, stamped; `serves`: the caller is a worker,
 * which serves a request itself when the work queue is full */
static void publish(struct lab_state *st, u32 core, u64 id, int serves)
{
	struct bm_lab_run *run = st->run;
	stamp_published(st, core, id, now_ticks(run));
	if (run->policy != BM_LAB_CFCFS) {
		queue_push(&st->queues[run->target[id]], id);
		return;
	}
	while (!bm_smp_enqueue(st->m, run->code, id)) {
		if (bm_error.code != BM_ERR_FULL) {
			stop_run(st, "the work queue refused a request (the machine stopped?)");
			return;
		}
		u64 other;
		if (serves && take(st, core, &other)) {
			serve(st, core, other, NULL);
			count_one(&st->done[core]);
		} else {
			relax();
		}
	}
}

/* due -- request i's time has passed (a plain TSC read: only the stamps need the fence) */
static inline int due(const struct bm_lab_run *run, u64 i)
{
	return i < run->count && run->arrival[i] + run->base <= __rdtsc();
}

/* publish_due -- claim and publish every request whose time has passed
 * OUT: how many this core published */
static u64 publish_due(struct lab_state *st, u32 core)
{
	struct bm_lab_run *run = st->run;
	u64 i = atomic_load_explicit(&st->next, memory_order_relaxed), published = 0;
	while (due(run, i)) {
		if (!atomic_compare_exchange_weak_explicit(&st->next, &i, i + 1, memory_order_relaxed,
							   memory_order_relaxed))
			continue;
		publish(st, core, i, 1);
		published++;
		i++;
	}
	return published;
}

static int all_served(struct lab_state *st)
{
	if (atomic_load_explicit(&st->next, memory_order_acquire) < st->run->count)
		return 0;
	u64 served = 0;
	for (u32 c = 0; c < st->cores; c++)
		served += atomic_load_explicit(&st->done[c].value, memory_order_relaxed);
	return served >= st->run->count;
}

/* serve_loop -- a worker core: (publish,) take, serve, until every request is served */
static void serve_loop(struct lab_state *st, u32 core)
{
	struct bm_lab_run *run = st->run;
	int publishes = run->mode == BM_LAB_PUBLISHED;
	u64 id;
	u32 idle = 0;
	struct stall_log log = { .cap = run->stall_cap, .threshold = run->stall_ticks, .base = run->base };
	struct stall_log *stalls = NULL;
	if (run->stall_ticks != 0 && run->stall_start != NULL && run->stall_count != NULL) {
		log.start = run->stall_start + (u64)core * run->stall_cap;
		log.length = run->stall_length + (u64)core * run->stall_cap;
		stalls = &log;
	}
	wait_for_start(run);
	u64 before = __rdtsc();         /* when the last turn (or task) ended */
	for (;;) {
		/* a turn takes well under the threshold: a longer gap since the last one ended is
		 * time the host took (whatever this turn then finds to do) */
		if (stalls != NULL) {
			u64 now = __rdtsc();
			note_gap(stalls, before, now);
			before = now;
		}
		if (publishes && publish_due(st, core) != 0 && stalls != NULL)
			before = __rdtsc();     /* publishing is work, not a stall */
		if (take(st, core, &id)) {
			serve(st, core, id, stalls);
			count_one(&st->done[core]);
			before = __rdtsc();
			continue;
		}
		/* idle: the end of the run and faults are looked at every 64th turn only, so that a
		 * turn is a clock read and a look at the queue, and a request due is seen at once */
		if ((++idle & 63) == 0) {
			if (atomic_load_explicit(&st->failed, memory_order_relaxed) || all_served(st))
				break;
			if (faulted(st)) {
				stop_run(st, "a task faulted (see machine.faults)");
				break;
			}
		}
		relax();
	}
	if (stalls != NULL)
		run->stall_count[core] = log.count;
}

/* generate -- core 0 with a generator: send each request at its time */
static void generate(struct lab_state *st)
{
	struct bm_lab_run *run = st->run;
	wait_for_start(run);
	for (u64 i = 0; i < run->count && !atomic_load_explicit(&st->failed, memory_order_relaxed); i++) {
		while (now_ticks(run) < run->arrival[i])
			relax();
		publish(st, 0, i, 0);
		atomic_store_explicit(&st->next, i + 1, memory_order_release);
	}
	atomic_store(&st->next, run->count);
	while (!atomic_load(&st->failed) && !all_served(st))
		if (faulted(st))
			stop_run(st, "a task faulted (see machine.faults)");
}

/* core0_main -- core 0's part (bm_fault_call: a fault in a task here ends the run, not the
 * process) */
static void core0_main(void *arg)
{
	struct lab_state *st = arg;
	if (st->run->mode == BM_LAB_GENERATOR)
		generate(st);
	else
		serve_loop(st, 0);
}

/* lab_core_task -- the slot task of cores 1..n-1: arg is its struct lab_core */
static void lab_core_task(u64 arg)
{
	struct lab_core *self = (struct lab_core *)(uintptr_t)arg;
	serve_loop(self->state, self->id);
	atomic_fetch_add(&self->state->exited, 1);
}

static void state_free(struct lab_state *st)
{
	if (st->queues != NULL)
		for (u32 w = 0; w < st->workers; w++)
			free(st->queues[w].ids);
	free(st->queues);
	free(st->done);
	free(st->late);
	free(st->core_args);
	if (st->logs != NULL)
		for (u32 c = 0; c < st->cores; c++) {
			free(st->logs[c].served);
			free(st->logs[c].published);
		}
	free(st->logs);
	free(st->ring);
	free(st);
}

/* state_new -- a zeroed run state with `cores` counters; NULL when out of memory */
/* touched -- p after writing one byte of each page of its `bytes`: the run's logs take their
 * page faults now, before time 0, not between the requests being measured */
static void *touched(void *p, size_t bytes)
{
	if (p != NULL)
		for (size_t i = 0; i < bytes; i += 4096)
			((volatile char *)p)[i] = 0;
	return p;
}

static struct lab_state *state_new(struct bm_lab_run *run, u32 cores)
{
	struct lab_state *st = aligned_alloc(BM_CACHE_LINE, sizeof *st);
	if (st == NULL)
		return NULL;
	memset(st, 0, sizeof *st);
	st->run = run;
	st->cores = cores;
	st->done = aligned_alloc(BM_CACHE_LINE, cores * sizeof *st->done);
	st->late = aligned_alloc(BM_CACHE_LINE, cores * sizeof *st->late);
	st->core_args = aligned_alloc(BM_CACHE_LINE, cores * sizeof *st->core_args);
	st->logs = aligned_alloc(BM_CACHE_LINE, cores * sizeof *st->logs);
	if (st->done == NULL || st->late == NULL || st->core_args == NULL || st->logs == NULL) {
		free(st->logs);
		st->logs = NULL;
		state_free(st);
		return NULL;
	}
	memset(st->logs, 0, cores * sizeof *st->logs);
	for (u32 c = 0; c < cores; c++) {        /* any core may serve or publish every request */
		st->logs[c].served = touched(malloc((3 * run->count + 1) * sizeof(u64)),
					     (3 * run->count + 1) * sizeof(u64));
		st->logs[c].published = touched(malloc((2 * run->count + 1) * sizeof(u64)),
						(2 * run->count + 1) * sizeof(u64));
		if (st->logs[c].served == NULL || st->logs[c].published == NULL) {
			state_free(st);
			return NULL;
		}
	}
	memset(st->done, 0, cores * sizeof *st->done);
	memset(st->late, 0, cores * sizeof *st->late);
	return st;
}

/* make_queues -- one queue per worker, each with room for the requests that target it
 * OUT: 0, -1 (a target out of range or out of memory: recorded) */
static int make_queues(struct lab_state *st)
{
	struct bm_lab_run *run = st->run;
	st->queues = aligned_alloc(BM_CACHE_LINE, st->workers * sizeof *st->queues);
	if (st->queues == NULL)
		return LAB_FAIL(BM_ERR_FULL, "lab: out of memory");
	memset(st->queues, 0, st->workers * sizeof *st->queues);
	u64 *sizes = calloc(st->workers, sizeof *sizes);
	if (sizes == NULL)
		return LAB_FAIL(BM_ERR_FULL, "lab: out of memory");
	for (u64 i = 0; i < run->count; i++) {
		if (run->target[i] >= st->workers) {
			free(sizes);
			return LAB_FAIL(BM_ERR_ARGUMENT, "lab: request %lu targets worker %u of %u",
					    i, run->target[i], st->workers);
		}
		sizes[run->target[i]]++;
	}
	int result = 0;
	for (u32 w = 0; w < st->workers; w++)
		if ((st->queues[w].ids = touched(malloc((sizes[w] + 1) * sizeof(u64)),
						 (sizes[w] + 1) * sizeof(u64))) == NULL)
			result = LAB_FAIL(BM_ERR_FULL, "lab: out of memory");
	free(sizes);
	return result;
}

static void set_base(struct bm_lab_run *run)
{
	run->base = tsc() + (u64)(bm_lab_tsc_hz() * 0.002);   /* 2 ms: every worker is there */
	run->late = 0;
}

static u64 total_late(struct lab_state *st)
{
	u64 late = 0;
	for (u32 c = 0; c < st->cores; c++)
		late += atomic_load(&st->late[c].value);
	return late;
}

/* bm_lab_run -- serve a schedule on m's cores; the caller is core 0 of m
 *  IN:  m (running), run: policy c-FCFS, d-FCFS or steal, mode, count, arrival, arg, target
 *       (d-FCFS, steal: below the number of workers: cores, or cores - 1 with a generator),
 *       code, late_ticks, and the arrays publish, start, end, core to fill
 * OUT:  0 with the arrays, late and base filled; -1 with the error recorded (BM_ERR_ARGUMENT:
 *       bad policy, mode or target; BM_ERR_STATE: machine not running, a core already has
 *       slot work; BM_ERR_FULL: out of memory) */
int bm_lab_run(struct bm_machine *m, struct bm_lab_run *run)
{
	u32 cores = m->num_cores;
	if (run->policy > BM_LAB_STEAL)
		return LAB_FAIL(BM_ERR_ARGUMENT, "lab: policy %u does not run on a machine's cores", run->policy);
	if (run->mode > BM_LAB_GENERATOR || (run->mode == BM_LAB_GENERATOR && cores < 2))
		return LAB_FAIL(BM_ERR_ARGUMENT, "lab: a generator needs a machine of 2 cores or more");
	if (run->code == 0)
		return LAB_FAIL(BM_ERR_ARGUMENT, "lab: the task's code address is 0");
	if (atomic_load(&m->state) != BM_STATE_RUNNING)
		return LAB_FAIL(BM_ERR_STATE, "lab: the machine is not running");
	struct lab_state *st = state_new(run, cores);
	if (st == NULL)
		return LAB_FAIL(BM_ERR_FULL, "lab: out of memory");
	st->m = m;
	st->first_worker = run->mode == BM_LAB_GENERATOR;
	st->workers = cores - st->first_worker;
	if (run->policy != BM_LAB_CFCFS && make_queues(st) != 0) {
		state_free(st);
		return -1;
	}
	st->faults_at_start = bm_smp_fault_count(m);
	set_base(run);
	u32 started = 0;
	for (u32 c = 1; c < cores; c++) {
		st->core_args[c] = (struct lab_core){ .state = st, .id = c };
		if (!bm_smp_set_arg(m, (u64)(uintptr_t)lab_core_task, c, (u64)(uintptr_t)&st->core_args[c])) {
			stop_run(st, "a core already has slot work");
			break;
		}
		started++;
	}
	u32 own_faults = 0;
	if (!atomic_load(&st->failed) && bm_fault_call(core0_main, st) > 0) {
		own_faults = 1;
		stop_run(st, "a task faulted (see machine.faults)");
	}
	/* a core whose task faulted abandoned its slot task: it never reports back */
	while (atomic_load(&st->exited) + (bm_smp_fault_count(m) - st->faults_at_start - own_faults) < started)
		relax();
	int failed = atomic_load(&st->failed);
	run->late = total_late(st);
	scatter_logs(st);
	if (failed)
		bm_fail(BM_ERR_STATE, "lab: %s", st->why);
	state_free(st);
	return failed ? -1 : 0;
}

/* ---- the floor: one cache line from one CPU to another ------------------------------------ */

/* One sample: the sender waits `gap` ticks (the receiver is polling by then), stores the TSC
 * in the line; the receiver, polling it, records the ticks since.  Dispatch from a core that
 * publishes to one that takes cannot be cheaper than this on the same CPUs and clock. */
struct line_run {
	_Alignas(BM_CACHE_LINE) _Atomic u64 stamp;
	_Alignas(BM_CACHE_LINE) _Atomic u64 seen;
	u64 *out, n, gap;
	int cpu[2];
};

static void pin_self(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *line_sender(void *arg)
{
	struct line_run *r = arg;
	pin_self(r->cpu[0]);
	for (u64 i = 0; i < r->n; i++) {
		u64 until = __rdtsc() + r->gap;
		while (__rdtsc() < until)
			relax();
		atomic_store_explicit(&r->stamp, tsc(), memory_order_release);
		while (atomic_load_explicit(&r->seen, memory_order_acquire) <= i)
			relax();
	}
	return NULL;
}

static void *line_receiver(void *arg)
{
	struct line_run *r = arg;
	pin_self(r->cpu[1]);
	u64 last = 0;
	for (u64 i = 0; i < r->n; i++) {
		u64 stamp;
		while ((stamp = atomic_load_explicit(&r->stamp, memory_order_acquire)) == last)
			relax();
		r->out[i] = tsc() - stamp;
		last = stamp;
		atomic_store_explicit(&r->seen, i + 1, memory_order_release);
	}
	return NULL;
}

/* bm_lab_line_ticks -- one cache line stored on cpu0 and polled on cpu1, n times
 *  IN:  cpu0, cpu1, n, gap_ticks between samples, out[n]
 * OUT:  0 with out[i] = TSC ticks from the store to the poll that saw it; -1 with BM_ERR_FULL
 *       (memory) or BM_ERR_IO (no thread) recorded */
int bm_lab_line_ticks(int cpu0, int cpu1, u64 n, u64 gap_ticks, u64 *out)
{
	struct line_run *r = aligned_alloc(BM_CACHE_LINE, sizeof *r);
	if (r == NULL)
		return LAB_FAIL(BM_ERR_FULL, "the cache-line probe: out of memory");
	memset(r, 0, sizeof *r);
	r->out = out;
	r->n = n;
	r->gap = gap_ticks;
	r->cpu[0] = cpu0;
	r->cpu[1] = cpu1;
	pthread_t sender, receiver;
	if (pthread_create(&receiver, NULL, line_receiver, r) != 0) {
		free(r);
		return LAB_FAIL(BM_ERR_IO, "the cache-line probe: no thread");
	}
	if (pthread_create(&sender, NULL, line_sender, r) != 0) {
		r->n = 1;                                       /* the receiver takes one sample */
		atomic_store(&r->stamp, ~0ull);                 /* and ends */
		pthread_join(receiver, NULL);
		free(r);
		return LAB_FAIL(BM_ERR_IO, "the cache-line probe: no thread");
	}
	pthread_join(sender, NULL);
	pthread_join(receiver, NULL);
	free(r);
	return 0;
}

/* ---- the peer: a pthread pool around a mutex+condvar queue ------------------------------ */

struct pool_thread {
	struct lab_state *state;
	u32 index;
};

/* pool_push -- (mutex held) thread `index` publishes request id into the ring */
static void pool_push(struct lab_state *st, u32 index, u64 id)
{
	stamp_published(st, index, id, now_ticks(st->run));
	u64 tail = atomic_load_explicit(&st->ring_tail, memory_order_relaxed);
	st->ring[tail] = id;
	atomic_store_explicit(&st->ring_tail, tail + 1, memory_order_relaxed);
}

/* pool_worker -- serve from the ring; published by time, also publish what is due */
static void pool_worker(struct lab_state *st, u32 index)
{
	struct bm_lab_run *run = st->run;
	int publishes = run->mode == BM_LAB_PUBLISHED;
	wait_for_start(run);
	pthread_mutex_lock(&st->mutex);
	for (;;) {
		if (publishes) {
			u64 next = atomic_load_explicit(&st->next, memory_order_relaxed);
			for (; next < run->count && run->arrival[next] <= now_ticks(run); next++)
				pool_push(st, index, next);
			atomic_store_explicit(&st->next, next, memory_order_relaxed);
		}
		u64 head = atomic_load_explicit(&st->ring_head, memory_order_relaxed);
		if (head != atomic_load_explicit(&st->ring_tail, memory_order_relaxed)) {
			atomic_store_explicit(&st->ring_head, head + 1, memory_order_relaxed);
			pthread_mutex_unlock(&st->mutex);
			serve(st, index, st->ring[head], NULL);
			pthread_mutex_lock(&st->mutex);
			atomic_fetch_add_explicit(&st->pool_done, 1, memory_order_relaxed);
			continue;
		}
		if (atomic_load_explicit(&st->pool_done, memory_order_relaxed) == run->count)
			break;
		if (!publishes) {
			st->waiting++;
			pthread_cond_wait(&st->cond, &st->mutex);
			st->waiting--;
			continue;
		}
		pthread_mutex_unlock(&st->mutex);       /* idle: poll until something may be there */
		for (;;) {
			u64 next = atomic_load_explicit(&st->next, memory_order_relaxed);
			if ((next < run->count && run->arrival[next] <= now_ticks(run)) ||
			    atomic_load_explicit(&st->ring_head, memory_order_relaxed) !=
			    atomic_load_explicit(&st->ring_tail, memory_order_relaxed) ||
			    atomic_load_explicit(&st->pool_done, memory_order_relaxed) == run->count)
				break;
			relax();
		}
		pthread_mutex_lock(&st->mutex);
	}
	pthread_cond_broadcast(&st->cond);              /* the others: every request is served */
	pthread_mutex_unlock(&st->mutex);
}

/* pool_generator -- thread 0 with a generator: push each request at its time, signal a waiter */
static void pool_generator(struct lab_state *st)
{
	struct bm_lab_run *run = st->run;
	wait_for_start(run);
	for (u64 i = 0; i < run->count; i++) {
		while (now_ticks(run) < run->arrival[i])
			relax();
		pthread_mutex_lock(&st->mutex);
		pool_push(st, 0, i);
		if (st->waiting)
			pthread_cond_signal(&st->cond);
		pthread_mutex_unlock(&st->mutex);
	}
}

static void *pool_thread_main(void *arg)
{
	struct pool_thread *self = arg;
	if (self->state->run->mode == BM_LAB_GENERATOR && self->index == 0)
		pool_generator(self->state);
	else
		pool_worker(self->state, self->index);
	return NULL;
}

/* bm_lab_pool_run -- serve a schedule with the peer: `threads` pthreads (thread i pinned to
 * cpus[i] unless it is -1), one mutex+condvar FIFO; with a generator, thread 0 sends
 *  IN:  run as for bm_lab_run (policy BM_LAB_POOL; target unused), cpus, threads
 * OUT:  0 with the arrays, late and base filled (core[i] = the thread that served i); -1 with
 *       BM_ERR_ARGUMENT (threads), BM_ERR_FULL (memory) or BM_ERR_IO (no thread) recorded */
int bm_lab_pool_run(struct bm_lab_run *run)
{
	u32 threads = run->threads;
	if (threads < 1 + (run->mode == BM_LAB_GENERATOR) || threads > 1024)
		return LAB_FAIL(BM_ERR_ARGUMENT, "lab pool: %u threads is not enough or too many", threads);
	if (run->code == 0)
		return LAB_FAIL(BM_ERR_ARGUMENT, "lab pool: the task's code address is 0");
	struct lab_state *st = state_new(run, threads);
	struct pool_thread *args = calloc(threads, sizeof *args);
	pthread_t *ids = calloc(threads, sizeof *ids);
	size_t ring_bytes = (run->count + 1) * sizeof(u64);
	if (st == NULL || args == NULL || ids == NULL ||
	    (st->ring = touched(malloc(ring_bytes), ring_bytes)) == NULL) {
		if (st)
			state_free(st);
		free(args);
		free(ids);
		return LAB_FAIL(BM_ERR_FULL, "lab pool: out of memory");
	}
	pthread_mutex_init(&st->mutex, NULL);
	pthread_cond_init(&st->cond, NULL);
	set_base(run);
	u32 started = 0;
	int err = 0;
	for (; started < threads; started++) {
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		if (run->cpus != NULL && run->cpus[started] >= 0) {
			cpu_set_t set;
			CPU_ZERO(&set);
			CPU_SET(run->cpus[started], &set);
			pthread_attr_setaffinity_np(&attr, sizeof set, &set);
		}
		args[started] = (struct pool_thread){ .state = st, .index = started };
		err = pthread_create(&ids[started], &attr, pool_thread_main, &args[started]);
		pthread_attr_destroy(&attr);
		if (err != 0)
			break;
	}
	if (err != 0) {                 /* the started threads cannot finish the run: end them */
		pthread_mutex_lock(&st->mutex);
		atomic_store(&st->pool_done, run->count);
		atomic_store(&st->next, run->count);
		pthread_cond_broadcast(&st->cond);
		pthread_mutex_unlock(&st->mutex);
	}
	for (u32 t = 0; t < started; t++)
		pthread_join(ids[t], NULL);
	run->late = total_late(st);
	scatter_logs(st);
	pthread_mutex_destroy(&st->mutex);
	pthread_cond_destroy(&st->cond);
	state_free(st);
	free(args);
	free(ids);
	if (err != 0)
		return LAB_FAIL(BM_ERR_IO, "lab pool: cannot start a thread: %s", strerror(err));
	return 0;
}

/* lab_sim.c -- the scheduling lab's model: a discrete-event simulator.
 *
 * The same arrivals (sorted times) and service times the real runs use go through an ideal,
 * zero-overhead version of each policy; the result is each request's finish time, from which
 * pybaremetal/lab/model.py takes latencies.  Units are whatever the caller uses (the lab uses
 * multiples of the mean service time).
 *
 *  c-FCFS   one FCFS queue, k servers: each request starts on the server free first
 *           (Kiefer-Wolfowitz), O(n k).
 *  d-FCFS   request i waits in queue target[i] for server target[i] alone (k Lindley
 *           recursions), O(n).
 *  steal    per-server FCFS queues as d-FCFS, but an idle server never waits while any queue
 *           holds work: an arrival goes to an idle server at once (its own first, then the
 *           next idle one after it), and a server that finishes takes its own queue's head,
 *           else the head of the first non-empty queue after it (what lab.c's cores do).
 *  PS       processor sharing over k servers: n requests in the system each progress at
 *           min(1, k/n).  All progress alike, so one virtual clock V (service each present
 *           request has received since V was 0) and a heap of V-at-finish keys suffice,
 *           O(n log n).
 *  preempt  one FIFO queue, k servers, a request runs at most `quantum` before it goes back
 *           to the tail (Shinjuku's single-queue policy with zero-cost preemption).
 */
#include <math.h>
#include <stdlib.h>
#include "lab_sim.h"

/* record an error, evaluate to -1 */
#define SIM_FAIL(...) (bm_fail(__VA_ARGS__), -1)

/* earliest -- the server whose time t[] comes first (the lowest index on ties) */
static inline u32 earliest(const double *t, u32 k)
{
	u32 s = 0;
	for (u32 j = 1; j < k; j++)
		if (t[j] < t[s])
			s = j;
	return s;
}

/* The next event of an event-driven policy: a server's event (its time t[s] first, ties to
 * the server) or the next arrival. */
enum sim_event { SIM_DONE, SIM_SERVER, SIM_ARRIVAL };

/* next_event -- which comes next; *s = the server whose event comes first
 *  IN:  t[k] = each server's next event time (INFINITY: idle), i = the next arrival of n */
static inline enum sim_event next_event(const double *t, u32 k, u64 i, u64 n, const double *arrival, u32 *s)
{
	*s = earliest(t, k);
	double t_arrival = i < n ? arrival[i] : INFINITY;
	if (t[*s] == INFINITY && i >= n)
		return SIM_DONE;
	return t[*s] <= t_arrival ? SIM_SERVER : SIM_ARRIVAL;
}

/* ---- policies without events ---------------------------------------------------------- */

static void sim_cfcfs(u32 k, u64 n, const double *arrival, const double *service, double *free_at,
		      double *finish)
{
	for (u64 i = 0; i < n; i++) {
		u32 s = earliest(free_at, k);
		double start = arrival[i] > free_at[s] ? arrival[i] : free_at[s];
		finish[i] = free_at[s] = start + service[i];
	}
}

static void sim_dfcfs(u64 n, const double *arrival, const double *service, const u32 *target,
		      double *free_at, double *finish)
{
	for (u64 i = 0; i < n; i++) {
		double *f = &free_at[target[i]];
		double start = arrival[i] > *f ? arrival[i] : *f;
		finish[i] = *f = start + service[i];
	}
}

/* ---- work stealing ---------------------------------------------------------------------- */

struct steal_state {
	u32 k;
	double *busy_until;            /* per server; INFINITY when idle */
	u64 *head, *tail, *next;       /* per-queue FIFO as linked lists through next[] */
};

#define NONE (~0ull)

static u64 fifo_pop(struct steal_state *st, u32 q)
{
	u64 j = st->head[q];
	if (j != NONE) {
		st->head[q] = st->next[j];
		if (st->head[q] == NONE)
			st->tail[q] = NONE;
	}
	return j;
}

static void fifo_push(struct steal_state *st, u32 q, u64 j)
{
	st->next[j] = NONE;
	if (st->tail[q] == NONE)
		st->head[q] = j;
	else
		st->next[st->tail[q]] = j;
	st->tail[q] = j;
}

static void sim_steal(struct steal_state *st, u64 n, const double *arrival, const double *service,
		      const u32 *target, double *finish)
{
	u32 k = st->k;
	for (u32 s = 0; s < k; s++) {
		st->busy_until[s] = INFINITY;
		st->head[s] = st->tail[s] = NONE;
	}
	u64 i = 0;
	u32 s;
	for (enum sim_event e; (e = next_event(st->busy_until, k, i, n, arrival, &s)) != SIM_DONE;) {
		if (e == SIM_SERVER) {                  /* server s finishes: own head, else steal */
			double t_done = st->busy_until[s];
			u64 job = NONE;
			for (u32 d = 0; d < k && job == NONE; d++)
				job = fifo_pop(st, (s + d) % k);
			st->busy_until[s] = job == NONE ? INFINITY : (finish[job] = t_done + service[job]);
			continue;
		}
		u32 q = target[i], idle = k;            /* an arrival: to an idle server if any */
		for (u32 d = 0; d < k && idle == k; d++)
			if (st->busy_until[(q + d) % k] == INFINITY)
				idle = (q + d) % k;
		if (idle < k)
			st->busy_until[idle] = finish[i] = arrival[i] + service[i];
		else
			fifo_push(st, q, i);
		i++;
	}
}

/* ---- processor sharing -------------------------------------------------------------------- */

struct heap {
	double *key;
	u64 *id;
	u64 size;
};

static void heap_push(struct heap *h, double key, u64 id)
{
	u64 i = h->size++;
	while (i > 0) {
		u64 parent = (i - 1) / 2;
		if (h->key[parent] <= key)
			break;
		h->key[i] = h->key[parent];
		h->id[i] = h->id[parent];
		i = parent;
	}
	h->key[i] = key;
	h->id[i] = id;
}

static u64 heap_pop(struct heap *h)
{
	u64 top = h->id[0];
	double key = h->key[--h->size];
	u64 id = h->id[h->size], i = 0;
	for (;;) {
		u64 child = 2 * i + 1;
		if (child >= h->size)
			break;
		if (child + 1 < h->size && h->key[child + 1] < h->key[child])
			child++;
		if (key <= h->key[child])
			break;
		h->key[i] = h->key[child];
		h->id[i] = h->id[child];
		i = child;
	}
	h->key[i] = key;
	h->id[i] = id;
	return top;
}

static void sim_ps(u32 k, u64 n, const double *arrival, const double *service, struct heap *h,
		   double *finish)
{
	double now = 0, virtual = 0;
	u64 i = 0;
	h->size = 0;
	while (i < n || h->size > 0) {
		double rate = h->size == 0 ? 0 : (h->size <= k ? 1.0 : (double)k / (double)h->size);
		double t_arrival = i < n ? arrival[i] : INFINITY;
		double t_done = h->size == 0 ? INFINITY : now + (h->key[0] - virtual) / rate;
		if (t_done <= t_arrival) {
			virtual = h->key[0];
			now = t_done;
			finish[heap_pop(h)] = now;
		} else {
			virtual += (t_arrival - now) * rate;
			now = t_arrival;
			heap_push(h, virtual + service[i], i);
			i++;
		}
	}
}

/* ---- ideal preemption --------------------------------------------------------------------- */

struct preempt_state {
	u32 k;
	double quantum;
	double *slice_end;             /* per server; INFINITY when idle */
	u64 *job;                      /* per server: the request running */
	double *remaining;             /* per request: service still owed */
	u64 *ring, ring_size, ring_head, ring_tail;   /* the shared FIFO */
};

static void ring_push(struct preempt_state *st, u64 j)
{
	st->ring[st->ring_tail++ % st->ring_size] = j;
}

/* start_next -- server s (idle) takes the queue's head, if any, for one quantum at `now` */
static void start_next(struct preempt_state *st, u32 s, double now)
{
	if (st->ring_head == st->ring_tail) {
		st->slice_end[s] = INFINITY;
		return;
	}
	u64 j = st->ring[st->ring_head++ % st->ring_size];
	double run = st->remaining[j] < st->quantum ? st->remaining[j] : st->quantum;
	st->job[s] = j;
	st->slice_end[s] = now + run;
}

static void sim_preempt(struct preempt_state *st, u64 n, const double *arrival, double *finish)
{
	u32 k = st->k;
	for (u32 s = 0; s < k; s++)
		st->slice_end[s] = INFINITY;
	st->ring_head = st->ring_tail = 0;
	u64 i = 0;
	u32 s;
	for (enum sim_event e; (e = next_event(st->slice_end, k, i, n, arrival, &s)) != SIM_DONE;) {
		if (e == SIM_SERVER) {                  /* a slice ends: done, or back to the tail */
			double t_event = st->slice_end[s];
			u64 j = st->job[s];
			double run = st->remaining[j] < st->quantum ? st->remaining[j] : st->quantum;
			st->remaining[j] -= run;
			if (st->remaining[j] <= 0)
				finish[j] = t_event;
			else
				ring_push(st, j);
			start_next(st, s, t_event);
			continue;
		}
		double t_arrival = arrival[i];
		ring_push(st, i++);
		for (u32 j = 0; j < k; j++)
			if (st->slice_end[j] == INFINITY) {
				start_next(st, j, t_arrival);
				break;
			}
	}
}

/* ---- the entry point ---------------------------------------------------------------------- */

/* bm_lab_simulate -- finish time of each request under an ideal `policy` with `servers` servers
 *  IN:  policy (enum bm_sim_policy), servers >= 1, count, arrival[count] (non-decreasing),
 *       service[count] (> 0), target[count] (d-FCFS and steal: each request's queue, below
 *       servers; NULL otherwise), quantum (preempt: the time slice, > 0), finish[count]
 * OUT:  0 with finish[] filled; -1 with BM_ERR_ARGUMENT (bad policy, servers, target,
 *       quantum) or BM_ERR_FULL recorded */
int bm_lab_simulate(u32 policy, u32 servers, u64 count, const double *arrival,
		    const double *service, const u32 *target, double quantum, double *finish)
{
	if (servers == 0 || servers > 4096)
		return SIM_FAIL(BM_ERR_ARGUMENT, "simulate: servers must be 1..4096, got %u", servers);
	if (policy == BM_SIM_DFCFS || policy == BM_SIM_STEAL) {
		if (target == NULL)
			return SIM_FAIL(BM_ERR_ARGUMENT, "simulate: d-FCFS and steal need targets");
		for (u64 i = 0; i < count; i++)
			if (target[i] >= servers)
				return SIM_FAIL(BM_ERR_ARGUMENT, "simulate: request %lu targets queue %u of %u",
						    i, target[i], servers);
	}
	int result = 0;
	double *free_at = calloc(servers, sizeof *free_at);
	if (free_at == NULL)
		return SIM_FAIL(BM_ERR_FULL, "simulate: out of memory");
	switch (policy) {
	case BM_SIM_CFCFS:
		sim_cfcfs(servers, count, arrival, service, free_at, finish);
		break;
	case BM_SIM_DFCFS:
		sim_dfcfs(count, arrival, service, target, free_at, finish);
		break;
	case BM_SIM_STEAL: {
		struct steal_state st = { .k = servers, .busy_until = free_at,
					  .head = malloc(servers * sizeof(u64)), .tail = malloc(servers * sizeof(u64)),
					  .next = malloc((count + 1) * sizeof(u64)) };
		if (st.head && st.tail && st.next)
			sim_steal(&st, count, arrival, service, target, finish);
		else
			result = -1;
		free(st.head);
		free(st.tail);
		free(st.next);
		break;
	}
	case BM_SIM_PS: {
		struct heap h = { .key = malloc((count + 1) * sizeof(double)), .id = malloc((count + 1) * sizeof(u64)) };
		if (h.key && h.id)
			sim_ps(servers, count, arrival, service, &h, finish);
		else
			result = -1;
		free(h.key);
		free(h.id);
		break;
	}
	case BM_SIM_PREEMPT: {
		if (!(quantum > 0)) {
			free(free_at);
			return SIM_FAIL(BM_ERR_ARGUMENT, "simulate: the quantum must be > 0");
		}
		struct preempt_state st = { .k = servers, .quantum = quantum, .slice_end = free_at,
					    .job = malloc(servers * sizeof(u64)),
					    .remaining = malloc((count + 1) * sizeof(double)),
					    .ring = malloc((count + 1) * sizeof(u64)), .ring_size = count + 1 };
		if (st.job && st.remaining && st.ring) {
			for (u64 i = 0; i < count; i++)
				st.remaining[i] = service[i];
			sim_preempt(&st, count, arrival, finish);
		} else {
			result = -1;
		}
		free(st.job);
		free(st.remaining);
		free(st.ring);
		break;
	}
	default:
		free(free_at);
		return SIM_FAIL(BM_ERR_ARGUMENT, "simulate: unknown policy %u", policy);
	}
	free(free_at);
	if (result != 0)
		bm_fail(BM_ERR_FULL, "simulate: out of memory");
	return result;
}

/* ---- the same policies on a host that stalls ---------------------------------------------- */

/* A server's stalls: intervals [start, end) in which its CPU was taken away, sorted, and a
 * cursor past those that ended before anything still to come on it. */
struct stalls {
	const double *start, *end;
	u64 next, last;                 /* [next, last): the stalls not yet behind the server */
};

/* stall_free -- the first time >= t at which the server runs (t itself unless t falls in a
 * stall); times asked of one server never go down, so the cursor only moves on */
static double stall_free(struct stalls *s, double t)
{
	while (s->next < s->last && s->end[s->next] <= t)
		s->next++;
	/* only the stalls over before t are behind the server: a later question may still
	 * fall in the stall t falls in */
	for (u64 j = s->next; j < s->last && s->start[j] <= t; j++)
		if (s->end[j] > t)
			t = s->end[j];
	return t;
}

/* stall_finish -- when a task started at `start` (not in a stall) with service `service` ends:
 * deadline (a spin to a TSC deadline) at start + service, or at the end of a stall covering
 * that instant; otherwise (work) later by every stall it overlaps */
static double stall_finish(struct stalls *s, double start, double service, int deadline)
{
	if (deadline)
		return stall_free(s, start + service);
	double t = start, left = service;
	for (u64 j = s->next; j < s->last; j++) {
		if (s->end[j] <= t)
			continue;
		if (t + left <= s->start[j])
			break;
		left -= s->start[j] > t ? s->start[j] - t : 0;
		t = s->end[j];
	}
	return t + left;
}

/* bm_lab_simulate_stalled -- c-FCFS or d-FCFS as bm_lab_simulate, on servers that stall: a
 * server cannot start a task in a stall, and a task running across one ends later (see
 * stall_finish).  Under c-FCFS each request starts on the server able to start it first.
 *  IN:  policy (BM_SIM_CFCFS or BM_SIM_DFCFS), servers, count, arrival, service, target (d-FCFS),
 *       stall_start / stall_end: every server's stalls, server s's at [first[s], first[s+1]),
 *       sorted and disjoint; deadline: tasks spin to a deadline; finish[count]
 * OUT:  0 with finish[] filled; -1 with BM_ERR_ARGUMENT (bad policy, servers, target) or
 *       BM_ERR_FULL recorded */
int bm_lab_simulate_stalled(u32 policy, u32 servers, u64 count, const double *arrival,
			    const double *service, const u32 *target, const double *stall_start,
			    const double *stall_end, const u64 *first, int deadline, double *finish)
{
	if (servers == 0 || servers > 4096)
		return SIM_FAIL(BM_ERR_ARGUMENT, "simulate: servers must be 1..4096, got %u", servers);
	if (policy != BM_SIM_CFCFS && policy != BM_SIM_DFCFS)
		return SIM_FAIL(BM_ERR_ARGUMENT, "simulate: stalls are modelled for c-FCFS and d-FCFS only");
	if (policy == BM_SIM_DFCFS) {
		if (target == NULL)
			return SIM_FAIL(BM_ERR_ARGUMENT, "simulate: d-FCFS needs targets");
		for (u64 i = 0; i < count; i++)
			if (target[i] >= servers)
				return SIM_FAIL(BM_ERR_ARGUMENT, "simulate: request %lu targets queue %u of %u",
						i, target[i], servers);
	}
	for (u32 s = 0; s < servers; s++)
		if (first[s] > first[s + 1])
			return SIM_FAIL(BM_ERR_ARGUMENT, "simulate: server %u's stalls are out of order", s);
	struct stalls *st = calloc(servers, sizeof *st);
	double *free_at = calloc(servers, sizeof *free_at);
	if (st == NULL || free_at == NULL) {
		free(st);
		free(free_at);
		return SIM_FAIL(BM_ERR_FULL, "simulate: out of memory");
	}
	for (u32 s = 0; s < servers; s++)
		st[s] = (struct stalls){ .start = stall_start, .end = stall_end, .next = first[s],
					 .last = first[s + 1] };
	for (u64 i = 0; i < count; i++) {
		u32 s = policy == BM_SIM_DFCFS ? target[i] : 0;
		double start = stall_free(&st[s], arrival[i] > free_at[s] ? arrival[i] : free_at[s]);
		if (policy == BM_SIM_CFCFS)
			for (u32 j = 1; j < servers; j++) {
				double t = stall_free(&st[j], arrival[i] > free_at[j] ? arrival[i] : free_at[j]);
				if (t < start) {
					start = t;
					s = j;
				}
			}
		finish[i] = free_at[s] = stall_finish(&st[s], start, service[i], deadline);
	}
	free(st);
	free(free_at);
	return 0;
}

/* smp_peers.c -- what bench/test_smp.py measures pybaremetal's cores against, built in the
 * same run (gcc -O2), plus the C tasks and producer loops the bench gives our machine.
 *
 * Peers: a bare Vyukov MPMC ring (producer thread -> consumer thread), a mutex+condvar queue,
 * cache-line ping-pong, a condvar wake-up, and primes counted with plain pthreads.  Threads of
 * a peer are pinned like our cores: the first to CPU cpu0, the second to cpu1. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <x86intrin.h>

typedef unsigned long long u64;
typedef u64 (*enqueue_fn)(void *, u64);
typedef void (*wait_fn)(void);

static u64 now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (u64)ts.tv_sec * 1000000000ull + (u64)ts.tv_nsec;
}

/* pause_for -- let `gap_ns` pass before the next sample: sleep through long gaps (so the
 * other side falls asleep too), spin through short ones */
static void pause_for(u64 gap_ns)
{
	u64 until = now_ns() + gap_ns;
	if (gap_ns >= 1000000) {
		struct timespec gap = { 0, (long)gap_ns };
		nanosleep(&gap, NULL);
	}
	while (now_ns() < until)
		__builtin_ia32_pause();
}

/* wait_past -- spin until the other side has counted past sample i */
static void wait_past(_Atomic u64 *done, u64 i)
{
	while (atomic_load_explicit(done, memory_order_acquire) <= i)
		__builtin_ia32_pause();
}

static void pin_to(int cpu)
{
	if (cpu < 0)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void run_pair(void *(*first)(void *), void *(*second)(void *), void *arg, int cpu0, int cpu1)
{
	pthread_t a, b;
	pthread_attr_t attr_a, attr_b;
	cpu_set_t set_a, set_b;
	pthread_attr_init(&attr_a);
	pthread_attr_init(&attr_b);
	if (cpu0 >= 0) { CPU_ZERO(&set_a); CPU_SET(cpu0, &set_a); pthread_attr_setaffinity_np(&attr_a, sizeof set_a, &set_a); }
	if (cpu1 >= 0) { CPU_ZERO(&set_b); CPU_SET(cpu1, &set_b); pthread_attr_setaffinity_np(&attr_b, sizeof set_b, &set_b); }
	pthread_create(&b, &attr_b, second, arg);
	pthread_create(&a, &attr_a, first, arg);
	pthread_join(a, NULL);
	pthread_join(b, NULL);
}

/* ---- tasks for our machine ----------------------------------------------------------------- */

void empty_task(u64 arg) { (void)arg; }

/* produce -- n times enqueue(task, i) (spinning while full), then wait(); ns for it all */
u64 produce(enqueue_fn enqueue, wait_fn wait, void *task, u64 n)
{
	u64 start = now_ns();
	for (u64 i = 0; i < n; i++)
		while (!enqueue(task, i))
			__builtin_ia32_pause();
	wait();
	return now_ns() - start;
}

/* latency: core 0 stamps (TSC), enqueues stamp_task; the core that runs it writes the TSC
 * ticks since the stamp.  latency_ours returns ticks per ns over the run, to convert. */
static u64 *latency_out;
static _Atomic u64 latency_done;

void stamp_task(u64 stamp)
{
	u64 t = __rdtsc();
	latency_out[atomic_load_explicit(&latency_done, memory_order_relaxed)] = t - stamp;
	atomic_fetch_add_explicit(&latency_done, 1, memory_order_release);
}

/* latency_ours -- n one-way enqueue -> start samples (TSC ticks) into out, `gap_ns` apart, and
 * the ticks each enqueue call took on core 0 into put
 * OUT: TSC ticks per ns */
double latency_ours(enqueue_fn enqueue, u64 *out, u64 *put, u64 n, u64 gap_ns)
{
	latency_out = out;
	atomic_store(&latency_done, 0);
	u64 ns0 = now_ns(), tsc0 = __rdtsc();
	for (u64 i = 0; i < n; i++) {
		pause_for(gap_ns);
		u64 stamp = __rdtsc();
		enqueue((void *)stamp_task, stamp);
		put[i] = __rdtsc() - stamp;
		wait_past(&latency_done, i);
	}
	return (double)(__rdtsc() - tsc0) / (double)(now_ns() - ns0);
}

/* primes: trial division by the primes up to sqrt(limit); chunk k is [k*chunk, (k+1)*chunk) */
static u64 primes_limit, primes_chunk;
static unsigned base_primes[4096];
static int num_base_primes;
static _Atomic u64 primes_found;

void primes_setup(u64 limit, u64 chunk)
{
	primes_limit = limit;
	primes_chunk = chunk;
	num_base_primes = 0;
	for (unsigned p = 2; (u64)p * p < limit; p++) {
		int prime = 1;
		for (int i = 0; i < num_base_primes && base_primes[i] * base_primes[i] <= p; i++)
			if (p % base_primes[i] == 0) { prime = 0; break; }
		if (prime)
			base_primes[num_base_primes++] = p;
	}
	atomic_store(&primes_found, 0);
}

u64 primes_result(void) { return atomic_load(&primes_found); }

static u64 count_range(u64 lo, u64 hi)
{
	u64 count = 0;
	for (u64 n = lo < 2 ? 2 : lo; n < hi; n++) {
		int prime = 1;
		for (int i = 0; i < num_base_primes; i++) {
			u64 p = base_primes[i];
			if (p * p > n)
				break;
			if (n % p == 0) { prime = 0; break; }
		}
		count += prime;
	}
	return count;
}

void primes_task(u64 k)
{
	u64 lo = k * primes_chunk, hi = lo + primes_chunk;
	atomic_fetch_add(&primes_found, count_range(lo, hi > primes_limit ? primes_limit : hi));
}

/* ---- peer: plain pthreads primes (same chunks, taken with an atomic counter) ------------ */

static _Atomic u64 next_chunk;

static void *primes_worker(void *arg)
{
	pin_to((int)(intptr_t)arg);
	u64 chunks = (primes_limit + primes_chunk - 1) / primes_chunk;
	for (u64 k; (k = atomic_fetch_add(&next_chunk, 1)) < chunks;)
		primes_task(k);
	return NULL;
}

/* primes_pthreads -- count with `threads` pthreads pinned to cpus[i]; ns taken */
u64 primes_pthreads(int threads, const int *cpus)
{
	pthread_t t[64];
	atomic_store(&next_chunk, 0);
	atomic_store(&primes_found, 0);
	u64 start = now_ns();
	for (int i = 0; i < threads; i++)
		pthread_create(&t[i], NULL, primes_worker, (void *)(intptr_t)cpus[i]);
	for (int i = 0; i < threads; i++)
		pthread_join(t[i], NULL);
	return now_ns() - start;
}

/* ---- peer: a bare Vyukov ring (16-byte cells: sequence + value) ---------------------------- */

struct vcell { _Atomic u64 seq; u64 value; };
struct vring {
	struct vcell *cells;
	u64 mask;
	_Alignas(64) _Atomic u64 head;
	_Alignas(64) _Atomic u64 tail;
	_Alignas(64) u64 n, sum, ns;
};

static int vring_put(struct vring *r, u64 v)
{
	u64 pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
	for (;;) {
		struct vcell *c = &r->cells[pos & r->mask];
		int64_t dif = (int64_t)(atomic_load_explicit(&c->seq, memory_order_acquire) - pos);
		if (dif == 0) {
			if (atomic_compare_exchange_weak_explicit(&r->tail, &pos, pos + 1, memory_order_relaxed, memory_order_relaxed)) {
				c->value = v;
				atomic_store_explicit(&c->seq, pos + 1, memory_order_release);
				return 1;
			}
		} else if (dif < 0) {
			return 0;
		} else {
			pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
		}
	}
}

static int vring_take(struct vring *r, u64 *v)
{
	u64 pos = atomic_load_explicit(&r->head, memory_order_relaxed);
	for (;;) {
		struct vcell *c = &r->cells[pos & r->mask];
		int64_t dif = (int64_t)(atomic_load_explicit(&c->seq, memory_order_acquire) - (pos + 1));
		if (dif == 0) {
			if (atomic_compare_exchange_weak_explicit(&r->head, &pos, pos + 1, memory_order_relaxed, memory_order_relaxed)) {
				*v = c->value;
				atomic_store_explicit(&c->seq, pos + r->mask + 1, memory_order_release);
				return 1;
			}
		} else if (dif < 0) {
			return 0;
		} else {
			pos = atomic_load_explicit(&r->head, memory_order_relaxed);
		}
	}
}

static void *vring_producer(void *p)
{
	struct vring *r = p;
	for (u64 i = 0; i < r->n; i++)
		while (!vring_put(r, i))
			__builtin_ia32_pause();
	return NULL;
}

static void *vring_consumer(void *p)
{
	struct vring *r = p;
	u64 v, sum = 0;
	for (u64 got = 0; got < r->n;) {
		if (vring_take(r, &v)) {
			sum += v;
			got++;
		} else {
			__builtin_ia32_pause();
		}
	}
	r->sum = sum;
	return NULL;
}

/* vyukov_ring -- n items producer -> consumer through a ring of `capacity`; ns taken */
u64 vyukov_ring(u64 n, u64 capacity, int cpu0, int cpu1)
{
	struct vring r;
	memset(&r, 0, sizeof r);
	r.cells = aligned_alloc(64, capacity * sizeof *r.cells);
	r.mask = capacity - 1;
	r.n = n;
	for (u64 i = 0; i < capacity; i++)
		atomic_store(&r.cells[i].seq, i);
	u64 start = now_ns();
	run_pair(vring_producer, vring_consumer, &r, cpu0, cpu1);
	u64 ns = now_ns() - start;
	free(r.cells);
	return r.sum == n * (n - 1) / 2 ? ns : 0;
}

/* ring_latency -- the same one-way measure as latency_ours, through the bare ring: thread 1
 * polls the ring, thread 0 stamps (TSC) and puts; samples (and put times) in TSC ticks */
struct ring_latency_run { struct vring ring; u64 *out, *put, n, gap_ns; _Atomic u64 done; };

static void *ring_latency_producer(void *p)
{
	struct ring_latency_run *run = p;
	for (u64 i = 0; i < run->n; i++) {
		pause_for(run->gap_ns);
		u64 stamp = __rdtsc();
		vring_put(&run->ring, stamp);
		run->put[i] = __rdtsc() - stamp;
		wait_past(&run->done, i);
	}
	return NULL;
}

static void *ring_latency_consumer(void *p)
{
	struct ring_latency_run *run = p;
	u64 stamp;
	for (u64 i = 0; i < run->n; i++) {
		while (!vring_take(&run->ring, &stamp))
			__builtin_ia32_pause();
		run->out[i] = __rdtsc() - stamp;
		atomic_store_explicit(&run->done, i + 1, memory_order_release);
	}
	return NULL;
}

void ring_latency(u64 *out, u64 *put, u64 n, u64 gap_ns, int cpu0, int cpu1)
{
	static struct ring_latency_run run;
	memset(&run, 0, sizeof run);
	run.ring.cells = aligned_alloc(64, 4096 * sizeof *run.ring.cells);
	run.ring.mask = 4095;
	for (u64 i = 0; i < 4096; i++)
		atomic_store(&run.ring.cells[i].seq, i);
	run.out = out;
	run.put = put;
	run.n = n;
	run.gap_ns = gap_ns;
	run_pair(ring_latency_producer, ring_latency_consumer, &run, cpu0, cpu1);
	free(run.ring.cells);
}

/* ---- peer: a mutex + condvar queue (the textbook work queue) ------------------------------- */

struct mqueue {
	pthread_mutex_t lock;
	pthread_cond_t not_empty, not_full;
	u64 *items, capacity, head, count, n, sum;
};

static void *mqueue_producer(void *p)
{
	struct mqueue *q = p;
	for (u64 i = 0; i < q->n; i++) {
		pthread_mutex_lock(&q->lock);
		while (q->count == q->capacity)
			pthread_cond_wait(&q->not_full, &q->lock);
		q->items[(q->head + q->count++) % q->capacity] = i;
		pthread_cond_signal(&q->not_empty);
		pthread_mutex_unlock(&q->lock);
	}
	return NULL;
}

static void *mqueue_consumer(void *p)
{
	struct mqueue *q = p;
	u64 sum = 0;
	for (u64 got = 0; got < q->n; got++) {
		pthread_mutex_lock(&q->lock);
		while (q->count == 0)
			pthread_cond_wait(&q->not_empty, &q->lock);
		u64 v = q->items[q->head];
		q->head = (q->head + 1) % q->capacity;
		q->count--;
		pthread_cond_signal(&q->not_full);
		pthread_mutex_unlock(&q->lock);
		sum += v;
	}
	q->sum = sum;
	return NULL;
}

/* mutex_queue -- n items through a mutex+condvar queue of `capacity`; ns taken */
u64 mutex_queue(u64 n, u64 capacity, int cpu0, int cpu1)
{
	struct mqueue q = { .capacity = capacity, .n = n };
	pthread_mutex_init(&q.lock, NULL);
	pthread_cond_init(&q.not_empty, NULL);
	pthread_cond_init(&q.not_full, NULL);
	q.items = malloc(capacity * sizeof *q.items);
	u64 start = now_ns();
	run_pair(mqueue_producer, mqueue_consumer, &q, cpu0, cpu1);
	u64 ns = now_ns() - start;
	free(q.items);
	return q.sum == n * (n - 1) / 2 ? ns : 0;
}

/* ---- peer: cache-line ping-pong ------------------------------------------------------------ */

/* ping writes `ball`, pong answers in `ball` (one line, both write it) or, with `two_lines`, in
 * `answer` (each side writes its own line: the shape of any producer -> polling consumer) */
struct pingpong { _Alignas(64) _Atomic u64 ball; _Alignas(64) _Atomic u64 answer; u64 rounds; int two_lines; };

static void *ping(void *p)
{
	struct pingpong *pp = p;
	_Atomic u64 *back = pp->two_lines ? &pp->answer : &pp->ball;
	for (u64 i = 0; i < pp->rounds; i++) {
		atomic_store_explicit(&pp->ball, 2 * i + 1, memory_order_release);
		while (atomic_load_explicit(back, memory_order_acquire) != 2 * i + 2)
			__builtin_ia32_pause();
	}
	return NULL;
}

static void *pong(void *p)
{
	struct pingpong *pp = p;
	_Atomic u64 *back = pp->two_lines ? &pp->answer : &pp->ball;
	for (u64 i = 0; i < pp->rounds; i++) {
		while (atomic_load_explicit(&pp->ball, memory_order_acquire) != 2 * i + 1)
			__builtin_ia32_pause();
		atomic_store_explicit(back, 2 * i + 2, memory_order_release);
	}
	return NULL;
}

/* ping_pong -- `rounds` round trips between two threads, through one cache line or, with
 * `two_lines`, through one line each way; ns per one-way */
double ping_pong(u64 rounds, int two_lines, int cpu0, int cpu1)
{
	struct pingpong pp = { .rounds = rounds, .two_lines = two_lines };
	u64 start = now_ns();
	run_pair(ping, pong, &pp, cpu0, cpu1);
	return (double)(now_ns() - start) / (2.0 * rounds);
}

/* stamp_one_way -- one cache line, measured like our latency: thread 0 waits `gap_ns`, stores
 * the TSC in the line; thread 1, polling it, writes the ticks since.  The floor of any
 * enqueue -> start measured this way (ping_pong's round trip / 2 has no idle gap and no clock). */
struct stamp_run { _Alignas(64) _Atomic u64 stamp; _Alignas(64) _Atomic u64 done; u64 *out, n, gap_ns; };

static void *stamp_sender(void *p)
{
	struct stamp_run *run = p;
	for (u64 i = 0; i < run->n; i++) {
		pause_for(run->gap_ns);
		atomic_store_explicit(&run->stamp, __rdtsc(), memory_order_release);
		wait_past(&run->done, i);
	}
	return NULL;
}

static void *stamp_receiver(void *p)
{
	struct stamp_run *run = p;
	u64 last = 0;
	for (u64 i = 0; i < run->n; i++) {
		u64 stamp;
		while ((stamp = atomic_load_explicit(&run->stamp, memory_order_acquire)) == last)
			__builtin_ia32_pause();
		run->out[i] = __rdtsc() - stamp;
		last = stamp;
		atomic_store_explicit(&run->done, i + 1, memory_order_release);
	}
	return NULL;
}

void stamp_one_way(u64 *out, u64 n, u64 gap_ns, int cpu0, int cpu1)
{
	static struct stamp_run run;
	memset(&run, 0, sizeof run);
	run.out = out;
	run.n = n;
	run.gap_ns = gap_ns;
	run_pair(stamp_sender, stamp_receiver, &run, cpu0, cpu1);
}

/* ---- peer: a pthread condvar wake-up --------------------------------------------------- */

struct wakeup {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	u64 stamp, posted, seen, n, gap_ns, *out;
};

static void *wake_sender(void *p)
{
	struct wakeup *w = p;
	for (u64 i = 0; i < w->n; i++) {
		pause_for(w->gap_ns);                    /* the waiter is asleep by now */
		pthread_mutex_lock(&w->lock);
		w->stamp = now_ns();
		w->posted = i + 1;
		pthread_cond_signal(&w->cond);
		pthread_mutex_unlock(&w->lock);
		while (__atomic_load_n(&w->seen, __ATOMIC_ACQUIRE) <= i)
			__builtin_ia32_pause();
	}
	return NULL;
}

static void *wake_waiter(void *p)
{
	struct wakeup *w = p;
	for (u64 i = 0; i < w->n; i++) {
		pthread_mutex_lock(&w->lock);
		while (w->posted <= i)
			pthread_cond_wait(&w->cond, &w->lock);
		w->out[i] = now_ns() - w->stamp;
		pthread_mutex_unlock(&w->lock);
		__atomic_store_n(&w->seen, i + 1, __ATOMIC_RELEASE);
	}
	return NULL;
}

/* condvar_wakeup -- n samples of signal -> waiter running, the waiter asleep `gap_ns` first */
void condvar_wakeup(u64 *out, u64 n, u64 gap_ns, int cpu0, int cpu1)
{
	struct wakeup w = { .n = n, .gap_ns = gap_ns, .out = out };
	pthread_mutex_init(&w.lock, NULL);
	pthread_cond_init(&w.cond, NULL);
	run_pair(wake_sender, wake_waiter, &w, cpu0, cpu1);
}

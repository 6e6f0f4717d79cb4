/* cluster_primes.c -- count primes below a limit on every node of a cluster, over raw Ethernet.
 *
 *   baremetal cluster examples/cluster_primes.c --nodes 2 --cores 1     # 664579 below 10^7
 *   baremetal cluster examples/cluster_primes.c --nodes 3 -- 2000000
 *   baremetal run examples/cluster_primes.c --cores 2                   # one node: all local
 *
 * As BareMetal-Node's master does, node 0 (the master) finds the other nodes and hands them
 * work in frames of its own EtherType (0x88B5, IEEE's local experimental type); each result
 * comes back in a frame.  Ray only starts the app on each node: no byte of the work or the
 * results goes through it.  Which node this is and how many there are come from the
 * environment `baremetal cluster` sets (BAREMETAL_NODE, BAREMETAL_NODES); without them, or
 * without a NIC, the app is a single node and counts everything itself.
 *
 * Protocol (every message one frame, 64 bytes, fields little-endian, `session` chosen by the
 * master so that stray frames of an earlier run are ignored):
 *   DISCOVER  master -> broadcast, every 20 ms until every worker said HELLO
 *   HELLO     worker -> master
 *   WORK      master -> worker: job number, [lo, hi); at most 2 outstanding per worker; sent
 *             again every second until its RESULT is in (the master computes jobs too)
 *   ACK       worker -> master: the job is queued or being counted (the answer to a WORK
 *             it already has); a worker with jobs that says nothing for 5 s is taken for
 *             dead and its jobs go to the others
 *   RESULT    worker -> master: job number and the count (a repeated WORK of a finished
 *             job gets the same RESULT again, from the worker's cache)
 *   DONE      master -> worker, until BYE (or 1 s): the worker prints how many jobs it
 *             counted and its run ends with exit code 0
 *   BYE       worker -> master
 * Each node computes a job on all its cores: the job is cut into tasks for the work queue
 * (b_smp_enqueue), the node's core 0 takes its share (b_smp_dequeue + b_smp_run), handling
 * the frames that arrived after each task, and waits for the rest (b_smp_wait).  The master
 * prints "primes below LIMIT: COUNT" and returns 0.
 */
#include "libBareMetal.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#pragma GCC diagnostic ignored "-Wunused-function"   /* primes.h's chunk_bounds: not used here */
#include "primes.h"

#define ETHERTYPE       0x88B5
#define MAX_NODES       255
#define MAX_JOBS        4096
#define JOBS_PER_NODE   8
#define OUTSTANDING     2               /* jobs in flight per worker */
#define RESEND_NS       1000000000ull
#define SILENT_NS       5000000000ull  /* a worker holding jobs and silent this long is dead */
#define DISCOVER_NS     20000000ull
#define DISCOVER_WAIT_NS 60000000000ull /* the workers must all say HELLO within 60 s */
#define WORKER_IDLE_NS  120000000000ull /* a worker gives up after 120 s without its master */
#define TASKS_PER_CORE  8

enum { DISCOVER = 1, HELLO, WORK, ACK, RESULT, DONE, BYE };

struct message {                        /* the frame: Ethernet header, then this */
	u8 dst[6], src[6];
	u8 type[2];                     /* ETHERTYPE, big-endian as on the wire */
	u8 kind, pad;
	u32 session;
	u32 job;
	u64 lo, hi, count;
	u8 tail[64 - 14 - 2 - 4 - 4 - 24];
} __attribute__((packed));

static u8 my_mac[6];
static const u8 broadcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

static u64 now(void) { return b_system(TIMECOUNTER, 0, 0); }

/* send -- one message of `kind` to `dst` */
static void send(const u8 *dst, u8 kind, u32 session, u32 job, u64 lo, u64 hi, u64 count)
{
	struct message m;
	memset(&m, 0, sizeof m);
	memcpy(m.dst, dst, 6);
	memcpy(m.src, my_mac, 6);
	m.type[0] = ETHERTYPE >> 8;
	m.type[1] = ETHERTYPE & 0xff;
	m.kind = kind;
	m.session = session;
	m.job = job;
	m.lo = lo;
	m.hi = hi;
	m.count = count;
	b_net_tx(&m, sizeof m, 0);
}

/* receive -- the next message of ours into *m (1), or 0 if none is waiting */
static int receive(struct message *m)
{
	void *frame;
	u64 length;
	while ((length = b_net_rx(&frame, 0)) != 0) {
		const u8 *bytes = frame;
		if (length < sizeof *m || bytes[12] != (ETHERTYPE >> 8) || bytes[13] != (ETHERTYPE & 0xff))
			continue;
		memcpy(m, frame, sizeof *m);
		if (memcmp(m->dst, my_mac, 6) == 0 || memcmp(m->dst, broadcast, 6) == 0)
			return 1;
	}
	return 0;
}

/* --- counting on all cores of this node ------------------------------------------------------ */

static u64 job_lo, job_hi, job_tasks, job_total;
static void (*between_tasks)(void);     /* the node's frame handling, run after each task of core 0 */

static void task(u64 i)
{
	u64 span = job_hi - job_lo;
	u64 lo = job_lo + span * i / job_tasks, hi = job_lo + span * (i + 1) / job_tasks;
	__atomic_fetch_add(&job_total, count_primes(lo, hi), __ATOMIC_RELAXED);
}

/* count_here -- primes in [lo, hi) on every core of this machine */
static u64 count_here(u64 lo, u64 hi)
{
	job_lo = lo;
	job_hi = hi;
	job_tasks = b_system(SMP_NUMCORES, 0, 0) * TASKS_PER_CORE;
	job_total = 0;
	for (u64 i = 0; i < job_tasks; i++)
		if (b_smp_enqueue((void *)task, i) == 0)
			task(i);                /* queue full: do it here */
	u64 code, arg;
	while ((code = b_smp_dequeue(&arg)) != 0) {
		b_smp_run(code, arg);
		between_tasks();
	}
	b_smp_wait();
	return job_total;
}

/* --- the master ------------------------------------------------------------------------------ */

struct worker { u8 mac[6]; int outstanding, dead; u64 heard; };
struct job { u64 lo, hi, count, sent; int state, worker; };   /* 0 free, 1 sent, 2 done, 3 master */

static struct worker workers[MAX_NODES];
static struct job jobs[MAX_JOBS];
static int found, job_count, jobs_done;
static u32 session;
static u64 total;

static int find_worker(const u8 *mac)
{
	for (int w = 0; w < found; w++)
		if (memcmp(workers[w].mac, mac, 6) == 0)
			return w;
	return -1;
}

/* finish -- job j's count is in */
static void finish(int j, u64 count)
{
	struct job *job = &jobs[j];
	if (job->state == 2)
		return;
	if (job->state == 1)
		workers[job->worker].outstanding--;
	job->state = 2;
	job->count = count;
	total += count;
	jobs_done++;
}

/* master_poll -- take in every frame waiting: HELLOs of late workers, ACKs, RESULTs */
static void master_poll(void)
{
	struct message m;
	while (receive(&m)) {
		if (m.session != session)
			continue;
		int w = find_worker(m.src);
		if (m.kind == HELLO && w < 0 && found < MAX_NODES) {
			memcpy(workers[found].mac, m.src, 6);
			workers[found++].heard = now();
			continue;
		}
		if (w < 0)
			continue;
		workers[w].heard = now();
		workers[w].dead = 0;
		if (m.kind == RESULT && m.job < (u32)job_count)
			finish(m.job, m.count);
	}
}

static int master(u64 limit, int nodes)
{
	session = (u32)(now() ^ (now() >> 32)) | 1;
	between_tasks = master_poll;
	u64 start = now(), last = 0;

	while (found < nodes - 1) {                                 /* discovery */
		if (now() - last > DISCOVER_NS) {
			send(broadcast, DISCOVER, session, 0, 0, 0, (u64)nodes);
			last = now();
		}
		master_poll();
		if (now() - start > DISCOVER_WAIT_NS) {
			printf("cluster_primes: only %d of %d workers answered\n", found, nodes - 1);
			return 2;
		}
		b_system(DELAY, 100, 0);
	}

	job_count = nodes == 1 ? 1 : nodes * JOBS_PER_NODE;
	if (job_count > MAX_JOBS)
		job_count = MAX_JOBS;
	for (int j = 0; j < job_count; j++) {
		jobs[j].lo = limit * (u64)j / (u64)job_count;
		jobs[j].hi = limit * (u64)(j + 1) / (u64)job_count;
	}
	int mine = 0;
	while (jobs_done < job_count) {
		master_poll();
		for (int j = 0; j < job_count; j++) {               /* ask again, or give a worker up */
			struct job *job = &jobs[j];
			if (job->state != 1 || now() - job->sent < RESEND_NS)
				continue;
			struct worker *w = &workers[job->worker];
			if (now() - w->heard > SILENT_NS) {
				w->dead = 1;
				w->outstanding--;
				job->state = 0;
			} else {
				send(w->mac, WORK, session, j, job->lo, job->hi, 0);
				job->sent = now();
			}
		}
		int next = 0;
		for (int w = 0; w < found; w++) {                   /* keep every worker busy */
			while (!workers[w].dead && workers[w].outstanding < OUTSTANDING) {
				while (next < job_count && jobs[next].state != 0)
					next++;
				if (next == job_count)
					break;
				struct job *job = &jobs[next];
				job->state = 1;
				job->worker = w;
				job->sent = now();
				if (workers[w].outstanding++ == 0)
					workers[w].heard = now();   /* silence counts from its first job */
				send(workers[w].mac, WORK, session, next, job->lo, job->hi, 0);
			}
		}
		while (next < job_count && jobs[next].state != 0)
			next++;
		if (next < job_count) {                              /* a job for the master itself */
			jobs[next].state = 3;           /* taken here: not free, no worker */
			u64 count = count_here(jobs[next].lo, jobs[next].hi);
			if (jobs[next].state == 3) {
				jobs[next].state = 0;
				finish(next, count);
				mine++;
			}
		} else {
			b_system(DELAY, 100, 0);
		}
	}

	u64 elapsed = now() - start;
	struct message m;
	for (int w = 0; w < found; w++) {                           /* tell the workers to stop */
		u64 until = now() + 1000000000ull, sent = 0;
		int bye = 0;
		while (!bye && now() < until) {
			if (now() - sent > 50000000ull) {
				send(workers[w].mac, DONE, session, 0, 0, 0, 0);
				sent = now();
			}
			while (receive(&m))
				if (m.kind == BYE && m.session == session && memcmp(m.src, workers[w].mac, 6) == 0)
					bye = 1;
			b_system(DELAY, 100, 0);
		}
	}
	printf("primes below %lu: %lu\n", (unsigned long)limit, (unsigned long)total);
	printf("%d node(s), %d jobs (%d counted here), %lu ms\n", nodes, job_count, mine,
	       (unsigned long)(elapsed / 1000000));
	return 0;
}

/* --- a worker -------------------------------------------------------------------------------- */

static u8 job_state[MAX_JOBS];          /* 0 unknown, 1 queued, 2 done */
static u64 counts[MAX_JOBS], queued_lo[MAX_JOBS], queued_hi[MAX_JOBS];
static u32 queue[MAX_JOBS];
static u8 master_mac[6];
static int head, tail, counted, stopping;
static u64 heard;

/* worker_poll -- answer every frame waiting: DISCOVER (HELLO), WORK (queue it and ACK, or the
 * cached RESULT), DONE (BYE; the run ends) */
static void worker_poll(void)
{
	struct message m;
	while (receive(&m)) {
		if (m.kind == DISCOVER) {
			if (m.session != session) {         /* a new master run: forget the old one */
				session = m.session;
				memset(job_state, 0, sizeof job_state);
				head = tail = counted = 0;
			}
			memcpy(master_mac, m.src, 6);
			heard = now();
			send(master_mac, HELLO, session, 0, 0, 0, 0);
		} else if (m.session != session || memcmp(m.src, master_mac, 6) != 0) {
			continue;
		} else if (m.kind == WORK && m.job < MAX_JOBS) {
			heard = now();
			if (job_state[m.job] == 2) {
				send(master_mac, RESULT, session, m.job, m.lo, m.hi, counts[m.job]);
				continue;
			}
			if (job_state[m.job] == 0 && tail - head < MAX_JOBS) {
				job_state[m.job] = 1;
				queued_lo[m.job] = m.lo;
				queued_hi[m.job] = m.hi;
				queue[tail++ % MAX_JOBS] = m.job;
			}
			send(master_mac, ACK, session, m.job, m.lo, m.hi, 0);
		} else if (m.kind == DONE) {
			send(master_mac, BYE, session, 0, 0, 0, 0);
			stopping = 1;
		}
	}
}

static int worker(int node)
{
	u64 idle = 0;
	between_tasks = worker_poll;
	heard = now();
	while (!stopping) {
		int before = tail;
		worker_poll();
		if (head != tail) {
			u32 j = queue[head++ % MAX_JOBS];
			counts[j] = count_here(queued_lo[j], queued_hi[j]);
			job_state[j] = 2;
			counted++;
			send(master_mac, RESULT, session, j, queued_lo[j], queued_hi[j], counts[j]);
			idle = 0;
			continue;
		}
		if (now() - heard > WORKER_IDLE_NS) {
			printf("cluster_primes: node %d heard nothing from a master for %lu s\n", node,
			       (unsigned long)(WORKER_IDLE_NS / 1000000000ull));
			return 3;
		}
		idle = tail != before ? 0 : idle + 1;
		b_system(DELAY, idle > 1000 ? 1000 : 50, 0);   /* poll briefly, then sleep 1 ms */
	}
	printf("node %d: %d jobs counted here\n", node, counted);
	return 0;
}

int main(int argc, char **argv)
{
	u64 limit = argc > 1 ? strtoull(argv[1], NULL, 0) : 10000000;
	const char *node_text = getenv("BAREMETAL_NODE"), *nodes_text = getenv("BAREMETAL_NODES");
	int node = node_text ? atoi(node_text) : 0, nodes = nodes_text ? atoi(nodes_text) : 1;
	u64 mac = b_system(NET_STATUS, 0, 0);
	for (int i = 0; i < 6; i++)
		my_mac[i] = (u8)(mac >> (40 - 8 * i));
	if (mac == 0 || nodes < 1)
		nodes = 1;                      /* no NIC: a single node */
	if (nodes > MAX_NODES + 1) {
		printf("cluster_primes: at most %d nodes\n", MAX_NODES + 1);
		return 2;
	}
	return node == 0 ? master(limit, nodes) : worker(node);
}

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
 *   WORK      master -> worker: job number, [lo, hi); at most 2 outstanding per worker, sent
 *             again after 1 s without a RESULT; a worker silent for 5 tries is given up and
 *             its jobs go to others (the master computes too, between polls)
 *   RESULT    worker -> master: job number and the count (a repeated WORK gets the same
 *             RESULT again, from the worker's cache)
 *   DONE      master -> worker, until BYE (or 1 s): the worker prints how many jobs it
 *             counted and its run ends with exit code 0
 *   BYE       worker -> master
 * Each node computes a job on all its cores: the job is cut into tasks for the work queue
 * (b_smp_enqueue), the node's core 0 takes its share (b_smp_dequeue + b_smp_run) and waits for
 * the rest (b_smp_wait).  The master prints "primes below LIMIT: COUNT" and returns 0.
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
#define GIVE_UP_TRIES   5
#define DISCOVER_NS     20000000ull
#define DISCOVER_WAIT_NS 60000000000ull /* the workers must all say HELLO within 60 s */
#define WORKER_IDLE_NS  120000000000ull /* a worker gives up after 120 s without its master */
#define TASKS_PER_CORE  8

enum { DISCOVER = 1, HELLO, WORK, RESULT, DONE, BYE };

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
	while ((code = b_smp_dequeue(&arg)) != 0)
		b_smp_run(code, arg);
	b_smp_wait();
	return job_total;
}

/* --- the master ------------------------------------------------------------------------------ */

struct worker { u8 mac[6]; int outstanding, dead; };
struct job { u64 lo, hi, count, sent; int state, worker, tries; };   /* state: 0 free, 1 sent, 2 done */

static struct worker workers[MAX_NODES];
static struct job jobs[MAX_JOBS];

static int find_worker(const u8 *mac, int count)
{
	for (int w = 0; w < count; w++)
		if (memcmp(workers[w].mac, mac, 6) == 0)
			return w;
	return -1;
}

static int master(u64 limit, int nodes)
{
	u32 session = (u32)(now() ^ (now() >> 32)) | 1;
	int found = 0, wanted = nodes - 1;
	struct message m;
	u64 start = now(), last = 0;

	while (found < wanted) {                                    /* discovery */
		if (now() - last > DISCOVER_NS) {
			send(broadcast, DISCOVER, session, 0, 0, 0, (u64)nodes);
			last = now();
		}
		while (receive(&m))
			if (m.kind == HELLO && m.session == session && find_worker(m.src, found) < 0 && found < MAX_NODES)
				memcpy(workers[found++].mac, m.src, 6);
		if (now() - start > DISCOVER_WAIT_NS) {
			printf("cluster_primes: only %d of %d workers answered\n", found, wanted);
			return 2;
		}
		b_system(DELAY, 100, 0);
	}

	int count = nodes == 1 ? 1 : nodes * JOBS_PER_NODE, done = 0, mine = 0;
	if (count > MAX_JOBS)
		count = MAX_JOBS;
	for (int j = 0; j < count; j++) {
		jobs[j].lo = limit * (u64)j / (u64)count;
		jobs[j].hi = limit * (u64)(j + 1) / (u64)count;
	}
	u64 total = 0;
	while (done < count) {
		while (receive(&m)) {
			if (m.session != session)
				continue;
			int w = find_worker(m.src, found);
			if (m.kind == RESULT && w >= 0 && m.job < (u32)count && jobs[m.job].state != 2) {
				struct job *job = &jobs[m.job];
				if (job->state == 1)
					workers[job->worker].outstanding--;
				job->state = 2;
				job->count = m.count;
				total += m.count;
				done++;
				workers[w].dead = 0;
			}
		}
		for (int j = 0; j < count; j++) {                   /* resend, or give up on a worker */
			struct job *job = &jobs[j];
			if (job->state != 1 || now() - job->sent < RESEND_NS)
				continue;
			if (++job->tries >= GIVE_UP_TRIES) {
				workers[job->worker].dead = 1;
				workers[job->worker].outstanding--;
				job->state = 0;
			} else {
				send(workers[job->worker].mac, WORK, session, j, job->lo, job->hi, 0);
				job->sent = now();
			}
		}
		int next = 0;
		for (int w = 0; w < found; w++) {                   /* keep every worker busy */
			while (!workers[w].dead && workers[w].outstanding < OUTSTANDING) {
				while (next < count && jobs[next].state != 0)
					next++;
				if (next == count)
					break;
				struct job *job = &jobs[next];
				job->state = 1;
				job->worker = w;
				job->tries = 0;
				job->sent = now();
				workers[w].outstanding++;
				send(workers[w].mac, WORK, session, next, job->lo, job->hi, 0);
			}
		}
		while (next < count && jobs[next].state != 0)
			next++;
		if (next < count) {                                  /* a job for the master itself */
			jobs[next].count = count_here(jobs[next].lo, jobs[next].hi);
			jobs[next].state = 2;
			mine++;
			total += jobs[next].count;
			done++;
		} else {
			b_system(DELAY, 100, 0);
		}
	}

	u64 elapsed = now() - start;
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
	printf("%d node(s), %d jobs (%d counted here), %lu ms\n", nodes, count, mine,
	       (unsigned long)(elapsed / 1000000));
	return 0;
}

/* --- a worker -------------------------------------------------------------------------------- */

static u8 job_state[MAX_JOBS];          /* 0 unknown, 1 queued, 2 done */
static u64 job_count[MAX_JOBS], queued_lo[MAX_JOBS], queued_hi[MAX_JOBS];
static u32 queue[MAX_JOBS];

static int worker(int node)
{
	u32 session = 0;
	u8 master_mac[6] = { 0 };
	int head = 0, tail = 0, jobs_done = 0;
	u64 heard = now(), idle = 0;
	struct message m;

	for (;;) {
		int got = 0;
		while (receive(&m)) {
			got = 1;
			if (m.kind == DISCOVER) {
				if (m.session != session) {         /* a new master run: forget the old one */
					session = m.session;
					memset(job_state, 0, sizeof job_state);
					head = tail = jobs_done = 0;
				}
				memcpy(master_mac, m.src, 6);
				heard = now();
				send(master_mac, HELLO, session, 0, 0, 0, 0);
			} else if (m.session != session || memcmp(m.src, master_mac, 6) != 0) {
				continue;
			} else if (m.kind == WORK && m.job < MAX_JOBS) {
				heard = now();
				if (job_state[m.job] == 2)
					send(master_mac, RESULT, session, m.job, m.lo, m.hi, job_count[m.job]);
				else if (job_state[m.job] == 0 && tail - head < MAX_JOBS) {
					job_state[m.job] = 1;
					queued_lo[m.job] = m.lo;
					queued_hi[m.job] = m.hi;
					queue[tail++ % MAX_JOBS] = m.job;
				}
			} else if (m.kind == DONE) {
				send(master_mac, BYE, session, 0, 0, 0, 0);
				printf("node %d: %d jobs counted here\n", node, jobs_done);
				return 0;
			}
		}
		if (head != tail) {
			u32 j = queue[head++ % MAX_JOBS];
			job_count[j] = count_here(queued_lo[j], queued_hi[j]);
			job_state[j] = 2;
			jobs_done++;
			send(master_mac, RESULT, session, j, queued_lo[j], queued_hi[j], job_count[j]);
			continue;
		}
		if (now() - heard > WORKER_IDLE_NS) {
			printf("cluster_primes: node %d heard nothing from a master for %lu s\n", node,
			       (unsigned long)(WORKER_IDLE_NS / 1000000000ull));
			return 3;
		}
		idle = got ? 0 : idle + 1;
		b_system(DELAY, idle > 1000 ? 1000 : 50, 0);   /* poll briefly, then sleep 1 ms */
	}
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

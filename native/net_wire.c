/* net_wire.c -- the `wire` backend: an in-process link, no privileges, no system calls.
 *
 * A wire has two queues, one per direction; each end receives from one and sends into the
 * other (a loopback wire has one queue that its single end both sends into and receives
 * from).  A queue is a ring of WIRE_SLOTS fixed slots (length + up to 1522 bytes) with a
 * producer index (tail) and a consumer index (head): the sending NIC's tx lock serialises
 * producers, the receiving NIC's rx lock (taken only when a frame is there) consumers; the
 * indexes are published with release/acquire, so a reader sees a slot's bytes before its
 * index.  Frames arrive in order, byte-exact.
 *
 * Full queue: the sender waits up to BM_NET_TX_WAIT_NS for the receiver to make room, then
 * drops (BM_ERR_FULL).  Sending to an end that was closed (its machine halted) drops at once.
 * While the receiving machine has a network callback, each frame also bumps the queue's
 * eventfd so that its service thread wakes.  The wire is freed when both ends are closed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include "machine.h"

#define WIRE_SLOTS 1024u               /* a power of two */

struct wire_slot {
	u32 len;
	u8 data[BM_FRAME_MAX];
};

struct wire_queue {
	_Atomic u64 head;                  /* next slot to read */
	char pad1[56];
	_Atomic u64 tail;                  /* next slot to write */
	char pad2[56];
	_Atomic int reader_open;           /* the receiving end exists */
	_Atomic int notify;                /* the receiver's service thread wants eventfd bumps */
	int event_fd;
	struct wire_slot slots[WIRE_SLOTS];
};

struct wire {
	_Atomic int refs;                  /* ends not yet closed */
	struct wire_queue *queues[2];      /* queues[1] is NULL on a loopback wire */
};

struct wire_nic {
	struct bm_nic nic;
	struct wire *wire;
	struct wire_queue *in, *out;
};

/* wire_tx -- put one frame into the peer's queue (the front end holds our tx lock)
 *  IN:  nic, frame, len
 * OUT:  0 sent; -1 dropped (peer closed, or no room within BM_NET_TX_WAIT_NS) */
static int wire_tx(struct bm_nic *nic, const void *frame, u32 len)
{
	struct wire_queue *q = ((struct wire_nic *)nic)->out;
	u64 tail = atomic_load_explicit(&q->tail, memory_order_relaxed), deadline = 0;
	while (tail - atomic_load_explicit(&q->head, memory_order_acquire) >= WIRE_SLOTS) {
		if (!atomic_load(&q->reader_open))
			break;
		if (bm_nic_tx_gave_up(&deadline, "wire: the other end read nothing"))
			return -1;
		sched_yield();
	}
	if (!atomic_load(&q->reader_open)) {
		bm_fail(BM_ERR_IO, "wire: the other end is closed");
		return -1;
	}
	struct wire_slot *slot = &q->slots[tail % WIRE_SLOTS];
	slot->len = len;
	memcpy(slot->data, frame, len);
	atomic_store_explicit(&q->tail, tail + 1, memory_order_release);
	if (atomic_load_explicit(&q->notify, memory_order_relaxed)) {
		u64 one = 1;
		if (write(q->event_fd, &one, sizeof one) < 0) { /* saturated: the reader is awake */ }
	}
	return 0;
}

/* wire_rx -- take the next frame of our queue into buf
 *  IN:  nic, buf, cap
 * OUT:  its length, 0 if none */
static u32 wire_rx(struct bm_nic *nic, u8 *buf, u32 cap)
{
	struct wire_queue *q = ((struct wire_nic *)nic)->in;
	if (__builtin_expect(atomic_load_explicit(&q->head, memory_order_relaxed) ==
			     atomic_load_explicit(&q->tail, memory_order_acquire), 1))
		return 0;
	u32 len = 0;
	bm_nic_lock(&nic->rx_lock, 0);
	u64 head = atomic_load_explicit(&q->head, memory_order_relaxed);
	if (head != atomic_load_explicit(&q->tail, memory_order_acquire)) {
		struct wire_slot *slot = &q->slots[head % WIRE_SLOTS];
		if (slot->len <= cap) {
			len = slot->len;
			memcpy(buf, slot->data, len);
		} else {
			atomic_fetch_add_explicit(&nic->stats.rx_dropped, 1, memory_order_relaxed);
		}
		atomic_store_explicit(&q->head, head + 1, memory_order_release);
	}
	bm_nic_unlock(&nic->rx_lock);
	return len;
}

/* wire_pending -- 1 if a frame waits in our queue */
static int wire_pending(struct bm_nic *nic)
{
	struct wire_queue *q = ((struct wire_nic *)nic)->in;
	return atomic_load(&q->head) != atomic_load(&q->tail);
}

/* wire_event_fd -- our queue's eventfd; arm = 1 makes senders bump it */
static int wire_event_fd(struct bm_nic *nic, int arm)
{
	struct wire_queue *q = ((struct wire_nic *)nic)->in;
	atomic_store(&q->notify, arm);
	return q->event_fd;
}

static void queue_free(struct wire_queue *q)
{
	if (q != NULL) {
		if (q->event_fd >= 0)
			close(q->event_fd);
		free(q);
	}
}

/* wire_close -- close one end: senders to it drop from now on; the last end frees the wire */
static void wire_close(struct bm_nic *nic)
{
	struct wire_nic *w = (struct wire_nic *)nic;
	struct wire *wire = w->wire;
	atomic_store(&w->in->reader_open, 0);
	free(w);
	if (atomic_fetch_sub(&wire->refs, 1) == 1) {
		queue_free(wire->queues[0]);
		queue_free(wire->queues[1]);
		free(wire);
	}
}

static const struct bm_nic_ops wire_ops = {
	.kind = "wire", .tx = wire_tx, .rx = wire_rx, .pending = wire_pending,
	.event_fd = wire_event_fd, .host_drops = NULL, .close = wire_close,
};

static struct wire_queue *queue_new(void)
{
	struct wire_queue *q = calloc(1, sizeof *q);
	if (q == NULL)
		return NULL;
	q->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	atomic_store(&q->reader_open, 1);
	if (q->event_fd < 0) {
		free(q);
		return NULL;
	}
	return q;
}

static struct wire_nic *end_new(struct wire *wire, struct wire_queue *in, struct wire_queue *out, u64 mac)
{
	struct wire_nic *w = bm_nic_alloc(sizeof *w);
	if (w != NULL) {
		bm_nic_init(&w->nic, &wire_ops, -1, mac);
		w->wire = wire;
		w->in = in;
		w->out = out;
	}
	return w;
}

/* bm_net_wire_new -- a new wire
 *  IN:  mac_a, mac_b = the ends' MACs; loopback = 1 for one end that hears itself
 * OUT:  0 and *a (and *b unless loopback) = the ends, each to give to a machine (bm_net_add)
 *       or close with bm_nic_close; -1 with BM_ERR_FULL recorded */
int bm_net_wire_new(u64 mac_a, u64 mac_b, int loopback, struct bm_nic **a, struct bm_nic **b)
{
	bm_error_clear();
	struct wire *wire = calloc(1, sizeof *wire);
	struct wire_nic *end_a = NULL, *end_b = NULL;
	if (wire == NULL)
		goto fail;
	wire->queues[0] = queue_new();
	wire->queues[1] = loopback ? NULL : queue_new();
	if (wire->queues[0] == NULL || (!loopback && wire->queues[1] == NULL))
		goto fail;
	if (loopback) {
		end_a = end_new(wire, wire->queues[0], wire->queues[0], mac_a);
	} else {
		end_a = end_new(wire, wire->queues[0], wire->queues[1], mac_a);
		end_b = end_new(wire, wire->queues[1], wire->queues[0], mac_b);
	}
	if (end_a == NULL || (!loopback && end_b == NULL))
		goto fail;
	atomic_store(&wire->refs, loopback ? 1 : 2);
	*a = &end_a->nic;
	if (b != NULL)
		*b = loopback ? NULL : &end_b->nic;
	return 0;
fail:
	free(end_a);
	free(end_b);
	if (wire != NULL) {
		queue_free(wire->queues[0]);
		queue_free(wire->queues[1]);
		free(wire);
	}
	bm_fail(BM_ERR_FULL, "wire: out of host memory");
	return -1;
}

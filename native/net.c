/* net.c -- b_net_tx / b_net_rx over the machine's NIC table, NET_STATUS / NET_CONFIG.
 *
 * The front end checks the interface id and the frame length, keeps the counters, and calls
 * the NIC's table (struct bm_nic_ops); backends live in net_tap.c, net_packet.c, net_wire.c.
 *
 * Receive: b_net_rx never blocks.  The backend copies the next frame into the NIC's receive
 * buffer in the system area (BM_NET_BUFFERS + iid * 16 KiB, see net.h) and b_net_rx points
 * *mem at it; the next receive on that NIC overwrites it, as upstream.  An empty poll costs
 * what the backend's check costs (a packet NIC reads its mmap ring's status word: no system
 * call).  Backends lock only when a frame is there, so several cores may poll one NIC; they
 * then share its one buffer, as upstream's cores would.
 *
 * Transmit: b_net_tx is safe from several cores (a per-NIC spin lock around the backend's tx).
 * Policy for a full TX ring / queue: wait up to BM_NET_TX_WAIT_NS (50 ms) for room, then drop
 * the frame, count it in tx_dropped and record BM_ERR_FULL.  A bad length or interface id also
 * drops (counted: on the NIC, or in the machine's bad-iid counter) and records BM_ERR_ARGUMENT.
 *
 * CALLBACK_NETWORK is run by the machine's service thread (service.c), through the table's
 * pending and event_fd operations.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "machine.h"

/* ---- the table -------------------------------------------------------------------------- */

/* bm_nic_tx_gave_up -- a backend waiting for TX room: starts the wait on the first call, and
 * once BM_NET_TX_WAIT_NS has passed records BM_ERR_FULL ("<what> for N ms")
 *  IN:  deadline (0 before the first call; kept by the caller), what (the reason, for the message)
 * OUT:  1 when the wait is over (drop the frame), else 0 */
int bm_nic_tx_gave_up(u64 *deadline, const char *what)
{
	u64 now = bm_now_ns();
	if (*deadline == 0) {
		*deadline = now + BM_NET_TX_WAIT_NS;
		return 0;
	}
	if (now <= *deadline)
		return 0;
	bm_fail(BM_ERR_FULL, "%s for %llu ms", what, BM_NET_TX_WAIT_NS / 1000000);
	return 1;
}

/* bm_nic_tx_retry -- what a backend does after a send()/write() of one frame on its fd
 *  IN:  done = the call's result (errno set when < 0), len = the frame's length, deadline (0
 *       before the first try; kept by the caller), fd (polled for room), what ("tap: write")
 * OUT:  0 sent; 1 try again (interrupted, or the fd was full: waited up to 1 ms for room);
 *       -1 dropped with the reason recorded: a host error or short send (BM_ERR_IO), still
 *       full after BM_NET_TX_WAIT_NS (BM_ERR_FULL) */
int bm_nic_tx_retry(ssize_t done, u32 len, u64 *deadline, int fd, const char *what)
{
	if (done == (ssize_t)len)
		return 0;
	if (done >= 0) {
		bm_fail(BM_ERR_IO, "%s: short (%zd of %u bytes)", what, done, len);
		return -1;
	}
	if (errno == EINTR)
		return 1;
	if (errno != EAGAIN && errno != ENOBUFS) {
		bm_fail(BM_ERR_IO, "%s: %s", what, strerror(errno));
		return -1;
	}
	if (*deadline != 0 && bm_now_ns() > *deadline) {
		char why[96];
		snprintf(why, sizeof why, "%s: no room", what);
		bm_nic_tx_gave_up(deadline, why);
		return -1;
	}
	bm_nic_tx_gave_up(deadline, what);          /* starts the wait on the first call */
	struct pollfd p = { .fd = fd, .events = POLLOUT };
	poll(&p, 1, 1);
	return 1;
}

/* bm_nic_alloc -- zeroed memory for a backend's NIC struct, aligned for its per-core counters
 *  IN:  size (bytes of the backend's struct, which starts with or holds a struct bm_nic)
 * OUT:  the memory (release with free), or NULL */
void *bm_nic_alloc(size_t size)
{
	size = (size + BM_CACHE_LINE - 1) & ~(size_t)(BM_CACHE_LINE - 1);
	void *p = aligned_alloc(BM_CACHE_LINE, size);
	if (p != NULL)
		memset(p, 0, size);
	return p;
}

/* bm_nic_init -- fill the common part of a backend's NIC
 *  IN:  nic, ops, fd (-1 if none), mac (48-bit) */
void bm_nic_init(struct bm_nic *nic, const struct bm_nic_ops *ops, int fd, u64 mac)
{
	memset(nic, 0, sizeof *nic);
	nic->ops = ops;
	nic->fd = fd;
	nic->mac = mac & 0xFFFFFFFFFFFFull;
}

/* bm_net_add -- give a NIC to a machine (the next interface id)
 *  IN:  m, nic (the machine owns it from now: closed on halt)
 * OUT:  its iid, or -1 with BM_ERR_FULL (16 NICs) / BM_ERR_STATE (halted) recorded; the nic is
 *       then still the caller's */
int bm_net_add(struct bm_machine *m, struct bm_nic *nic)
{
	bm_error_clear();
	int iid = -1;
	pthread_mutex_lock(&m->net.lock);
	u32 n = atomic_load(&m->net.num_nics);
	if (atomic_load(&m->state) == BM_STATE_HALTED)
		bm_fail(BM_ERR_STATE, "the machine is halted");
	else if (n >= BM_MAX_NICS)
		bm_fail(BM_ERR_FULL, "a machine has at most %d NICs", BM_MAX_NICS);
	else {
		m->net.nics[n] = nic;
		atomic_store_explicit(&m->net.num_nics, n + 1, memory_order_release);
		iid = (int)n;
	}
	pthread_mutex_unlock(&m->net.lock);
	return iid;
}

/* nic_of -- the NIC with id iid, NULL if there is none */
static inline struct bm_nic *nic_of(struct bm_machine *m, u64 iid)
{
	if (__builtin_expect(iid >= atomic_load_explicit(&m->net.num_nics, memory_order_acquire), 0))
		return NULL;
	return m->net.nics[iid];
}

/* bm_net_nic -- the NIC with id iid, NULL if absent */
struct bm_nic *bm_net_nic(struct bm_machine *m, u32 iid) { return nic_of(m, iid); }

/* bm_nic_close -- close a NIC no machine owns (a wire's harness end) */
void bm_nic_close(struct bm_nic *nic)
{
	if (nic != NULL) {
		bm_pcap_close(nic->pcap);
		nic->ops->close(nic);
	}
}

/* nic_count -- count one frame of `bytes` sent (tx) or received in the calling core's counters
 *  IN:  nic, tx (0 received, 1 sent), bytes
 * OUT:  nothing */
static inline void nic_count(struct bm_nic *nic, int tx, u64 bytes)
{
	struct bm_core *self = bm_self;
	struct bm_nic_counts *c = &nic->stats.counts[self != NULL ? self->counter_slot : BM_NIC_SHARED_SLOT];
	_Atomic u64 *packets = tx ? &c->tx_packets : &c->rx_packets, *sum = tx ? &c->tx_bytes : &c->rx_bytes;
	if (self == NULL) {
		atomic_fetch_add_explicit(packets, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(sum, bytes, memory_order_relaxed);
		return;
	}
	atomic_store_explicit(packets, atomic_load_explicit(packets, memory_order_relaxed) + 1, memory_order_relaxed);
	atomic_store_explicit(sum, atomic_load_explicit(sum, memory_order_relaxed) + bytes, memory_order_relaxed);
}

/* bm_nic_send -- send one frame on a NIC: length check, lock, backend, counters
 *  IN:  nic, frame, len
 * OUT:  0 sent; -1 dropped (tx_dropped counted, BM_ERR_ARGUMENT / _FULL / _IO recorded) */
int bm_nic_send(struct bm_nic *nic, const void *frame, u64 len)
{
	if (len < BM_FRAME_MIN || len > BM_FRAME_MAX) {
		atomic_fetch_add_explicit(&nic->stats.tx_dropped, 1, memory_order_relaxed);
		bm_fail(BM_ERR_ARGUMENT, "frame length %lu is outside %d..%d", len, BM_FRAME_MIN, BM_FRAME_MAX);
		return -1;
	}
	bm_nic_lock(&nic->tx_lock, 0);
	int r = nic->ops->tx(nic, frame, (u32)len);
	bm_nic_unlock(&nic->tx_lock);
	if (r != 0) {
		atomic_fetch_add_explicit(&nic->stats.tx_dropped, 1, memory_order_relaxed);
		return -1;
	}
	nic_count(nic, 1, len);
	if (__builtin_expect(nic->pcap != NULL, 0))
		bm_pcap_frame(nic->pcap, frame, (u32)len);
	return 0;
}

/* bm_nic_recv -- the next frame of a NIC into buf, never blocking
 *  IN:  nic, buf, cap = its size
 * OUT:  the frame's length, 0 if none (or an error recorded: a vanished device) */
u64 bm_nic_recv(struct bm_nic *nic, void *buf, u64 cap)
{
	u32 len = nic->ops->rx(nic, buf, cap > 0xFFFFFFFFull ? 0xFFFFFFFFu : (u32)cap);
	if (len)
		nic_count(nic, 0, len);
	if (len && __builtin_expect(nic->pcap != NULL, 0))
		bm_pcap_frame(nic->pcap, buf, len);
	return len;
}

/* bm_nic_stats -- the NIC's counters
 *  IN:  nic, out = 6 u64: rx_packets, rx_bytes, rx_dropped, tx_packets, tx_bytes, tx_dropped */
void bm_nic_stats(struct bm_nic *nic, u64 *out)
{
	if (nic->ops->host_drops)
		atomic_fetch_add(&nic->stats.rx_dropped, nic->ops->host_drops(nic));
	memset(out, 0, 6 * sizeof *out);
	for (u32 i = 0; i < BM_MAX_CORES + 2; i++) {
		struct bm_nic_counts *c = &nic->stats.counts[i];
		out[0] += atomic_load_explicit(&c->rx_packets, memory_order_relaxed);
		out[1] += atomic_load_explicit(&c->rx_bytes, memory_order_relaxed);
		out[3] += atomic_load_explicit(&c->tx_packets, memory_order_relaxed);
		out[4] += atomic_load_explicit(&c->tx_bytes, memory_order_relaxed);
	}
	out[2] = atomic_load(&nic->stats.rx_dropped);
	out[5] = atomic_load(&nic->stats.tx_dropped);
}

/* bm_net_stats -- the counters of a machine's NIC iid, also after halt closed it
 *  IN:  m, iid, out = 6 u64 (as bm_nic_stats)
 * OUT:  1, or 0 if the machine never had that NIC */
int bm_net_stats(struct bm_machine *m, u32 iid, u64 *out)
{
	int found = 1;
	pthread_mutex_lock(&m->net.lock);
	if (iid < atomic_load(&m->net.num_nics))
		bm_nic_stats(m->net.nics[iid], out);
	else if (iid < m->net.num_closed)
		memcpy(out, m->net.closed_stats[iid], sizeof m->net.closed_stats[iid]);
	else
		found = 0;
	pthread_mutex_unlock(&m->net.lock);
	return found;
}

/* bm_nic_mac / bm_nic_kind -- the NIC's MAC (48-bit) and backend name */
u64 bm_nic_mac(struct bm_nic *nic) { return nic->mac; }
const char *bm_nic_kind(struct bm_nic *nic) { return nic->ops->kind; }

/* bm_net_bad_iid_drops -- frames b_net_tx refused because their interface does not exist */
u64 bm_net_bad_iid_drops(struct bm_machine *m) { return atomic_load(&m->net.bad_iid_drops); }

/* ---- the calls ---------------------------------------------------------------------------- */

/* net_tx -- b_net_tx's body: send one Ethernet frame
 *  IN:  m, mem = frame (14-byte header included), len = its length (14..1522), iid = interface
 * OUT:  nothing.  Dropped and counted, with the reason recorded, for a bad iid or length, a full
 *       ring after BM_NET_TX_WAIT_NS, or a host error (a vanished device) */
static void net_tx(struct bm_machine *m, void *mem, u64 len, u64 iid)
{
	struct bm_nic *nic = nic_of(m, iid);
	if (nic == NULL) {
		atomic_fetch_add_explicit(&m->net.bad_iid_drops, 1, memory_order_relaxed);
		bm_fail(BM_ERR_ARGUMENT, "no interface %lu (the machine has %u)", iid,
			atomic_load(&m->net.num_nics));
		return;
	}
	bm_nic_send(nic, mem, len);
}

/* net_tx_traced -- net_tx and its trace line (trace.h) */
BM_TRACED_PATH void net_tx_traced(struct bm_machine *m, void *mem, u64 len, u64 iid)
{
	u64 t0 = bm_now_ns();
	net_tx(m, mem, len, iid);
	bm_trace_call(m, BM_TRACE_NET_TX, t0, (u64[]){ (u64)(uintptr_t)mem, len, iid }, 0, NULL);
}

/* b_net_tx -- send one Ethernet frame (net_tx) on the calling core's machine
 *  IN:  mem = frame, len = its length, iid = interface
 * OUT:  nothing (drops counted and recorded, see net_tx) */
void b_net_tx(void *mem, u64 len, u64 iid)
{
	bm_error_clear();
	struct bm_machine *m = bm_current();
	if (m == NULL)
		return;
	if (bm_traced(m))                                /* trace.h */
		net_tx_traced(m, mem, len, iid);
	else
		net_tx(m, mem, len, iid);
}

/* net_rx -- b_net_rx's body: poll interface iid, never blocking
 *  IN:  m, mem = where to store the frame's address, iid = interface
 * OUT:  the frame's length and *mem = its address (the NIC's buffer in the system area, valid
 *       until the next receive on that NIC); 0 if no frame (*mem untouched), or with the error
 *       recorded for a bad iid or a vanished device.
 * An empty poll on a packet NIC is: a %fs store (the error) and load (the core), the iid check,
 * one load of the ring slot's status word through rx_hint: no backend call, no system call. */
static inline __attribute__((always_inline)) u64 net_rx(struct bm_machine *m, void **mem, u64 iid)
{
	struct bm_nic *nic = nic_of(m, iid);
	if (nic == NULL)
		return bm_fail(BM_ERR_ARGUMENT, "no interface %lu (the machine has %u)", iid,
			       atomic_load(&m->net.num_nics));
	volatile u32 *hint = atomic_load_explicit(&nic->rx_hint, memory_order_relaxed);
	if (hint != NULL && !(*hint & nic->rx_hint_mask))
		return 0;
	u8 *buf = bm_phys(m, BM_NET_BUFFERS + iid * BM_NET_BUFFER_SIZE);
	u32 len = nic->ops->rx(nic, buf, BM_NET_BUFFER_SIZE);
	if (len == 0)
		return 0;
	nic_count(nic, 0, len);
	if (__builtin_expect(nic->pcap != NULL, 0))
		bm_pcap_frame(nic->pcap, buf, len);
	*mem = buf;
	return len;
}

/* net_rx_traced -- net_rx and its trace line (trace.h) */
BM_TRACED_PATH u64 net_rx_traced(struct bm_machine *m, void **mem, u64 iid)
{
	u64 t0 = bm_now_ns(), len = net_rx(m, mem, iid);
	bm_trace_call(m, BM_TRACE_NET_RX, t0, (u64[]){ iid, len ? (u64)(uintptr_t)*mem : 0 }, len, NULL);
	return len;
}

/* b_net_rx -- poll interface iid of the calling core's machine (net_rx), never blocking
 *  IN:  mem = where to store the frame's address, iid = interface
 * OUT:  the frame's length (*mem = its address), 0 if none or on error (see net_rx).  The empty
 * poll adds the trace flag's test to net_rx's cost. */
u64 b_net_rx(void **mem, u64 iid)
{
	bm_error_clear();
	struct bm_machine *m = bm_current();
	if (m == NULL)
		return 0;
	if (bm_traced(m))                                /* trace.h */
		return net_rx_traced(m, mem, iid);
	return net_rx(m, mem, iid);
}

/* bm_net_rx_face -- b_net_rx for the Python face (one call, no second one for the error)
 *  IN:  as b_net_rx
 * OUT:  the frame's length, 0 if none, BM_NET_FAILED (~0) with the error recorded */
u64 bm_net_rx_face(void **mem, u64 iid)
{
	u64 len = b_net_rx(mem, iid);
	return (len == 0 && bm_error.code) ? BM_NET_FAILED : len;
}

/* bm_net_tx_face -- b_net_tx for the Python face
 *  IN:  as b_net_tx
 * OUT:  0 sent, else the recorded error's code */
int bm_net_tx_face(void *mem, u64 len, u64 iid)
{
	b_net_tx(mem, len, iid);
	return bm_error.code;
}

/* bm_net_status -- NET_STATUS
 *  IN:  m, iid
 * OUT:  the interface's MAC as a 48-bit number (first byte most significant), 0 if absent */
u64 bm_net_status(struct bm_machine *m, u64 iid)
{
	struct bm_nic *nic = nic_of(m, iid);
	return nic ? nic->mac : 0;
}

/* bm_net_config -- NET_CONFIG: accepted; a hosted NIC has no descriptors to configure
 *  IN:  m, base = rx descriptor base (ignored), iid
 * OUT:  1 for an existing interface; 0 with BM_ERR_ARGUMENT recorded if absent */
u64 bm_net_config(struct bm_machine *m, u64 base, u64 iid)
{
	(void)base;
	if (nic_of(m, iid) == NULL)
		return bm_fail(BM_ERR_ARGUMENT, "NET_CONFIG: no interface %lu", iid);
	return 1;
}

/* bm_net_close_all -- close every NIC, keeping its final counters (halt: the service thread
 * and the cores have stopped) */
void bm_net_close_all(struct bm_machine *m)
{
	pthread_mutex_lock(&m->net.lock);
	u32 n = atomic_exchange(&m->net.num_nics, 0);
	m->net.num_closed = n;
	for (u32 i = 0; i < n; i++) {
		struct bm_nic *nic = m->net.nics[i];
		m->net.nics[i] = NULL;
		bm_nic_stats(nic, m->net.closed_stats[i]);
		bm_pcap_close(nic->pcap);
		nic->ops->close(nic);
	}
	pthread_mutex_unlock(&m->net.lock);
}

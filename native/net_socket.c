/* net_socket.c -- the `socket` backend: Ethernet frames in UDP datagrams, one frame per
 * datagram, between processes or hosts.  No privileges.
 *
 * Python (pybaremetal/net/socket.py) parses the spec, opens and binds the UDP socket(s) and
 * hands the fds over; this file owns them from then on.  A datagram is exactly one frame, no
 * header (the framing of QEMU's `-netdev dgram`): byte-exact both ways.  Three modes:
 *
 *   BM_SOCKET_CONNECTED  one socket, connect()ed to the peer: send() per frame; the kernel
 *                        delivers only the peer's datagrams.  A peer that is not there yet
 *                        (an ICMP port unreachable came back) makes the next send() fail with
 *                        ECONNREFUSED without sending: that frame is sent again, once.
 *   BM_SOCKET_LISTEN     one bound, unconnected socket: the peer is whoever sent the last
 *                        datagram (learned on receive); sendto() it.  Until a datagram has
 *                        arrived there is no peer, and b_net_tx drops with BM_ERR_STATE.
 *   BM_SOCKET_HUB        two sockets: rx_fd bound to a multicast group:port that every
 *                        member joined, tx_fd connect()ed to the group (multicast loop on, so
 *                        members on the same host hear each other).  Every member hears every
 *                        frame; its own come back through the loop and are skipped by their
 *                        source address (tx_fd's own, read with getsockname at open).
 *
 * Receive: one recvfrom(MSG_DONTWAIT) per call (an empty poll is that one system call: a UDP
 * socket has no ring to peek at).  A datagram shorter than 14 or longer than 1522 bytes is not
 * a frame: it is consumed, counted in rx_dropped and the next one is tried.  Datagrams the
 * kernel dropped for a full receive buffer are counted in rx_dropped too (SO_MEMINFO's drop
 * counter).  UDP over a loss-free path (loopback) loses nothing as long as the receiver keeps
 * up: the sender has no flow control, a full receive buffer drops.
 *
 * Transmit: one send()/sendto(MSG_DONTWAIT) per frame; a full socket buffer (EAGAIN/ENOBUFS)
 * waits up to BM_NET_TX_WAIT_NS for room, then drops.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "machine.h"

#ifndef SO_MEMINFO
#define SO_MEMINFO 55
#endif

struct socket_nic {
	struct bm_nic nic;              /* nic.fd: the socket frames are received on */
	int tx_fd;                      /* the socket frames are sent on (nic.fd but in hub mode) */
	int mode;                       /* BM_SOCKET_* */
	u32 kernel_drops;               /* SO_MEMINFO's drop counter when last read */
	struct sockaddr_storage self;   /* hub: tx_fd's address; frames from it are our own */
	socklen_t self_len;
	_Atomic int peer_lock;          /* listen: guards peer / peer_len */
	struct sockaddr_storage peer;   /* listen: where frames go (the last sender) */
	socklen_t peer_len;             /* 0: no peer yet */
};

/* same_address -- 1 if two socket addresses name the same IP and port */
static int same_address(const struct sockaddr_storage *a, socklen_t a_len,
			const struct sockaddr_storage *b, socklen_t b_len)
{
	if (a->ss_family != b->ss_family)
		return 0;
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	if (a->ss_family == AF_INET6) {
		const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
		return x->sin6_port == y->sin6_port && !memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr);
	}
	return a_len == b_len && !memcmp(a, b, a_len);
}

/* learn_peer -- listen mode: the sender of the datagram just received becomes the peer
 *  IN:  s, from / from_len = the datagram's source */
static void learn_peer(struct socket_nic *s, const struct sockaddr_storage *from, socklen_t from_len)
{
	bm_nic_lock(&s->peer_lock, 0);
	if (!same_address(&s->peer, s->peer_len, from, from_len)) {
		memcpy(&s->peer, from, from_len);
		s->peer_len = from_len;
	}
	bm_nic_unlock(&s->peer_lock);
}

/* socket_rx -- receive the next frame into buf
 *  IN:  nic, buf, cap
 * OUT:  its length; 0 if none (or with BM_ERR_IO recorded for a host error) */
static u32 socket_rx(struct bm_nic *nic, u8 *buf, u32 cap)
{
	struct socket_nic *s = (struct socket_nic *)nic;
	int want_source = s->mode != BM_SOCKET_CONNECTED;
	for (;;) {
		struct sockaddr_storage from;
		socklen_t from_len = sizeof from;
		ssize_t got = recvfrom(nic->fd, buf, cap, MSG_DONTWAIT | MSG_TRUNC,
				       want_source ? (struct sockaddr *)&from : NULL, want_source ? &from_len : NULL);
		if (got < 0) {
			if (errno == EAGAIN)
				return 0;
			if (errno == EINTR || errno == ECONNREFUSED)
				continue;          /* ECONNREFUSED: an earlier send found no peer */
			bm_fail(BM_ERR_IO, "socket: recv: %s", strerror(errno));
			return 0;
		}
		if (got < BM_FRAME_MIN || got > BM_FRAME_MAX || (u64)got > cap) {
			atomic_fetch_add_explicit(&nic->stats.rx_dropped, 1, memory_order_relaxed);
			continue;
		}
		if (s->mode == BM_SOCKET_HUB && same_address(&from, from_len, &s->self, s->self_len))
			continue;                  /* our own frame, back through the multicast loop */
		if (s->mode == BM_SOCKET_LISTEN)
			learn_peer(s, &from, from_len);
		return (u32)got;
	}
}

/* socket_tx -- send one frame in one datagram (the front end holds the tx lock)
 *  IN:  nic, frame, len (14..1522)
 * OUT:  0 sent; -1 dropped with the reason recorded */
static int socket_tx(struct bm_nic *nic, const void *frame, u32 len)
{
	struct socket_nic *s = (struct socket_nic *)nic;
	struct sockaddr_storage peer;
	socklen_t peer_len = 0;
	if (s->mode == BM_SOCKET_LISTEN) {
		bm_nic_lock(&s->peer_lock, 0);
		peer_len = s->peer_len;
		memcpy(&peer, &s->peer, peer_len);
		bm_nic_unlock(&s->peer_lock);
		if (peer_len == 0) {
			bm_fail(BM_ERR_STATE, "socket: no peer yet (a listening NIC learns it from the first frame it receives)");
			return -1;
		}
	}
	u64 deadline = 0;
	int refused = 0, r;
	do {
		ssize_t done = peer_len ? sendto(s->tx_fd, frame, len, MSG_DONTWAIT, (struct sockaddr *)&peer, peer_len)
					: send(s->tx_fd, frame, len, MSG_DONTWAIT);
		if (done < 0 && errno == ECONNREFUSED && refused++ == 0)
			r = 1;             /* an earlier datagram's error, reported now: send again */
		else
			r = bm_nic_tx_retry(done, len, &deadline, s->tx_fd, "socket: send");
	} while (r == 1);
	return r;
}

/* socket_pending -- 1 if a datagram is waiting (it may turn out to be our own, in hub mode) */
static int socket_pending(struct bm_nic *nic)
{
	struct pollfd p = { .fd = nic->fd, .events = POLLIN };
	return poll(&p, 1, 0) > 0 && (p.revents & POLLIN);
}

/* socket_event_fd -- the receiving socket: readable when a datagram arrives */
static int socket_event_fd(struct bm_nic *nic, int arm) { (void)arm; return nic->fd; }

/* socket_host_drops -- datagrams the kernel dropped (full receive buffer) since the last call */
static u64 socket_host_drops(struct bm_nic *nic)
{
	struct socket_nic *s = (struct socket_nic *)nic;
	u32 info[SK_MEMINFO_VARS];
	socklen_t n = sizeof info;
	if (getsockopt(nic->fd, SOL_SOCKET, SO_MEMINFO, info, &n) != 0 || n <= SK_MEMINFO_DROPS * sizeof(u32))
		return 0;
	u32 drops = info[SK_MEMINFO_DROPS], since = drops - s->kernel_drops;
	s->kernel_drops = drops;
	return since;
}

/* socket_close -- close the socket(s), free */
static void socket_close(struct bm_nic *nic)
{
	struct socket_nic *s = (struct socket_nic *)nic;
	if (s->tx_fd >= 0 && s->tx_fd != nic->fd)
		close(s->tx_fd);
	if (nic->fd >= 0)
		close(nic->fd);
	free(s);
}

static const struct bm_nic_ops socket_ops = {
	.kind = "socket", .tx = socket_tx, .rx = socket_rx, .pending = socket_pending,
	.event_fd = socket_event_fd, .host_drops = socket_host_drops, .close = socket_close,
};

/* bm_net_socket_open -- a NIC over UDP socket(s) Python opened and bound
 *  IN:  rx_fd = the socket frames arrive on; tx_fd = the one they leave on (= rx_fd except in
 *       hub mode, where it is connect()ed to the group); both owned from now on, closed on
 *       failure too.  mode = BM_SOCKET_CONNECTED / _LISTEN / _HUB (see the top of this file);
 *       mac = 48-bit
 * OUT:  the NIC, or NULL with BM_ERR_ARGUMENT (bad mode) / BM_ERR_IO / BM_ERR_FULL recorded */
struct bm_nic *bm_net_socket_open(int rx_fd, int tx_fd, int mode, u64 mac)
{
	bm_error_clear();
	struct socket_nic *s = NULL;
	const char *why = NULL;
	int code = BM_ERR_IO;
	if (mode != BM_SOCKET_CONNECTED && mode != BM_SOCKET_LISTEN && mode != BM_SOCKET_HUB) {
		why = "unknown mode";
		code = BM_ERR_ARGUMENT;
	} else if (mode != BM_SOCKET_HUB && tx_fd != rx_fd) {
		why = "only a hub has two sockets";
		code = BM_ERR_ARGUMENT;
	} else if ((s = bm_nic_alloc(sizeof *s)) == NULL) {
		why = "out of host memory";
		code = BM_ERR_FULL;
	} else {
		bm_nic_init(&s->nic, &socket_ops, rx_fd, mac);
		s->tx_fd = tx_fd;
		s->mode = mode;
		s->self_len = sizeof s->self;
		if (mode == BM_SOCKET_HUB && getsockname(tx_fd, (struct sockaddr *)&s->self, &s->self_len) != 0)
			why = strerror(errno);
		else
			socket_host_drops(&s->nic);    /* start the drop count from now */
	}
	if (why == NULL)
		return &s->nic;
	if (s != NULL) {
		socket_close(&s->nic);
	} else {
		if (tx_fd >= 0 && tx_fd != rx_fd)
			close(tx_fd);
		if (rx_fd >= 0)
			close(rx_fd);
	}
	return (void *)bm_fail(code, "socket: %s", why);
}

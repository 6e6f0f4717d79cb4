/* net_packet.c -- the `packet` backend: an AF_PACKET socket with mmap'd TPACKET_V2 rings.
 *
 * Python opens the socket (AF_PACKET, SOCK_RAW, ETH_P_ALL), binds it to the interface and
 * hands the fd over; this file sets the rings up and owns the fd from then on.
 *
 * RX ring: 1024 slots of 2048 bytes.  A slot is the user's when its tp_status has
 * TP_STATUS_USER, so an empty poll is one load of the next slot's status word: no system
 * call.  A frame is copied out to the NIC's buffer and the slot handed back at once
 * (TP_STATUS_KERNEL).  Frames the host itself sends on the interface are not delivered
 * (PACKET_IGNORE_OUTGOING, and sll_pkttype == PACKET_OUTGOING is skipped where the option is
 * missing); our own transmissions never reach our socket.  A VLAN tag the kernel stripped
 * (TP_STATUS_VLAN_VALID) is put back, so frames arrive byte-exact.  A frame longer than the
 * slot or the buffer is dropped and counted in rx_dropped, as are the kernel's ring overruns
 * (PACKET_STATISTICS).
 *
 * Checksums: a frame that a local sender (a veth peer, a bridge) handed over with its TCP/UDP
 * checksum left for the hardware to finish (checksum offload: TP_STATUS_CSUMNOTREADY in the
 * slot's status) is finished here before the app sees it (complete_checksum): an app's TCP
 * stack would otherwise drop every such segment.  Over IPv4 and IPv6 (extension headers
 * skipped), behind VLAN tags; fragments and other protocols (SCTP's CRC) are left as they are.
 * Frames are then byte-exact and valid: what the wire would have carried.
 *
 * Segmentation offload: a local TCP sender whose device offloads segmentation (a veth peer:
 * TSO/GSO, on by default) hands over TCP segments of up to 64 KiB, more than a slot.  The
 * kernel then also queues the whole frame on the socket's ordinary queue (PACKET_COPY_THRESH)
 * and marks the truncated slot TP_STATUS_COPY; the NIC reads it from there with recv() and
 * cuts it into frames of at most 1514 bytes (payload of 1500 - IP and TCP headers: the MSS
 * of a 1500-byte MTU, what the sender cut for), one per b_net_rx: the IP length and id, the
 * TCP sequence number, FIN/PSH (last frame only) and CWR (first only) and both checksums are
 * set per frame, as the hardware would.  Other frames longer than a slot are dropped, counted.
 *
 * Transmit, by default: one send(fd, frame, len, MSG_DONTWAIT) per b_net_tx.  b_net_tx must
 * put exactly that frame on the wire before it returns, so a TX ring cannot batch, and with a
 * ring every send() goes through the kernel's heavier tpacket_snd: measured here, a per-frame
 * kick of a TX ring reaches 65-80% of plain send()'s rate, plain send() ~95%.  A full socket
 * buffer (EAGAIN/ENOBUFS) waits up to BM_NET_TX_WAIT_NS for room, then drops.
 *
 * Transmit with `packet:IFACE,txring`: a TX ring of 256 slots of 2048 bytes.  b_net_tx copies
 * the frame into the next slot, marks it TP_STATUS_SEND_REQUEST and kicks the kernel with
 * send(fd, NULL, 0, MSG_DONTWAIT), which sends it before returning (PACKET_QDISC_BYPASS), so
 * the send's result is that frame's fate.  When the slot is still the kernel's (a slow
 * device), it kicks and waits up to BM_NET_TX_WAIT_NS, then drops.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>
#include "machine.h"

#ifndef PACKET_QDISC_BYPASS
#define PACKET_QDISC_BYPASS 20
#endif
#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

#define SLOT_SIZE   2048u
#define BLOCK_SIZE  (1u << 16)
#define RX_SLOTS    1024u
#define TX_SLOTS    256u
/* where a TX slot's frame starts: after the aligned header (no PACKET_TX_HAS_OFF) */
#define TX_DATA     TPACKET_ALIGN(sizeof(struct tpacket2_hdr))

#define GSO_MAX     (65536u + 64u)     /* the largest frame the copy queue hands over */
#define SEGMENT_MTU 1500u

struct packet_nic {
	struct bm_nic nic;
	u8 *map;                        /* RX ring, then TX ring */
	size_t map_size;
	u8 *rx_ring, *tx_ring;
	u32 rx_next, tx_next;
	/* a large TCP segment being cut into frames (under the rx lock) */
	u8 *gso;                        /* GSO_MAX bytes: the whole frame from the copy queue */
	_Atomic u32 gso_left;           /* payload bytes still to deliver, 0 when none */
	u32 gso_ip, gso_l4, gso_header; /* offsets: IP header, TCP header, payload */
	u32 gso_done, gso_mss, gso_count;   /* payload sent, payload per frame, frames made */
	u32 gso_always;                 /* rx_hint's target while cutting: always "a frame is there" */
};

static inline struct tpacket2_hdr *rx_slot(struct packet_nic *p, u32 i)
{
	return (struct tpacket2_hdr *)(p->rx_ring + (size_t)i * SLOT_SIZE);
}

static inline u32 status_of(struct tpacket2_hdr *h)
{
	return __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
}

static inline void set_status(struct tpacket2_hdr *h, u32 status)
{
	__atomic_store_n(&h->tp_status, status, __ATOMIC_RELEASE);
}

/* sum16 -- the ones' complement sum (not folded) of len bytes as big-endian 16-bit words */
static u64 sum16(const u8 *p, u32 len, u64 sum)
{
	for (; len >= 2; p += 2, len -= 2)
		sum += (u32)(p[0] << 8 | p[1]);
	if (len)
		sum += (u32)p[0] << 8;
	return sum;
}

/* l4_of -- where the TCP/UDP segment of an unfragmented IPv4/IPv6 frame starts
 *  IN:  f = frame (VLAN tags allowed), len
 * OUT:  1 with *l4 (offset), *l4_len, *proto, *ip (offset of the IP header), *sum (the pseudo
 *       header's unfolded sum); 0 for anything else or headers that do not fit in len */
static int l4_of(const u8 *f, u32 len, u32 *ip_at, u32 *l4, u32 *l4_len, u8 *proto, u64 *sum)
{
	u32 at = 12;
	u16 type = (u16)(f[12] << 8 | f[13]);
	while ((type == 0x8100 || type == 0x88A8) && at + 6 <= len) {
		at += 4;
		type = (u16)(f[at] << 8 | f[at + 1]);
	}
	at += 2;                                       /* the IP header */
	*ip_at = at;
	const u8 *ip = f + at;
	if (type == 0x0800) {
		u32 ihl = (ip[0] & 0x0F) * 4u;
		if (at + 20 > len || (ip[0] >> 4) != 4 || ihl < 20 || (((ip[6] << 8) | ip[7]) & 0x3FFF))
			return 0;                          /* not IPv4, or a fragment */
		u32 total = (u32)(ip[2] << 8 | ip[3]);
		if (total < ihl || at + total > len)
			return 0;
		*proto = ip[9];
		*l4 = at + ihl;
		*l4_len = total - ihl;
		*sum = sum16(ip + 12, 8, *proto + *l4_len);    /* addresses, protocol, length */
		return 1;
	}
	if (type != 0x86DD || at + 40 > len || (ip[0] >> 4) != 6)
		return 0;
	u32 end = at + 40 + (u32)(ip[4] << 8 | ip[5]);
	if (end > len)
		return 0;
	*proto = ip[6];
	*l4 = at + 40;
	while (*proto == 0 || *proto == 43 || *proto == 60 || *proto == 51) {   /* hop, routing, dest, AH */
		if (*l4 + 8 > end)
			return 0;
		u32 ext = *proto == 51 ? (f[*l4 + 1] + 2u) * 4 : (f[*l4 + 1] + 1u) * 8;
		*proto = f[*l4];
		*l4 += ext;
	}
	if (*l4 > end)
		return 0;
	*l4_len = end - *l4;
	*sum = sum16(ip + 8, 32, *proto + *l4_len);
	return 1;
}

/* fold16 -- the Internet checksum of an unfolded sum */
static u16 fold16(u64 sum)
{
	while (sum >> 16)
		sum = (sum & 0xFFFF) + (sum >> 16);
	return (u16)~sum;
}

/* complete_checksum -- finish the TCP/UDP checksum of a frame whose sender left it partial
 *  IN:  f = frame (Ethernet header included, VLAN tags allowed), len
 * OUT:  nothing; the checksum field is rewritten over the whole segment (pseudo header
 *       included).  A frame that is not unfragmented TCP/UDP over IPv4/IPv6, or whose headers
 *       do not fit in len, is left as it is. */
static void complete_checksum(u8 *f, u32 len)
{
	u32 ip, l4, l4_len;
	u8 proto;
	u64 sum;
	if (!l4_of(f, len, &ip, &l4, &l4_len, &proto, &sum))
		return;
	u32 field = proto == 6 ? 16 : proto == 17 ? 6 : 0;
	if (field == 0 || l4_len < (proto == 6 ? 20u : 8u))
		return;
	f[l4 + field] = f[l4 + field + 1] = 0;
	u16 check = fold16(sum16(f + l4, l4_len, sum));
	if (check == 0 && proto == 17)
		check = 0xFFFF;                        /* UDP: 0 means "no checksum" */
	f[l4 + field] = (u8)(check >> 8);
	f[l4 + field + 1] = (u8)check;
}

/* gso_start -- begin cutting the large frame in p->gso (len bytes) into frames
 *  IN:  p, len
 * OUT:  1 if it is TCP over IPv4/IPv6 and cutting began; 0 otherwise (drop it) */
static int gso_start(struct packet_nic *p, u32 len)
{
	u32 ip, l4, l4_len;
	u8 proto;
	u64 sum;
	if (!l4_of(p->gso, len, &ip, &l4, &l4_len, &proto, &sum) || proto != 6 || l4_len < 20)
		return 0;
	u32 tcp_header = (p->gso[l4 + 12] >> 4) * 4u;
	if (tcp_header < 20 || tcp_header > l4_len || l4 + tcp_header - ip >= SEGMENT_MTU)
		return 0;
	p->gso_ip = ip;
	p->gso_l4 = l4;
	p->gso_header = l4 + tcp_header;
	p->gso_mss = SEGMENT_MTU - (p->gso_header - ip);
	p->gso_done = p->gso_count = 0;
	if (l4_len == tcp_header)
		return 0;                              /* no payload: nothing to cut */
	atomic_store_explicit(&p->gso_left, l4_len - tcp_header, memory_order_relaxed);
	p->gso_always = TP_STATUS_USER;
	atomic_store_explicit(&p->nic.rx_hint, &p->gso_always, memory_order_relaxed);
	return 1;
}

/* gso_next -- the next frame cut from p->gso into buf (rx lock held, gso_left > 0)
 *  IN:  p, buf, cap
 * OUT:  its length (0 and the rest dropped, counted, if buf is too small) */
static u32 gso_next(struct packet_nic *p, u8 *buf, u32 cap)
{
	u32 left = atomic_load_explicit(&p->gso_left, memory_order_relaxed);
	u32 chunk = left < p->gso_mss ? left : p->gso_mss, len = p->gso_header + chunk;
	int last = chunk == left;
	if (len > cap) {
		atomic_fetch_add_explicit(&p->nic.stats.rx_dropped, 1, memory_order_relaxed);
		chunk = left;
		last = 1;
		len = 0;
	} else {
		u32 ip = p->gso_ip;
		u8 *h = buf + ip, *tcp = buf + p->gso_l4;
		memcpy(buf, p->gso, p->gso_header);
		memcpy(buf + p->gso_header, p->gso + p->gso_header + p->gso_done, chunk);
		if ((h[0] >> 4) == 4) {
			u32 total = len - ip, id = ((u32)(h[4] << 8 | h[5]) + p->gso_count) & 0xFFFF;
			h[2] = (u8)(total >> 8); h[3] = (u8)total;
			h[4] = (u8)(id >> 8); h[5] = (u8)id;
			h[10] = h[11] = 0;
			u16 check = fold16(sum16(h, (h[0] & 0x0F) * 4u, 0));
			h[10] = (u8)(check >> 8); h[11] = (u8)check;
		} else {
			u32 payload = len - ip - 40;
			h[4] = (u8)(payload >> 8); h[5] = (u8)payload;
		}
		u32 seq = ((u32)tcp[4] << 24 | (u32)tcp[5] << 16 | (u32)tcp[6] << 8 | tcp[7]) + p->gso_done;
		tcp[4] = (u8)(seq >> 24); tcp[5] = (u8)(seq >> 16); tcp[6] = (u8)(seq >> 8); tcp[7] = (u8)seq;
		if (!last)
			tcp[13] &= (u8)~0x09;                  /* FIN, PSH: the last frame's */
		if (p->gso_count > 0)
			tcp[13] &= (u8)~0x80;                  /* CWR: the first frame's */
		complete_checksum(buf, len);
	}
	p->gso_done += chunk;
	p->gso_count++;
	atomic_store_explicit(&p->gso_left, left - chunk, memory_order_relaxed);
	if (last)
		atomic_store_explicit(&p->nic.rx_hint, &rx_slot(p, p->rx_next)->tp_status, memory_order_relaxed);
	return len;
}

/* packet_rx -- copy the next received frame into buf
 *  IN:  nic, buf, cap
 * OUT:  its length, 0 if none (the common case: one load, no lock) */
static u32 packet_rx(struct bm_nic *nic, u8 *buf, u32 cap)
{
	struct packet_nic *p = (struct packet_nic *)nic;
	if (__builtin_expect(!(status_of(rx_slot(p, p->rx_next)) & TP_STATUS_USER), 1) &&
	    __builtin_expect(!atomic_load_explicit(&p->gso_left, memory_order_relaxed), 1))
		return 0;
	u32 len = 0;
	bm_nic_lock(&nic->rx_lock, 0);
	if (atomic_load_explicit(&p->gso_left, memory_order_relaxed)) {
		len = gso_next(p, buf, cap);           /* the next frame of a large segment */
		bm_nic_unlock(&nic->rx_lock);
		return len;
	}
	for (;;) {
		struct tpacket2_hdr *h = rx_slot(p, p->rx_next);
		u32 status = status_of(h);
		if (!(status & TP_STATUS_USER))
			break;                     /* another core took it */
		const struct sockaddr_ll *sll = (const void *)((u8 *)h + TPACKET_ALIGN(sizeof *h));
		const u8 *frame = (const u8 *)h + h->tp_mac;
		u32 snap = h->tp_snaplen, vlan = (status & TP_STATUS_VLAN_VALID) ? 4 : 0;
		int mine = sll->sll_pkttype != PACKET_OUTGOING;
		if (status & TP_STATUS_COPY) {         /* longer than a slot: whole on the socket queue */
			ssize_t whole = recv(nic->fd, p->gso, GSO_MAX, MSG_DONTWAIT | MSG_TRUNC);
			set_status(h, TP_STATUS_KERNEL);
			p->rx_next = (p->rx_next + 1) % RX_SLOTS;
			atomic_store_explicit(&nic->rx_hint, &rx_slot(p, p->rx_next)->tp_status, memory_order_relaxed);
			if (!mine)
				continue;
			if (!vlan && whole > 0 && whole <= (ssize_t)GSO_MAX && gso_start(p, (u32)whole)) {
				len = gso_next(p, buf, cap);
				if (len)
					break;
				continue;
			}
			atomic_fetch_add_explicit(&nic->stats.rx_dropped, 1, memory_order_relaxed);
			continue;
		}
		if (mine && (snap < h->tp_len || snap + vlan > cap || snap < 12)) {
			atomic_fetch_add_explicit(&nic->stats.rx_dropped, 1, memory_order_relaxed);
			mine = 0;
		}
		if (mine) {
			if (vlan) {
				u16 tpid = (status & TP_STATUS_VLAN_TPID_VALID) ? h->tp_vlan_tpid : ETH_P_8021Q;
				memcpy(buf, frame, 12);
				buf[12] = (u8)(tpid >> 8);
				buf[13] = (u8)tpid;
				buf[14] = (u8)(h->tp_vlan_tci >> 8);
				buf[15] = (u8)h->tp_vlan_tci;
				memcpy(buf + 16, frame + 12, snap - 12);
			} else {
				memcpy(buf, frame, snap);
			}
			len = snap + vlan;
			if (status & TP_STATUS_CSUMNOTREADY)
				complete_checksum(buf, len);
		}
		set_status(h, TP_STATUS_KERNEL);
		p->rx_next = (p->rx_next + 1) % RX_SLOTS;
		atomic_store_explicit(&nic->rx_hint, &rx_slot(p, p->rx_next)->tp_status, memory_order_relaxed);
		if (mine)
			break;
	}
	bm_nic_unlock(&nic->rx_lock);
	return len;
}

/* packet_pending -- 1 if a frame waits in the RX ring */
static int packet_pending(struct bm_nic *nic)
{
	struct packet_nic *p = (struct packet_nic *)nic;
	return (status_of(rx_slot(p, p->rx_next)) & TP_STATUS_USER) != 0 || atomic_load(&p->gso_left) != 0;
}

/* packet_send -- send one frame with send() (the front end holds the tx lock)
 *  IN:  nic, frame, len (14..1522)
 * OUT:  0 sent, -1 dropped with the reason recorded */
static int packet_send(struct bm_nic *nic, const void *frame, u32 len)
{
	u64 deadline = 0;
	int r;
	while ((r = bm_nic_tx_retry(send(nic->fd, frame, len, MSG_DONTWAIT), len, &deadline, nic->fd,
				    "packet: send")) == 1)
		;
	return r;
}

/* packet_tx -- send one frame through the TX ring (the front end holds the tx lock)
 *  IN:  nic, frame, len (14..1522)
 * OUT:  0 sent, -1 dropped with the reason recorded */
static int packet_tx(struct bm_nic *nic, const void *frame, u32 len)
{
	struct packet_nic *p = (struct packet_nic *)nic;
	struct tpacket2_hdr *h = (struct tpacket2_hdr *)(p->tx_ring + (size_t)p->tx_next * SLOT_SIZE);
	u64 deadline = 0;
	for (;;) {
		u32 status = status_of(h);
		if (status == TP_STATUS_AVAILABLE || (status & TP_STATUS_WRONG_FORMAT))
			break;
		if (send(nic->fd, NULL, 0, MSG_DONTWAIT) < 0 && errno != EAGAIN && errno != ENOBUFS)
			set_status(h, TP_STATUS_AVAILABLE);  /* the device is gone: the old frame too */
		if (bm_nic_tx_gave_up(&deadline, "packet: the TX ring stayed full"))
			return -1;
		sched_yield();
	}
	memcpy((u8 *)h + TX_DATA, frame, len);
	h->tp_len = len;
	set_status(h, TP_STATUS_SEND_REQUEST);
	p->tx_next = (p->tx_next + 1) % TX_SLOTS;
	if (send(nic->fd, NULL, 0, MSG_DONTWAIT) >= 0)
		return 0;
	int e = errno;
	if (e == EAGAIN)
		return 0;                          /* queued in the ring: the next kick sends it */
	set_status(h, TP_STATUS_AVAILABLE);
	bm_fail(e == ENOBUFS ? BM_ERR_FULL : BM_ERR_IO, "packet: send: %s", strerror(e));
	return -1;
}

/* packet_event_fd -- the socket: readable when a frame lands in the ring */
static int packet_event_fd(struct bm_nic *nic, int arm) { (void)arm; return nic->fd; }

/* packet_host_drops -- frames the kernel dropped for lack of ring room since the last call */
static u64 packet_host_drops(struct bm_nic *nic)
{
	struct tpacket_stats st;
	socklen_t n = sizeof st;
	if (getsockopt(nic->fd, SOL_PACKET, PACKET_STATISTICS, &st, &n) != 0)
		return 0;
	return st.tp_drops;
}

/* packet_close -- unmap the rings, close the socket, free */
static void packet_close(struct bm_nic *nic)
{
	struct packet_nic *p = (struct packet_nic *)nic;
	if (p->map != NULL && p->map != MAP_FAILED)
		munmap(p->map, p->map_size);
	if (nic->fd >= 0)
		close(nic->fd);
	free(p->gso);
	free(p);
}

static const struct bm_nic_ops packet_ops = {
	.kind = "packet", .tx = packet_send, .rx = packet_rx, .pending = packet_pending,
	.event_fd = packet_event_fd, .host_drops = packet_host_drops, .close = packet_close,
};

static const struct bm_nic_ops packet_ring_ops = {
	.kind = "packet", .tx = packet_tx, .rx = packet_rx, .pending = packet_pending,
	.event_fd = packet_event_fd, .host_drops = packet_host_drops, .close = packet_close,
};

/* bm_net_packet_open -- a NIC over an AF_PACKET socket: rings set up, then bound to ifindex
 * (binding last means no frame lands in the socket's ordinary queue before the ring exists)
 *  IN:  fd = an unbound AF_PACKET SOCK_RAW socket (owned from now on, closed on failure too),
 *       ifindex = the interface, mac = 48-bit, tx_ring = 1 to transmit through a TX ring
 * OUT:  the NIC, or NULL with BM_ERR_IO (errno's text) / BM_ERR_FULL recorded */
struct bm_nic *bm_net_packet_open(int fd, int ifindex, u64 mac, int tx_ring)
{
	bm_error_clear();
	struct packet_nic *p = bm_nic_alloc(sizeof *p);
	if (p == NULL) {
		close(fd);
		return (void *)bm_fail(BM_ERR_FULL, "out of host memory");
	}
	bm_nic_init(&p->nic, tx_ring ? &packet_ring_ops : &packet_ops, fd, mac);
	int version = TPACKET_V2, one = 1, room = 4 << 20;
	struct tpacket_req rx = { BLOCK_SIZE, RX_SLOTS * SLOT_SIZE / BLOCK_SIZE, SLOT_SIZE, RX_SLOTS };
	struct tpacket_req tx = { BLOCK_SIZE, TX_SLOTS * SLOT_SIZE / BLOCK_SIZE, SLOT_SIZE, TX_SLOTS };
	const char *step = "PACKET_VERSION";
	if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &version, sizeof version) != 0)
		goto fail;
	/* optional: the kernel may not have them; outgoing frames are then skipped by hand */
	setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
	if (tx_ring)
		setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
	/* frames longer than a slot (TCP segmentation offload) also go whole to the socket queue,
	 * which needs room for a few of 64 KiB (SO_RCVBUFFORCE as root, else up to rmem_max) */
	step = "PACKET_COPY_THRESH";
	if (setsockopt(fd, SOL_PACKET, PACKET_COPY_THRESH, &one, sizeof one) != 0)
		goto fail;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &room, sizeof room) != 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &room, sizeof room);
	step = "malloc";
	if ((p->gso = malloc(GSO_MAX)) == NULL)
		goto fail;
	step = "PACKET_RX_RING";
	if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &rx, sizeof rx) != 0)
		goto fail;
	step = "PACKET_TX_RING";
	if (tx_ring && setsockopt(fd, SOL_PACKET, PACKET_TX_RING, &tx, sizeof tx) != 0)
		goto fail;
	step = "mmap";
	p->map_size = (size_t)(RX_SLOTS + (tx_ring ? TX_SLOTS : 0)) * SLOT_SIZE;
	p->map = mmap(NULL, p->map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (p->map == MAP_FAILED)
		goto fail;
	p->rx_ring = p->map;
	p->tx_ring = p->map + (size_t)RX_SLOTS * SLOT_SIZE;
	step = "bind";
	struct sockaddr_ll where = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL),
				     .sll_ifindex = ifindex };
	if (bind(fd, (struct sockaddr *)&where, sizeof where) != 0)
		goto fail;
	packet_host_drops(&p->nic);            /* start the drop count from now */
	p->nic.rx_hint_mask = TP_STATUS_USER;
	atomic_store(&p->nic.rx_hint, &rx_slot(p, 0)->tp_status);
	return &p->nic;
fail:;
	int e = errno;
	packet_close(&p->nic);
	return (void *)bm_fail(BM_ERR_IO, "packet: %s: %s", step, strerror(e));
}

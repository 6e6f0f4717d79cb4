/* net.h -- NICs: the table of backends b_net_tx/b_net_rx talk to.
 *
 * A NIC is a `struct bm_nic`: a table of operations (struct bm_nic_ops), the fd the backend
 * uses, its MAC and counters.  A backend (net_tap.c, net_packet.c, net_wire.c) embeds it as the
 * first member of its own struct.  The front end (net.c) only talks to the table.
 *
 * Receive buffers live in the system area, as upstream's do (network buffers at 0x1A0000):
 * NIC iid's buffer is BM_NET_BUFFERS + iid * BM_NET_BUFFER_SIZE (16 KiB each, 16 NICs:
 * 0x1A0000..0x1E0000).  b_net_rx copies the next frame there and returns its address.
 */
#ifndef BM_NET_H
#define BM_NET_H

#include "base.h"
#include <sys/types.h>

#define BM_MAX_NICS             16
#define BM_NET_BUFFERS          0x1A0000ull
#define BM_NET_BUFFER_SIZE      0x4000ull
#define BM_NET_FAILED           (~0ull)  /* bm_net_rx_face: an error was recorded */
#define BM_FRAME_MIN            14
#define BM_FRAME_MAX            1522
/* how long b_net_tx waits for room in a full TX ring/queue before it drops the frame */
#define BM_NET_TX_WAIT_NS       50000000ull

struct bm_nic;

struct bm_nic_ops {
	const char *kind;
	/* send one frame (length already checked); 0 sent, -1 dropped with the error recorded */
	int (*tx)(struct bm_nic *nic, const void *frame, u32 len);
	/* copy the next frame into buf (cap bytes); its length, 0 if none (never blocks) */
	u32 (*rx)(struct bm_nic *nic, u8 *buf, u32 cap);
	/* 1 if rx would return a frame now */
	int (*pending)(struct bm_nic *nic);
	/* fd that becomes readable (edge) when a frame arrives; arm = 1 while callbacks want it */
	int (*event_fd)(struct bm_nic *nic, int arm);
	/* frames the host dropped since the last call (kernel ring overruns), or 0 */
	u64 (*host_drops)(struct bm_nic *nic);
	/* release everything the backend holds (fd, rings, memory) and free the nic */
	void (*close)(struct bm_nic *nic);
};

/* Packet and byte counters, one set per core: a core adds to its own set with a plain load and
 * store (no locked instruction on the per-frame path, as Linux's per-CPU NIC counters); reading
 * sums the sets.  The callback service thread has a set of its own (BM_NIC_SERVICE_SLOT);
 * threads that are not cores (a Python harness on a wire end) add atomically to a shared set.
 * Two host threads acting as the same core at once could lose a count. */
struct bm_nic_counts {
	_Atomic u64 rx_packets __attribute__((aligned(BM_CACHE_LINE)));   /* a line per set */
	_Atomic u64 rx_bytes, tx_packets, tx_bytes;
};
#define BM_NIC_SERVICE_SLOT BM_MAX_CORES
#define BM_NIC_SHARED_SLOT  (BM_MAX_CORES + 1)

struct bm_nic_stats {
	_Atomic u64 rx_dropped, tx_dropped;
	struct bm_nic_counts counts[BM_MAX_CORES + 2];
};

struct bm_nic {
	const struct bm_nic_ops *ops;
	u64 mac;                        /* 48-bit, first byte most significant */
	int fd;                         /* the backend's fd, -1 if none */
	/* optional fast empty check: when rx_hint is set and (*rx_hint & rx_hint_mask) == 0 there
	 * is no frame, and b_net_rx returns 0 without calling the backend (packet: the next RX
	 * slot's status word).  A stale hint only costs one extra call to rx. */
	_Atomic(volatile u32 *) rx_hint;
	u32 rx_hint_mask;
	_Atomic int rx_lock;            /* taken only when a frame is there */
	_Atomic int tx_lock;            /* b_net_tx is safe from several cores */
	struct bm_pcap *pcap;           /* capture file (net_pcap.c), NULL when not capturing */
	struct bm_nic_stats stats;
};

struct bm_net {
	struct bm_nic *nics[BM_MAX_NICS];
	_Atomic u32 num_nics;
	pthread_mutex_t lock;           /* adding and closing NICs (zeroed = initialised, glibc) */
	_Atomic u64 bad_iid_drops;      /* frames b_net_tx refused: no such interface */
	u32 num_closed;                 /* NICs closed on halt; their counters are kept below */
	u64 closed_stats[BM_MAX_NICS][6];
};

u64 bm_net_status(struct bm_machine *m, u64 iid);           /* MAC as a 48-bit number, 0 if absent */
u64 bm_net_config(struct bm_machine *m, u64 base, u64 iid);
void bm_net_close_all(struct bm_machine *m);

/* net.c: the table, for the backends and the Python face */
void *bm_nic_alloc(size_t size);
int bm_nic_tx_gave_up(u64 *deadline, const char *what);
int bm_nic_tx_retry(ssize_t done, u32 len, u64 *deadline, int fd, const char *what);
void bm_nic_init(struct bm_nic *nic, const struct bm_nic_ops *ops, int fd, u64 mac);
int bm_net_add(struct bm_machine *m, struct bm_nic *nic);
u64 bm_net_rx_face(void **mem, u64 iid);
int bm_net_tx_face(void *mem, u64 len, u64 iid);
struct bm_nic *bm_net_nic(struct bm_machine *m, u32 iid);
void bm_nic_close(struct bm_nic *nic);
int bm_nic_send(struct bm_nic *nic, const void *frame, u64 len);
u64 bm_nic_recv(struct bm_nic *nic, void *buf, u64 cap);
void bm_nic_stats(struct bm_nic *nic, u64 *out);
int bm_net_stats(struct bm_machine *m, u32 iid, u64 *out);
u64 bm_nic_mac(struct bm_nic *nic);
u64 bm_net_bad_iid_drops(struct bm_machine *m);
const char *bm_nic_kind(struct bm_nic *nic);

/* net_pcap.c: packet capture (set before the NIC is added; closed with it) */
struct bm_pcap;
struct bm_pcap *bm_pcap_open(int fd);
void bm_pcap_frame(struct bm_pcap *p, const void *frame, u32 len);
void bm_pcap_flush(struct bm_pcap *p);
void bm_pcap_close(struct bm_pcap *p);
int bm_nic_capture(struct bm_nic *nic, int fd);
void bm_nic_capture_flush(struct bm_nic *nic);

/* the backends */
struct bm_nic *bm_net_tap_open(int fd, u64 mac);
struct bm_nic *bm_net_packet_open(int fd, int ifindex, u64 mac, int tx_ring);
int bm_net_wire_new(u64 mac_a, u64 mac_b, int loopback, struct bm_nic **a, struct bm_nic **b);
enum { BM_SOCKET_CONNECTED = 0, BM_SOCKET_LISTEN = 1, BM_SOCKET_HUB = 2 };   /* net_socket.c */
struct bm_nic *bm_net_socket_open(int rx_fd, int tx_fd, int mode, u64 mac);

#endif

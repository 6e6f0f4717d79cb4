/* net_pcap.c -- packet capture: every frame a NIC sends or receives, into a pcap file.
 *
 * The file is the classic libpcap format (what `tcpdump -r` and Wireshark read): a 24-byte
 * header (magic 0xa1b23c4d: nanosecond timestamps; link type 1, Ethernet; snap length 65535),
 * then per frame a 16-byte record header (seconds, nanoseconds of CLOCK_REALTIME, captured
 * length, length) and the frame's bytes, whole.  Host byte order, as libpcap writes it.
 *
 * The front end (net.c) calls bm_pcap_frame after a frame was sent or received -- only when
 * nic->pcap is set, so a NIC without capture pays one NULL check per frame and nothing on an
 * empty poll.  Records go into a 256 KiB buffer under a spin lock (cores and the service
 * thread may capture at once) and reach the file when the buffer is full, when 100 ms have
 * passed since the last write, and on close (halt).  A failed write stops the capture (the
 * machine goes on) and is reported on stderr once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "machine.h"

#define PCAP_BUFFER      (256u << 10)
#define PCAP_FLUSH_NS    100000000ull
#define PCAP_MAGIC_NS    0xa1b23c4du
#define PCAP_LINK_ETHERNET 1u

struct bm_pcap {
	int fd;
	_Atomic int lock;
	int failed;                     /* a write failed: capture stopped */
	u32 used;                       /* bytes waiting in buf */
	u64 last_write_ns;              /* CLOCK_REALTIME of the last write */
	u8 buf[PCAP_BUFFER];
};

/* realtime_ns -- CLOCK_REALTIME in nanoseconds (one clock read: ~100 ns on some VMs) */
static u64 realtime_ns(void)
{
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	return (u64)now.tv_sec * 1000000000ull + (u64)now.tv_nsec;
}

/* write_out -- write the buffered records to the file (lock held)
 *  IN:  p, now_ns = CLOCK_REALTIME now
 * OUT:  nothing; a failure stops the capture and is reported once */
static void write_out(struct bm_pcap *p, u64 now_ns)
{
	u32 done = 0;
	while (done < p->used && !p->failed) {
		ssize_t n = write(p->fd, p->buf + done, p->used - done);
		if (n > 0)
			done += (u32)n;
		else if (n < 0 && errno == EINTR)
			continue;
		else {
			p->failed = 1;
			fprintf(stderr, "pybaremetal: pcap: capture stopped: %s\n", n < 0 ? strerror(errno) : "short write");
		}
	}
	p->used = 0;
	p->last_write_ns = now_ns;
}

/* bm_pcap_open -- start a capture file: writes the pcap header
 *  IN:  fd = a file open for writing, empty (owned from now on, closed on failure too)
 * OUT:  the capture, or NULL with BM_ERR_IO / BM_ERR_FULL recorded */
struct bm_pcap *bm_pcap_open(int fd)
{
	bm_error_clear();
	struct bm_pcap *p = calloc(1, sizeof *p);
	if (p == NULL) {
		close(fd);
		return (void *)bm_fail(BM_ERR_FULL, "pcap: out of host memory");
	}
	p->fd = fd;
	u32 header[6] = { PCAP_MAGIC_NS, 2u | (4u << 16), 0, 0, 65535, PCAP_LINK_ETHERNET };
	memcpy(p->buf, header, sizeof header);     /* version 2.4, zone 0, sigfigs 0 */
	p->used = sizeof header;
	write_out(p, realtime_ns());
	if (p->failed) {
		int e = errno;
		close(fd);
		free(p);
		return (void *)bm_fail(BM_ERR_IO, "pcap: cannot write the file: %s", strerror(e));
	}
	return p;
}

/* bm_pcap_frame -- record one frame
 *  IN:  p, frame, len (14..1522 from the front end; any length is recorded whole) */
void bm_pcap_frame(struct bm_pcap *p, const void *frame, u32 len)
{
	u64 now = realtime_ns();                   /* the one clock read of a record */
	u32 record[4] = { (u32)(now / 1000000000ull), (u32)(now % 1000000000ull), len, len };
	u32 size = sizeof record + len;
	if (size > PCAP_BUFFER)
		return;
	bm_nic_lock(&p->lock, 0);
	if (!p->failed) {
		if (p->used + size > PCAP_BUFFER)
			write_out(p, now);
		memcpy(p->buf + p->used, record, sizeof record);
		memcpy(p->buf + p->used + sizeof record, frame, len);
		p->used += size;
		if (now - p->last_write_ns > PCAP_FLUSH_NS)    /* a clock set back: once */
			write_out(p, now);
	}
	bm_nic_unlock(&p->lock);
}

/* bm_pcap_flush -- write what is buffered now (the file then holds every frame so far) */
void bm_pcap_flush(struct bm_pcap *p)
{
	bm_nic_lock(&p->lock, 0);
	write_out(p, realtime_ns());
	bm_nic_unlock(&p->lock);
}

/* bm_pcap_close -- write what is buffered, close the file, free (NULL: nothing) */
void bm_pcap_close(struct bm_pcap *p)
{
	if (p == NULL)
		return;
	bm_pcap_flush(p);
	close(p->fd);
	free(p);
}

/* bm_nic_capture -- capture a NIC's frames into a pcap file, before it is given to a machine
 *  IN:  nic (not yet added: no frame flows), fd = an empty file open for writing (owned from
 *       now on, closed on failure too)
 * OUT:  0, or -1 with the error recorded (BM_ERR_STATE: it already captures) */
int bm_nic_capture(struct bm_nic *nic, int fd)
{
	if (nic->pcap != NULL) {
		close(fd);
		bm_fail(BM_ERR_STATE, "pcap: this NIC already captures");
		return -1;
	}
	nic->pcap = bm_pcap_open(fd);
	return nic->pcap != NULL ? 0 : -1;
}

/* bm_nic_capture_flush -- write a NIC's buffered capture to its file now (no capture: nothing) */
void bm_nic_capture_flush(struct bm_nic *nic)
{
	if (nic->pcap != NULL)
		bm_pcap_flush(nic->pcap);
}

/* net_tap.c -- the `tap` backend: frames go straight through a TAP device's fd.
 *
 * Python opens the device (IFF_TAP | IFF_NO_PI, non-blocking) and hands the fd over; this
 * file owns it from then on.  One read() is one frame, one write() is one frame.  An empty
 * poll is a read() that fails with EAGAIN (a system call: TAP has no shared ring).  When the
 * device is deleted under us, read/write fail (EBADFD, EIO...): the call records BM_ERR_IO.
 * A write that finds the device's queue full (EAGAIN) waits up to BM_NET_TX_WAIT_NS for room.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "machine.h"

/* tap_tx -- write one frame to the device
 *  IN:  nic, frame, len
 * OUT:  0 sent, -1 dropped with the reason recorded */
static int tap_tx(struct bm_nic *nic, const void *frame, u32 len)
{
	u64 deadline = 0;
	int r;
	while ((r = bm_nic_tx_retry(write(nic->fd, frame, len), len, &deadline, nic->fd, "tap: write")) == 1)
		;
	return r;
}

/* tap_rx -- read the next frame into buf
 *  IN:  nic, buf, cap
 * OUT:  its length; 0 if none, or with BM_ERR_IO recorded when the device is gone */
static u32 tap_rx(struct bm_nic *nic, u8 *buf, u32 cap)
{
	for (;;) {
		ssize_t got = read(nic->fd, buf, cap);
		if (got > 0)
			return (u32)got;
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0 && errno != EAGAIN)
			bm_fail(BM_ERR_IO, "tap: read: %s", strerror(errno));
		return 0;
	}
}

/* tap_pending -- 1 if a frame is waiting */
static int tap_pending(struct bm_nic *nic)
{
	struct pollfd p = { .fd = nic->fd, .events = POLLIN };
	return poll(&p, 1, 0) > 0 && (p.revents & POLLIN);
}

/* tap_event_fd -- the device fd: readable when a frame arrives */
static int tap_event_fd(struct bm_nic *nic, int arm) { (void)arm; return nic->fd; }

/* tap_close -- close the fd (a device we did not make persistent goes away with it) */
static void tap_close(struct bm_nic *nic)
{
	if (nic->fd >= 0)
		close(nic->fd);
	free(nic);
}

static const struct bm_nic_ops tap_ops = {
	.kind = "tap", .tx = tap_tx, .rx = tap_rx, .pending = tap_pending,
	.event_fd = tap_event_fd, .host_drops = NULL, .close = tap_close,
};

/* bm_net_tap_open -- a NIC over an open TAP fd
 *  IN:  fd (IFF_TAP | IFF_NO_PI, non-blocking; owned from now on, closed on failure too), mac
 * OUT:  the NIC, or NULL with BM_ERR_FULL recorded */
struct bm_nic *bm_net_tap_open(int fd, u64 mac)
{
	bm_error_clear();
	struct bm_nic *nic = bm_nic_alloc(sizeof *nic);
	if (nic == NULL) {
		close(fd);
		return (void *)bm_fail(BM_ERR_FULL, "out of host memory");
	}
	bm_nic_init(nic, &tap_ops, fd, mac);
	return nic;
}

/* nvs_file.c -- the drive backend for regular files (disk images) and block devices.
 *
 * A buffered drive, or a direct one that does not poll (poll_us 0), makes one positional system
 * call per transfer (pread/pwrite at the request's offset), retried on EINTR and short
 * transfers.  A large transfer (>= 1 MiB) on an O_DIRECT drive with a queue
 * depth above 1 is split into up to `queue_depth` pieces kept in flight together with Linux
 * AIO (io_submit), so that one b_nvs_read keeps the device's queue full the way fio's
 * iodepth does; a buffered fd gains nothing from it (AIO runs synchronously there) and takes
 * the pread path.  AIO needs no library: the four system calls are made directly.  When AIO
 * is unavailable (io_setup refused), the core's context is marked unusable and pread is used.
 *
 * Polled completion (the drive's poll_ns > 0, the default on O_DIRECT drives): every transfer,
 * small ones too, is submitted with io_submit and the calling core then spins on the AIO
 * context's completion ring, which the kernel maps into the process, instead of sleeping in
 * the kernel until the device interrupts.  That is what upstream's drivers do (the core polls
 * the NVMe/AHCI completion queue), and it saves the wake-up of a sleeping CPU on each request,
 * the larger part of a 4 KiB read's time on a virtual machine.  After poll_ns without a
 * completion the core sleeps in io_getevents after all (a stalled device does not burn a CPU
 * forever).  Events are taken from the ring in user space as libaio does: the kernel publishes
 * `tail` after the event; we advance `head`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/aio_abi.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "machine.h"

#define AIO_MIN_BYTES   (1ull << 20)      /* smaller transfers take one pread/pwrite */
#define AIO_MIN_PIECE   (128ull << 10)
#define AIO_MAX_PIECE   (2ull << 20)
#define AIO_MAX_DEPTH   32
#define AIO_UNUSABLE    (~0ul)
#define AIO_RING_MAGIC  0xa10a10a1u

/* The head of an AIO context's completion ring as the kernel maps it (fs/aio.c). */
struct aio_ring {
	unsigned id, nr, head, tail, magic, compat_features, incompat_features, header_length;
	struct io_event io_events[];
};

/* sync_io -- one positional transfer, retried on EINTR and short transfers
 *  IN:  d, writing, buf, bytes, offset
 * OUT:  bytes moved; fewer with *err set (errno, or EIO when the file ended early) */
static u64 sync_io(struct bm_drive *d, int writing, void *buf, u64 bytes, u64 offset, int *err)
{
	u64 done = 0;
	while (done < bytes) {
		ssize_t n = writing ? pwrite(d->fd, (u8 *)buf + done, bytes - done, (off_t)(offset + done))
				    : pread(d->fd, (u8 *)buf + done, bytes - done, (off_t)(offset + done));
		if (n > 0) {
			done += (u64)n;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else {
			*err = n < 0 ? errno : EIO;
			break;
		}
	}
	return done;
}

/* aio_context -- the scratch's AIO context, created on first use
 *  IN:  s
 * OUT:  the context, or 0 when AIO is unavailable */
static aio_context_t aio_context(struct bm_nvs_scratch *s)
{
	if (s->aio == 0) {
		aio_context_t ctx = 0;
		s->aio = syscall(SYS_io_setup, AIO_MAX_DEPTH, &ctx) == 0 ? (unsigned long)ctx : AIO_UNUSABLE;
	}
	return s->aio == AIO_UNUSABLE ? 0 : (aio_context_t)s->aio;
}

/* bm_nvs_aio_release -- destroy an AIO context a scratch held (0 or unusable: nothing) */
void bm_nvs_aio_release(unsigned long ctx)
{
	if (ctx != 0 && ctx != AIO_UNUSABLE)
		syscall(SYS_io_destroy, (aio_context_t)ctx);
}

/* aio_reap -- completed events of ctx: polled from its ring for up to d's poll_ns (counted in
 * d->polled), then waited for
 *  IN:  d, ctx, events (room for max), max >= 1
 * OUT:  events taken (>= 1), or -1 with errno (EINTR) */
static long aio_reap(struct bm_drive *d, aio_context_t ctx, struct io_event *events, long max)
{
	u64 poll_ns = d->poll_ns;
	struct aio_ring *ring = (struct aio_ring *)(uintptr_t)ctx;
	if (poll_ns > 0 && ring->magic == AIO_RING_MAGIC && ring->incompat_features == 0) {
		u64 deadline = 0;
		for (u32 spins = 1;; spins++) {
			unsigned head = ring->head, tail = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
			if (head != tail) {
				long n = 0;
				for (; head != tail && n < max; head = (head + 1) % ring->nr)
					events[n++] = ring->io_events[head];
				__atomic_store_n(&ring->head, head, __ATOMIC_RELEASE);
				atomic_fetch_add_explicit(&d->polled, (u64)n, memory_order_relaxed);
				return n;
			}
			__builtin_ia32_pause();
			if (spins % 64 == 0) {
				u64 now = bm_now_ns();
				if (deadline == 0)
					deadline = now + poll_ns;
				else if (now >= deadline)
					break;
			}
		}
	}
	return syscall(SYS_io_getevents, ctx, 1L, max, events, NULL);
}

/* aio_transfer -- a transfer through AIO: a large one (>= 1 MiB, queue depth > 1) as pieces kept
 * in flight together, a smaller one as one request; completions polled (aio_reap)
 *  IN:  d, ctx, writing, buf, bytes, offset (multiples of 4096, buf 4096 aligned)
 * OUT:  bytes moved (a prefix with *err set on error); every piece submitted has completed */
static u64 aio_transfer(struct bm_drive *d, aio_context_t ctx, int writing, u8 *buf, u64 bytes,
		       u64 offset, int *err)
{
	u32 depth = d->queue_depth < AIO_MAX_DEPTH ? d->queue_depth : AIO_MAX_DEPTH;
	u64 piece = (bytes / depth + BM_SECTOR_SIZE - 1) & ~(BM_SECTOR_SIZE - 1);
	piece = piece < AIO_MIN_PIECE ? AIO_MIN_PIECE : piece > AIO_MAX_PIECE ? AIO_MAX_PIECE : piece;
	if (depth == 1 || bytes < AIO_MIN_BYTES)
		piece = bytes, depth = 1;
	struct iocb cbs[AIO_MAX_DEPTH], *ptrs[AIO_MAX_DEPTH];
	struct io_event events[AIO_MAX_DEPTH];
	u32 free_slots[AIO_MAX_DEPTH], nfree = depth, inflight = 0;
	u64 next = 0, failed_at = bytes;
	for (u32 i = 0; i < depth; i++)
		free_slots[i] = i;
	for (;;) {
		/* fill the queue while no piece has failed */
		u32 batch = 0;
		while (nfree > 0 && next < bytes && failed_at == bytes) {
			struct iocb *cb = &cbs[free_slots[--nfree]];
			u64 len = bytes - next < piece ? bytes - next : piece;
			memset(cb, 0, sizeof *cb);
			cb->aio_lio_opcode = writing ? IOCB_CMD_PWRITE : IOCB_CMD_PREAD;
			cb->aio_fildes = (u32)d->fd;
			cb->aio_buf = (u64)(uintptr_t)(buf + next);
			cb->aio_nbytes = len;
			cb->aio_offset = (int64_t)(offset + next);
			cb->aio_data = next;
			ptrs[batch++] = cb;
			next += len;
		}
		for (u32 sent = 0; sent < batch;) {
			long n = syscall(SYS_io_submit, ctx, (long)(batch - sent), ptrs + sent);
			if (n > 0) {
				sent += (u32)n;
				inflight += (u32)n;
				continue;
			}
			if (n < 0 && errno == EINTR)
				continue;
			/* the rest were not accepted: move them one at a time, synchronously */
			for (; sent < batch; sent++) {
				struct iocb *cb = ptrs[sent];
				u64 got = sync_io(d, writing, (void *)(uintptr_t)cb->aio_buf, cb->aio_nbytes,
						  (u64)cb->aio_offset, err);
				if (got < cb->aio_nbytes && cb->aio_data + got < failed_at)
					failed_at = cb->aio_data + got;
				free_slots[nfree++] = (u32)(cb - cbs);
			}
		}
		if (inflight == 0)
			break;
		long got = aio_reap(d, ctx, events, (long)inflight);
		if (got < 0)
			continue;          /* EINTR (nothing else happens with a valid context): wait again */
		for (long i = 0; i < got; i++) {
			struct iocb *cb = (struct iocb *)(uintptr_t)events[i].obj;
			int64_t res = events[i].res;
			u64 moved = res > 0 ? (u64)res : 0;
			if (res >= 0 && moved < cb->aio_nbytes) {
				/* short: finish the piece synchronously */
				int e = 0;
				moved += sync_io(d, writing, (u8 *)(uintptr_t)cb->aio_buf + moved,
						 cb->aio_nbytes - moved, (u64)cb->aio_offset + moved, &e);
				if (e != 0)
					*err = e;
			} else if (res < 0) {
				*err = (int)-res;
			}
			if (moved < cb->aio_nbytes && cb->aio_data + moved < failed_at)
				failed_at = cb->aio_data + moved;
			free_slots[nfree++] = (u32)(cb - cbs);
			inflight--;
		}
	}
	return failed_at;
}

/* file_io -- a backend transfer: through AIO on a direct drive that polls completions or for a
 * large transfer with queue depth > 1; else one pread/pwrite */
static u64 file_io(struct bm_drive *d, struct bm_nvs_scratch *s, int writing, void *buf, u64 bytes,
		   u64 offset, int *err)
{
	aio_context_t ctx;
	if (d->direct && (d->poll_ns > 0 || (d->queue_depth > 1 && bytes >= AIO_MIN_BYTES))
	    && (ctx = aio_context(s)) != 0)
		return aio_transfer(d, ctx, writing, buf, bytes, offset, err);
	return sync_io(d, writing, buf, bytes, offset, err);
}

/* file_read / file_write -- the table's read and write (see struct bm_drive_ops) */
static u64 file_read(struct bm_drive *d, struct bm_nvs_scratch *s, void *buf, u64 bytes, u64 offset, int *err)
{
	return file_io(d, s, 0, buf, bytes, offset, err);
}

static u64 file_write(struct bm_drive *d, struct bm_nvs_scratch *s, const void *buf, u64 bytes,
		      u64 offset, int *err)
{
	return file_io(d, s, 1, (void *)buf, bytes, offset, err);
}

/* file_flush -- fdatasync, retried on EINTR; async-signal-safe
 *  OUT: 0, or the errno value */
static int file_flush(struct bm_drive *d)
{
	while (fdatasync(d->fd) != 0)
		if (errno != EINTR)
			return errno;
	return 0;
}

/* file_close -- close the fd */
static void file_close(struct bm_drive *d)
{
	close(d->fd);
	d->fd = -1;
}

const struct bm_drive_ops bm_nvs_file_ops = {
	.kind = "file",
	.read = file_read,
	.write = file_write,
	.flush = file_flush,
	.close = file_close,
};

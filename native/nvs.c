/* nvs.c -- b_nvs_read / b_nvs_write over the machine's drive table.
 *
 * The front end: it checks a request (drive, range, read-only), then hands the backend one
 * transfer for the whole request when `mem` meets the drive's alignment (O_DIRECT needs 4096),
 * or bounces it through the calling core's aligned buffer in 1 MiB chunks when it does not.
 * It never reads into or writes from memory outside [mem, mem + num*4096), and never touches
 * the drive outside the requested sectors.  It returns the sectors actually transferred: all
 * of them, a prefix when the host failed midway (the error is recorded), or 0.
 *
 * Several cores may call at once: the table is only written before the cores run (attach)
 * and after they stopped (close_all); pread/pwrite at explicit offsets share no file position;
 * counters are relaxed atomics; each core's scratch (bounce buffer, AIO context) is taken out
 * of its slot for the length of a call (an atomic exchange), so even two threads bound as the
 * same core never share one.
 *
 * Durability: a drive opened durable has O_DSYNC on its fd (each write is on the medium when
 * pwrite returns) or, where O_DSYNC is not on the fd, the front end calls the backend's flush
 * (fdatasync) after each write.  Every drive is flushed and closed on halt.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include "machine.h"

/* ---- per-core scratch ---------------------------------------------------------------------- */

/* scratch_take -- the calling core's scratch, taken out of its slot (a fresh one if empty)
 *  IN:  nvs (the caller is a core: bm_self is set)
 * OUT:  the scratch, or NULL when out of host memory */
static struct bm_nvs_scratch *scratch_take(struct bm_nvs *nvs)
{
	struct bm_nvs_scratch *s = atomic_exchange(&nvs->scratch[bm_self->id], NULL);
	return s != NULL ? s : calloc(1, sizeof *s);
}

/* scratch_free -- release a scratch: its bounce buffer and AIO context */
static void scratch_free(struct bm_nvs_scratch *s)
{
	if (s == NULL)
		return;
	free(s->bounce);
	bm_nvs_aio_release(s->aio);
	free(s);
}

/* scratch_give -- put a scratch back in the calling core's slot (freed if the slot was refilled) */
static void scratch_give(struct bm_nvs *nvs, struct bm_nvs_scratch *s)
{
	struct bm_nvs_scratch *empty = NULL;
	if (s != NULL && !atomic_compare_exchange_strong(&nvs->scratch[bm_self->id], &empty, s))
		scratch_free(s);
}

/* ---- the calls ----------------------------------------------------------------------------- */

/* bounce -- move `bytes` between unaligned mem and the drive through the scratch's buffer
 *  IN:  d, s, writing, mem, bytes, offset (multiples of 4096)
 * OUT:  bytes moved (a prefix on error, *err set) */
static u64 bounce(struct bm_drive *d, struct bm_nvs_scratch *s, int writing, u8 *mem, u64 bytes,
		  u64 offset, int *err)
{
	if (s->bounce == NULL && (s->bounce = aligned_alloc(BM_SECTOR_SIZE, BM_NVS_BOUNCE)) == NULL) {
		*err = ENOMEM;
		return 0;
	}
	u64 done = 0;
	while (done < bytes && *err == 0) {
		u64 chunk = bytes - done < BM_NVS_BOUNCE ? bytes - done : BM_NVS_BOUNCE, moved;
		if (writing) {
			memcpy(s->bounce, mem + done, chunk);
			moved = d->ops->write(d, s, s->bounce, chunk, offset + done, err);
		} else {
			moved = d->ops->read(d, s, s->bounce, chunk, offset + done, err);
			moved -= moved % BM_SECTOR_SIZE;
			memcpy(mem + done, s->bounce, moved);
		}
		atomic_fetch_add_explicit(&d->bounced, 1, memory_order_relaxed);
		done += moved;
		if (moved < chunk && *err == 0)
			*err = EIO;
	}
	return done;
}

/* nvs_transfer -- b_nvs_read / b_nvs_write: the checks, the transfer, the counters
 *  IN:  m, writing (0 read, 1 write), mem, start, num, drive as the calls take them
 * OUT:  sectors transferred; 0 with the error recorded for a missing drive, a range past the
 *       end, a read-only drive, NULL mem; a prefix (error recorded) on I/O error */
static u64 nvs_transfer(struct bm_machine *m, int writing, void *mem, u64 start, u64 num, u64 drive)
{
	const char *call = writing ? "b_nvs_write" : "b_nvs_read";
	struct bm_nvs *nvs = &m->nvs;
	u32 count = atomic_load_explicit(&nvs->num_drives, memory_order_acquire);
	struct bm_drive *d = drive < count ? nvs->drives[drive] : NULL;
	if (d == NULL)
		return bm_fail(BM_ERR_ARGUMENT, "%s: no drive %lu (the machine has %u drive%s)",
			       call, drive, count, count == 1 ? "" : "s");
	if (num == 0)
		return 0;
	if (start >= d->sectors || num > d->sectors - start)
		return bm_fail(BM_ERR_RANGE, "%s: drive %lu (%s): sectors %lu..%lu%s are past its end "
			       "(it holds %lu sectors)", call, drive, d->name, start,
			       start + num - 1 < start ? (u64)~0ull : start + num - 1,
			       start + num - 1 < start ? " (overflow)" : "", d->sectors);
	if (writing && d->read_only)
		return bm_fail(BM_ERR_STATE, "%s: drive %lu (%s) is read-only", call, drive, d->name);
	if (mem == NULL)
		return bm_fail(BM_ERR_ARGUMENT, "%s: mem is NULL", call);

	int err = 0;
	u64 bytes = num * BM_SECTOR_SIZE, offset = start * BM_SECTOR_SIZE, done = 0;
	struct bm_nvs_scratch *s = scratch_take(nvs);
	if (s == NULL)
		err = ENOMEM;
	else if (((uintptr_t)mem & (d->align - 1)) != 0)
		done = bounce(d, s, writing, mem, bytes, offset, &err);
	else if (writing)
		done = d->ops->write(d, s, mem, bytes, offset, &err);
	else
		done = d->ops->read(d, s, mem, bytes, offset, &err);
	if (writing && d->sync_each_write && done > 0 && (err = d->ops->flush(d)) != 0)
		done = 0;                      /* not on the medium: not written, as far as we know */
	scratch_give(nvs, s);

	u64 sectors = done / BM_SECTOR_SIZE;
	atomic_fetch_add_explicit(writing ? &d->writes : &d->reads, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(writing ? &d->sectors_written : &d->sectors_read, sectors,
				  memory_order_relaxed);
	if (err != 0) {
		char text[80];
		atomic_fetch_add_explicit(&d->errors, 1, memory_order_relaxed);
		bm_fail(BM_ERR_IO, "%s: drive %lu (%s): I/O error at sector %lu: %s", call, drive,
			d->name, start + sectors, strerror_r(err, text, sizeof text));
	}
	return sectors;
}

/* nvs_traced -- nvs_transfer and its trace line (trace.h) */
BM_TRACED_PATH u64 nvs_traced(struct bm_machine *m, int writing, void *mem, u64 start, u64 num, u64 drive)
{
	u64 t0 = bm_now_ns(), sectors = nvs_transfer(m, writing, mem, start, num, drive);
	bm_trace_call(m, writing ? BM_TRACE_NVS_WRITE : BM_TRACE_NVS_READ, t0,
		      (u64[]){ (u64)(uintptr_t)mem, start, num, drive }, sectors, NULL);
	return sectors;
}

/* nvs_request -- b_nvs_read / b_nvs_write on the calling core's machine, traced when asked
 *  IN:  as nvs_transfer, without m
 * OUT:  as nvs_transfer; 0 with BM_ERR_NO_MACHINE recorded outside a machine */
static u64 nvs_request(int writing, void *mem, u64 start, u64 num, u64 drive)
{
	bm_error_clear();
	struct bm_machine *m = bm_current();
	if (m == NULL)
		return 0;
	if (bm_traced(m))                                /* trace.h */
		return nvs_traced(m, writing, mem, start, num, drive);
	return nvs_transfer(m, writing, mem, start, num, drive);
}

/* b_nvs_read -- read num 4096-byte sectors from sector start of drive into mem
 *  IN:  mem = destination (num*4096 bytes), start = first sector, num = sectors, drive = number
 * OUT:  sectors read; 0 on error (no such drive, num 0, range past the end, I/O error) */
u64 b_nvs_read(void *mem, u64 start, u64 num, u64 drive)
{
	return nvs_request(0, mem, start, num, drive);
}

/* b_nvs_write -- write num sectors from mem to sector start of drive
 *  IN:  mem = source (num*4096 bytes), start, num, drive
 * OUT:  sectors written (on the medium for a durable drive); 0 on error (no such drive, num 0,
 *       range past the end, read-only drive, I/O error) */
u64 b_nvs_write(void *mem, u64 start, u64 num, u64 drive)
{
	return nvs_request(1, mem, start, num, drive);
}

/* ---- the drive table ------------------------------------------------------------------------ */

/* drive_size -- bytes a regular file or block device holds
 *  IN:  fd, name (for messages)
 * OUT:  0 and *size, or -1 with the error recorded (not a file or block device, a file size that
 *       is not a multiple of 4096, media sectors larger than 4096) */
static int drive_size(int fd, const char *name, u64 *size)
{
	struct stat st;
	if (fstat(fd, &st) != 0)
		return (int)bm_fail(BM_ERR_IO, "drive %s: fstat: %s", name, strerror(errno)) - 1;
	if (S_ISREG(st.st_mode)) {
		*size = (u64)st.st_size;
		if (*size % BM_SECTOR_SIZE != 0)
			return (int)bm_fail(BM_ERR_ARGUMENT, "drive %s: its size (%lu bytes) is not a multiple "
					    "of 4096 (grow it with create=SIZE)", name, *size) - 1;
		return 0;
	}
	if (S_ISBLK(st.st_mode)) {
		int logical = 512;
		if (ioctl(fd, BLKGETSIZE64, size) != 0 || ioctl(fd, BLKSSZGET, &logical) != 0)
			return (int)bm_fail(BM_ERR_IO, "drive %s: block device size: %s", name, strerror(errno)) - 1;
		if (logical > (int)BM_SECTOR_SIZE)
			return (int)bm_fail(BM_ERR_ARGUMENT, "drive %s: media sectors of %d bytes are larger "
					    "than BareMetal's 4096", name, logical) - 1;
		return 0;
	}
	return (int)bm_fail(BM_ERR_ARGUMENT, "drive %s: not a regular file or a block device", name) - 1;
}

/* bm_nvs_attach_file -- add a file or block device as the machine's next drive; the machine
 * owns fd from then on (closes it on halt).  Whether I/O is direct and durable comes from the
 * fd's own flags (O_DIRECT, O_DSYNC), which the Python side chose.
 *  IN:  m, fd (open read-write, or read-only), flags = BM_DRIVE_READ_ONLY | BM_DRIVE_DURABLE,
 *       name = path for messages
 * OUT:  the drive number, or -1 with the error recorded (fd is then still the caller's) */
int bm_nvs_attach_file(struct bm_machine *m, int fd, unsigned flags, const char *name)
{
	bm_error_clear();
	struct bm_nvs *nvs = &m->nvs;
	u32 n = atomic_load(&nvs->num_drives);
	u64 size;
	if (n >= BM_MAX_DRIVES)
		return (int)bm_fail(BM_ERR_FULL, "drive %s: a machine holds at most %d drives", name, BM_MAX_DRIVES) - 1;
	if (drive_size(fd, name, &size) != 0)
		return -1;
	int fl = fcntl(fd, F_GETFL);
	struct bm_drive *d = calloc(1, sizeof *d);
	if (fl < 0 || d == NULL) {
		free(d);
		return (int)bm_fail(BM_ERR_IO, "drive %s: %s", name, strerror(fl < 0 ? errno : ENOMEM)) - 1;
	}
	d->ops = &bm_nvs_file_ops;
	d->fd = fd;
	d->sectors = size / BM_SECTOR_SIZE;
	d->direct = (fl & O_DIRECT) != 0;
	d->align = d->direct ? BM_SECTOR_SIZE : 1;
	d->queue_depth = d->direct ? 8 : 1;
	d->poll_ns = d->direct ? BM_NVS_POLL_US * 1000ull : 0;
	d->read_only = (flags & BM_DRIVE_READ_ONLY) || (fl & O_ACCMODE) == O_RDONLY;
	d->durable = (flags & BM_DRIVE_DURABLE) != 0;
	d->sync_each_write = d->durable && (fl & O_DSYNC) != O_DSYNC;
	size_t len = strlen(name);
	strcpy(d->name, len < sizeof d->name ? name : name + len - (sizeof d->name - 1));
	nvs->drives[n] = d;
	atomic_store_explicit(&nvs->num_drives, n + 1, memory_order_release);
	return (int)n;
}

/* drive_of -- drive `drive` of m, or NULL with BM_ERR_ARGUMENT recorded */
static struct bm_drive *drive_of(struct bm_machine *m, u32 drive)
{
	u32 count = atomic_load(&m->nvs.num_drives);
	if (drive >= count || m->nvs.drives[drive] == NULL)
		return (void *)bm_fail(BM_ERR_ARGUMENT, "no drive %u (the machine has %u)", drive, count);
	return m->nvs.drives[drive];
}

/* drive_info -- d's geometry, mode and counters into *out */
static void drive_info(struct bm_drive *d, struct bm_drive_info *out)
{
	*out = (struct bm_drive_info){
		.sectors = d->sectors, .fd = d->fd, .read_only = d->read_only, .durable = d->durable,
		.direct = d->direct, .queue_depth = d->queue_depth, .poll_us = d->poll_ns / 1000,
		.reads = atomic_load(&d->reads), .writes = atomic_load(&d->writes),
		.sectors_read = atomic_load(&d->sectors_read), .sectors_written = atomic_load(&d->sectors_written),
		.errors = atomic_load(&d->errors), .bounced = atomic_load(&d->bounced),
		.polled = atomic_load(&d->polled),
	};
}

/* bm_nvs_info -- a drive's geometry, mode and counters; after halt, their final values
 *  IN:  m, drive, out
 * OUT:  0 and *out filled, -1 with BM_ERR_ARGUMENT for a missing drive */
int bm_nvs_info(struct bm_machine *m, u32 drive, struct bm_drive_info *out)
{
	bm_error_clear();
	if (atomic_load(&m->nvs.num_drives) == 0 && drive < m->nvs.num_closed) {
		*out = m->nvs.closed[drive];    /* closed on halt: its final values */
		return 0;
	}
	struct bm_drive *d = drive_of(m, drive);
	if (d == NULL)
		return -1;
	drive_info(d, out);
	return 0;
}

/* bm_nvs_set_queue_depth -- requests one large call keeps in flight (1: one at a time)
 *  IN:  m, drive, depth = 1..32
 * OUT:  0, -1 with the error recorded (missing drive, depth out of range) */
int bm_nvs_set_queue_depth(struct bm_machine *m, u32 drive, u32 depth)
{
	bm_error_clear();
	struct bm_drive *d = drive_of(m, drive);
	if (d == NULL)
		return -1;
	if (depth < 1 || depth > 32)
		return (int)bm_fail(BM_ERR_ARGUMENT, "queue depth must be 1..32, not %u", depth) - 1;
	d->queue_depth = depth;
	return 0;
}

/* bm_nvs_set_poll -- how long a core polls for a request's completion before it sleeps
 * (direct drives; a buffered drive's I/O completes in the system call)
 *  IN:  m, drive, poll_us = 0 (sleep at once, as a plain pread does) .. 10 s
 * OUT:  0, -1 with the error recorded (missing drive, out of range, buffered drive) */
int bm_nvs_set_poll(struct bm_machine *m, u32 drive, u64 poll_us)
{
	bm_error_clear();
	struct bm_drive *d = drive_of(m, drive);
	if (d == NULL)
		return -1;
	if (poll_us > BM_NVS_POLL_MAX_US)
		return (int)bm_fail(BM_ERR_ARGUMENT, "poll time must be 0..%d us, not %lu", BM_NVS_POLL_MAX_US,
				    poll_us) - 1;
	if (poll_us > 0 && !d->direct)
		return (int)bm_fail(BM_ERR_STATE, "drive %u (%s) is buffered: there is no completion to poll",
				    drive, d->name) - 1;
	d->poll_ns = poll_us * 1000;
	return 0;
}

/* bm_nvs_flush -- put drive's completed writes on the medium (fdatasync)
 *  IN:  m, drive
 * OUT:  1, 0 with the error recorded (missing drive, host error) */
u64 bm_nvs_flush(struct bm_machine *m, u32 drive)
{
	bm_error_clear();
	struct bm_drive *d = drive_of(m, drive);
	if (d == NULL)
		return 0;
	int err = d->read_only ? 0 : d->ops->flush(d);
	if (err != 0)
		return bm_fail(BM_ERR_IO, "drive %u (%s): flush: %s", drive, d->name, strerror(err));
	return 1;
}

/* bm_nvs_close_all -- flush and close every drive, keeping its final info (bm_nvs_info still
 * answers), free every core's scratch (halt; the cores have stopped)
 *  IN:  m
 * OUT:  nothing */
void bm_nvs_close_all(struct bm_machine *m)
{
	struct bm_nvs *nvs = &m->nvs;
	u32 count = atomic_exchange(&nvs->num_drives, 0);
	for (u32 i = 0; i < count; i++) {
		struct bm_drive *d = nvs->drives[i];
		nvs->drives[i] = NULL;
		if (d == NULL)
			continue;
		if (!d->read_only)
			d->ops->flush(d);
		drive_info(d, &nvs->closed[i]);
		nvs->closed[i].fd = -1;
		d->ops->close(d);
		free(d);
	}
	nvs->num_closed = count;
	for (u32 i = 0; i < BM_MAX_CORES; i++)
		scratch_free(atomic_exchange(&nvs->scratch[i], NULL));
}

/* bm_nvs_flush_all -- put every completed write on the medium; async-signal-safe (fdatasync
 * only: no locks, no allocation), for the fault handler and signal paths
 *  IN:  m
 * OUT:  nothing */
void bm_nvs_flush_all(struct bm_machine *m)
{
	u32 count = atomic_load(&m->nvs.num_drives);
	for (u32 i = 0; i < count && i < BM_MAX_DRIVES; i++) {
		struct bm_drive *d = m->nvs.drives[i];
		if (d != NULL && !d->read_only)
			d->ops->flush(d);
	}
}

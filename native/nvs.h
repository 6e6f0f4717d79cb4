/* nvs.h -- drives: the table of backends b_nvs_read/b_nvs_write talk to.
 *
 * A drive is a backend (a table of functions: read, write, flush, close, kvmtool style) plus
 * its fd, geometry and counters.  The front end (nvs.c: b_nvs_read/b_nvs_write) checks the
 * request, bounces unaligned memory through a per-core buffer, counts, and calls the table;
 * it never knows what kind of drive it talks to.  Backends: nvs_file.c (files, block devices).
 */
#ifndef BM_NVS_H
#define BM_NVS_H

#include "base.h"

#define BM_MAX_DRIVES 16
#define BM_NVS_BOUNCE (1ull << 20)      /* bytes of each core's bounce buffer */
#define BM_NVS_NAME 96                  /* bytes of a drive's name kept for messages */
#define BM_NVS_POLL_US 20000            /* default completion polling on O_DIRECT drives */
#define BM_NVS_POLL_MAX_US 10000000

/* attach flags (also in nvs.cdef) */
#define BM_DRIVE_READ_ONLY 1u
#define BM_DRIVE_DURABLE   2u

struct bm_drive;
struct bm_nvs_scratch;

/* A backend.  read/write move `bytes` (a multiple of 4096) between buf (aligned to d->align)
 * and byte `offset` of the drive; they return the bytes moved (all of them, or a prefix with
 * *err set to an errno value).  flush is async-signal-safe (0 or an errno value). */
struct bm_drive_ops {
	const char *kind;
	u64 (*read)(struct bm_drive *d, struct bm_nvs_scratch *s, void *buf, u64 bytes, u64 offset, int *err);
	u64 (*write)(struct bm_drive *d, struct bm_nvs_scratch *s, const void *buf, u64 bytes, u64 offset, int *err);
	int (*flush)(struct bm_drive *d);
	void (*close)(struct bm_drive *d);
};

struct bm_drive {
	const struct bm_drive_ops *ops;
	int fd;
	u64 sectors;                    /* 4096-byte sectors */
	u32 align;                      /* memory alignment the fd needs (4096 with O_DIRECT, else 1) */
	u32 queue_depth;                /* requests in flight for one large call (1: one at a time) */
	u64 poll_ns;                    /* a core polls for completion this long before sleeping (0: sleeps) */
	int read_only, durable, direct;
	int sync_each_write;            /* durable without O_DSYNC on the fd: fdatasync per write */
	char name[BM_NVS_NAME];
	_Atomic u64 reads, writes, sectors_read, sectors_written, errors, bounced, polled;
};

/* What one core keeps for its I/O (taken and given back around each call). */
struct bm_nvs_scratch {
	u8 *bounce;                     /* BM_NVS_BOUNCE bytes, 4096 aligned; NULL until needed */
	unsigned long aio;              /* Linux AIO context (aio_context_t); 0 until needed, ~0 unusable */
};

/* What Python reads about a drive (nvs.cdef mirrors it). */
struct bm_drive_info {
	u64 sectors;
	int fd, read_only, durable, direct;
	u32 queue_depth;
	u64 poll_us;
	u64 reads, writes, sectors_read, sectors_written, errors, bounced, polled;
};

struct bm_nvs {
	struct bm_drive *drives[BM_MAX_DRIVES];
	_Atomic u32 num_drives;
	struct bm_nvs_scratch *_Atomic scratch[BM_MAX_CORES];  /* per core, by bm_self->id */
	u32 num_closed;                 /* drives closed on halt; their last info is kept below */
	struct bm_drive_info closed[BM_MAX_DRIVES];
};

int bm_nvs_attach_file(struct bm_machine *m, int fd, unsigned flags, const char *name);
int bm_nvs_info(struct bm_machine *m, u32 drive, struct bm_drive_info *out);
int bm_nvs_set_queue_depth(struct bm_machine *m, u32 drive, u32 depth);
int bm_nvs_set_poll(struct bm_machine *m, u32 drive, u64 poll_us);
u64 bm_nvs_flush(struct bm_machine *m, u32 drive);
void bm_nvs_close_all(struct bm_machine *m); /* flush and close every drive */
/* fdatasync every writable drive; async-signal-safe (the fault handler calls it) */
void bm_nvs_flush_all(struct bm_machine *m);

/* nvs_file.c: the file / block device backend */
extern const struct bm_drive_ops bm_nvs_file_ops;
void bm_nvs_aio_release(unsigned long ctx);

#endif

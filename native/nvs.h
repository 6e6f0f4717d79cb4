/* nvs.h -- drives: the table of backends b_nvs_read/b_nvs_write talk to. */
#ifndef BM_NVS_H
#define BM_NVS_H

#define BM_MAX_DRIVES 16

struct bm_drive;

struct bm_nvs {
	struct bm_drive *drives[BM_MAX_DRIVES];
	u32 num_drives;
};

void bm_nvs_close_all(struct bm_machine *m); /* flush and close every drive */
/* fdatasync every writable drive; async-signal-safe (the fault handler calls it) */
void bm_nvs_flush_all(struct bm_machine *m);

#endif

/* nvs.c -- b_nvs_read / b_nvs_write over the machine's drive table. */
#define _GNU_SOURCE
#include "machine.h"

/* b_nvs_read -- read num 4096-byte sectors from sector start of drive into mem
 *  IN:  mem, start, num, drive
 * OUT:  sectors read; 0 on error (no drives are attached in this build) */
u64 b_nvs_read(void *mem, u64 start, u64 num, u64 drive)
{
	bm_error_clear();
	(void)mem; (void)start; (void)num;
	if (bm_current() == NULL)
		return 0;
	return bm_fail(BM_ERR_ARGUMENT, "no drive %llu", drive);
}

/* b_nvs_write -- write num sectors from mem to sector start of drive
 *  IN:  mem, start, num, drive
 * OUT:  sectors written; 0 on error */
u64 b_nvs_write(void *mem, u64 start, u64 num, u64 drive)
{
	bm_error_clear();
	(void)mem; (void)start; (void)num;
	if (bm_current() == NULL)
		return 0;
	return bm_fail(BM_ERR_ARGUMENT, "no drive %llu", drive);
}

/* bm_nvs_close_all -- flush and close every drive */
void bm_nvs_close_all(struct bm_machine *m) { (void)m; }

/* bm_nvs_flush_all -- put every completed write on the medium; async-signal-safe
 *  IN:  m
 * OUT:  nothing */
void bm_nvs_flush_all(struct bm_machine *m) { (void)m; }

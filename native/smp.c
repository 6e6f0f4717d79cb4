/* smp.c -- cores.
 *
 * Core 0 (the BSP) is the thread that runs the app.  This file keeps each core's identity
 * (bm_self), the SMP slot table at 0x1FF800 (8 bytes per core: bit 0 present, bit 1 active,
 * code address in bits 63:4) and the SMP_* calls.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include "machine.h"

BM_TLS struct bm_core *bm_self;

static _Atomic u64 *slot_of(struct bm_machine *m, u32 core)
{
	return (_Atomic u64 *)bm_phys(m, BM_SMP_TABLE + 8ull * core);
}

/* bm_smp_init -- allocate the core structs
 *  IN:  m with num_cores set
 * OUT:  0, -1 when out of host memory */
int bm_smp_init(struct bm_machine *m)
{
	m->smp.cores = calloc(m->num_cores, sizeof *m->smp.cores);
	if (m->smp.cores == NULL)
		return -1;
	for (u32 i = 0; i < m->num_cores; i++) {
		m->smp.cores[i].machine = m;
		m->smp.cores[i].id = i;
		m->smp.cores[i].cpu = -1;
	}
	return 0;
}

/* bm_smp_start -- mark every core present in the slot table
 *  IN:  m
 * OUT:  0 */
int bm_smp_start(struct bm_machine *m)
{
	for (u32 i = 0; i < m->num_cores; i++)
		atomic_store(slot_of(m, i), 1);
	return 0;
}

/* bm_smp_stop -- nothing runs on cores other than the BSP yet */
void bm_smp_stop(struct bm_machine *m) { (void)m; }

/* bm_smp_free -- release the core structs */
void bm_smp_free(struct bm_machine *m)
{
	free(m->smp.cores);
	m->smp.cores = NULL;
}

/* bm_smp_id -- SMP_ID: the calling core's id (the caller is a core: bm_current checked it) */
u64 bm_smp_id(struct bm_machine *m)
{
	(void)m;
	return bm_self->id;
}

/* bm_smp_set -- SMP_SET
 *  IN:  code = 16-byte aligned function address, core = target core id
 * OUT:  0: only core 0 runs code in this build */
u64 bm_smp_set(struct bm_machine *m, u64 code, u64 core)
{
	(void)m; (void)code; (void)core;
	return bm_fail(BM_ERR_STATE, "SMP_SET: cores other than 0 do not run code yet");
}

/* bm_smp_get -- SMP_GET: the calling core's slot */
u64 bm_smp_get(struct bm_machine *m)
{
	return atomic_load(slot_of(m, bm_self->id));
}

/* bm_smp_lock -- SMP_LOCK: spin until bit 0 of the 16-bit word at `address` is ours
 *  IN:  address of the lock word (any writable memory)
 * OUT:  1 */
u64 bm_smp_lock(u64 address)
{
	_Atomic u16 *word = (_Atomic u16 *)(uintptr_t)address;
	while (atomic_fetch_or_explicit(word, 1, memory_order_acquire) & 1)
		while (atomic_load_explicit(word, memory_order_relaxed) & 1)
			__builtin_ia32_pause();
	return 1;
}

/* bm_smp_unlock -- SMP_UNLOCK: clear bit 0 of the lock word
 *  IN:  address of the lock word
 * OUT:  1 */
u64 bm_smp_unlock(u64 address)
{
	atomic_fetch_and_explicit((_Atomic u16 *)(uintptr_t)address, (u16)~1u, memory_order_release);
	return 1;
}

/* bm_smp_busy -- SMP_BUSY: 1 if a core other than the caller has work (none can yet) */
u64 bm_smp_busy(struct bm_machine *m) { (void)m; return 0; }

/* bm_smp_reset -- RESET: abandon other cores' work (none yet) */
u64 bm_smp_reset(struct bm_machine *m) { (void)m; return 1; }

/* smp.h -- cores: the threads that run a machine's code. */
#ifndef BM_SMP_H
#define BM_SMP_H

#include <setjmp.h>

struct bm_core {
	struct bm_machine *machine;
	u32 id;
	int cpu;                        /* host CPU the core is pinned to, -1 if not pinned */
	jmp_buf *exit_jmp;              /* set while a C main runs here: SHUTDOWN/REBOOT unwind to it */
};

struct bm_smp {
	struct bm_core *cores;          /* num_cores entries; cores[0] is the BSP */
};

int bm_smp_init(struct bm_machine *m);      /* allocate cores; 0 ok, -1 error */
int bm_smp_start(struct bm_machine *m);     /* start cores 1..n-1; mark slots present */
void bm_smp_stop(struct bm_machine *m);     /* stop and join cores 1..n-1 */
void bm_smp_free(struct bm_machine *m);
u64 bm_smp_id(struct bm_machine *m);
u64 bm_smp_set(struct bm_machine *m, u64 code, u64 core);
u64 bm_smp_get(struct bm_machine *m);
u64 bm_smp_lock(u64 address);
u64 bm_smp_unlock(u64 address);
u64 bm_smp_busy(struct bm_machine *m);
u64 bm_smp_reset(struct bm_machine *m);

#endif

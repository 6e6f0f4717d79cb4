/* base.h -- what every C file of the core shares and that depends on nothing else of it:
 * the contract's physical map, recorded errors, the clock, and the calling thread's core and
 * machine.
 *
 * Which machine does a plain C call like b_output() act on?  The calling thread's: a thread
 * that is a core of a machine (a worker core, core 0 bound by bm_bind, the service thread) has
 * `bm_self` (its struct bm_core) and `bm_self_machine` set, thread-local.  A thread that is not
 * a core gets upstream's "nothing" value and a recorded error (BM_ERR_NO_MACHINE) that the
 * Python face turns into an exception.  The structs themselves are laid out in machine.h
 * (the machine) and smp.h (a core); this header only names them.
 *
 * Layers (one way): base <- subsystems (io, smp, fault, nvs*, net*, lowmap) <- machine.c,
 * system.c, service.c <- capps.c, the CPU backends.
 */
#ifndef BM_BASE_H
#define BM_BASE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <signal.h>
#include "libBareMetal.h"

/* The contract's physical map (baremetal-api.md section 4). */
#define BM_INFOMAP              0x5000ull
#define BM_INFOMAP_BSP_ID       0x5008ull   /* u32 */
#define BM_INFOMAP_CPU_MHZ      0x5010ull   /* u16 */
#define BM_INFOMAP_CORES_ACTIVE 0x5012ull   /* u16 */
#define BM_INFOMAP_CORES_FOUND  0x5014ull   /* u16 */
#define BM_INFOMAP_RAM_MIB      0x5020ull   /* u32 */
#define BM_INFOMAP_LFB_BASE     0x5080ull   /* u64 */
#define BM_INFOMAP_LFB_X        0x5088ull   /* u16 */
#define BM_INFOMAP_LFB_Y        0x508Aull   /* u16 */
#define BM_INFOMAP_LFB_PPSL     0x508Cull   /* u16 */
#define BM_INFOMAP_LFB_BPP      0x508Eull   /* u16 */
#define BM_INFOMAP_APIC_IDS     0x5100ull   /* u32 per core */
#define BM_KERNEL               0x100000ull
#define BM_CALL_TABLE           0x100010ull /* 8 bytes per call */
#define BM_SYSVARS              0x110000ull
#define BM_SYSVAR_FREE_MIB      0x110104ull /* u32 */
#define BM_SMP_TABLE            0x1FF800ull /* u64 per core */
#define BM_SYSTEM_SIZE          (2ull << 20) /* the low 2 MiB: the system area */
#define BM_PAGE_SIZE            (2ull << 20) /* upstream's page: 2 MiB */
#define BM_SECTOR_SIZE          4096ull
#define BM_MAX_CORES            256
#define BM_CACHE_LINE           64

/* Error codes recorded for the Python face (C callers get upstream's return values). */
enum bm_error_code {
	BM_OK = 0,
	BM_ERR_NO_MACHINE,      /* the calling thread is not a core of any machine */
	BM_ERR_ARGUMENT,        /* a bad argument (alignment, length, unknown id, ...) */
	BM_ERR_RANGE,           /* an address or sector outside what exists */
	BM_ERR_IO,              /* the host refused (errno in the message) */
	BM_ERR_STATE,           /* not possible in the machine's current state */
	BM_ERR_FULL,            /* out of memory / queue full / ring full */
};

/* A machine's life (m->state). */
enum bm_machine_state { BM_STATE_NEW, BM_STATE_RUNNING, BM_STATE_SHUTDOWN, BM_STATE_REBOOT, BM_STATE_HALTED,
			BM_STATE_STOPPING /* a stop signal or the timeout came (signals.c) */ };

struct bm_error {
	int code;
	char message[240];
};

/* initial-exec TLS: one %fs-relative load instead of a __tls_get_addr call per access */
#define BM_TLS __thread __attribute__((tls_model("initial-exec")))

/* The calling thread's last error.  Public calls clear it on entry. */
extern BM_TLS struct bm_error bm_error;
#define bm_error_clear() (bm_error.code = BM_OK)
/* Record an error (printf-style message); returns 0 so callers can `return bm_fail(...)`. */
u64 bm_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int bm_error_code(void);
const char *bm_error_message(void);

/* CLOCK_MONOTONIC in nanoseconds */
u64 bm_now_ns(void);

/* bm_block_async_signals -- block every signal but the synchronous faults (SEGV, BUS, FPE, ILL)
 * in the calling thread, so threads it creates take none (they go to the app's thread)
 *  IN:  old: where the previous mask goes (restore it with pthread_sigmask(SIG_SETMASK, old))
 * OUT:  nothing */
void bm_block_async_signals(sigset_t *old);

/* spin locks with an optional time limit (base.c) */
int bm_nic_lock(_Atomic int *lock, u64 wait_ns);
void bm_nic_unlock(_Atomic int *lock);

struct bm_machine;
struct bm_core;

/* The calling thread's core and its machine; both NULL if the thread is not a core. */
extern BM_TLS struct bm_core *bm_self;
extern BM_TLS struct bm_machine *bm_self_machine;

/* bm_set_self -- make the calling thread `core` of `machine` (both NULL: no core) */
static inline void bm_set_self(struct bm_core *core, struct bm_machine *machine)
{
	bm_self = core;
	bm_self_machine = core != NULL ? machine : NULL;
}

/* The calling thread's machine, or NULL with BM_ERR_NO_MACHINE recorded. */
static inline struct bm_machine *bm_current(void)
{
	struct bm_machine *m = bm_self_machine;
	if (__builtin_expect(m == NULL, 0))
		bm_fail(BM_ERR_NO_MACHINE, "this thread is not a core of a running machine");
	return m;
}

#endif

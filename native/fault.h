/* fault.h -- crash reports for code running on a core (SIGSEGV, SIGBUS, SIGFPE, SIGILL).
 *
 * bm_fault_install() (called at every boot; idempotent) puts one handler on the four fault
 * signals for the whole process.  When a fault hits a thread that is a core (bm_self set):
 *
 *   1. it writes "core N: SIGSEGV at address 0x...\n" to stderr (async-signal-safe write(2)),
 *      and records the fault in the machine (bm_smp_faults, Python's machine.faults);
 *   2. if the core was running a C task under a recovery point (core->fault_jmp set and
 *      core->in_task nonzero: worker cores always are, and core 0 while it helps in wait()),
 *      it adds "(task abandoned, core back to idle)" and siglongjmps there: the machine lives;
 *   3. otherwise it flushes the machine's drives (bm_nvs_flush_all) and ends the process:
 *      the previous handler (e.g. Python's faulthandler) runs next, else the default action
 *      (killed by the signal: a non-zero exit status).
 *
 * A fault in a thread that is not a core goes straight to the previous handler.
 *
 * For the C-apps loader: a crash in a C app's main on core 0 needs nothing more than the core
 * being bound (bm_bind) at the time: step 3 applies.  To have a crash end only a piece of
 * code and return instead, run it with bm_fault_call().
 */
#ifndef BM_FAULT_H
#define BM_FAULT_H

#include "base.h"

/* bm_fault_install -- install the fault handlers (process-wide, idempotent; re-installs
 * if something replaced them since)
 * OUT: 0, -1 if sigaction refused */
int bm_fault_install(void);

/* bm_fault_altstack_new -- give the calling thread an alternate signal stack (so a stack
 * overflow is still reported); returns it for bm_fault_altstack_free, NULL on failure */
void *bm_fault_altstack_new(void);
void bm_fault_altstack_free(void *stack);

/* bm_fault_unblock -- unblock the fault signals in the calling thread (after a siglongjmp out
 * of the handler with a sigjmp_buf saved without the signal mask) */
void bm_fault_unblock(void);

/* bm_fault_call -- run fn(ctx) on the calling core with recovery: a fault inside it is
 * reported and recorded (steps 1-2 above) and makes the call return instead of ending the
 * process.
 *  IN:  fn, ctx; the calling thread must be a core (bm_bind)
 * OUT:  0 if fn returned, the signal number if it faulted, -1 if the caller is not a core */
int bm_fault_call(void (*fn)(void *), void *ctx);

#endif

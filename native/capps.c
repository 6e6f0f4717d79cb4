/* capps.c -- a C app's main on core 0: SHUTDOWN/REBOOT, exit() and crash recovery, ending in
 * the run's outcome (struct bm_outcome, machine.h).
 *
 * bm_run_main runs main and catches SHUTDOWN/REBOOT (system.c's end_run longjmps back to it).
 * C apps are linked with -Wl,--wrap=exit, so an exit(status) anywhere in main's call tree lands
 * in __wrap_exit here and ends the run as if main had returned status.  And main runs under
 * bm_fault_call (fault.c): a fault in it (SIGSEGV, SIGBUS, SIGFPE, SIGILL) is reported on
 * stderr with the core and the address, then returns here.  Either way the loader then halts
 * the machine the ordinary way (drives flushed and closed, terminal restored); libc's exit, or
 * the signal's default action, would end the process on the spot.  A C task that faulted on
 * another core during the run also makes the run end as a crash, once main is back.
 */
#include <setjmp.h>
#include <stdlib.h>
#include "machine.h"
#include "capps.h"
#include "signals.h"

static __thread int exit_called, exit_status;

/* __wrap_exit -- exit() as a C app calls it (see above)
 *  IN:  status
 * OUT:  does not return: back to bm_run_main under a C main, else libc's exit */
void __wrap_exit(int status)
{
	struct bm_core *self = bm_self;
	if (self != NULL && self->exit_jmp != NULL) {
		exit_called = 1;
		exit_status = status;
		longjmp(*self->exit_jmp, BM_STATE_RUNNING);
	}
	exit(status);
}

/* bm_run_main -- run a C app's main on the calling core (bound to m), catching SHUTDOWN/REBOOT
 *  IN:  m, main, argc, argv; *exit_code receives main's return value
 * OUT:  BM_STATE_RUNNING if main returned, BM_STATE_SHUTDOWN or BM_STATE_REBOOT if it called them */
int bm_run_main(struct bm_machine *m, int (*app_main)(int, char **), int argc, char **argv, int *exit_code)
{
	struct bm_core *self = bm_self;
	jmp_buf here, *outer = self->exit_jmp;
	int how = setjmp(here);
	if (how == 0) {
		self->exit_jmp = &here;
		*exit_code = app_main(argc, argv);
		how = BM_STATE_RUNNING;
	} else {
		*exit_code = 0;
	}
	self->exit_jmp = outer;
	(void)m;
	return how;
}

struct main_call {
	struct bm_machine *m;
	int (*app_main)(int, char **);
	int argc;
	char **argv;
	int exit_code;
	int state;
};

static void call_main(void *ctx)
{
	struct main_call *c = ctx;
	c->state = bm_run_main(c->m, c->app_main, c->argc, c->argv, &c->exit_code);
}

/* bm_capp_run_main -- run main(argc, argv) on the calling core (bound to m, core 0)
 *  IN:  m, app_main, argc, argv, out = the outcome to fill
 * OUT:  out->how: BM_END_RETURNED (value = main's return value or exit's status),
 *       BM_END_SHUTDOWN, BM_END_REBOOT, BM_END_SIGNAL when main or a C task faulted
 *       (reported on stderr when it happened; the first fault of the run is described), or
 *       BM_END_TERMINATED (signal = the stop signal) when a stop signal unwound main */
void bm_capp_run_main(struct bm_machine *m, int (*app_main)(int, char **), int argc, char **argv,
		      struct bm_outcome *out)
{
	struct bm_core *self = bm_self;
	jmp_buf *outer = self->exit_jmp;
	struct main_call c = { .m = m, .app_main = app_main, .argc = argc, .argv = argv };
	u32 faults_before = atomic_load(&m->smp.faults_count);
	exit_called = 0;
	int sig = bm_fault_call(call_main, &c);
	self->exit_jmp = outer;         /* a fault jumped over bm_run_main's own restore */
	u32 faults_after = atomic_load(&m->smp.faults_count);
	if (sig > 0 || faults_after != faults_before) {
		struct bm_fault f = m->smp.faults[faults_before % BM_FAULT_LOG];
		bm_outcome_set(out, BM_END_SIGNAL, f.core, NULL);
		out->signal = f.signal;
		out->address = f.address;
		out->code = f.code;
		return;
	}
	if (c.state == BM_STATE_STOPPING) {       /* bm_stop_point unwound main (signals.c) */
		bm_outcome_set(out, BM_END_TERMINATED, 0, NULL);
		out->signal = bm_signals_received();
		return;
	}
	int code = exit_called ? exit_status : c.exit_code;
	bm_outcome_set(out, c.state == BM_STATE_SHUTDOWN ? BM_END_SHUTDOWN :
		       c.state == BM_STATE_REBOOT ? BM_END_REBOOT : BM_END_RETURNED, 0, NULL);
	out->value = (u64)(int64_t)code;
}

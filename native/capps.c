/* capps.c -- a C app's main on core 0: exit() and crash recovery.
 *
 * bm_run_main (system.c) runs main and catches SHUTDOWN/REBOOT.  C apps are linked with
 * -Wl,--wrap=exit, so an exit(status) anywhere in main's call tree lands in __wrap_exit here
 * and ends the run as if main had returned status.  And main runs under bm_fault_call
 * (fault.c): a fault in it (SIGSEGV, SIGBUS, SIGFPE, SIGILL) is reported on stderr with the
 * core and the address, then returns here.  Either way the loader then halts the machine the
 * ordinary way (drives flushed and closed, terminal restored); libc's exit, or the signal's
 * default action, would end the process on the spot.
 */
#include <stdlib.h>
#include "machine.h"
#include "capps.h"

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
 *  IN:  m, app_main, argc, argv; *exit_code receives main's return value (or exit's status)
 * OUT:  what bm_run_main returns: BM_STATE_RUNNING (main returned or called exit),
 *       BM_STATE_SHUTDOWN or BM_STATE_REBOOT; or -signal when main faulted (reported) */
int bm_capp_run_main(struct bm_machine *m, int (*app_main)(int, char **), int argc, char **argv, int *exit_code)
{
	struct bm_core *self = bm_self;
	jmp_buf *outer = self->exit_jmp;
	struct main_call c = { .m = m, .app_main = app_main, .argc = argc, .argv = argv };
	exit_called = 0;
	int sig = bm_fault_call(call_main, &c);
	self->exit_jmp = outer;         /* a fault jumped over bm_run_main's own restore */
	*exit_code = exit_called ? exit_status : c.exit_code;
	return sig > 0 ? -sig : c.state;
}

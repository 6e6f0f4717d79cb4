/* capps.c -- a C app's main on core 0.
 *
 * bm_run_main (system.c) runs main and catches SHUTDOWN/REBOOT.  C apps are linked with
 * -Wl,--wrap=exit, so an exit(status) anywhere in main's call tree lands in __wrap_exit here
 * and ends the run as if main had returned status: the loader then halts the machine the
 * ordinary way (drives flushed and closed, terminal restored).  libc's exit would end the
 * process on the spot.
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

/* bm_capp_run_main -- run main(argc, argv) on the calling core (bound to m, core 0)
 *  IN:  m, app_main, argc, argv; *exit_code receives main's return value (or exit's status)
 * OUT:  what bm_run_main returns: BM_STATE_RUNNING (main returned or called exit),
 *       BM_STATE_SHUTDOWN or BM_STATE_REBOOT */
int bm_capp_run_main(struct bm_machine *m, int (*app_main)(int, char **), int argc, char **argv, int *exit_code)
{
	exit_called = 0;
	int state = bm_run_main(m, app_main, argc, argv, exit_code);
	if (exit_called)
		*exit_code = exit_status;
	return state;
}

/* capps.h -- running a C app's main (see capps.c). */
#ifndef BM_CAPPS_H
#define BM_CAPPS_H

#include "machine.h"

int bm_run_main(struct bm_machine *m, int (*app_main)(int, char **), int argc, char **argv, int *exit_code);
void bm_capp_run_main(struct bm_machine *m, int (*app_main)(int, char **), int argc, char **argv,
		      struct bm_outcome *out);
void __wrap_exit(int status) __attribute__((noreturn));

#endif

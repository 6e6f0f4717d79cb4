/* coredump.h -- an ELF core file of a flat binary that faulted (coredump.c), for gdb. */
#ifndef BM_COREDUMP_H
#define BM_COREDUMP_H

#include "guest.h"

int bm_core_write(struct bm_machine *m, const char *dir, u32 core, const struct bm_cpu_state *s,
		  int signal, char *path);

#endif

/* gdbstub.h -- a gdb remote-serial-protocol stub for core 0 of a flat binary (gdbstub.c). */
#ifndef BM_GDBSTUB_H
#define BM_GDBSTUB_H

#include "guest.h"

struct bm_gdb *bm_gdb_open(int fd);
void bm_gdb_close(struct bm_gdb *s);
/* state: guest.c's bm_guest_state, handed in so the stub does not call back into guest.c */
typedef int bm_guest_state_fn(struct bm_guest_cpu *c, struct bm_cpu_state *s);
int bm_gdb_serve(struct bm_gdb *s, struct bm_guest_cpu *c, bm_guest_state_fn *state);

#endif

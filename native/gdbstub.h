/* gdbstub.h -- a gdb remote-serial-protocol stub for core 0 of a flat binary (gdbstub.c). */
#ifndef BM_GDBSTUB_H
#define BM_GDBSTUB_H

#include "guest.h"

struct bm_gdb *bm_gdb_open(int fd);
void bm_gdb_close(struct bm_gdb *s);
int bm_gdb_serve(struct bm_gdb *s, struct bm_guest_cpu *c);

#endif

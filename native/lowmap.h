/* lowmap.h -- the low system area at its own physical addresses (see lowmap.c). */
#ifndef BM_LOWMAP_H
#define BM_LOWMAP_H

#include "base.h"

#define BM_LOWMAP_START 0x1000ull   /* page 0 stays unmapped: a NULL dereference still faults */

int bm_lowmap_claim(struct bm_machine *m);
void bm_lowmap_release(struct bm_machine *m);
void bm_lowmap_clear(struct bm_machine *m);
int bm_lowmap_owner(struct bm_machine *m);
u64 bm_low_address(struct bm_machine *m, u64 address, u64 length);

#endif

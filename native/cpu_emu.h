/* cpu_emu.h -- the emulated CPU backend for flat binaries (unicorn 2, loaded at run time). */
#ifndef BM_CPU_EMU_H
#define BM_CPU_EMU_H

#include "guest.h"

int bm_emu_load(const char *path);

#endif

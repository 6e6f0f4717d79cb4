/* cpu_kvm.h -- the KVM CPU backend for flat binaries (guest.h's struct bm_cpu_ops). */
#ifndef BM_CPU_KVM_H
#define BM_CPU_KVM_H

#include "guest.h"

int bm_kvm_available(void);

#endif

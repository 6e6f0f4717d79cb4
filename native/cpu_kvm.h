/* cpu_kvm.h -- running flat BareMetal binaries (.app) under KVM on the machine's memory. */
#ifndef BM_CPU_KVM_H
#define BM_CPU_KVM_H

#include "machine.h"

#define BM_APP_VIRTUAL   0xFFFF800000000000ull  /* where .app images are linked to run */
#define BM_APP_PHYSICAL  0x200000ull            /* ...and the physical memory behind it */

/* How a binary's run ended (bm_kvm_run_app's return value). */
enum bm_kvm_end {
	BM_KVM_RETURNED = 0,    /* the app returned (ret to the Monitor); *rax holds RAX */
	BM_KVM_SHUTDOWN = 1,    /* b_system(SHUTDOWN) */
	BM_KVM_REBOOT = 2,      /* b_system(REBOOT) */
	BM_KVM_FAULT = -1,      /* the app crashed or KVM failed: the message says which */
};

int bm_kvm_available(void);
void bm_kvm_run_app(struct bm_machine *m, u64 stack_top, struct bm_outcome *out);
void bm_kvm_core_task(u64 guest_code);

#endif

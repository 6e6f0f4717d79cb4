/* cpu_kvm.c -- run a flat BareMetal binary (.app) on core 0 of a machine, under KVM.
 *
 * The guest's physical memory IS the machine's flat memory (one KVM memory slot over it), so
 * the InfoMap, the SMP table and every buffer the calls use are the same bytes Python and C
 * apps see.  We build what upstream's loader builds in that memory: a GDT at 0x1000, page
 * tables at 0x2000 (PML4), 0x3000/0x4000 (PDPs), 0x10000 and 0x20000 (page directories of 2 MiB
 * pages: low memory identity-mapped, 0xFFFF800000000000 mapped to physical 0x200000), and the
 * kernel's call table at 0x100010.
 *
 * The calls: each call-table entry points at a 3-byte stub in the kernel area,
 * `out CALL_PORT+n, al ; ret`.  The OUT exits to us with the guest's registers (synced through
 * kvm_run when KVM_CAP_SYNC_REGS is there); we decode upstream's register ABI, translate guest
 * addresses to process addresses, call THE implementation of the call (b_output, b_nvs_read,
 * ...: the same functions Python and C apps use), write the result registers back and resume
 * at the `ret`.  Every other register is preserved, as upstream promises.
 *
 * The app is entered at 0xFFFF800000000000 with a return address on its stack that points at
 * a `hlt`: when the app returns (to "the Monitor"), the HLT exit ends the run.
 *
 * All cores: one VM per run, one vCPU per core.  A guest's SMP_SET(code, core) becomes a host
 * task for that core (bm_smp_set_arg with bm_kvm_core_task and the guest address): the core's
 * own thread creates its vCPU on first use and runs the guest code on it, on a 64 KiB stack of
 * its own, until the code returns to the same `hlt`; then the core is idle again, as upstream's
 * cores go back to their slot.  SMP_GET shows the guest's code address.
 *
 * Stopping vCPUs: when core 0's app returns, the other vCPUs must leave guest code before the
 * VM goes away; when another core calls SHUTDOWN / REBOOT, core 0's must.  A vCPU is kicked
 * (kick): run->immediate_exit = 1, then a real-time signal to its thread.  Every vCPU thread
 * blocks that signal, except inside KVM_RUN (KVM_SET_SIGNAL_MASK), so the signal can only end a
 * KVM_RUN, never interrupt the host code of a call; immediate_exit ends a KVM_RUN that starts
 * just after the kick.  stop_cores repeats the kicks until every core thread has let go of
 * the VM (a count it keeps in the machine), so no lost kick can hang the end of a run.
 * Limits (documented in README): STDOUT_SET and CALLBACK_* with guest functions are not
 * supported (they return 0); up to 16 GiB of memory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include "cpu_kvm.h"

#define GDT          0x1000ull
#define PML4         0x2000ull
#define PDP_LOW      0x3000ull
#define PDP_HIGH     0x4000ull
#define PD_LOW       0x10000ull
#define PD_HIGH      0x20000ull
#define STUBS        0x100100ull          /* call stubs, 8 bytes apart */
#define EXIT_STUB    0x100180ull          /* hlt: where the app returns to */
#define CALL_PORT    0xE0                 /* out CALL_PORT+n: call n of the call table */
#define MAX_MEMORY   (16ull << 30)        /* 16 page directories of 1 GiB each side */
#define PAGE_FLAGS   0x83ull              /* present, writable, 2 MiB page */
#define TABLE_FLAGS  0x03ull              /* present, writable */
#define CORE_STACK   (64ull << 10)        /* each secondary core's guest stack */
#define KICK_SIGNAL  (SIGRTMIN + 2)       /* interrupts a vCPU's KVM_RUN (see kick) */
#define DELAY_SLICE  10000ull             /* a vCPU's DELAY looks at must_stop this often (us) */
#define DELAY_MAX    (1ull << 40)         /* longer DELAYs (12 days) are cut to this (us) */

#define GO_ON        3                    /* must_stop: the vCPU may run on */

struct vcpu {
	int fd;
	u32 core;
	struct kvm_run *run;
	struct kvm_regs regs;                 /* when registers are not synced through run */
	pthread_t thread;                     /* the core thread running it */
};

struct bm_kvm {
	int kvm, vm;
	size_t run_size;
	int synced;                           /* registers come through run->s.regs */
	u64 stacks;                           /* physical base of the secondary cores' stacks */
	_Atomic int ending;                   /* core 0's app has returned: other vCPUs stop */
	pthread_mutex_t lock;
	struct { struct kvm_cpuid2 head; struct kvm_cpuid_entry2 entries[256]; } cpuid;
	struct vcpu *_Atomic cpus[BM_MAX_CORES];
};

static void put64(struct bm_machine *m, u64 p, u64 v) { memcpy(m->mem + p, &v, 8); }

/* guest_to_host -- the process address of guest virtual [va, va+len), NULL if outside memory
 *  IN:  m, va, len
 * OUT:  pointer, or NULL */
static void *guest_to_host(struct bm_machine *m, u64 va, u64 len)
{
	u64 phys = va >= BM_APP_VIRTUAL ? va - BM_APP_VIRTUAL + BM_APP_PHYSICAL : va;
	if (phys > m->mem_size || len > m->mem_size - phys)
		return NULL;
	return m->mem + phys;
}

/* host_to_guest -- the guest (identity-mapped physical) address of a process address in memory */
static u64 host_to_guest(struct bm_machine *m, const void *p)
{
	return bm_in_memory(m, p, 0) ? (u64)((const u8 *)p - m->mem) : 0;
}

/* bm_kvm_available -- 1 if /dev/kvm can be opened and speaks API 12, else 0 */
int bm_kvm_available(void)
{
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		return 0;
	int ok = ioctl(kvm, KVM_GET_API_VERSION, 0) == KVM_API_VERSION;
	close(kvm);
	return ok;
}

/* write_loader_state -- GDT, page tables and the call table + stubs, as upstream's loader */
static void write_loader_state(struct bm_machine *m)
{
	put64(m, GDT + 0, 0);
	put64(m, GDT + 8, 0x00209A0000000000ull);        /* 64-bit code, DPL 0 */
	put64(m, GDT + 16, 0x0000920000000000ull);       /* data */
	memset(m->mem + PML4, 0, 0x3000);
	memset(m->mem + PD_LOW, 0, 0x20000);
	put64(m, PML4 + 0, PDP_LOW | TABLE_FLAGS);
	put64(m, PML4 + 8 * 256, PDP_HIGH | TABLE_FLAGS); /* 0xFFFF800000000000 */
	for (u64 i = 0; i < 16; i++) {
		put64(m, PDP_LOW + 8 * i, (PD_LOW + 0x1000 * i) | TABLE_FLAGS);
		put64(m, PDP_HIGH + 8 * i, (PD_HIGH + 0x1000 * i) | TABLE_FLAGS);
	}
	for (u64 page = 0; page * BM_PAGE_SIZE < m->mem_size; page++) {
		put64(m, PD_LOW + 8 * page, (page * BM_PAGE_SIZE) | PAGE_FLAGS);
		if (BM_APP_PHYSICAL + page * BM_PAGE_SIZE < m->mem_size)
			put64(m, PD_HIGH + 8 * page, (BM_APP_PHYSICAL + page * BM_PAGE_SIZE) | PAGE_FLAGS);
	}
	for (u64 n = 0; n < 8; n++) {
		u8 stub[3] = { 0xE6, (u8)(CALL_PORT + n), 0xC3 };   /* out imm8, al ; ret */
		memcpy(m->mem + STUBS + 8 * n, stub, sizeof stub);
		put64(m, BM_CALL_TABLE + 8 * n, STUBS + 8 * n);
	}
	m->mem[EXIT_STUB] = 0xF4;                            /* hlt */
}

/* fail_errno -- record "KVM: what: strerror(errno)"
 *  IN:  what failed
 * OUT:  BM_KVM_FAULT */
static int fail_errno(const char *what)
{
	bm_fail(BM_ERR_IO, "KVM: %s: %s", what, strerror(errno));
	return BM_KVM_FAULT;
}

/* on_kick -- the kick signal's handler: nothing (its coming is what ends KVM_RUN) */
static void on_kick(int signum) { (void)signum; }

/* kick -- make a vCPU leave KVM_RUN, or not enter it: immediate_exit covers a kick that comes
 * just before KVM_RUN, the signal one that comes inside (the thread blocks it everywhere but
 * there, see vcpu_create).  Any thread may kick; the vCPU's own loop then looks at must_stop.
 *  IN:  v
 * OUT:  nothing */
static void kick(struct vcpu *v)
{
	__atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
	pthread_kill(v->thread, KICK_SIGNAL);
}

/* eat_kicks -- take the kick signals pending for the calling thread (blocked outside KVM_RUN,
 * they stay pending and would end every later KVM_RUN at once)
 *  IN:  nothing (the calling thread's pending signals)
 * OUT:  nothing */
static void eat_kicks(void)
{
	sigset_t kicks;
	sigemptyset(&kicks);
	sigaddset(&kicks, KICK_SIGNAL);
	struct timespec now = { 0, 0 };
	while (sigtimedwait(&kicks, NULL, &now) > 0)
		;
}

/* must_stop -- whether a vCPU must leave its loop now
 *  IN:  m, k, core = the vCPU's core
 * OUT:  GO_ON; BM_KVM_SHUTDOWN / BM_KVM_REBOOT when a core stopped the machine; BM_KVM_RETURNED
 *       for cores other than 0 once core 0's app has returned */
static int must_stop(struct bm_machine *m, struct bm_kvm *k, u32 core)
{
	int state = atomic_load(&m->state);
	if (state == BM_STATE_SHUTDOWN)
		return BM_KVM_SHUTDOWN;
	if (state == BM_STATE_REBOOT)
		return BM_KVM_REBOOT;
	return core != 0 && atomic_load(&k->ending) ? BM_KVM_RETURNED : GO_ON;
}

/* vm_open -- a VM whose memory is the machine's flat memory
 *  IN:  k (zeroed, fds -1), m
 * OUT:  0, or BM_KVM_FAULT with the error recorded */
static int vm_open(struct bm_kvm *k, struct bm_machine *m)
{
	k->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (k->kvm < 0)
		return fail_errno("open /dev/kvm");
	k->vm = ioctl(k->kvm, KVM_CREATE_VM, 0);
	if (k->vm < 0)
		return fail_errno("KVM_CREATE_VM");
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = m->mem_size,
		.userspace_addr = (u64)(uintptr_t)m->mem };
	if (ioctl(k->vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		return fail_errno("KVM_SET_USER_MEMORY_REGION");
	ioctl(k->vm, KVM_SET_TSS_ADDR, 0xFFFBD000ul);        /* needed by Intel VMX; outside memory */
	int size = ioctl(k->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (size <= 0)
		return fail_errno("KVM_GET_VCPU_MMAP_SIZE");
	k->run_size = (size_t)size;
	k->cpuid.head.nent = 256;                            /* the host CPU's features for guests */
	if (ioctl(k->kvm, KVM_GET_SUPPORTED_CPUID, &k->cpuid) < 0)
		k->cpuid.head.nent = 0;
	k->synced = ioctl(k->kvm, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS) > 0;
	pthread_mutex_init(&k->lock, NULL);
	struct sigaction action = { .sa_handler = on_kick }; /* a handler, so KVM_RUN returns EINTR */
	sigemptyset(&action.sa_mask);
	sigaction(KICK_SIGNAL, &action, NULL);
	return 0;
}

/* vcpu_free -- unmap, close and free a vCPU
 *  IN:  k, v (a vCPU of k that no thread runs)
 * OUT:  nothing */
static void vcpu_free(struct bm_kvm *k, struct vcpu *v)
{
	munmap(v->run, k->run_size);
	close(v->fd);
	free(v);
}

/* vcpu_create -- vCPU `id` in long mode (upstream's GDT, page tables, no IDT), run by the
 * calling thread: from now on that thread blocks the kick signal, except inside KVM_RUN
 *  IN:  k, id (the calling core's)
 * OUT:  the vCPU, or NULL with the error recorded */
static struct vcpu *vcpu_create(struct bm_kvm *k, u32 id)
{
	struct vcpu *v = calloc(1, sizeof *v);
	if (v == NULL)
		return (void *)bm_fail(BM_ERR_FULL, "out of host memory");
	v->core = id;
	v->thread = pthread_self();
	v->fd = ioctl(k->vm, KVM_CREATE_VCPU, (unsigned long)id);
	if (v->fd < 0) {
		fail_errno("KVM_CREATE_VCPU");
		free(v);
		return NULL;
	}
	v->run = mmap(NULL, k->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
	if (v->run == MAP_FAILED) {
		fail_errno("mmap kvm_run");
		close(v->fd);
		free(v);
		return NULL;
	}
	sigset_t mask, kicks;
	sigemptyset(&kicks);
	sigaddset(&kicks, KICK_SIGNAL);
	pthread_sigmask(SIG_BLOCK, &kicks, &mask);
	sigdelset(&mask, KICK_SIGNAL);                       /* the mask inside KVM_RUN */
	union { struct kvm_signal_mask head; u8 bytes[sizeof(struct kvm_signal_mask) + 8]; } guest_mask;
	guest_mask.head.len = 8;                             /* the kernel's sigset: 64 signals */
	memcpy(guest_mask.bytes + offsetof(struct kvm_signal_mask, sigset), &mask, 8);
	if (ioctl(v->fd, KVM_SET_SIGNAL_MASK, &guest_mask) < 0) {
		fail_errno("KVM_SET_SIGNAL_MASK");
		goto undo;
	}
	if (k->cpuid.head.nent)
		ioctl(v->fd, KVM_SET_CPUID2, &k->cpuid);
	struct kvm_sregs sregs;
	if (ioctl(v->fd, KVM_GET_SREGS, &sregs) == 0) {
		struct kvm_segment code = { .base = 0, .limit = 0xFFFFFFFF, .selector = 8, .type = 11,
					    .present = 1, .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1 };
		struct kvm_segment data = code;
		data.selector = 16;
		data.type = 3;
		data.l = 0;
		data.db = 1;
		sregs.cs = code;
		sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
		sregs.gdt.base = GDT;
		sregs.gdt.limit = 23;
		sregs.idt.base = 0;
		sregs.idt.limit = 0;          /* no handlers: an exception ends in a triple fault */
		sregs.cr3 = PML4;
		sregs.cr4 = 0x20 | 0x200 | 0x400;     /* PAE, OSFXSR, OSXMMEXCPT */
		sregs.cr0 = 0x80050033;               /* PG, AM, WP, NE, ET, MP, PE */
		sregs.efer = 0x500;                   /* LME, LMA */
	}
	if (ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0) {
		fail_errno("KVM_SET_SREGS");
		goto undo;
	}
	if (k->synced)
		v->run->kvm_valid_regs = KVM_SYNC_X86_REGS;
	return v;
undo:
	vcpu_free(k, v);
	return NULL;
}

/* vcpu_enter -- point the vCPU at `rip` with a stack whose return address is the exit stub
 *  IN:  m, v, rip (guest address), stack_top (guest address)
 * OUT:  0, or BM_KVM_FAULT */
static int vcpu_enter(struct bm_machine *m, struct vcpu *v, u64 rip, u64 stack_top)
{
	u64 *stack = guest_to_host(m, stack_top - 8, 8);
	if (stack == NULL)
		return bm_fail(BM_ERR_RANGE, "KVM: the stack at 0x%lx is outside memory", stack_top), BM_KVM_FAULT;
	*stack = EXIT_STUB;
	memset(&v->regs, 0, sizeof v->regs);
	v->regs.rip = rip;
	v->regs.rsp = stack_top - 8;
	v->regs.rflags = 2;
	if (ioctl(v->fd, KVM_SET_REGS, &v->regs) < 0)
		return fail_errno("KVM_SET_REGS");
	v->run->kvm_dirty_regs = 0;
	return 0;
}

/* guest_lock -- SMP_LOCK for a vCPU: spin for the lock word's bit 0, but give up (0) when the
 * vCPU must stop (its lock may be held by a core that is gone)
 *  IN:  m, k, v, word
 * OUT:  1 with the lock taken, 0 without */
static u64 guest_lock(struct bm_machine *m, struct bm_kvm *k, struct vcpu *v, _Atomic u16 *word)
{
	while (atomic_fetch_or_explicit(word, 1, memory_order_acquire) & 1)
		while (atomic_load_explicit(word, memory_order_relaxed) & 1) {
			if (must_stop(m, k, v->core) != GO_ON)
				return 0;
			__builtin_ia32_pause();
		}
	return 1;
}

/* guest_delay -- DELAY for a vCPU: in slices of at most DELAY_SLICE microseconds, so that a
 * vCPU that must stop does not hold up the end of the run
 *  IN:  m, k, v, us = microseconds
 * OUT:  us */
static u64 guest_delay(struct bm_machine *m, struct bm_kvm *k, struct vcpu *v, u64 us)
{
	u64 now = bm_now_ns(), end = now + (us < DELAY_MAX ? us : DELAY_MAX) * 1000ull;
	for (; now < end && must_stop(m, k, v->core) == GO_ON; now = bm_now_ns()) {
		u64 left = (end - now + 999) / 1000;
		b_system(DELAY, left < DELAY_SLICE ? left : DELAY_SLICE, 0);
	}
	return us;
}

/* guest_system -- b_system for a binary: codes that take or return addresses are translated;
 * codes that would call guest functions from the host are not supported (0); codes that wait
 * give up when the vCPU must stop
 *  IN:  m, k, v = the calling vCPU, function, var1, var2 (guest values)
 * OUT:  the result, in guest terms */
static u64 guest_system(struct bm_machine *m, struct bm_kvm *k, struct vcpu *v, u64 function, u64 var1,
			u64 var2)
{
	switch (function) {
	case SMP_LOCK: {
		void *word = guest_to_host(m, var1, 2);
		return word ? guest_lock(m, k, v, word) : 0;
	}
	case SMP_UNLOCK: {
		void *word = guest_to_host(m, var1, 2);
		return word ? b_system(function, (u64)(uintptr_t)word, var2) : 0;
	}
	case DELAY:
		return guest_delay(m, k, v, var1);
	case SHUTDOWN:                               /* core 0 may be spinning in guest code */
	case REBOOT: {
		u64 result = b_system(function, var1, var2);
		if (v->core != 0)
			kick(atomic_load(&k->cpus[0]));
		return result;
	}
	case DUMP_MEM: {
		void *p = guest_to_host(m, var1, var2);
		if (p == NULL)
			return bm_fail(BM_ERR_RANGE, "DUMP_MEM: 0x%lx is outside memory", var1);
		return bm_dump_mem((u64)(uintptr_t)p, var1, var2);
	}
	case SCREEN_LFB_GET:
		return host_to_guest(m, (void *)(uintptr_t)b_system(function, var1, var2));
	case STDOUT_GET:
		return 0;
	case SMP_SET:                                /* the core runs the guest code on its vCPU */
		if (var1 == 0 || (var1 & 0xF) != 0)
			return bm_fail(BM_ERR_ARGUMENT, "SMP_SET: code address 0x%lx is not 16-byte aligned", var1);
		return bm_smp_set_arg(m, (u64)(uintptr_t)bm_kvm_core_task, var2, var1) ? var1 : 0;
	case SMP_GET: {                              /* show the guest's code, not our trampoline */
		u64 slot = b_system(function, var1, var2);
		if ((slot & ~0xFull) == (u64)(uintptr_t)bm_kvm_core_task)
			slot = bm_self->slot_arg | (slot & 0xF);
		return slot;
	}
	case STDOUT_SET:
	case CALLBACK_TIMER:
	case CALLBACK_NETWORK:
	case CALLBACK_KEYBOARD:
		return bm_fail(BM_ERR_STATE, "b_system 0x%lx: guest functions are not supported for binaries", function);
	default:
		return b_system(function, var1, var2);
	}
}

/* do_call -- one call from the guest, upstream's register ABI (baremetal-api.md section 4)
 *  IN:  m, k, v = the calling vCPU, n = call number (call table order), r = its registers
 * OUT:  r updated with the call's results */
static void do_call(struct bm_machine *m, struct bm_kvm *k, struct vcpu *v, unsigned n, struct kvm_regs *r)
{
	void *p;
	if (bm_traced(m)) {                              /* trace.h: the binary's call, once */
		u64 t0 = bm_now_ns(), before[5] = { r->rax, r->rcx, r->rdx, r->rsi, r->rdi };
		const void *data = n == 1 ? guest_to_host(m, r->rsi, r->rcx) : NULL;
		bm_trace_quiet++;                        /* the calls made for it: not traced */
		do_call(m, k, v, n, r);
		bm_trace_quiet--;
		bm_trace_guest_call(m, n, t0, before, (u64[]){ r->rax, r->rcx, r->rdi }, data);
		return;
	}
	switch (n) {
	case 0:                                               /* b_input: AL */
		r->rax = (r->rax & ~0xFFull) | b_input();
		break;
	case 1:                                               /* b_output: RSI, RCX */
		if ((p = guest_to_host(m, r->rsi, r->rcx)) != NULL)
			b_output(p, r->rcx);
		break;
	case 2:                                               /* b_net_tx: RSI, RCX, RDX */
		if ((p = guest_to_host(m, r->rsi, r->rcx)) != NULL)
			b_net_tx(p, r->rcx, r->rdx);
		break;
	case 3: {                                             /* b_net_rx: RDX -> RDI, RCX */
		void *frame = NULL;
		r->rcx = b_net_rx(&frame, r->rdx);
		r->rdi = r->rcx ? host_to_guest(m, frame) : 0;
		break;
	}
	case 4:                                               /* b_nvs_read: RAX, RCX, RDX, RDI -> RCX */
	case 5: {                                             /* b_nvs_write: ... RSI -> RCX */
		u64 address = n == 4 ? r->rdi : r->rsi;
		u64 bytes = r->rcx > (m->mem_size / BM_SECTOR_SIZE) ? m->mem_size + 1 : r->rcx * BM_SECTOR_SIZE;
		p = guest_to_host(m, address, bytes);
		r->rcx = p == NULL ? 0 : (n == 4 ? b_nvs_read(p, r->rax, r->rcx, r->rdx)
						 : b_nvs_write(p, r->rax, r->rcx, r->rdx));
		break;
	}
	case 6:                                               /* b_system: RCX, RAX, RDX -> RAX */
		r->rax = guest_system(m, k, v, r->rcx, r->rax, r->rdx);
		break;
	default:
		break;
	}
}

/* vcpu_loop -- run a vCPU (on its own thread) until its code returns to the exit stub, the
 * machine stops, the run ends (other cores) or the guest faults.  A kick ends KVM_RUN with
 * EINTR: clear immediate_exit (seq_cst, so the must_stop that follows sees what the kicker
 * stored before kicking), take the signal, look at must_stop.
 *  IN:  m, k, v
 * OUT:  enum bm_kvm_end; *rax = RAX when the code returned.  BM_KVM_FAULT: error recorded */
static int vcpu_loop(struct bm_machine *m, struct bm_kvm *k, struct vcpu *v, u64 *rax)
{
	u32 core = v->core;
	for (;;) {
		int end = must_stop(m, k, core);
		if (end != GO_ON)
			return end;
		if (ioctl(v->fd, KVM_RUN, 0) < 0) {
			if (errno != EINTR && errno != EAGAIN)
				return fail_errno("KVM_RUN");
			__atomic_store_n(&v->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
			eat_kicks();
			continue;
		}
		struct kvm_run *run = v->run;
		struct kvm_regs *r = k->synced ? &run->s.regs.regs : &v->regs;
		if (!k->synced && ioctl(v->fd, KVM_GET_REGS, r) < 0)
			return fail_errno("KVM_GET_REGS");
		if (run->exit_reason == KVM_EXIT_IO && run->io.direction == KVM_EXIT_IO_OUT &&
		    run->io.port >= CALL_PORT && run->io.port < CALL_PORT + 8) {
			do_call(m, k, v, run->io.port - CALL_PORT, r);
			if (k->synced)
				run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
			else if (ioctl(v->fd, KVM_SET_REGS, r) < 0)
				return fail_errno("KVM_SET_REGS");
			continue;
		}
		if (run->exit_reason == KVM_EXIT_HLT && r->rip == EXIT_STUB + 1) {
			*rax = r->rax;
			return BM_KVM_RETURNED;
		}
		switch (run->exit_reason) {
		case KVM_EXIT_SHUTDOWN:
			bm_fail(BM_ERR_STATE, "the app crashed on core %u (CPU exception, triple fault) near "
				"rip=0x%llx rsp=0x%llx", core, r->rip, r->rsp);
			break;
		case KVM_EXIT_MMIO:
			bm_fail(BM_ERR_RANGE, "the app touched 0x%llx on core %u, outside the machine's memory "
				"(rip=0x%llx)", (unsigned long long)run->mmio.phys_addr, core, r->rip);
			break;
		case KVM_EXIT_HLT:
			bm_fail(BM_ERR_STATE, "the app halted the CPU (hlt) on core %u at rip=0x%llx", core, r->rip);
			break;
		case KVM_EXIT_IO:
			bm_fail(BM_ERR_STATE, "the app used I/O port 0x%x on core %u (rip=0x%llx): no device there",
				run->io.port, core, r->rip);
			break;
		default:
			bm_fail(BM_ERR_STATE, "KVM exit %u on core %u at rip=0x%llx", run->exit_reason, core, r->rip);
		}
		return BM_KVM_FAULT;
	}
}

/* core_run -- run guest code on the calling core's vCPU (made on first use) until it returns
 *  IN:  m, k (held: the caller counts in m->kvm_users), core = the calling core, guest_code
 * OUT:  enum bm_kvm_end; BM_KVM_FAULT with the error recorded */
static int core_run(struct bm_machine *m, struct bm_kvm *k, u32 core, u64 guest_code)
{
	if (atomic_load(&k->ending))
		return BM_KVM_RETURNED;
	struct vcpu *v = atomic_load(&k->cpus[core]);
	if (v == NULL) {
		pthread_mutex_lock(&k->lock);            /* KVM_CREATE_VCPU on the VM, one at a time */
		v = vcpu_create(k, core);
		pthread_mutex_unlock(&k->lock);
		if (v == NULL)
			return BM_KVM_FAULT;
		atomic_store(&k->cpus[core], v);
	}
	u64 rax;
	int end = vcpu_enter(m, v, guest_code, k->stacks + CORE_STACK * core);
	return end == 0 ? vcpu_loop(m, k, v, &rax) : end;
}

/* bm_kvm_core_task -- a core's task for a guest SMP_SET: run the guest code on this core's vCPU.
 * The thread counts itself in m->kvm_users before it reads m->kvm (see stop_cores).
 *  IN:  guest_code = the guest address SMP_SET was given (the core's slot argument)
 * OUT:  nothing; a fault is reported on stderr ("core N: ...") and the core goes idle */
void bm_kvm_core_task(u64 guest_code)
{
	struct bm_core *self = bm_self;
	struct bm_machine *m = self->machine;
	atomic_fetch_add(&m->kvm_users, 1);
	struct bm_kvm *k = atomic_load(&m->kvm);
	int end = k != NULL ? core_run(m, k, self->id, guest_code) : BM_KVM_RETURNED;
	atomic_fetch_sub(&m->kvm_users, 1);
	if (end != BM_KVM_FAULT)
		return;
	char line[320];
	int n = snprintf(line, sizeof line, "core %u: %s\n", self->id, bm_error.message);
	if (write(2, line, (size_t)n) < 0)
		return;
}

/* stop_cores -- end the run for the other cores; returns once no core thread uses k.
 * Handshake: m->kvm is cleared, then while m->kvm_users is not 0 every other vCPU is kicked
 * again, with a growing pause (20 us .. 1 ms) between rounds.  A core thread counts itself in
 * kvm_users before it reads m->kvm (both seq_cst): either it reads NULL, or this loop sees it
 * counted.  A counted thread leaves: must_stop says so before each KVM_RUN, a kick ends a
 * KVM_RUN under way, and the calls that wait (SMP_LOCK, DELAY) give up.  Slot tasks no core
 * has taken yet are forgotten, so none runs in a later run.
 *  IN:  m, k (core 0's vCPU has left its loop) */
static void stop_cores(struct bm_machine *m, struct bm_kvm *k)
{
	atomic_store(&k->ending, 1);
	atomic_store(&m->kvm, NULL);
	for (long pause_ns = 20000; atomic_load(&m->kvm_users) != 0;) {
		for (u32 i = 1; i < m->num_cores; i++) {
			struct vcpu *v = atomic_load(&k->cpus[i]);
			if (v != NULL)
				kick(v);
		}
		struct timespec pause = { 0, pause_ns };
		nanosleep(&pause, NULL);
		if (pause_ns < 1000000)
			pause_ns *= 2;
	}
	bm_smp_cancel(m, (u64)(uintptr_t)bm_kvm_core_task);
}

/* run_app -- run the binary loaded at physical 0x200000 on the calling core (core 0)
 *  IN:  m (booted; the calling thread bound to it), stack_top = guest address of the stack's top
 * OUT:  enum bm_kvm_end; *rax = the app's RAX when it returned.  BM_KVM_FAULT with the error
 *       recorded (where the app crashed, or what KVM refused) */
static int run_app(struct bm_machine *m, u64 stack_top, u64 *rax)
{
	bm_error_clear();
	if (m->mem_size > MAX_MEMORY)
		return bm_fail(BM_ERR_ARGUMENT, "KVM: binaries run on machines of at most 16 GiB"), BM_KVM_FAULT;
	if (atomic_load(&m->kvm) != NULL)
		return bm_fail(BM_ERR_STATE, "KVM: a binary is already running on this machine"), BM_KVM_FAULT;
	struct bm_kvm *k = calloc(1, sizeof *k);
	if (k == NULL)
		return bm_fail(BM_ERR_FULL, "out of host memory"), BM_KVM_FAULT;
	k->kvm = k->vm = -1;
	sigset_t thread_mask;                            /* vcpu_create blocks the kick signal */
	pthread_sigmask(SIG_BLOCK, NULL, &thread_mask);
	write_loader_state(m);
	int end = vm_open(k, m);
	if (end == 0 && m->num_cores > 1) {
		k->stacks = bm_mem_alloc(m, CORE_STACK * m->num_cores);
		if (k->stacks == 0)
			end = BM_KVM_FAULT;
	}
	struct vcpu *bsp = end == 0 ? vcpu_create(k, 0) : NULL;
	if (end == 0 && bsp == NULL)
		end = BM_KVM_FAULT;
	if (end == 0) {
		atomic_store(&k->cpus[0], bsp);
		atomic_store(&m->kvm, k);
		end = vcpu_enter(m, bsp, BM_APP_VIRTUAL, stack_top);
		if (end == 0)
			end = vcpu_loop(m, k, bsp, rax);
	}
	struct bm_error error = bm_error;                /* stopping the others must not lose it */
	stop_cores(m, k);
	for (u32 i = 0; i < BM_MAX_CORES; i++)
		if (k->cpus[i] != NULL)
			vcpu_free(k, k->cpus[i]);
	if (k->stacks)
		bm_mem_free(m, k->stacks);
	if (k->vm >= 0)
		close(k->vm);
	if (k->kvm >= 0)
		close(k->kvm);
	free(k);
	eat_kicks();                                     /* a SHUTDOWN kick that came late */
	pthread_sigmask(SIG_SETMASK, &thread_mask, NULL);
	bm_error = error;
	return end;
}

/* bm_kvm_run_app -- run the binary loaded at physical 0x200000 on core 0 (the caller) and say
 * how the run ended
 *  IN:  m (booted; the calling thread bound to it), stack_top = guest address of the stack's top,
 *       out = the outcome to fill
 * OUT:  out->how: BM_END_RETURNED (value = RAX), _SHUTDOWN, _REBOOT, or BM_END_EXCEPTION with
 *       the message saying where the app crashed or what KVM refused */
void bm_kvm_run_app(struct bm_machine *m, u64 stack_top, struct bm_outcome *out)
{
	u64 rax = 0;
	int end = run_app(m, stack_top, &rax);
	int how = end == BM_KVM_RETURNED ? BM_END_RETURNED : end == BM_KVM_SHUTDOWN ? BM_END_SHUTDOWN :
		  end == BM_KVM_REBOOT ? BM_END_REBOOT : BM_END_EXCEPTION;
	bm_outcome_set(out, how, 0, how == BM_END_EXCEPTION ? bm_error.message : NULL);
	out->value = rax;
}

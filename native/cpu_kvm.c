/* cpu_kvm.c -- the KVM CPU backend for flat binaries (guest.h's struct bm_cpu_ops).
 *
 * One VM per run whose memory is the machine's flat memory (one KVM memory slot over it); one
 * vCPU per core, made by the core's own thread, in long mode over guest.c's loader state.  A
 * call stub's `out CALL_PORT+n` exits to us with the guest's registers (synced through kvm_run
 * when KVM_CAP_SYNC_REGS is there): we hand them to bm_guest_call and resume at the `ret`.  An
 * exception goes through guest.c's IDT to `out FAULT_PORT` with the vector in AL; the faulting
 * rip is on the stack (after the error code for vectors that push one).  An exception that
 * cannot be delivered (a bad stack) ends in a triple fault, reported as such.
 *
 * Stopping a vCPU (stop): run->immediate_exit = 1, then a real-time signal to its thread.
 * Every vCPU thread blocks that signal, except inside KVM_RUN (KVM_SET_SIGNAL_MASK), so the
 * signal can only end a KVM_RUN, never interrupt the host code of a call; immediate_exit ends
 * a KVM_RUN that starts just after the stop.
 *
 * Under a debugger (gdbstub.c): KVM_SET_GUEST_DEBUG, single steps with KVM_GUESTDBG_SINGLESTEP
 * and breakpoints in the 4 debug registers (KVM_GUESTDBG_USE_HW_BP); a KVM_EXIT_DEBUG ends the
 * run with BM_GUEST_DEBUG.
 *
 * KVM runs ring 0 natively only with VMX/SVM; under PVM (a guest kernel's KVM without them)
 * ring 0 is emulated instruction by instruction, slowly, and SSE fails: pybaremetal/cpu picks
 * the emulated CPU there (see cpu/__init__.py).
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

#define KICK_SIGNAL  (SIGRTMIN + 2)       /* interrupts a vCPU's KVM_RUN (see stop) */
#define PML4         0x2000ull
#define GDT          0x1000ull

struct kvm_cpu {
	struct bm_guest_cpu base;             /* first: guest.c's view */
	int fd;
	struct kvm_run *run;
	struct kvm_regs regs;                 /* when registers are not synced through run */
};

struct kvm_vm {
	int kvm, vm;
	size_t run_size;
	int synced;                           /* registers come through run->s.regs */
	sigset_t thread_mask;                 /* core 0's signal mask before the run */
	struct { struct kvm_cpuid2 head; struct kvm_cpuid_entry2 entries[256]; } cpuid;
};

/* bm_kvm_available -- 1 if /dev/kvm can be opened and speaks API 12, else 0 */
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

/* fail_errno -- record "KVM: what: strerror(errno)"
 *  IN:  what failed
 * OUT:  BM_GUEST_FAULT */
static int fail_errno(const char *what)
{
	bm_fail(BM_ERR_IO, "KVM: %s: %s", what, strerror(errno));
	return BM_GUEST_FAULT;
}

/* on_kick -- the kick signal's handler: nothing (its coming is what ends KVM_RUN) */
static void on_kick(int signum) { (void)signum; }

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

/* kvm_stop -- make a vCPU leave KVM_RUN, or not enter it: immediate_exit covers a stop that
 * comes just before KVM_RUN, the signal one that comes inside (the thread blocks it everywhere
 * but there, see kvm_cpu_create).  Any thread may call it.
 *  IN:  c
 * OUT:  nothing */
static void kvm_stop(struct bm_guest_cpu *c)
{
	struct kvm_cpu *v = (struct kvm_cpu *)c;
	__atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
	pthread_kill(c->thread, KICK_SIGNAL);
}

/* set_brand -- the brand string leaves (0x80000002..4) of a CPUID table say what the host's
 * do (KVM's supported list leaves them to user space), added where the table lacks them
 *  IN:  head (nent: the entries used; 0 leaves the table empty), entries, room
 * OUT:  nothing */
static void set_brand(struct kvm_cpuid2 *head, struct kvm_cpuid_entry2 *entries, u32 room)
{
	const u32 *brand = bm_guest_host_brand();
	if (head->nent == 0 || brand == NULL)
		return;
	for (u32 leaf = 0x80000002u; leaf <= 0x80000004u; leaf++) {
		u32 i = 0;
		while (i < head->nent && entries[i].function != leaf)
			i++;
		if (i == head->nent) {
			if (i == room)
				return;
			memset(&entries[i], 0, sizeof entries[i]);
			entries[i].function = leaf;
			head->nent++;
		}
		const u32 *w = &brand[4 * (leaf - 0x80000002u)];
		entries[i].eax = w[0], entries[i].ebx = w[1], entries[i].ecx = w[2], entries[i].edx = w[3];
	}
}

/* kvm_open -- a VM whose memory is the machine's flat memory
 *  IN:  g (g->m booted; called on core 0's thread)
 * OUT:  0, or BM_GUEST_FAULT with the error recorded (g->backend then NULL) */
static int kvm_open(struct bm_guest *g)
{
	struct kvm_vm *k = calloc(1, sizeof *k);
	if (k == NULL)
		return bm_fail(BM_ERR_FULL, "out of host memory"), BM_GUEST_FAULT;
	k->vm = -1;
	pthread_sigmask(SIG_BLOCK, NULL, &k->thread_mask);   /* kvm_cpu_create blocks the kick */
	k->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	int end = 0;
	if (k->kvm < 0)
		end = fail_errno("open /dev/kvm");
	else if ((k->vm = ioctl(k->kvm, KVM_CREATE_VM, 0)) < 0)
		end = fail_errno("KVM_CREATE_VM");
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = g->m->mem_size,
		.userspace_addr = (u64)(uintptr_t)g->m->mem };
	if (end == 0 && ioctl(k->vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		end = fail_errno("KVM_SET_USER_MEMORY_REGION");
	int size = end == 0 ? ioctl(k->kvm, KVM_GET_VCPU_MMAP_SIZE, 0) : 0;
	if (end == 0 && size <= 0)
		end = fail_errno("KVM_GET_VCPU_MMAP_SIZE");
	if (end != 0) {
		if (k->vm >= 0)
			close(k->vm);
		if (k->kvm >= 0)
			close(k->kvm);
		free(k);
		return end;
	}
	ioctl(k->vm, KVM_SET_TSS_ADDR, 0xFFFBD000ul);        /* needed by Intel VMX; outside memory */
	k->run_size = (size_t)size;
	k->cpuid.head.nent = 256;                            /* the host CPU's features for guests */
	if (ioctl(k->kvm, KVM_GET_SUPPORTED_CPUID, &k->cpuid) < 0)
		k->cpuid.head.nent = 0;
	set_brand(&k->cpuid.head, k->cpuid.entries, 256);
	k->synced = ioctl(k->kvm, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS) > 0;
	struct sigaction action = { .sa_handler = on_kick }; /* a handler, so KVM_RUN returns EINTR */
	sigemptyset(&action.sa_mask);
	sigaction(KICK_SIGNAL, &action, NULL);
	g->backend = k;
	return 0;
}

/* kvm_close -- close the VM; core 0's thread gets its signal mask back
 *  IN:  g (every vCPU freed; called on core 0's thread) */
static void kvm_close(struct bm_guest *g)
{
	struct kvm_vm *k = g->backend;
	close(k->vm);
	close(k->kvm);
	eat_kicks();                                     /* a SHUTDOWN kick that came late */
	pthread_sigmask(SIG_SETMASK, &k->thread_mask, NULL);
	free(k);
}

/* kvm_cpu_free -- unmap, close and free a vCPU
 *  IN:  c (a vCPU that no thread runs) */
static void kvm_cpu_free(struct bm_guest_cpu *c)
{
	struct kvm_cpu *v = (struct kvm_cpu *)c;
	munmap(v->run, ((struct kvm_vm *)c->guest->backend)->run_size);
	close(v->fd);
	free(v);
}

/* kvm_cpu_create -- vCPU `id` in long mode (guest.c's GDT, IDT, page tables), run by the
 * calling thread: from now on that thread blocks the kick signal, except inside KVM_RUN
 *  IN:  g, id
 * OUT:  the vCPU, or NULL with the error recorded */
static struct bm_guest_cpu *kvm_cpu_create(struct bm_guest *g, u32 id)
{
	struct kvm_vm *k = g->backend;
	struct kvm_cpu *v = calloc(1, sizeof *v);
	if (v == NULL)
		return (void *)bm_fail(BM_ERR_FULL, "out of host memory");
	v->base.guest = g;
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
		sregs.idt.base = 0;                   /* guest.c's IDT: each vector reports itself */
		sregs.idt.limit = 16 * BM_GUEST_VECTORS - 1;
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
	return &v->base;
undo:
	kvm_cpu_free(&v->base);
	return NULL;
}

/* to_guest_regs / from_guest_regs -- KVM's registers <-> the ABI's */
static void to_guest_regs(const struct kvm_regs *k, struct bm_guest_regs *r)
{
	*r = (struct bm_guest_regs){ k->rax, k->rbx, k->rcx, k->rdx, k->rsi, k->rdi, k->rbp, k->rsp,
				     k->rip, k->rflags };
}
static void from_guest_regs(const struct bm_guest_regs *r, struct kvm_regs *k)
{
	k->rax = r->rax, k->rbx = r->rbx, k->rcx = r->rcx, k->rdx = r->rdx, k->rsi = r->rsi;
	k->rdi = r->rdi, k->rbp = r->rbp, k->rsp = r->rsp, k->rip = r->rip, k->rflags = r->rflags;
}

/* kvm_set_regs -- the ABI registers of a vCPU that is not running (others are zeroed)
 *  IN:  c, r
 * OUT:  0, or BM_GUEST_FAULT */
static int kvm_set_regs(struct bm_guest_cpu *c, const struct bm_guest_regs *r)
{
	struct kvm_cpu *v = (struct kvm_cpu *)c;
	memset(&v->regs, 0, sizeof v->regs);
	from_guest_regs(r, &v->regs);
	if (ioctl(v->fd, KVM_SET_REGS, &v->regs) < 0)
		return fail_errno("KVM_SET_REGS");
	v->run->kvm_dirty_regs = 0;
	return 0;
}

/* kvm_get_regs -- the ABI registers of a vCPU that is not running
 *  IN:  c
 * OUT:  0 and *r, or BM_GUEST_FAULT */
static int kvm_get_regs(struct bm_guest_cpu *c, struct bm_guest_regs *r)
{
	struct kvm_cpu *v = (struct kvm_cpu *)c;
	if (ioctl(v->fd, KVM_GET_REGS, &v->regs) < 0)
		return fail_errno("KVM_GET_REGS");
	to_guest_regs(&v->regs, r);
	return 0;
}

/* fault -- an exception reported by guest.c's IDT stub: the frame is on the guest's stack
 *  IN:  c, vector, r = registers at the stub's OUT
 * OUT:  bm_guest_fault's value */
static int fault(struct kvm_cpu *v, unsigned vector, const struct kvm_regs *r)
{
	int has_code = vector == 8 || (vector >= 10 && vector <= 14) || vector == 17 || vector == 21;
	const u64 *frame = bm_guest_to_host(v->base.guest->m, r->rsp, 16);
	u64 cr2 = 0;
	struct kvm_sregs sregs;
	if (vector == 14 && ioctl(v->fd, KVM_GET_SREGS, &sregs) == 0)
		cr2 = sregs.cr2;
	if (frame == NULL)
		return bm_guest_fault(&v->base, 255, 0, r->rip, 0);
	return bm_guest_fault(&v->base, vector, has_code ? frame[0] : 0, frame[has_code], cr2);
}

/* deliver_tick -- a timer tick for core 0 (bm_guest_interrupt), between two KVM_RUNs: the
 * vCPU is at an instruction boundary (a stop ends KVM_RUN there)
 *  IN:  v, k (the vCPU has run: with synced registers, run->s.regs holds its state) */
static void deliver_tick(struct kvm_cpu *v, struct kvm_vm *k)
{
	struct kvm_regs *r = k->synced ? &v->run->s.regs.regs : &v->regs;
	if (!k->synced && ioctl(v->fd, KVM_GET_REGS, r) < 0)
		return;
	struct bm_guest_regs regs;
	to_guest_regs(r, &regs);
	if (bm_guest_interrupt(&v->base, &regs) == 0)
		return;
	r->rsp = regs.rsp;
	r->rip = regs.rip;
	if (k->synced)
		v->run->kvm_dirty_regs |= KVM_SYNC_X86_REGS;
	else
		(void)ioctl(v->fd, KVM_SET_REGS, r);
}

/* kvm_run -- run a vCPU (on its own thread) until its code returns to the exit stub, it must
 * stop, or it faults.  A stop ends KVM_RUN with EINTR: clear immediate_exit (seq_cst, so the
 * must_stop that follows sees what the stopper stored before), take the signal, look.
 *  IN:  c (registers set)
 * OUT:  enum bm_guest_end; BM_GUEST_FAULT with the error recorded */
static int kvm_run(struct bm_guest_cpu *c)
{
	struct kvm_cpu *v = (struct kvm_cpu *)c;
	struct kvm_vm *k = c->guest->backend;
	for (int ran = 0;; ran = 1) {
		int end = bm_guest_must_stop(c);
		if (end != BM_GUEST_GO_ON)
			return end;
		if (ran && bm_guest_tick_waiting(c))
			deliver_tick(v, k);
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
		    run->io.port >= BM_GUEST_CALL_PORT && run->io.port < BM_GUEST_CALL_PORT + BM_GUEST_CALLS) {
			struct bm_guest_regs regs;
			to_guest_regs(r, &regs);
			bm_guest_call(c, run->io.port - BM_GUEST_CALL_PORT, &regs);
			from_guest_regs(&regs, r);
			if (k->synced)
				run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
			else if (ioctl(v->fd, KVM_SET_REGS, r) < 0)
				return fail_errno("KVM_SET_REGS");
			continue;
		}
		if (run->exit_reason == KVM_EXIT_IO && run->io.port == BM_GUEST_FAULT_PORT)
			return fault(v, r->rax & 0xFF, r);
		if (run->exit_reason == KVM_EXIT_HLT && r->rip == BM_GUEST_EXIT_STUB + 1)
			return BM_GUEST_RETURNED;
		if (run->exit_reason == KVM_EXIT_DEBUG)
			return BM_GUEST_DEBUG;
		if (run->exit_reason == KVM_EXIT_HLT) {          /* the guest's own: wait, go on after it */
			end = bm_guest_halt(c);
			if (end != BM_GUEST_GO_ON)
				return end;
			continue;
		}
		switch (run->exit_reason) {
		case KVM_EXIT_SHUTDOWN:
			return bm_guest_fault(c, 255, 0, r->rip, 0);
		case KVM_EXIT_MMIO:
			bm_fail(BM_ERR_RANGE, "the app touched 0x%llx on core %u, outside the machine's memory "
				"(rip 0x%llx)", (unsigned long long)run->mmio.phys_addr, c->core, r->rip);
			break;
		case KVM_EXIT_IO:
			bm_fail(BM_ERR_STATE, "the app used I/O port 0x%x on core %u (rip 0x%llx): no device there",
				run->io.port, c->core, r->rip);
			break;
		case KVM_EXIT_INTERNAL_ERROR:
			bm_fail(BM_ERR_STATE, "KVM could not run the instruction at rip 0x%llx on core %u (KVM exit "
				"%u: this KVM emulates ring 0 and lacks it; try --cpu emu)", r->rip, c->core,
				run->exit_reason);
			break;
		default:
			bm_fail(BM_ERR_STATE, "KVM exit %u on core %u at rip 0x%llx", run->exit_reason, c->core, r->rip);
		}
		return BM_GUEST_FAULT;
	}
}

/* kvm_get_state -- every register of a vCPU that is not running (KVM_GET_REGS, _SREGS, _FPU)
 *  IN:  c
 * OUT:  0 and *s, or BM_GUEST_FAULT */
static int kvm_get_state(struct bm_guest_cpu *c, struct bm_cpu_state *s)
{
	struct kvm_cpu *v = (struct kvm_cpu *)c;
	struct kvm_regs r;
	struct kvm_sregs sr;
	struct kvm_fpu fpu;
	if (ioctl(v->fd, KVM_GET_REGS, &r) < 0 || ioctl(v->fd, KVM_GET_SREGS, &sr) < 0)
		return fail_errno("KVM_GET_REGS");
	memset(s, 0, sizeof *s);
	u64 gpr[16] = { r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp,
			r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15 };
	memcpy(s->gpr, gpr, sizeof gpr);
	s->rip = r.rip, s->rflags = r.rflags;
	u64 seg[6] = { sr.cs.selector, sr.ss.selector, sr.ds.selector, sr.es.selector,
		       sr.fs.selector, sr.gs.selector };
	memcpy(s->seg, seg, sizeof seg);
	s->fs_base = sr.fs.base, s->gs_base = sr.gs.base;
	s->cr0 = sr.cr0, s->cr2 = sr.cr2, s->cr3 = sr.cr3, s->cr4 = sr.cr4, s->efer = sr.efer;
	if (ioctl(v->fd, KVM_GET_FPU, &fpu) == 0) {
		memcpy(s->xmm, fpu.xmm, sizeof s->xmm);
		s->mxcsr = fpu.mxcsr;
	}
	return 0;
}

/* kvm_set_state -- gprs, rip, rflags, fs_base, gs_base, xmm, mxcsr of a vCPU that is not running
 *  IN:  c, s
 * OUT:  0, or BM_GUEST_FAULT */
static int kvm_set_state(struct bm_guest_cpu *c, const struct bm_cpu_state *s)
{
	struct kvm_cpu *v = (struct kvm_cpu *)c;
	struct kvm_regs r;
	struct kvm_sregs sr;
	struct kvm_fpu fpu;
	if (ioctl(v->fd, KVM_GET_SREGS, &sr) < 0 || ioctl(v->fd, KVM_GET_FPU, &fpu) < 0)
		return fail_errno("KVM_GET_SREGS");
	const u64 *g = s->gpr;
	r = (struct kvm_regs){ .rax = g[0], .rbx = g[1], .rcx = g[2], .rdx = g[3], .rsi = g[4],
			       .rdi = g[5], .rbp = g[6], .rsp = g[7], .r8 = g[8], .r9 = g[9], .r10 = g[10],
			       .r11 = g[11], .r12 = g[12], .r13 = g[13], .r14 = g[14], .r15 = g[15],
			       .rip = s->rip, .rflags = s->rflags };
	sr.fs.base = s->fs_base, sr.gs.base = s->gs_base;
	memcpy(fpu.xmm, s->xmm, sizeof fpu.xmm);
	fpu.mxcsr = s->mxcsr;
	v->run->kvm_dirty_regs = 0;
	if (ioctl(v->fd, KVM_SET_REGS, &r) < 0 || ioctl(v->fd, KVM_SET_SREGS, &sr) < 0 ||
	    ioctl(v->fd, KVM_SET_FPU, &fpu) < 0)
		return fail_errno("KVM_SET_REGS");
	return 0;
}

/* kvm_debug -- KVM_SET_GUEST_DEBUG: a single step, breakpoints in the debug registers
 *  IN:  c, d (NULL: nothing; at most 4 breakpoints)
 * OUT:  0, or BM_GUEST_FAULT (too many breakpoints, or KVM refused) */
static int kvm_debug(struct bm_guest_cpu *c, const struct bm_cpu_debug *d)
{
	struct kvm_cpu *v = (struct kvm_cpu *)c;
	struct kvm_guest_debug debug;
	memset(&debug, 0, sizeof debug);
	if (d != NULL && d->n > 4)
		return bm_fail(BM_ERR_FULL, "KVM: at most 4 breakpoints (debug registers)"), BM_GUEST_FAULT;
	if (d != NULL && (d->step || d->n)) {
		debug.control = KVM_GUESTDBG_ENABLE | (d->step ? KVM_GUESTDBG_SINGLESTEP : 0) |
				(d->n ? KVM_GUESTDBG_USE_HW_BP : 0);
		debug.arch.debugreg[7] = 0x400;              /* bit 10 is always 1 */
		for (unsigned i = 0; i < d->n; i++) {        /* execute breakpoints: RW=00, LEN=00 */
			debug.arch.debugreg[i] = d->at[i];
			debug.arch.debugreg[7] |= 1ull << (2 * i);
		}
	}
	if (ioctl(v->fd, KVM_SET_GUEST_DEBUG, &debug) < 0)
		return fail_errno("KVM_SET_GUEST_DEBUG");
	return 0;
}

static const struct bm_cpu_ops kvm_ops = {
	.name = "kvm",
	.open = kvm_open,
	.cpu_create = kvm_cpu_create,
	.set_regs = kvm_set_regs,
	.get_regs = kvm_get_regs,
	.run = kvm_run,
	.stop = kvm_stop,
	.cpu_free = kvm_cpu_free,
	.close = kvm_close,
	.get_state = kvm_get_state,
	.set_state = kvm_set_state,
	.debug = kvm_debug,
	.interrupt = kvm_stop,
};

/* bm_cpu_kvm_ops -- the KVM backend's table (for bm_guest_run_app) */
const struct bm_cpu_ops *bm_cpu_kvm_ops(void) { return &kvm_ops; }

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
 * Limits (documented in README): one vCPU (SMP_SET from a binary returns 0), STDOUT_SET and
 * CALLBACK_* with guest functions are not supported (they return 0), up to 16 GiB of memory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
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

struct vcpu {
	int kvm, vm, cpu;
	struct kvm_run *run;
	size_t run_size;
	int synced;                           /* registers come through run->s.regs */
	struct kvm_regs regs;
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

static int fail_errno(const char *what)
{
	bm_fail(BM_ERR_IO, "KVM: %s: %s", what, strerror(errno));
	return BM_KVM_FAULT;
}

/* vcpu_open -- a VM over the machine's memory and one vCPU in long mode at the app's entry
 *  IN:  v, m, stack_top (guest address; the return address is pushed below it)
 * OUT:  0, or BM_KVM_FAULT with the error recorded */
static int vcpu_open(struct vcpu *v, struct bm_machine *m, u64 stack_top)
{
	v->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (v->kvm < 0)
		return fail_errno("open /dev/kvm");
	v->vm = ioctl(v->kvm, KVM_CREATE_VM, 0);
	if (v->vm < 0)
		return fail_errno("KVM_CREATE_VM");
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = m->mem_size,
		.userspace_addr = (u64)(uintptr_t)m->mem };
	if (ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		return fail_errno("KVM_SET_USER_MEMORY_REGION");
	ioctl(v->vm, KVM_SET_TSS_ADDR, 0xFFFBD000ul);        /* needed by Intel VMX; outside memory */
	v->cpu = ioctl(v->vm, KVM_CREATE_VCPU, 0);
	if (v->cpu < 0)
		return fail_errno("KVM_CREATE_VCPU");
	int size = ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (size <= 0)
		return fail_errno("KVM_GET_VCPU_MMAP_SIZE");
	v->run_size = (size_t)size;
	v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->cpu, 0);
	if (v->run == MAP_FAILED) {
		v->run = NULL;
		return fail_errno("mmap kvm_run");
	}

	/* the host CPU's features (SSE & co.) for the guest */
	struct { struct kvm_cpuid2 head; struct kvm_cpuid_entry2 entries[256]; } cpuid = { .head.nent = 256 };
	if (ioctl(v->kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) == 0)
		ioctl(v->cpu, KVM_SET_CPUID2, &cpuid);

	struct kvm_sregs sregs;
	if (ioctl(v->cpu, KVM_GET_SREGS, &sregs) < 0)
		return fail_errno("KVM_GET_SREGS");
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
	sregs.idt.limit = 0;                  /* no handlers: an exception ends in a triple fault */
	sregs.cr3 = PML4;
	sregs.cr4 = 0x20 | 0x200 | 0x400;     /* PAE, OSFXSR, OSXMMEXCPT */
	sregs.cr0 = 0x80050033;               /* PG, AM, WP, NE, ET, MP, PE */
	sregs.efer = 0x500;                   /* LME, LMA */
	if (ioctl(v->cpu, KVM_SET_SREGS, &sregs) < 0)
		return fail_errno("KVM_SET_SREGS");

	u64 *stack = guest_to_host(m, stack_top - 8, 8);
	if (stack == NULL)
		return bm_fail(BM_ERR_RANGE, "KVM: the stack at 0x%lx is outside memory", stack_top), BM_KVM_FAULT;
	*stack = EXIT_STUB;
	memset(&v->regs, 0, sizeof v->regs);
	v->regs.rip = BM_APP_VIRTUAL;
	v->regs.rsp = stack_top - 8;
	v->regs.rflags = 2;
	if (ioctl(v->cpu, KVM_SET_REGS, &v->regs) < 0)
		return fail_errno("KVM_SET_REGS");
	v->synced = ioctl(v->kvm, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS) > 0;
	if (v->synced)
		v->run->kvm_valid_regs = KVM_SYNC_X86_REGS;
	return 0;
}

static void vcpu_close(struct vcpu *v)
{
	if (v->run != NULL)
		munmap(v->run, v->run_size);
	if (v->cpu >= 0)
		close(v->cpu);
	if (v->vm >= 0)
		close(v->vm);
	if (v->kvm >= 0)
		close(v->kvm);
}

/* guest_system -- b_system for a binary: codes that take or return addresses are translated;
 * codes that would call guest functions from the host are not supported (0)
 *  IN:  m, function, var1, var2 (guest values)
 * OUT:  the result, in guest terms */
static u64 guest_system(struct bm_machine *m, u64 function, u64 var1, u64 var2)
{
	switch (function) {
	case SMP_LOCK:
	case SMP_UNLOCK: {
		void *word = guest_to_host(m, var1, 2);
		return word ? b_system(function, (u64)(uintptr_t)word, var2) : 0;
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
	case SMP_SET:
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
 *  IN:  m, n = call number (call table order), r = the guest's registers
 * OUT:  r updated with the call's results */
static void do_call(struct bm_machine *m, unsigned n, struct kvm_regs *r)
{
	void *p;
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
		r->rax = guest_system(m, r->rcx, r->rax, r->rdx);
		break;
	default:
		break;
	}
}

/* bm_kvm_run_app -- run the binary loaded at physical 0x200000 on the calling core (core 0)
 *  IN:  m (booted; the calling thread bound to it), stack_top = guest address of the stack's top
 * OUT:  enum bm_kvm_end; *rax = the app's RAX when it returned.  BM_KVM_FAULT with the error
 *       recorded (where the app crashed, or what KVM refused) */
int bm_kvm_run_app(struct bm_machine *m, u64 stack_top, u64 *rax)
{
	bm_error_clear();
	if (m->mem_size > MAX_MEMORY)
		return bm_fail(BM_ERR_ARGUMENT, "KVM: binaries run on machines of at most 16 GiB"), BM_KVM_FAULT;
	struct vcpu v = { .kvm = -1, .vm = -1, .cpu = -1 };
	write_loader_state(m);
	int end = vcpu_open(&v, m, stack_top);
	while (end == 0) {
		if (ioctl(v.cpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			end = fail_errno("KVM_RUN");
			break;
		}
		struct kvm_run *run = v.run;
		struct kvm_regs *r = v.synced ? &run->s.regs.regs : &v.regs;
		if (!v.synced && ioctl(v.cpu, KVM_GET_REGS, r) < 0) {
			end = fail_errno("KVM_GET_REGS");
			break;
		}
		if (run->exit_reason == KVM_EXIT_IO && run->io.direction == KVM_EXIT_IO_OUT &&
		    run->io.port >= CALL_PORT && run->io.port < CALL_PORT + 8) {
			do_call(m, run->io.port - CALL_PORT, r);
			int state = atomic_load(&m->state);
			if (state == BM_STATE_SHUTDOWN || state == BM_STATE_REBOOT) {
				end = state == BM_STATE_SHUTDOWN ? BM_KVM_SHUTDOWN : BM_KVM_REBOOT;
				break;
			}
			if (v.synced)
				run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
			else if (ioctl(v.cpu, KVM_SET_REGS, r) < 0)
				end = fail_errno("KVM_SET_REGS");
			continue;
		}
		if (run->exit_reason == KVM_EXIT_HLT && r->rip == EXIT_STUB + 1) {
			*rax = r->rax;
			break;                                   /* BM_KVM_RETURNED */
		}
		switch (run->exit_reason) {
		case KVM_EXIT_SHUTDOWN:
			bm_fail(BM_ERR_STATE, "the app crashed (CPU exception, triple fault) near rip=0x%llx rsp=0x%llx",
				r->rip, r->rsp);
			break;
		case KVM_EXIT_MMIO:
			bm_fail(BM_ERR_RANGE, "the app touched 0x%llx, outside the machine's memory (rip=0x%llx)",
				(unsigned long long)run->mmio.phys_addr, r->rip);
			break;
		case KVM_EXIT_HLT:
			bm_fail(BM_ERR_STATE, "the app halted the CPU (hlt) at rip=0x%llx", r->rip);
			break;
		case KVM_EXIT_IO:
			bm_fail(BM_ERR_STATE, "the app used I/O port 0x%x (rip=0x%llx): no device there",
				run->io.port, r->rip);
			break;
		default:
			bm_fail(BM_ERR_STATE, "KVM exit %u at rip=0x%llx", run->exit_reason, r->rip);
		}
		end = BM_KVM_FAULT;
	}
	vcpu_close(&v);
	return end;
}

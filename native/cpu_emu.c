/* cpu_emu.c -- the emulated CPU backend for flat binaries (guest.h's struct bm_cpu_ops): runs
 * unmodified binaries on any x86-64 Linux, with or without /dev/kvm.
 *
 * The engine is unicorn 2 (QEMU's TCG as a library), loaded with dlopen from the path Python
 * finds in the `unicorn` package (bm_emu_load); only its C API is used, so no Python runs per
 * instruction or per call.  Its declarations below are the few we use, with the values of
 * unicorn 2's headers (unicorn.h, x86.h).
 *
 * One engine per vCPU, each on its core's thread.  Guest physical memory IS the machine's flat
 * memory (uc_mem_map_ptr over it, not a copy), in long mode ring 0 over guest.c's GDT and page
 * tables (CR0/CR3/CR4/EFER written before the first instruction; CR4.OSFXSR so SSE works).
 * A call stub's `out CALL_PORT+n` runs our OUT hook inside the engine: it reads the ABI
 * registers, hands them to bm_guest_call (the one implementation of the call) and writes the
 * results back; execution goes on at the stub's `ret` without leaving the engine.  The run
 * ends when RIP reaches guest.c's exit stub (uc_emu_start's `until`).  Exceptions reach our
 * interrupt hook (the engine does not deliver them to the guest's IDT): we record the vector,
 * RIP and CR2 and stop; #UD is the engine's UC_ERR_INSN_INVALID (AVX instructions among them:
 * TCG has no AVX, and CPUID does not offer it).
 *
 * Cores take turns.  Measured with unicorn 2.1: two engines on two threads each doing 1 M
 * `lock inc` on one shared word ended at 1.29 M, not 2 M: with one CPU per engine TCG
 * translates lock-prefixed instructions as a plain load, op, store (its atomic code is only
 * generated for engines running several CPUs in parallel, which unicorn never does).  So a
 * guest spin lock or counter shared by cores would break.  The design that is correct for
 * every guest instruction: one engine executes guest code at a time per machine (the `turn`, a
 * fair ticket lock, as QEMU's single-threaded TCG ran all vCPUs round-robin).  A core gives up
 * its turn during every call (host work -- DELAY, SMP_LOCK, I/O -- runs in parallel with other
 * cores' guest code) and when another core has waited a slice (1 ms): the waiter raises
 * `yield_now`, and the holder's block hook (run before each translated block, where the
 * engine's state is exact) gives the turn and queues again.  Preempting with uc_emu_stop from
 * the waiter's thread is not an option: the engine then reports a stale RIP (the last one it
 * stored, not the block it was about to run; unicorn issues #1105/#1355) and resuming there
 * runs instructions twice -- measured here as a guest spin lock losing increments.  The block
 * hook costs one callback per block, so engines get it only on machines with more than one
 * core or once a guest callback (the service thread's own engine) exists.  Guest
 * instructions are thereby atomic with respect to other cores, at the cost of not running
 * guest code on two cores at once.
 *
 * Translations: the engine's TLB is filled by on_tlb_fill (unicorn's UC_TLB_VIRTUAL), our walk
 * of the guest's 4-level tables (4 KiB/2 MiB/1 GiB pages, accessed/dirty bits set as the CPU
 * does).  Why not the engine's own MMU: unicorn has no dirty-page bitmap and treats every page
 * whose TLB entry is executable as possibly holding code, so each store through such an entry
 * runs its self-modifying-code check (a helper call, a region lookup, a TB invalidation
 * probe) -- measured, the sieve bench spent ~90% there, 204 ns per iteration.  Our fill gives
 * execute permission only to an instruction fetch and to pages fetched from before (a bitmap
 * of physical pages, per engine as each has its own translated code); data pages get clean
 * entries and stores take TCG's inline fast path.  A page's first fetch flushes the TLB, so
 * no clean entry to it survives under another virtual address (the app window's identity
 * alias).  Anything the walk does not grant plainly (not present, read-only for a write,
 * NX/reserved bits, ring 3, SMEP/SMAP/PKE, no paging) is refused: the engine stops and
 * redo_in_engine_mmu runs that one instruction with the engine's own MMU, which raises the
 * architectural #PF (CR2 exact) or goes on.
 *
 * A guest `hlt` makes the engine return (its RIP after the hlt; nothing stopped it): the run
 * waits in bm_guest_halt without the turn, then goes on.  CPUID answers the engine's model
 * (Nehalem) except the brand string, which is the host CPU's (on_cpuid).
 *
 * Stopping a vCPU from another thread (stop): uc_emu_stop on its engine, only to end its run
 * (never resumed, so the stale RIP does not matter); guest.c repeats it until the vCPU has left
 * (a stop just before uc_emu_start is lost by the engine).
 *
 * Under a debugger (gdbstub.c through get_state/set_state/debug): a single step is
 * uc_emu_start with count 1; each breakpoint is a code hook bounded to its one address
 * (unicorn only instruments the instructions inside a hook's range, so the rest runs at full
 * speed) that stops the engine from inside, before the instruction executes, where its state
 * is exact.  A stop the debugger asks for (Ctrl-C: g->debug_break) is taken the same way, by
 * a block hook present while a debugger is attached; stop then leaves that engine alone, as
 * the stale RIP of a stop from outside would make the resumed run repeat instructions.
 * Translated code is flushed when breakpoints or memory change.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "cpu_emu.h"

/* unicorn 2's API: the values from its headers */
#define UC_ARCH_X86 4
#define UC_MODE_64 8
#define UC_PROT_ALL 7
#define UC_HOOK_INTR 1
#define UC_HOOK_INSN 2
#define UC_HOOK_CODE 4
#define UC_HOOK_BLOCK 8
#define UC_HOOK_TLB_FILL (1 << 17)
#define UC_PROT_READ 1
#define UC_PROT_WRITE 2
#define UC_PROT_EXEC 4
#define UC_MEM_WRITE 17
#define UC_MEM_FETCH 18
#define UC_TLB_CPU 0
#define UC_TLB_VIRTUAL 1
#define UC_CTL_TLB_FLUSH_WRITE (11 | (1 << 30))               /* UC_CTL_WRITE(UC_CTL_TLB_FLUSH, 0) */
#define UC_CTL_TLB_TYPE_WRITE (12 | (1 << 26) | (1 << 30))   /* UC_CTL_WRITE(UC_CTL_TLB_TYPE, 1) */
#define UC_CTL_TB_FLUSH_WRITE (10 | (1 << 30))                /* UC_CTL_WRITE(UC_CTL_TB_FLUSH, 0) */
#define UC_X86_INS_OUT 500
#define UC_X86_INS_CPUID 113
#define UC_X86_INS_IN 218
#define UC_X86_INS_SYSCALL 699
#define UC_ERR_OK 0
#define UC_ERR_READ_UNMAPPED 6
#define UC_ERR_WRITE_UNMAPPED 7
#define UC_ERR_FETCH_UNMAPPED 8
#define UC_ERR_INSN_INVALID 10
#define UC_ERR_EXCEPTION 21
#define UC_CTL_CPU_MODEL_WRITE (7 | (1 << 26) | (1 << 30))   /* UC_CTL_WRITE(UC_CTL_CPU_MODEL, 1) */
#define UC_CPU_X86_NEHALEM 15                                  /* SSE up to 4.2, no AVX */
enum {
	UCR_RAX = 35, UCR_RBP = 36, UCR_RBX = 37, UCR_RCX = 38, UCR_RDI = 39, UCR_RDX = 40,
	UCR_RIP = 41, UCR_RSI = 43, UCR_RSP = 44, UCR_EFLAGS = 25, UCR_CR0 = 50, UCR_CR2 = 52,
	UCR_CR3 = 53, UCR_CR4 = 54, UCR_GDTR = 243, UCR_MSR = 248,
	UCR_CS = 11, UCR_DS = 17, UCR_ES = 28, UCR_FS = 32, UCR_GS = 33, UCR_SS = 49, UCR_R8 = 106,
	UCR_XMM0 = 122, UCR_MXCSR = 249, UCR_FS_BASE = 250, UCR_GS_BASE = 251,
};
struct uc_x86_mmr { u16 selector; u64 base; u32 limit; u32 flags; };
struct uc_x86_msr { u32 rid; u64 value; };
struct uc_tlb_entry { u64 paddr; u32 perms; };
typedef void uc_engine;
typedef size_t uc_hook;

static struct {
	int (*open)(int arch, int mode, uc_engine **uc);
	int (*close)(uc_engine *uc);
	int (*ctl)(uc_engine *uc, int control, ...);
	int (*mem_map_ptr)(uc_engine *uc, u64 address, size_t size, u32 perms, void *ptr);
	int (*reg_read)(uc_engine *uc, int regid, void *value);
	int (*reg_write)(uc_engine *uc, int regid, const void *value);
	int (*reg_read_batch)(uc_engine *uc, int *regs, void **vals, int count);
	int (*reg_write_batch)(uc_engine *uc, int *regs, void *const *vals, int count);
	int (*emu_start)(uc_engine *uc, u64 begin, u64 until, u64 timeout, size_t count);
	int (*emu_stop)(uc_engine *uc);
	int (*hook_add)(uc_engine *uc, uc_hook *hh, int type, void *callback, void *user_data,
			u64 begin, u64 end, ...);
	int (*hook_del)(uc_engine *uc, uc_hook hh);
	const char *(*strerror)(int code);
	unsigned (*version)(unsigned *major, unsigned *minor);
} uc;
static int uc_loaded;

#define SLICE_NS 1000000ull                  /* a core waiting this long for its turn stops the holder */

struct emu_cpu {
	struct bm_guest_cpu base;            /* first: guest.c's view */
	uc_engine *engine;
	u64 rip;                             /* where the next uc_emu_start begins */
	int faulted;                         /* the interrupt hook saw an exception: */
	unsigned vector;
	u64 fault_rip, cr2;
	int stepping;                        /* under a debugger: run one instruction at a time */
	int debugged;                        /* under a debugger: debug_hook stops for its requests */
	uc_hook debug_hook;
	int hit;                             /* a breakpoint hook stopped the engine */
	unsigned breakpoints;                /* code hooks, one per breakpoint address */
	uc_hook breakpoint_hooks[BM_CPU_BREAKPOINTS];
	_Atomic int stopped;                 /* emu_stop was called: an early return is not a hlt */
	u8 *code_pages;                      /* one bit per 4 KiB physical page ever fetched from */
	int walk_refused;                    /* on_tlb_fill left an access to the engine's own MMU */
	unsigned fills;                      /* TLB fills, for the periodic flush that lets it grow */
	int block_hooked;                    /* on_block is on this engine */
};

struct emu_vm {                              /* the machine's turn (see the top of this file) */
	pthread_mutex_t lock;
	pthread_cond_t moved;
	u64 next_ticket, serving;
	struct emu_cpu *holder;
	u64 holder_since;
	_Atomic int yield_now;               /* a core has waited a slice: the holder gives the turn */
};

/* bm_emu_load -- load unicorn 2 from `path` (libunicorn.so.2 of the unicorn package); idempotent
 *  IN:  path
 * OUT:  0; -1 with the error recorded (no such library, not unicorn 2) */
int bm_emu_load(const char *path)
{
	bm_error_clear();
	if (uc_loaded)
		return 0;
	void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (lib == NULL)
		return (int)bm_fail(BM_ERR_IO, "the emulated CPU needs unicorn 2: %s", dlerror()) - 1;
	void **slots[] = { (void **)&uc.open, (void **)&uc.close, (void **)&uc.ctl, (void **)&uc.mem_map_ptr,
			   (void **)&uc.reg_read, (void **)&uc.reg_write, (void **)&uc.reg_read_batch,
			   (void **)&uc.reg_write_batch, (void **)&uc.emu_start, (void **)&uc.emu_stop,
			   (void **)&uc.hook_add, (void **)&uc.strerror, (void **)&uc.version, (void **)&uc.hook_del };
	const char *names[] = { "uc_open", "uc_close", "uc_ctl", "uc_mem_map_ptr", "uc_reg_read",
				"uc_reg_write", "uc_reg_read_batch", "uc_reg_write_batch", "uc_emu_start",
				"uc_emu_stop", "uc_hook_add", "uc_strerror", "uc_version", "uc_hook_del" };
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if ((*slots[i] = dlsym(lib, names[i])) == NULL)
			return (int)bm_fail(BM_ERR_IO, "%s: no %s: not unicorn 2", path, names[i]) - 1;
	unsigned major = 0, minor = 0;
	uc.version(&major, &minor);
	if (major != 2)
		return (int)bm_fail(BM_ERR_IO, "%s is unicorn %u.%u; the emulated CPU needs unicorn 2", path,
				    major, minor) - 1;
	uc_loaded = 1;
	return 0;
}

/* ---- the turn -------------------------------------------------------------------------- */

/* take_turn -- wait for the machine's turn (FIFO); stop a holder that kept it a slice while we
 * waited
 *  IN:  vm, c (the calling thread's vCPU)
 * OUT:  nothing; c holds the turn */
static void take_turn(struct emu_vm *vm, struct emu_cpu *c)
{
	pthread_mutex_lock(&vm->lock);
	u64 ticket = vm->next_ticket++;
	while (vm->serving != ticket) {
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += (long)SLICE_NS;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&vm->moved, &vm->lock, &until);
		if (vm->serving != ticket && vm->holder != NULL && bm_now_ns() - vm->holder_since >= SLICE_NS)
			atomic_store_explicit(&vm->yield_now, 1, memory_order_relaxed);
	}
	vm->holder = c;
	vm->holder_since = bm_now_ns();
	atomic_store_explicit(&vm->yield_now, 0, memory_order_relaxed);
	pthread_mutex_unlock(&vm->lock);
}

/* give_turn -- let the next core run guest code
 *  IN:  vm (the caller holds the turn) */
static void give_turn(struct emu_vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	vm->holder = NULL;
	vm->serving++;
	if (vm->next_ticket != vm->serving)
		pthread_cond_broadcast(&vm->moved);
	pthread_mutex_unlock(&vm->lock);
}

/* ---- hooks (called inside uc_emu_start, on the vCPU's thread, holding the turn) --------- */

static int abi_regs[] = { UCR_RAX, UCR_RBX, UCR_RCX, UCR_RDX, UCR_RSI, UCR_RDI, UCR_RBP, UCR_RSP };

static void on_block(uc_engine *engine, u64 address, u32 size, void *user);

/* hook_blocks -- add on_block to a running engine (from its OUT hook: the stub's `ret` that
 * follows is an indirect jump, so no block translated before the flush runs again)
 *  IN:  engine, c */
static void hook_blocks(uc_engine *engine, struct emu_cpu *c)
{
	uc_hook block_hook;
	if (uc.hook_add(engine, &block_hook, UC_HOOK_BLOCK, (void *)on_block, c, 1, 0) != UC_ERR_OK)
		return;
	c->block_hooked = 1;
	uc.ctl(engine, UC_CTL_TB_FLUSH_WRITE);               /* blocks translated before lack it */
}

/* on_out -- an OUT: a call stub's (do the call), else a fault (no device there)
 *  IN:  engine, port, size, value, c */
static void on_out(uc_engine *engine, u32 port, int size, u32 value, void *user)
{
	(void)size;
	(void)value;
	struct emu_cpu *c = user;
	if (port < BM_GUEST_CALL_PORT || port >= BM_GUEST_CALL_PORT + BM_GUEST_CALLS) {
		c->faulted = 2;
		c->vector = port;
		uc.emu_stop(engine);
		return;
	}
	struct bm_guest_regs r;
	void *values[8] = { &r.rax, &r.rbx, &r.rcx, &r.rdx, &r.rsi, &r.rdi, &r.rbp, &r.rsp };
	uc.reg_read_batch(engine, abi_regs, values, 8);
	uc.reg_read(engine, UCR_EFLAGS, &r.rflags);
	u64 flags = r.rflags;
	unsigned n = port - BM_GUEST_CALL_PORT;
	u64 next = (n < 8 ? BM_GUEST_STUBS + 8 * n : BM_GUEST_OUTPUT_STUB) + 2;   /* the stub's ret */
	r.rip = next;
	struct emu_vm *vm = c->base.guest->backend;
	give_turn(vm);
	bm_guest_call(&c->base, n, &r);
	take_turn(vm, c);
	uc.reg_write_batch(engine, abi_regs, values, 8);
	if (r.rflags != flags)
		uc.reg_write(engine, UCR_EFLAGS, &r.rflags);
	if (r.rip != next)
		uc.reg_write(engine, UCR_RIP, &r.rip);
	if (bm_guest_must_stop(&c->base) != BM_GUEST_GO_ON)     /* SHUTDOWN, REBOOT */
		uc.emu_stop(engine);
	else if (!c->block_hooked && c->base.core == 0 && atomic_load(&c->base.guest->callback[0]))
		hook_blocks(engine, c);                          /* ticks come: on_block delivers them */
}

/* deliver_tick -- a timer tick for core 0 (bm_guest_interrupt), from a block hook, where the
 * engine's state is exact and a new RIP takes effect before the block runs
 *  IN:  engine, c */
static void deliver_tick(uc_engine *engine, struct emu_cpu *c)
{
	struct bm_guest_regs r;
	uc.reg_read(engine, UCR_RIP, &r.rip);
	uc.reg_read(engine, UCR_RSP, &r.rsp);
	uc.reg_read(engine, UCR_EFLAGS, &r.rflags);
	if (bm_guest_interrupt(&c->base, &r) == 0)
		return;
	uc.reg_write(engine, UCR_RSP, &r.rsp);
	uc.reg_write(engine, UCR_RIP, &r.rip);
}

/* on_block -- before each translated block (multi-engine machines; core 0 once a timer
 * callback is set): give the turn when a waiter asked for it; deliver a timer tick; the
 * engine's state is exact here, so it resumes where it was
 *  IN:  engine, address, size, c */
static void on_block(uc_engine *engine, u64 address, u32 size, void *user)
{
	(void)engine;
	(void)address;
	(void)size;
	struct emu_cpu *c = user;
	struct emu_vm *vm = c->base.guest->backend;
	if (__builtin_expect(atomic_load_explicit(&vm->yield_now, memory_order_relaxed), 0)) {
		give_turn(vm);
		take_turn(vm, c);
	}
	if (__builtin_expect(bm_guest_tick_waiting(&c->base), 0))
		deliver_tick(engine, c);
}

/* on_cpuid -- a CPUID: the brand string leaves (0x80000002..4) answer what the host's CPU says,
 * so apps printing the CPU's name show the machine they run on; the rest is the engine's model
 *  IN:  engine, c
 * OUT:  1 (answered here) or 0 (the engine's answer) */
static int on_cpuid(uc_engine *engine, void *user)
{
	(void)user;
	u64 leaf = 0;
	uc.reg_read(engine, UCR_RAX, &leaf);
	leaf &= 0xFFFFFFFFull;
	const u32 *brand = bm_guest_host_brand();
	if (leaf < 0x80000002ull || leaf > 0x80000004ull || brand == NULL)
		return 0;
	const u32 *w = &brand[4 * (leaf - 0x80000002ull)];
	u64 rax = w[0], rbx = w[1], rcx = w[2], rdx = w[3];
	uc.reg_write(engine, UCR_RAX, &rax);
	uc.reg_write(engine, UCR_RBX, &rbx);
	uc.reg_write(engine, UCR_RCX, &rcx);
	uc.reg_write(engine, UCR_RDX, &rdx);
	return 1;
}

/* on_in -- an IN: no device answers (as on_out for ports other than the call stubs')
 *  IN:  engine, port, size, c
 * OUT:  0 (the run stops with the fault) */
static u32 on_in(uc_engine *engine, u32 port, int size, void *user)
{
	(void)size;
	struct emu_cpu *c = user;
	c->faulted = 2;
	c->vector = port;
	uc.emu_stop(engine);
	return 0;
}

/* on_syscall -- SYSCALL: the kernel leaves EFER.SCE clear, so the CPU raises #UD (the engine
 * would run it as a no-op); RIP is the instruction's
 *  IN:  engine, c */
static void on_syscall(uc_engine *engine, void *user)
{
	struct emu_cpu *c = user;
	c->faulted = 1;
	c->vector = 6;
	uc.reg_read(engine, UCR_RIP, &c->fault_rip);
	c->cr2 = 0;
	uc.emu_stop(engine);
}

/* on_interrupt -- an exception (or `int n`): record it and stop
 *  IN:  engine, vector, c */
static void on_interrupt(uc_engine *engine, u32 vector, void *user)
{
	struct emu_cpu *c = user;
	c->faulted = 1;
	c->vector = vector;
	uc.reg_read(engine, UCR_RIP, &c->fault_rip);
	uc.reg_read(engine, UCR_CR2, &c->cr2);
	uc.emu_stop(engine);
}

/* ---- translations (the engine's virtual TLB, filled by on_tlb_fill) ----------------------- */

#define PTE_P   0x1ull
#define PTE_RW  0x2ull
#define PTE_US  0x4ull
#define PTE_A   0x20ull
#define PTE_D   0x40ull
#define PTE_PS  0x80ull
#define PTE_ADDR 0x000FFFFFFFFFF000ull
#define PTE_HIGH 0xFFFFFF0000000000ull        /* NX, ignored, reserved above 40 physical bits */

/* code_page -- mark a physical page as holding code
 *  IN:  c, pa
 * OUT:  1 when it was not marked before (or lies outside memory), else 0 */
static int code_page(struct emu_cpu *c, u64 pa)
{
	u64 page = pa >> 12;
	if (pa >= c->base.guest->m->mem_size)
		return 0;
	u8 bit = (u8)(1u << (page & 7));
	if (c->code_pages[page >> 3] & bit)
		return 0;
	c->code_pages[page >> 3] |= bit;
	return 1;
}

/* is_code_page -- 1 when the physical page at pa was ever fetched from */
static int is_code_page(struct emu_cpu *c, u64 pa)
{
	u64 page = pa >> 12;
	return pa < c->base.guest->m->mem_size && (c->code_pages[page >> 3] >> (page & 7)) & 1;
}

/* walk -- translate va through the guest's 4-level page tables, as the CPU does, setting the
 * accessed (and, for a write, dirty) bits; anything unusual is refused so the engine's own MMU
 * decides it (raising the architectural #PF)
 *  IN:  c, va, write, m (tables are read only inside the machine's memory)
 * OUT:  1 with *pa and *writable (a write may go through this entry); 0 refused */
static int walk(struct emu_cpu *c, u64 va, int write, u64 *pa, int *writable)
{
	struct bm_machine *m = c->base.guest->m;
	u64 cr0 = 0, cr3 = 0, cr4 = 0, cs = 0;
	int ids[] = { UCR_CR0, UCR_CR3, UCR_CR4, UCR_CS };
	void *values[] = { &cr0, &cr3, &cr4, &cs };
	uc.reg_read_batch(c->engine, ids, values, 4);
	if (!(cr0 & 0x80000000ull) || (cr4 & 0x701000ull))  /* no paging; LA57, SMEP, SMAP, PKE */
		return 0;
	if ((u64)((int64_t)(va << 16) >> 16) != va)          /* not canonical */
		return 0;
	int user = (cs & 3) == 3, rw = 1;
	u64 table = cr3 & PTE_ADDR, *leaf = NULL, size = 0;
	for (int level = 4; level >= 1 && leaf == NULL; level--) {
		u64 at = table + 8 * ((va >> (12 + 9 * (level - 1))) & 511);
		if (at + 8 > m->mem_size)
			return 0;
		u64 *slot = (u64 *)(m->mem + at), e = __atomic_load_n(slot, __ATOMIC_RELAXED);
		if (!(e & PTE_P) || (e & PTE_HIGH) || (user && !(e & PTE_US)))
			return 0;
		rw &= (e & PTE_RW) != 0;
		if (!(e & PTE_A))
			__atomic_fetch_or(slot, PTE_A, __ATOMIC_RELAXED);
		if (level == 1 || (e & PTE_PS)) {
			if (level == 4)
				return 0;
			size = 1ull << (12 + 9 * (level - 1));
			if ((e & PTE_ADDR) & (size - 1) & ~0x1FFFull)    /* reserved bits below the frame */
				return 0;
			leaf = slot;
			table = e & PTE_ADDR & ~(size - 1);
		} else {
			table = e & PTE_ADDR;
		}
	}
	if (write && !rw)                                  /* CR0.WP and friends: the engine decides */
		return 0;
	u64 e = __atomic_load_n(leaf, __ATOMIC_RELAXED);
	if (write && !(e & PTE_D))
		__atomic_fetch_or(leaf, PTE_D, __ATOMIC_RELAXED);
	*pa = table + (va & (size - 1));
	*writable = rw && (write || (e & PTE_D));             /* as the CPU: writable once dirty */
	return 1;
}

#define FILLS_PER_FLUSH 4096         /* the engine sizes its TLB (up, when mostly used) only at a flush */

/* on_tlb_fill -- the engine needs a translation (a TLB miss): walk the guest's tables.  Only
 * an instruction fetch, or a page fetched from before, gets execute permission: the engine
 * (unicorn) checks every write through an executable entry for self-modifying code and never
 * lets such an entry become clean, which made every store to data pages a slow helper call.
 * The first fetch from a page flushes the TLB so no clean entry to it survives (an alias).
 * Every FILLS_PER_FLUSH fills flush it too: QEMU grows its TLB only when a flush finds it
 * mostly used, so without flushes it stays at 256 entries (1 MiB) and a loop sweeping a few
 * MiB refills on every page.
 *  IN:  engine, vaddr (page), type, result, c
 * OUT:  1 with *result; 0 refused (the run stops; emu_run lets the engine's MMU redo it) */
static int on_tlb_fill(uc_engine *engine, u64 vaddr, int type, struct uc_tlb_entry *result, void *user)
{
	struct emu_cpu *c = user;
	u64 pa;
	int writable;
	if (!walk(c, vaddr, type == UC_MEM_WRITE, &pa, &writable)) {
		c->walk_refused = 1;
		return 0;
	}
	u32 perms = UC_PROT_READ | (writable ? UC_PROT_WRITE : 0);
	int flush = 0;
	if (type == UC_MEM_FETCH) {
		flush = code_page(c, pa);
		perms |= UC_PROT_EXEC;
	} else if (is_code_page(c, pa)) {
		perms |= UC_PROT_EXEC;
	}
	if (flush || ++c->fills % FILLS_PER_FLUSH == 0)
		uc.ctl(engine, UC_CTL_TLB_FLUSH_WRITE);
	result->paddr = pa;
	result->perms = perms;
	return 1;
}

/* on_breakpoint -- a breakpoint's address is about to execute: stop before it
 *  IN:  engine, address, size, c */
static void on_breakpoint(uc_engine *engine, u64 address, u32 size, void *user)
{
	(void)address;
	(void)size;
	((struct emu_cpu *)user)->hit = 1;
	uc.emu_stop(engine);
}

/* on_debug_block -- before each block while a debugger is attached: stop (from inside, so the
 * state is exact) when the debugger asked for it (Ctrl-C) or the vCPU must stop anyway
 *  IN:  engine, address, size, c */
static void on_debug_block(uc_engine *engine, u64 address, u32 size, void *user)
{
	(void)address;
	(void)size;
	struct emu_cpu *c = user;
	if (__builtin_expect(bm_guest_must_stop(&c->base) != BM_GUEST_GO_ON, 0))
		uc.emu_stop(engine);
}

/* ---- the ops --------------------------------------------------------------------------- */

/* emu_open -- the machine's turn
 *  IN:  g
 * OUT:  0, or BM_GUEST_FAULT (unicorn not loaded, no memory) */
static int emu_open(struct bm_guest *g)
{
	if (!uc_loaded)
		return bm_fail(BM_ERR_STATE, "the emulated CPU needs unicorn 2 (pip install unicorn)"), BM_GUEST_FAULT;
	struct emu_vm *vm = calloc(1, sizeof *vm);
	if (vm == NULL)
		return bm_fail(BM_ERR_FULL, "out of host memory"), BM_GUEST_FAULT;
	pthread_mutex_init(&vm->lock, NULL);
	pthread_cond_init(&vm->moved, NULL);
	g->backend = vm;
	return 0;
}

/* emu_close -- forget the turn
 *  IN:  g (every vCPU freed) */
static void emu_close(struct bm_guest *g)
{
	struct emu_vm *vm = g->backend;
	pthread_mutex_destroy(&vm->lock);
	pthread_cond_destroy(&vm->moved);
	free(vm);
}

/* fail_uc -- record "emulated CPU: what: unicorn's message"
 *  IN:  what, err
 * OUT:  NULL */
static void *fail_uc(const char *what, int err)
{
	bm_fail(BM_ERR_STATE, "emulated CPU: %s: %s", what, uc.strerror(err));
	return NULL;
}

/* emu_cpu_free -- close a vCPU's engine
 *  IN:  c (no thread runs it) */
static void emu_cpu_free(struct bm_guest_cpu *c)
{
	struct emu_cpu *e = (struct emu_cpu *)c;
	if (e->engine)
		uc.close(e->engine);
	free(e->code_pages);
	free(e);
}

/* emu_cpu_create -- an engine over the machine's memory, in long mode ring 0 with guest.c's
 * GDT and page tables, SSE enabled, hooks for calls and exceptions
 *  IN:  g, id
 * OUT:  the vCPU, or NULL with the error recorded */
static struct bm_guest_cpu *emu_cpu_create(struct bm_guest *g, u32 id)
{
	(void)id;
	struct emu_cpu *e = calloc(1, sizeof *e);
	if (e == NULL)
		return (void *)bm_fail(BM_ERR_FULL, "out of host memory");
	e->base.guest = g;
	e->code_pages = calloc(1, (size_t)(g->m->mem_size >> 15) + 1);
	if (e->code_pages == NULL) {
		free(e);
		return (void *)bm_fail(BM_ERR_FULL, "out of host memory");
	}
	int err = uc.open(UC_ARCH_X86, UC_MODE_64, &e->engine);
	if (err != UC_ERR_OK) {
		e->engine = NULL;
		emu_cpu_free(&e->base);
		return fail_uc("uc_open", err);
	}
	uc.ctl(e->engine, UC_CTL_CPU_MODEL_WRITE, UC_CPU_X86_NEHALEM);
	uc_hook out_hook, interrupt_hook, block_hook, cpuid_hook, tlb_hook, in_hook, syscall_hook;
	int turns = g->m->num_cores > 1 || id == g->m->num_cores;     /* several engines may run */
	u64 cr0 = 0x80050033, cr3 = 0x2000, cr4 = 0x20 | 0x200 | 0x400;  /* PG..PE; PAE, OSFXSR, OSXMMEXCPT */
	struct uc_x86_msr efer = { 0xC0000080, 0x500 };                     /* LME, LMA */
	struct uc_x86_mmr gdtr = { 0, 0x1000, 23, 0 };
	const char *step = "uc_mem_map_ptr";
	if ((err = uc.mem_map_ptr(e->engine, 0, g->m->mem_size, UC_PROT_ALL, g->m->mem)) != UC_ERR_OK ||
	    (step = "control registers",
	     (err = uc.reg_write(e->engine, UCR_GDTR, &gdtr)) != UC_ERR_OK ||
	     (err = uc.reg_write(e->engine, UCR_CR3, &cr3)) != UC_ERR_OK ||
	     (err = uc.reg_write(e->engine, UCR_CR4, &cr4)) != UC_ERR_OK ||
	     (err = uc.reg_write(e->engine, UCR_MSR, &efer)) != UC_ERR_OK ||
	     (err = uc.reg_write(e->engine, UCR_CR0, &cr0)) != UC_ERR_OK) ||
	    (step = "hooks",
	     (err = uc.hook_add(e->engine, &out_hook, UC_HOOK_INSN, (void *)on_out, e, 1, 0, UC_X86_INS_OUT)) != UC_ERR_OK ||
	     (err = uc.hook_add(e->engine, &interrupt_hook, UC_HOOK_INTR, (void *)on_interrupt, e, 1, 0)) != UC_ERR_OK ||
	     (err = uc.hook_add(e->engine, &cpuid_hook, UC_HOOK_INSN, (void *)on_cpuid, e, 1, 0, UC_X86_INS_CPUID)) != UC_ERR_OK ||
	     (err = uc.hook_add(e->engine, &in_hook, UC_HOOK_INSN, (void *)on_in, e, 1, 0, UC_X86_INS_IN)) != UC_ERR_OK ||
	     (err = uc.hook_add(e->engine, &syscall_hook, UC_HOOK_INSN, (void *)on_syscall, e, 1, 0, UC_X86_INS_SYSCALL)) != UC_ERR_OK ||
	     (err = uc.hook_add(e->engine, &tlb_hook, UC_HOOK_TLB_FILL, (void *)on_tlb_fill, e, 1, 0)) != UC_ERR_OK ||
	     (err = uc.ctl(e->engine, UC_CTL_TLB_TYPE_WRITE, UC_TLB_VIRTUAL)) != UC_ERR_OK ||
	     (turns && (err = uc.hook_add(e->engine, &block_hook, UC_HOOK_BLOCK, (void *)on_block, e, 1, 0)) != UC_ERR_OK))) {
		emu_cpu_free(&e->base);
		return fail_uc(step, err);
	}
	e->block_hooked = turns;
	return &e->base;
}

/* emu_set_regs / emu_get_regs -- the ABI registers of a vCPU that is not running
 *  IN:  c, r
 * OUT:  0 (and *r) */
static int emu_set_regs(struct bm_guest_cpu *c, const struct bm_guest_regs *r)
{
	struct emu_cpu *e = (struct emu_cpu *)c;
	struct bm_guest_regs copy = *r;
	void *values[8] = { &copy.rax, &copy.rbx, &copy.rcx, &copy.rdx, &copy.rsi, &copy.rdi, &copy.rbp, &copy.rsp };
	uc.reg_write_batch(e->engine, abi_regs, values, 8);
	uc.reg_write(e->engine, UCR_EFLAGS, &copy.rflags);
	uc.reg_write(e->engine, UCR_RIP, &copy.rip);
	e->rip = r->rip;
	return 0;
}

static int emu_get_regs(struct bm_guest_cpu *c, struct bm_guest_regs *r)
{
	struct emu_cpu *e = (struct emu_cpu *)c;
	void *values[8] = { &r->rax, &r->rbx, &r->rcx, &r->rdx, &r->rsi, &r->rdi, &r->rbp, &r->rsp };
	uc.reg_read_batch(e->engine, abi_regs, values, 8);
	uc.reg_read(e->engine, UCR_EFLAGS, &r->rflags);
	uc.reg_read(e->engine, UCR_RIP, &r->rip);
	return 0;
}

/* emu_stop -- from any thread: make the engine return from uc_emu_start
 *  IN:  c */
static void emu_stop(struct bm_guest_cpu *c)
{
	struct emu_cpu *e = (struct emu_cpu *)c;
	atomic_store(&e->stopped, 1);
	if (!e->debugged)                            /* else on_debug_block stops it, exactly */
		uc.emu_stop(e->engine);
}

/* is_hlt_before -- 1 when the instruction before rip is a hlt (the engine returned after one) */
static int is_hlt_before(struct bm_machine *m, u64 rip)
{
	const u8 *p = rip ? bm_guest_to_host(m, rip - 1, 1) : NULL;
	return p != NULL && *p == 0xF4;
}

/* redo_in_engine_mmu -- the instruction at e->rip needs a translation on_tlb_fill refused (a
 * fault, or tables it leaves to the engine): run that one instruction with the engine's own
 * MMU, which raises the architectural exception (our interrupt hook) or goes on; then drop
 * what was translated meanwhile (entries and code made without on_tlb_fill's bookkeeping)
 *  IN:  e (holding the turn; stopped by the refusal, RIP at the instruction)
 * OUT:  unicorn's result of that step; e->rip updated */
static int redo_in_engine_mmu(struct emu_cpu *e)
{
	uc.ctl(e->engine, UC_CTL_TLB_TYPE_WRITE, UC_TLB_CPU);
	int err = uc.emu_start(e->engine, e->rip, BM_GUEST_EXIT_STUB, 0, 1);
	uc.ctl(e->engine, UC_CTL_TLB_TYPE_WRITE, UC_TLB_VIRTUAL);
	uc.ctl(e->engine, UC_CTL_TLB_FLUSH_WRITE);
	uc.ctl(e->engine, UC_CTL_TB_FLUSH_WRITE);
	uc.reg_read(e->engine, UCR_RIP, &e->rip);
	return err;
}

/* emu_run -- run until the code returns to the exit stub, must stop, or faults (the engine
 * returns early only for a stop: the loop then looks at must_stop)
 *  IN:  c (registers set)
 * OUT:  enum bm_guest_end; BM_GUEST_FAULT with the error recorded */
static int emu_run(struct bm_guest_cpu *c)
{
	struct emu_cpu *e = (struct emu_cpu *)c;
	struct emu_vm *vm = c->guest->backend;
	for (;;) {
		int end = bm_guest_must_stop(c);
		if (end != BM_GUEST_GO_ON)
			return end;
		take_turn(vm, e);
		e->faulted = 0;
		e->hit = 0;
		e->walk_refused = 0;
		atomic_store(&e->stopped, 0);
		int err = uc.emu_start(e->engine, e->rip, BM_GUEST_EXIT_STUB, 0, e->stepping ? 1 : 0);
		uc.reg_read(e->engine, UCR_RIP, &e->rip);
		int redone = err == UC_ERR_EXCEPTION && e->walk_refused;
		if (redone)
			err = redo_in_engine_mmu(e);
		give_turn(vm);
		if (e->faulted == 1)
			return bm_guest_fault(c, e->vector, 0, e->fault_rip, e->cr2);
		if (e->faulted == 2)
			return bm_fail(BM_ERR_STATE, "the app used I/O port 0x%x on core %u (rip 0x%lx): no device there",
				       e->vector, c->core, e->rip), BM_GUEST_FAULT;
		if (err == UC_ERR_INSN_INVALID)
			return bm_guest_fault(c, 6, 0, e->rip, 0);
		if (err == UC_ERR_READ_UNMAPPED || err == UC_ERR_WRITE_UNMAPPED || err == UC_ERR_FETCH_UNMAPPED)
			return bm_fail(BM_ERR_RANGE, "the app touched memory outside the machine on core %u (rip 0x%lx)",
				       c->core, e->rip), BM_GUEST_FAULT;
		if (err != UC_ERR_OK)
			return bm_fail(BM_ERR_STATE, "the app stopped the emulated CPU on core %u at rip 0x%lx: %s",
				       c->core, e->rip, uc.strerror(err)), BM_GUEST_FAULT;
		if (e->rip == BM_GUEST_EXIT_STUB)
			return BM_GUEST_RETURNED;
		if (e->hit || e->stepping)
			return BM_GUEST_DEBUG;
		if (redone)
			continue;
		if (!atomic_load(&e->stopped) && is_hlt_before(c->guest->m, e->rip)) {
			end = bm_guest_halt(c);          /* the engine stops after a hlt */
			if (end != BM_GUEST_GO_ON)
				return end;
		}
	}
}

/* state_ids -- unicorn's ids for struct bm_cpu_state's registers, with where each goes */
static int state_ids(struct bm_cpu_state *s, int *ids, void **values)
{
	static const int gpr[16] = { UCR_RAX, UCR_RBX, UCR_RCX, UCR_RDX, UCR_RSI, UCR_RDI, UCR_RBP,
				     UCR_RSP, UCR_R8, UCR_R8 + 1, UCR_R8 + 2, UCR_R8 + 3, UCR_R8 + 4,
				     UCR_R8 + 5, UCR_R8 + 6, UCR_R8 + 7 };
	static const int seg[6] = { UCR_CS, UCR_SS, UCR_DS, UCR_ES, UCR_FS, UCR_GS };
	int n = 0;
	for (int i = 0; i < 16; i++, n++)
		ids[n] = gpr[i], values[n] = &s->gpr[i];
	for (int i = 0; i < 16; i++, n++)
		ids[n] = UCR_XMM0 + i, values[n] = s->xmm[i];
	int more[] = { UCR_RIP, UCR_EFLAGS, UCR_FS_BASE, UCR_GS_BASE, UCR_MXCSR };
	void *where[] = { &s->rip, &s->rflags, &s->fs_base, &s->gs_base, &s->mxcsr };
	for (int i = 0; i < 5; i++, n++)
		ids[n] = more[i], values[n] = where[i];
	for (int i = 0; i < 6; i++, n++)             /* read only from here on */
		ids[n] = seg[i], values[n] = &s->seg[i];
	int control[] = { UCR_CR0, UCR_CR2, UCR_CR3, UCR_CR4 };
	void *to[] = { &s->cr0, &s->cr2, &s->cr3, &s->cr4 };
	for (int i = 0; i < 4; i++, n++)
		ids[n] = control[i], values[n] = to[i];
	return n;
}
#define STATE_WRITABLE 37                    /* gprs, xmm, rip, rflags, bases, mxcsr */

/* emu_get_state / emu_set_state -- every register of a vCPU that is not running
 *  IN:  c, s
 * OUT:  0 (and *s), or BM_GUEST_FAULT */
static int emu_get_state(struct bm_guest_cpu *c, struct bm_cpu_state *s)
{
	struct emu_cpu *e = (struct emu_cpu *)c;
	int ids[48];
	void *values[48];
	memset(s, 0, sizeof *s);
	int n = state_ids(s, ids, values);
	if (uc.reg_read_batch(e->engine, ids, values, n) != UC_ERR_OK)
		return bm_fail(BM_ERR_STATE, "emulated CPU: cannot read the registers"), BM_GUEST_FAULT;
	struct uc_x86_msr efer = { 0xC0000080, 0 };
	uc.reg_read(e->engine, UCR_MSR, &efer);
	s->efer = efer.value;
	return 0;
}

static int emu_set_state(struct bm_guest_cpu *c, const struct bm_cpu_state *s)
{
	struct emu_cpu *e = (struct emu_cpu *)c;
	struct bm_cpu_state copy = *s;
	int ids[48];
	void *values[48];
	state_ids(&copy, ids, values);
	if (uc.reg_write_batch(e->engine, ids, values, STATE_WRITABLE) != UC_ERR_OK)
		return bm_fail(BM_ERR_STATE, "emulated CPU: cannot write the registers"), BM_GUEST_FAULT;
	e->rip = s->rip;
	return 0;
}

/* emu_debug -- what the next runs stop for: one code hook per breakpoint address; a step
 *  IN:  c, d (NULL: nothing)
 * OUT:  0, or BM_GUEST_FAULT */
static int emu_debug(struct bm_guest_cpu *c, const struct bm_cpu_debug *d)
{
	struct emu_cpu *e = (struct emu_cpu *)c;
	static const struct bm_cpu_debug none;
	if (d == NULL)
		d = &none;
	e->stepping = d->step;
	int attach = d != &none && !e->debugged, detach = d == &none && e->debugged;
	if (attach) {
		int err = uc.hook_add(e->engine, &e->debug_hook, UC_HOOK_BLOCK, (void *)on_debug_block, e, 1, 0);
		if (err != UC_ERR_OK)
			return fail_uc("debugger hook", err), BM_GUEST_FAULT;
		e->debugged = 1;
	} else if (detach) {
		uc.hook_del(e->engine, e->debug_hook);
		e->debugged = 0;
	}
	if (!attach && !detach && !d->code_changed && d->n == 0 && e->breakpoints == 0)
		return 0;                                 /* else rebuild the hooks: cheap, rare */
	for (unsigned i = 0; i < e->breakpoints; i++)
		uc.hook_del(e->engine, e->breakpoint_hooks[i]);
	e->breakpoints = 0;
	for (unsigned i = 0; i < d->n && i < BM_CPU_BREAKPOINTS; i++) {
		int err = uc.hook_add(e->engine, &e->breakpoint_hooks[i], UC_HOOK_CODE, (void *)on_breakpoint,
				      e, d->at[i], d->at[i]);
		if (err != UC_ERR_OK)
			return fail_uc("breakpoint", err), BM_GUEST_FAULT;
		e->breakpoints++;
	}
	uc.ctl(e->engine, UC_CTL_TB_FLUSH_WRITE);    /* code translated before has no hooks */
	return 0;
}

static const struct bm_cpu_ops emu_ops = {
	.name = "emu",
	.open = emu_open,
	.cpu_create = emu_cpu_create,
	.set_regs = emu_set_regs,
	.get_regs = emu_get_regs,
	.run = emu_run,
	.stop = emu_stop,
	.cpu_free = emu_cpu_free,
	.close = emu_close,
	.get_state = emu_get_state,
	.set_state = emu_set_state,
	.debug = emu_debug,
};

/* bm_cpu_emu_ops -- the emulated CPU's table (for bm_guest_run_app) */
const struct bm_cpu_ops *bm_cpu_emu_ops(void) { return &emu_ops; }

/* guest.c -- the flat-binary ABI front end: what a binary (.app) sees of the machine, whatever
 * CPU backend runs it (see guest.h for the backend table).
 *
 * Loader state: the guest's physical memory IS the machine's flat memory, so we write there
 * what upstream's loader writes: a GDT at 0x1000, an IDT at 0x0, page tables at 0x2000 (PML4),
 * 0x3000/0x4000 (PDPs), 0x10000 and 0x20000 (page directories of 2 MiB pages: low memory
 * identity-mapped, 0xFFFF800000000000 mapped to physical 0x200000), and the kernel's call table
 * at 0x100010.  Each call-table entry points at a stub `out CALL_PORT+n, al ; ret`; the backend
 * turns the OUT into bm_guest_call, which decodes upstream's register ABI, checks and translates
 * guest addresses, and calls THE implementation of the call (b_output, b_nvs_read, ...: the same
 * functions Python and C apps use).  Every other register is preserved, as upstream promises.
 * Each IDT vector points at a stub `mov al, vector ; out FAULT_PORT, al ; hlt`, so a backend
 * that delivers exceptions to the guest (KVM) reports them by vector too.  A ninth stub at
 * 0x100160 (`out CALL_PORT+8`) is the console output STDOUT_GET returns by default.
 *
 * Code is entered with a return address on its stack that points at a `hlt` (the exit stub):
 * when it returns (to "the Monitor"), the run ends.  Stacks (core 0: 1 MiB; other cores and the
 * service thread: 256 KiB each) sit in pages reserved at the TOP of memory, outside the app's
 * window [0xFFFF800000000000, + FREE_MEMORY MiB), which apps built with AppPort use as their heap.
 *
 * Trust: a binary is untrusted.  Nothing the host calls or uses as a host pointer is read from
 * guest memory: guest code addresses given to SMP_SET, CALLBACK_* and STDOUT_SET are kept in
 * host memory (struct bm_core's slot argument, struct bm_guest), the host functions that run
 * them are host constants, and every guest address is bounds-checked before translation.
 *
 * All cores: one vCPU per core, created by the core's own thread on first use.  A guest
 * SMP_SET(code, core) becomes a host slot task (bm_guest_task, the guest address as argument);
 * SMP_GET shows the guest address.  Guest callbacks CALLBACK_NETWORK / _KEYBOARD run on the
 * service thread's own vCPU; a CALLBACK_TIMER tick interrupts core 0's code as upstream's timer
 * interrupt does (bm_guest_interrupt).  STDOUT_SET with a guest function: a guest b_output continues in
 * that function instead (a tail call, registers as b_output got them).
 *
 * Stopping vCPUs: when core 0's app returns, the other vCPUs must leave guest code before the
 * backend state goes away; when another core calls SHUTDOWN / REBOOT (or bm_guest_stop is
 * called from any thread), core 0's must.  ops->stop makes a vCPU look at bm_guest_must_stop
 * soon; stop_cores repeats it until every core thread has let go of the guest (a count kept in
 * the machine), so no lost stop can hang the end of a run.
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "coredump.h"
#include "gdbstub.h"
#include "guest.h"
#include "trace.h"

#define GDT          0x1000ull
#define IDT          0x0ull
#define PML4         0x2000ull
#define PDP_LOW      0x3000ull
#define PDP_HIGH     0x4000ull
#define PD_LOW       0x10000ull
#define PD_HIGH      0x20000ull
#define MAX_MEMORY   (16ull << 30)        /* 16 page directories of 1 GiB each side */
#define PAGE_FLAGS   0x83ull              /* present, writable, 2 MiB page */
#define TABLE_FLAGS  0x03ull              /* present, writable */
#define STACK_CORE0  (1ull << 20)
#define STACK_OTHER  (256ull << 10)
#define WAIT_SLICE_NS 10000000ull         /* DELAY/SLEEP look at must_stop this often */
#define DELAY_MAX    (1ull << 40)         /* longer DELAYs (12 days) are cut to this (us) */
#define RFLAGS_ZF    0x40ull
#define RFLAGS_IF    0x200ull
#define KERNEL_CODE  0x100000ull              /* the call stubs, exit stub and exception stubs */
#define KERNEL_CODE_END (BM_GUEST_FAULTS + 8 * BM_GUEST_VECTORS)
#define HALT_SLICE_MS 10                  /* a halted vCPU looks at must_stop this often */
#define HALT_TICK_MS 1                    /* ...and at the callbacks' counters this often */

static void put64(struct bm_machine *m, u64 p, u64 v) { memcpy(m->mem + p, &v, 8); }

/* bm_guest_to_host -- the process address of guest virtual [va, va+len), NULL if outside memory
 *  IN:  m, va (identity-mapped physical, or in the app window), len
 * OUT:  pointer, or NULL */
void *bm_guest_to_host(struct bm_machine *m, u64 va, u64 len)
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

/* write_loader_state -- GDT, IDT, page tables, call table, stubs (see the top of this file)
 *  IN:  m (at most MAX_MEMORY)
 * OUT:  nothing */
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
		u8 stub[3] = { 0xE6, (u8)(BM_GUEST_CALL_PORT + n), 0xC3 };   /* out imm8, al ; ret */
		memcpy(m->mem + BM_GUEST_STUBS + 8 * n, stub, sizeof stub);
		put64(m, BM_CALL_TABLE + 8 * n, BM_GUEST_STUBS + 8 * n);
	}
	u8 output[3] = { 0xE6, (u8)(BM_GUEST_CALL_PORT + 8), 0xC3 };
	memcpy(m->mem + BM_GUEST_OUTPUT_STUB, output, sizeof output);
	m->mem[BM_GUEST_EXIT_STUB] = 0xF4;                   /* hlt */
	for (u64 v = 0; v < BM_GUEST_VECTORS; v++) {
		u64 stub = BM_GUEST_FAULTS + 8 * v;              /* mov al, v ; out FAULT_PORT, al ; hlt */
		u8 code[5] = { 0xB0, (u8)v, 0xE6, BM_GUEST_FAULT_PORT, 0xF4 };
		memcpy(m->mem + stub, code, sizeof code);
		u64 low = (stub & 0xFFFF) | (8ull << 16) | (0x8Eull << 40) | ((stub >> 16 & 0xFFFF) << 48);
		put64(m, IDT + 16 * v, low);                     /* 64-bit interrupt gate, DPL 0 */
		put64(m, IDT + 16 * v + 8, stub >> 32);
	}
}

/* bm_guest_set_cmdline -- the kernel command line at physical 0x5A00, NUL-terminated
 *  IN:  m, text (NULL or "" clears it)
 * OUT:  0; -1 with BM_ERR_ARGUMENT when it is too long */
int bm_guest_set_cmdline(struct bm_machine *m, const char *text)
{
	bm_error_clear();
	size_t n = text ? strlen(text) : 0;
	if (n >= BM_GUEST_CMDLINE_MAX)
		return (int)bm_fail(BM_ERR_ARGUMENT, "the command line is %zu bytes; at most %llu fit at 0x5A00",
				    n, BM_GUEST_CMDLINE_MAX - 1) - 1;
	memset(m->mem + BM_GUEST_CMDLINE, 0, BM_GUEST_CMDLINE_MAX);
	if (n)
		memcpy(m->mem + BM_GUEST_CMDLINE, text, n);
	return 0;
}

/* bm_guest_reserve_top -- reserve the highest free run of whole 2 MiB pages holding nbytes
 * (outside the app window, which grows up from 0x200000)
 *  IN:  m, nbytes (> 0)
 * OUT:  its physical address; 0 with BM_ERR_FULL when no run is free */
u64 bm_guest_reserve_top(struct bm_machine *m, u64 nbytes)
{
	u64 pages = (nbytes + BM_PAGE_SIZE - 1) / BM_PAGE_SIZE;
	for (u64 first = m->mem_size / BM_PAGE_SIZE; first >= 1 + pages; first--)
		if (bm_mem_reserve(m, (first - pages) * BM_PAGE_SIZE, nbytes))
			return (first - pages) * BM_PAGE_SIZE;
	return bm_fail(BM_ERR_FULL, "no %llu MiB run of free memory", pages * (BM_PAGE_SIZE >> 20));
}

/* stack_top -- the physical top of vCPU `index`'s stack (index num_cores: the service thread) */
static u64 stack_top(struct bm_guest *g, u32 index)
{
	u64 below = index == 0 ? 0 : STACK_CORE0 + STACK_OTHER * (index - 1);
	return g->stacks + g->stacks_size - below;
}

/* bm_guest_must_stop -- whether a vCPU must leave its run now
 *  IN:  c
 * OUT:  BM_GUEST_GO_ON; BM_GUEST_SHUTDOWN / _REBOOT when the machine is being stopped;
 *       BM_GUEST_RETURNED for cores other than 0 once core 0's app has returned */
int bm_guest_must_stop(struct bm_guest_cpu *c)
{
	int state = atomic_load(&c->guest->m->state);
	if (state == BM_STATE_SHUTDOWN || state == BM_STATE_HALTED || state == BM_STATE_STOPPING)
		return BM_GUEST_SHUTDOWN;
	if (state == BM_STATE_REBOOT)
		return BM_GUEST_REBOOT;
	if (c->core == 0 && atomic_load(&c->guest->debug_break))
		return BM_GUEST_DEBUG;
	return c->core != 0 && atomic_load(&c->guest->ending) ? BM_GUEST_RETURNED : BM_GUEST_GO_ON;
}

/* ---- faults ---------------------------------------------------------------------------- */

static const char *const vector_names[BM_GUEST_VECTORS] = {
	"#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow", "#BR bound range",
	"#UD invalid opcode", "#NM device not available", "#DF double fault", "coprocessor overrun",
	"#TS invalid TSS", "#NP segment not present", "#SS stack fault", "#GP general protection",
	"#PF page fault", "vector 15", "#MF x87 error", "#AC alignment check", "#MC machine check",
	"#XM SIMD error", "#VE virtualization", "#CP control protection",
};

/* bm_guest_state -- every register of a vCPU that is not running, as the code that faulted
 * or was stopped sees them: when the vCPU sits in one of guest.c's exception stubs (KVM
 * delivers exceptions through the IDT), rip, rflags and rsp come from the exception frame
 * (rax's low byte is the stub's vector)
 *  IN:  c
 * OUT:  0 and *s; BM_GUEST_FAULT (error recorded) */
int bm_guest_state(struct bm_guest_cpu *c, struct bm_cpu_state *s)
{
	if (c->guest->ops->get_state(c, s) != 0)
		return BM_GUEST_FAULT;
	u64 stub = s->rip - BM_GUEST_FAULTS;
	if (s->rip >= BM_GUEST_FAULTS && stub < 8 * BM_GUEST_VECTORS) {
		unsigned vector = (unsigned)(stub / 8);
		int code = vector == 8 || (vector >= 10 && vector <= 14) || vector == 17 || vector == 21;
		const u64 *frame = bm_guest_to_host(c->guest->m, s->gpr[7], 8 * 5 + 8);
		if (frame != NULL) {             /* [error code] rip cs rflags rsp ss */
			s->rip = frame[code];
			s->rflags = frame[code + 2];
			s->gpr[7] = frame[code + 3];
		}
	}
	return 0;
}

/* fault_signal -- the POSIX signal a process would get for exception `vector` */
static int fault_signal(unsigned vector)
{
	switch (vector) {
	case 0: case 16: case 19: return 8;          /* SIGFPE */
	case 6: return 4;                            /* SIGILL */
	case 1: case 3: return 5;                    /* SIGTRAP */
	case 17: return 7;                           /* SIGBUS */
	default: return 11;                          /* SIGSEGV */
	}
}

/* bm_guest_fault -- record what a fault was: vector, core, rip, instruction bytes (+ CR2 for #PF,
 * + a note for AVX, which an emulated CPU lacks)
 *  IN:  c, vector (0..31 exceptions, 32..254 `int n`, 255 a triple fault), error_code, rip, cr2
 * OUT:  BM_GUEST_FAULT */
int bm_guest_fault(struct bm_guest_cpu *c, unsigned vector, u64 error_code, u64 rip, u64 cr2)
{
	struct bm_machine *m = c->guest->m;
	struct bm_guest *g = c->guest;
	char bytes[64] = "", extra[96] = "";
	const u8 *code = NULL;
	int n = 15;
	for (; n > 0 && (code = bm_guest_to_host(m, rip, (u64)n)) == NULL; n--)
		;
	for (int i = 0, at = 0; code && i < n && i < 12; i++)
		at += snprintf(bytes + at, sizeof bytes - (size_t)at, "%s%02x", i ? " " : "", code[i]);
	if (vector == 14)
		snprintf(extra, sizeof extra, " touching 0x%llx (%s)", (unsigned long long)cr2,
			 error_code & 1 ? "protection" : "not mapped");
	else if (vector == 13 && error_code)
		snprintf(extra, sizeof extra, " (error code 0x%llx)", (unsigned long long)error_code);
	else if (vector == 6 && code && n >= 1 && (code[0] == 0xC4 || code[0] == 0xC5 || code[0] == 0x62))
		snprintf(extra, sizeof extra, " (AVX not supported by the %s CPU)",
			 strcmp(c->guest->ops->name, "emu") == 0 ? "emulated" : "virtual");
	char number[32];
	snprintf(number, sizeof number, "interrupt %u", vector);
	const char *name = vector < 22 ? vector_names[vector] : vector == 255 ? "triple fault" : number;
	struct bm_cpu_state state;
	g->fault_signal = fault_signal(vector);
	if (g->core_dir != NULL && bm_guest_state(c, &state) == 0) {   /* before bm_fail: it may fail */
		state.rip = rip;
		if (vector == 14)
			state.cr2 = cr2;
		bm_core_write(m, g->core_dir, c->core, &state, g->fault_signal, g->core_path);
	}
	bm_fail(BM_ERR_STATE, "the app crashed on core %u: %s at rip 0x%llx%s [%s]", c->core, name,
		(unsigned long long)rip, extra, bytes[0] ? bytes : "no code there");
	if (c->core == 0) {                          /* core 0's fault ends the run: its outcome */
		g->fault.vector = vector < 255 ? (int)vector : -1;
		g->fault.rip = rip;
		g->fault.address = vector == 14 ? cr2 : 0;
		g->fault.insn_len = code ? (u32)(n < 16 ? n : 16) : 0;
		if (code)
			memcpy(g->fault.insn, code, g->fault.insn_len);
		g->faulted = 1;
	}
	return BM_GUEST_FAULT;
}

/* ---- the calls ------------------------------------------------------------------------- */

/* guest_lock -- SMP_LOCK for a vCPU: spin for the lock word's bit 0, but give up (0) when the
 * vCPU must stop (its lock may be held by a core that is gone)
 *  IN:  c, word
 * OUT:  1 with the lock taken, 0 without */
static u64 guest_lock(struct bm_guest_cpu *c, _Atomic u16 *word)
{
	while (atomic_fetch_or_explicit(word, 1, memory_order_acquire) & 1)
		while (atomic_load_explicit(word, memory_order_relaxed) & 1) {
			if (bm_guest_must_stop(c) != BM_GUEST_GO_ON)
				return 0;
			__builtin_ia32_pause();
		}
	return 1;
}

/* guest_wait -- DELAY (busy, `us` microseconds) or SLEEP (`ns` nanoseconds) for a vCPU, in slices
 * so that a vCPU that must stop does not hold up the end of the run
 *  IN:  c, ns, busy (DELAY: spin, as the real kernel does; SLEEP: sleep)
 * OUT:  nothing */
static void guest_wait(struct bm_guest_cpu *c, u64 ns, int busy)
{
	u64 now = bm_now_ns(), end = now + ns;
	if (end < now)
		end = UINT64_MAX;
	for (; now < end && bm_guest_must_stop(c) == BM_GUEST_GO_ON; now = bm_now_ns()) {
		u64 left = end - now < WAIT_SLICE_NS ? end - now : WAIT_SLICE_NS;
		if (busy) {
			b_system(DELAY, (left + 999) / 1000, 0);
		} else {
			struct timespec pause = { (time_t)(left / 1000000000ull), (long)(left % 1000000000ull) };
			nanosleep(&pause, NULL);
		}
	}
}

/* bm_guest_halt -- a guest `hlt` (not the exit stub's): wait for the next interrupt, that is
 * until a key arrives on the console, the service thread delivers a timer tick or a frame (its
 * counters move), or the vCPU must stop.  On core 0, with no input left (a closed pipe, no
 * input) and no callback set, nothing can wake it: the machine shuts down (SHUTDOWN), as a
 * hosted run must not hang forever.  Keys wake core 0 only (upstream's keyboard interrupt goes
 * to the BSP); other cores wait for a tick, a frame or the end of core 0's run; a guest
 * callback's `hlt` (on the service thread, which delivers the ticks) goes on at once.
 *  IN:  c (the calling vCPU's thread, not holding any backend turn)
 * OUT:  BM_GUEST_GO_ON (go on after the hlt), or what bm_guest_must_stop says */
int bm_guest_halt(struct bm_guest_cpu *c)
{
	struct bm_machine *m = c->guest->m;
	if (c->core == m->num_cores)
		return bm_guest_must_stop(c);
	u64 ticks = atomic_load(&m->service.timer_ticks), frames = atomic_load(&m->service.network_calls);
	for (;;) {
		int end = bm_guest_must_stop(c);
		if (end != BM_GUEST_GO_ON)
			return end;
		if (atomic_load(&m->service.timer_ticks) != ticks || atomic_load(&m->service.network_calls) != frames)
			return BM_GUEST_GO_ON;
		int callbacks = atomic_load(&m->callback[0]) != 0 || atomic_load(&m->callback[1]) != 0;
		int slice_ms = callbacks ? HALT_TICK_MS : HALT_SLICE_MS;
		int key = c->core == 0 ? bm_console_wait_input(m, slice_ms) : -1;
		if (key > 0)
			return BM_GUEST_GO_ON;
		if (key < 0 && !callbacks && c->core == 0) {
			int running = BM_STATE_RUNNING;
			atomic_compare_exchange_strong(&m->state, &running, BM_STATE_SHUTDOWN);
			return bm_guest_must_stop(c);
		}
		if (key < 0) {
			struct timespec pause = { 0, slice_ms * 1000000L };
			nanosleep(&pause, NULL);
		}
	}
}

static u32 host_brand[12];

/* read_host_brand -- host_brand from the host's CPUID (once, through pthread_once) */
static void read_host_brand(void)
{
	unsigned a, b, c, d;
	if (__get_cpuid(0x80000000u, &a, &b, &c, &d) && a >= 0x80000004u)
		for (unsigned i = 0; i < 3; i++)
			__get_cpuid(0x80000002u + i, &host_brand[4 * i], &host_brand[4 * i + 1],
				    &host_brand[4 * i + 2], &host_brand[4 * i + 3]);
}

/* bm_guest_host_brand -- the host CPU's brand string, what CPUID 0x80000002..4 answer in
 * EAX EBX ECX EDX each (the backends give it to binaries, so apps name the real CPU)
 *  IN:  nothing (any thread)
 * OUT:  12 words, or NULL when the host CPU has no brand string */
const u32 *bm_guest_host_brand(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	pthread_once(&once, read_host_brand);
	return host_brand[0] ? host_brand : NULL;
}

/* callback_trampoline -- a guest callback, called by the service thread: the network and
 * keyboard ones run the guest function kept in the run's struct on the service thread's own
 * vCPU; a timer tick is delivered to core 0's code instead (raise_tick) */
static void run_on_service(unsigned which);
static void raise_tick(void);
static struct bm_guest *enter(struct bm_machine *m);
static void leave(struct bm_machine *m);
static void guest_timer_callback(void) { raise_tick(); }
static void guest_network_callback(void) { run_on_service(1); }
static void guest_keyboard_callback(void) { run_on_service(2); }
static void (*const trampolines[3])(void) = { guest_timer_callback, guest_network_callback,
					      guest_keyboard_callback };

/* bm_guest_interrupt -- deliver a pending timer tick as upstream's kernel does (its timer
 * interrupt rewrites the interrupted code's return frame): the guest function set with
 * CALLBACK_TIMER is entered on core 0 as if the interrupted instruction had called it -- the
 * interrupted RIP pushed on the code's own stack, every register as the code left them (the
 * callback saves what it uses; AppPort's pthreads switch stacks inside it).  Only with
 * interrupts enabled (IF), outside the call stubs; ticks that come meanwhile are one pending
 * tick, as an APIC keeps them.  A backend calls this at an instruction boundary when
 * bm_guest_tick_waiting says so.
 *  IN:  c, r (rip, rsp, rflags of the vCPU, stopped at an instruction boundary)
 * OUT:  1 with r->rsp, r->rip changed (the return address written to the guest's stack), else 0 */
int bm_guest_interrupt(struct bm_guest_cpu *c, struct bm_guest_regs *r)
{
	struct bm_guest *g = c->guest;
	if (c->core != 0 || !(r->rflags & RFLAGS_IF) || (r->rip >= KERNEL_CODE && r->rip < KERNEL_CODE_END))
		return 0;
	if (!atomic_exchange(&g->tick_pending, 0) || atomic_load(&g->ending))
		return 0;
	u64 code = atomic_load(&g->callback[0]);
	void *slot = bm_guest_to_host(g->m, r->rsp - 8, 8);
	if (code == 0 || slot == NULL)                   /* unset meanwhile, or no stack: dropped */
		return 0;
	memcpy(slot, &r->rip, 8);
	r->rsp -= 8;
	r->rip = code;
	return 1;
}

/* raise_tick -- the service thread's timer tick for a binary: pending for core 0's vCPU, which
 * its backend delivers at the next instruction boundary (bm_guest_interrupt) */
static void raise_tick(void)
{
	struct bm_machine *m = bm_self_machine;
	struct bm_guest *g = enter(m);
	if (g == NULL)
		return;
	atomic_store(&g->tick_pending, 1);
	struct bm_guest_cpu *core0 = atomic_load(&g->cpus[0]);
	if (core0 != NULL && g->ops->interrupt != NULL)
		g->ops->interrupt(core0);
	leave(m);
}

/* guest_system -- b_system for a binary: codes that take or return addresses are translated and
 * checked; guest functions (SMP_SET, CALLBACK_*, STDOUT_SET) are kept in host memory and run by
 * host trampolines; codes that wait give up when the vCPU must stop
 *  IN:  c = the calling vCPU, r = its registers (RCX function, RAX var1, RDX var2)
 * OUT:  the result, in guest terms */
static u64 guest_system(struct bm_guest_cpu *c, struct bm_guest_regs *r)
{
	struct bm_guest *g = c->guest;
	struct bm_machine *m = g->m;
	u64 function = r->rcx, var1 = r->rax, var2 = r->rdx;
	switch (function) {
	case SMP_LOCK: {
		void *word = bm_guest_to_host(m, var1, 2);
		return word ? guest_lock(c, word) : 0;
	}
	case SMP_UNLOCK: {
		void *word = bm_guest_to_host(m, var1, 2);
		return word ? b_system(function, (u64)(uintptr_t)word, var2) : 0;
	}
	case DELAY:
		guest_wait(c, (var1 < DELAY_MAX ? var1 : DELAY_MAX) * 1000ull, 1);
		return var1;
	case SLEEP:
		guest_wait(c, var1, 0);
		return 0;
	case SHUTDOWN:                               /* core 0 may be spinning in guest code */
	case REBOOT: {
		u64 result = b_system(function, var1, var2);
		if (c->core != 0)                    /* core 0 leaves by itself; the others at its end */
			bm_guest_stop(m);
		return result;
	}
	case DUMP_MEM: {
		void *p = bm_guest_to_host(m, var1, var2);
		if (p == NULL)
			return bm_fail(BM_ERR_RANGE, "DUMP_MEM: 0x%lx is outside memory", var1);
		return bm_dump_mem((u64)(uintptr_t)p, var1, var2);
	}
	case SCREEN_LFB_GET:
		return host_to_guest(m, (void *)(uintptr_t)b_system(function, var1, var2));
	case SMP_SET:                                /* the core runs the guest code on its vCPU */
		if (var1 == 0 || (var1 & 0xF) != 0)
			return bm_fail(BM_ERR_ARGUMENT, "SMP_SET: code address 0x%lx is not 16-byte aligned", var1);
		return bm_smp_set_shown(m, (u64)(uintptr_t)bm_guest_task, var2, var1, var1) ? var1 : 0;
	case STDOUT_SET:                             /* 0 or the console's stub: the default again */
		atomic_store(&g->output, var1 == BM_GUEST_OUTPUT_STUB ? 0 : var1);
		return var1;
	case STDOUT_GET: {                           /* what b_output calls: the app's, or the console */
		u64 fn = atomic_load(&g->output);
		return fn ? fn : BM_GUEST_OUTPUT_STUB;
	}
	case CALLBACK_TIMER:
	case CALLBACK_NETWORK:
	case CALLBACK_KEYBOARD: {
		unsigned which = (unsigned)(function - CALLBACK_TIMER);
		atomic_store(&g->callback[which], var1);
		b_system(function, var1 ? (u64)(uintptr_t)trampolines[which] : 0, 0);
		return var1;
	}
	default:
		return b_system(function, var1, var2);
	}
}

/* bm_guest_call -- one call from the guest, upstream's register ABI (baremetal-api.md section 4)
 *  IN:  c = the calling vCPU, n = call number (call table order), r = its registers
 * OUT:  r updated with the call's results (r->rip changed only for a STDOUT_SET function) */
void bm_guest_call(struct bm_guest_cpu *c, unsigned n, struct bm_guest_regs *r)
{
	struct bm_machine *m = c->guest->m;
	void *p;
	if (bm_traced(m)) {                              /* trace.h: the binary's call, once */
		u64 t0 = bm_now_ns(), before[5] = { r->rax, r->rcx, r->rdx, r->rsi, r->rdi };
		const void *data = n == 1 ? bm_guest_to_host(m, r->rsi, r->rcx) : NULL;
		bm_trace_quiet++;                        /* the calls made for it: not traced */
		bm_guest_call(c, n, r);
		bm_trace_quiet--;
		bm_trace_guest_call(m, n, t0, before, (u64[]){ r->rax, r->rcx, r->rdi }, data);
		return;
	}
	switch (n) {
	case 0: {                                             /* b_input: AL, ZF (test al, al) */
		u8 key = b_input();
		r->rax = (r->rax & ~0xFFull) | key;
		r->rflags = key ? r->rflags & ~RFLAGS_ZF : r->rflags | RFLAGS_ZF;
		break;
	}
	case 1: {                                             /* b_output: RSI, RCX */
		u64 fn = atomic_load(&c->guest->output);
		if (fn != 0)
			r->rip = fn;                          /* the app's function returns for us */
		else if ((p = bm_guest_to_host(m, r->rsi, r->rcx)) != NULL)
			b_output(p, r->rcx);
		break;
	}
	case 2:                                               /* b_net_tx: RSI, RCX, RDX */
		if ((p = bm_guest_to_host(m, r->rsi, r->rcx)) != NULL)
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
		p = bm_guest_to_host(m, address, bytes);
		r->rcx = p == NULL ? 0 : (n == 4 ? b_nvs_read(p, r->rax, r->rcx, r->rdx)
						 : b_nvs_write(p, r->rax, r->rcx, r->rdx));
		break;
	}
	case 6:                                               /* b_system: RCX, RAX, RDX -> RAX */
		r->rax = guest_system(c, r);
		break;
	case 8:                                               /* the console output (STDOUT_GET's) */
		if ((p = bm_guest_to_host(m, r->rsi, r->rcx)) != NULL)
			b_output(p, r->rcx);
		break;
	default:
		break;
	}
}

/* ---- running guest code on a core ------------------------------------------------------ */

/* cpu_of -- the calling thread's vCPU for `index` (made on first use)
 *  IN:  g, index (a core id; num_cores for the service thread)
 * OUT:  the vCPU, or NULL with the error recorded */
static struct bm_guest_cpu *cpu_of(struct bm_guest *g, u32 index)
{
	struct bm_guest_cpu *c = atomic_load(&g->cpus[index]);
	if (c != NULL)
		return c;
	pthread_mutex_lock(&g->lock);                /* one vCPU creation at a time */
	c = g->ops->cpu_create(g, index);
	pthread_mutex_unlock(&g->lock);
	if (c == NULL)
		return NULL;
	c->guest = g;
	c->core = index;
	c->thread = pthread_self();
	atomic_store(&g->cpus[index], c);
	return c;
}

/* run_code -- run guest code on vCPU `index` (the calling thread's) until it returns
 *  IN:  g, index, code (guest address), rax (NULL: not wanted)
 * OUT:  enum bm_guest_end; BM_GUEST_FAULT with the error recorded */
static int run_code(struct bm_guest *g, u32 index, u64 code, u64 *rax)
{
	struct bm_guest_cpu *c = cpu_of(g, index);
	if (c == NULL)
		return BM_GUEST_FAULT;
	u64 top = stack_top(g, index);
	put64(g->m, top - 8, BM_GUEST_EXIT_STUB);
	struct bm_guest_regs regs = { .rip = code, .rsp = top - 8, .rflags = 0x202 };   /* IF, as the kernel runs apps */
	if (g->ops->set_regs(c, &regs) != 0)
		return BM_GUEST_FAULT;
	if (index == 0)
		atomic_store(&g->core0_running, 1);
	int end = index == 0 && g->gdb != NULL ? bm_gdb_serve(g->gdb, c, bm_guest_state) : g->ops->run(c);
	if (index == 0)
		atomic_store(&g->core0_running, 0);
	if (end == BM_GUEST_RETURNED && rax != NULL) {
		if (g->ops->get_regs(c, &regs) != 0)
			return BM_GUEST_FAULT;
		*rax = regs.rax;
	}
	return end;
}

/* enter -- count the calling thread as a user of the machine's guest, if one runs
 *  IN:  m
 * OUT:  the guest (call leave after), or NULL (nothing to do; the count is already undone) */
static struct bm_guest *enter(struct bm_machine *m)
{
	atomic_fetch_add(&m->guest_users, 1);
	struct bm_guest *g = atomic_load(&m->guest);
	if (g == NULL)
		atomic_fetch_sub(&m->guest_users, 1);
	return g;
}

static void leave(struct bm_machine *m) { atomic_fetch_sub(&m->guest_users, 1); }

/* report -- a fault on a thread other than core 0's app: one line on stderr ("core N: ..." as
 * for C tasks), the core goes on
 *  IN:  core, who ("core", "callback on core"), the recorded error */
static void report(u32 core, const char *who)
{
	char line[320];
	int n = snprintf(line, sizeof line, "%s %u: %s\n", who, core, bm_error.message);
	if (write(2, line, (size_t)n) < 0)
		return;
}

/* bm_guest_task -- a core's task for a guest SMP_SET: run the guest code on this core's vCPU.
 * The thread counts itself in m->guest_users before it reads m->guest (see stop_cores).
 *  IN:  guest_code = the guest address SMP_SET was given (the core's slot argument)
 * OUT:  nothing; a fault is reported on stderr ("core N: ...") and the core goes idle */
void bm_guest_task(u64 guest_code)
{
	struct bm_core *self = bm_self;
	struct bm_machine *m = self->machine;
	struct bm_guest *g = enter(m);
	if (g == NULL)
		return;
	int end = atomic_load(&g->ending) ? BM_GUEST_RETURNED : run_code(g, self->id, guest_code, NULL);
	leave(m);
	if (end == BM_GUEST_FAULT)
		report(self->id, "core");
}

/* run_on_service -- the service thread runs guest callback `which` on its own vCPU
 *  IN:  which (0 timer, 1 network, 2 keyboard)
 * OUT:  nothing; a fault is reported on stderr and the callback is dropped */
static void run_on_service(unsigned which)
{
	struct bm_machine *m = bm_self_machine;
	struct bm_guest *g = enter(m);
	if (g == NULL)
		return;
	u64 code = atomic_load(&g->callback[which]);
	int end = code == 0 || atomic_load(&g->ending) ? BM_GUEST_RETURNED : run_code(g, m->num_cores, code, NULL);
	if (end == BM_GUEST_FAULT) {
		atomic_store(&g->callback[which], 0);
		atomic_store(&m->callback[which], 0);
		report(0, "callback on core");
	}
	leave(m);
}

/* kick_all -- ask every vCPU but the caller's to look at must_stop
 *  IN:  g, from (first index to kick: 0 all, 1 all but core 0)
 * OUT:  nothing */
static void kick_all(struct bm_guest *g, u32 from)
{
	for (u32 i = from; i <= g->m->num_cores; i++) {
		struct bm_guest_cpu *c = atomic_load(&g->cpus[i]);
		if (c != NULL && !pthread_equal(c->thread, pthread_self()))
			g->ops->stop(c);
	}
}

/* bm_guest_kick -- from any thread, once and without waiting: every vCPU of the binary running
 * on m (if any) looks at must_stop (the signal watchdog repeats it while it waits)
 *  IN:  m
 * OUT:  nothing */
void bm_guest_kick(struct bm_machine *m)
{
	struct bm_guest *g = enter(m);
	if (g == NULL)
		return;
	kick_all(g, 0);
	leave(m);
}

/* bm_guest_stop -- from any thread, after the machine's state says SHUTDOWN or REBOOT: make
 * every vCPU of the binary running on m (if any) leave guest code.  A backend's stop may be
 * missed by a vCPU just entering its run, so the stops are repeated for up to 100 ms while
 * core 0's run goes on.
 *  IN:  m
 * OUT:  nothing */
void bm_guest_stop(struct bm_machine *m)
{
	struct bm_guest *g = enter(m);
	if (g == NULL)
		return;
	for (int round = 0; round < 100 && atomic_load(&m->guest) == g && atomic_load(&g->core0_running); round++) {
		kick_all(g, 0);
		struct timespec pause = { 0, 1000000 };
		nanosleep(&pause, NULL);
	}
	leave(m);
}

/* bm_guest_shutdown -- from any thread: stop the machine as SHUTDOWN from another core does
 * (a time limit, a signal): state SHUTDOWN, then every vCPU of a binary leaves guest code
 *  IN:  m
 * OUT:  nothing */
void bm_guest_shutdown(struct bm_machine *m)
{
	int running = BM_STATE_RUNNING;
	atomic_compare_exchange_strong(&m->state, &running, BM_STATE_SHUTDOWN);
	bm_guest_stop(m);
}

/* stop_cores -- end the run for the other cores; returns once no core thread uses g.
 * Handshake: m->guest is cleared, then while m->guest_users is not 0 every other vCPU is
 * stopped again, with a growing pause (20 us .. 1 ms) between rounds.  A core thread counts
 * itself in guest_users before it reads m->guest (both seq_cst): either it reads NULL, or this
 * loop sees it counted.  A counted thread leaves: must_stop says so, ops->stop ends a run under
 * way, and the calls that wait (SMP_LOCK, DELAY, SLEEP) give up.  Slot tasks no core has taken
 * yet are forgotten, so none runs in a later run; guest callbacks are unset.
 *  IN:  g (core 0's vCPU has left its run) */
static void stop_cores(struct bm_guest *g)
{
	struct bm_machine *m = g->m;
	atomic_store(&g->ending, 1);
	for (unsigned i = 0; i < 3; i++) {
		u64 trampoline = (u64)(uintptr_t)trampolines[i], expected = trampoline;
		atomic_compare_exchange_strong(&m->callback[i], &expected, 0);
	}
	atomic_store(&m->guest, NULL);
	for (long pause_ns = 20000; atomic_load(&m->guest_users) != 0;) {
		kick_all(g, 1);
		struct timespec pause = { 0, pause_ns };
		nanosleep(&pause, NULL);
		if (pause_ns < 1000000)
			pause_ns *= 2;
	}
	bm_smp_cancel(m, (u64)(uintptr_t)bm_guest_task);
}

/* bm_guest_run_app -- run the binary loaded at physical 0x200000 on the calling core (core 0)
 *  IN:  m (booted; the calling thread bound to it as core 0), ops = the CPU backend
 * OUT:  enum bm_guest_end; *rax = the app's RAX when it returned.  BM_GUEST_FAULT with the
 *       error recorded (where the app crashed, or what the backend refused) */
static int run_app(struct bm_machine *m, const struct bm_cpu_ops *ops, u64 entry, u64 *rax, struct bm_guest *g)
{
	atomic_store(&m->kick, bm_guest_kick);         /* safe at any time: it finds no run, or this one */
	g->m = m;
	g->ops = ops;
	pthread_mutex_init(&g->lock, NULL);
	u64 host_view[9];                                /* host pointers the guest must not see */
	memcpy(host_view, m->mem + BM_CALL_TABLE, 64);
	memcpy(host_view + 8, m->mem + BM_INFOMAP_LFB_BASE, 8);
	write_loader_state(m);
	put64(m, BM_INFOMAP_LFB_BASE, m->screen.lfb);    /* the guest's (physical) address */
	g->stacks_size = STACK_CORE0 + STACK_OTHER * m->num_cores;
	g->stacks = bm_guest_reserve_top(m, g->stacks_size);
	g->stacks_size = (g->stacks_size + BM_PAGE_SIZE - 1) / BM_PAGE_SIZE * BM_PAGE_SIZE;
	int end = g->stacks ? ops->open(g) : BM_GUEST_FAULT;
	int opened = end == 0;
	if (end == 0) {
		atomic_store(&m->guest, g);
		end = run_code(g, 0, entry, rax);
	}
	struct bm_error error = bm_error;                /* stopping the others must not lose it */
	if (opened)
		stop_cores(g);
	for (u32 i = 0; i <= BM_MAX_CORES; i++)
		if (g->cpus[i] != NULL)
			ops->cpu_free(g->cpus[i]);
	if (opened)
		ops->close(g);
	if (g->stacks)
		bm_mem_free(m, g->stacks);
	pthread_mutex_destroy(&g->lock);
	memcpy(m->mem + BM_CALL_TABLE, host_view, 64);   /* for C and Python apps after the run */
	memcpy(m->mem + BM_INFOMAP_LFB_BASE, host_view + 8, 8);
	bm_error = error;
	return end;
}

/* bm_guest_run_app -- run the binary loaded at physical 0x200000 on the calling core (core 0)
 * with CPU backend `ops`, and say how the run ended
 *  IN:  m (booted; the calling thread bound to it as core 0), ops, out = the outcome to fill
 * OUT:  out->how: BM_END_RETURNED (value = RAX), _SHUTDOWN, _REBOOT, BM_END_EXCEPTION (vector,
 *       rip, CR2 in address, the instruction's bytes, the message) or BM_END_FAILED (what the
 *       backend or the machine refused) */
void bm_guest_run_app(struct bm_machine *m, const struct bm_cpu_ops *ops, struct bm_outcome *out)
{
	bm_guest_run_debug(m, ops, NULL, NULL, NULL, out);
}

/* bm_guest_run_debug -- bm_guest_run_app, with core 0 under a gdb stub (gdbstub.c: it waits for
 * gdb's packets before the first instruction) and/or a core file written on a fault
 *  IN:  m, ops, gdb (bm_gdb_open's, or NULL), core_dir (a directory, or NULL), core_path (NULL,
 *       or 256 bytes: the core file's path is put there, "" when none was written), out
 * OUT:  as bm_guest_run_app */
void bm_guest_run_debug(struct bm_machine *m, const struct bm_cpu_ops *ops, struct bm_gdb *gdb,
			const char *core_dir, char *core_path, struct bm_outcome *out)
{
	bm_guest_run_entry(m, ops, BM_APP_VIRTUAL, gdb, core_dir, core_path, out);
}

/* bm_guest_run_entry -- bm_guest_run_debug, entering the code at `entry` instead of the app
 * address (upstream's Monitor, built with ORG 0x1E0000, runs where the kernel loads it)
 *  IN:  m, ops, entry (a guest address inside memory, already holding the code), gdb, core_dir,
 *       core_path, out
 * OUT:  as bm_guest_run_app; BM_END_FAILED (BM_ERR_RANGE) for an entry outside memory */
void bm_guest_run_entry(struct bm_machine *m, const struct bm_cpu_ops *ops, u64 entry, struct bm_gdb *gdb,
			const char *core_dir, char *core_path, struct bm_outcome *out)
{
	bm_error_clear();
	struct bm_guest *g = NULL;
	u64 rax = 0;
	int end = BM_GUEST_FAULT;
	if (core_path != NULL)
		core_path[0] = 0;
	if (m->mem_size > MAX_MEMORY)
		bm_fail(BM_ERR_ARGUMENT, "binaries run on machines of at most 16 GiB");
	else if (bm_guest_to_host(m, entry, 1) == NULL)
		bm_fail(BM_ERR_RANGE, "entry address 0x%lx is outside the machine's memory", entry);
	else if (atomic_load(&m->guest) != NULL)
		bm_fail(BM_ERR_STATE, "a binary is already running on this machine");
	else if ((g = calloc(1, sizeof *g)) == NULL)
		bm_fail(BM_ERR_FULL, "out of host memory");
	else {
		g->gdb = gdb;
		g->core_dir = core_dir;
		g->core_path = core_path;
		end = run_app(m, ops, entry, &rax, g);
	}
	int how = end == BM_GUEST_RETURNED ? BM_END_RETURNED : end == BM_GUEST_SHUTDOWN ? BM_END_SHUTDOWN :
		  end == BM_GUEST_REBOOT ? BM_END_REBOOT : g && g->faulted ? BM_END_EXCEPTION : BM_END_FAILED;
	if (how == BM_END_SHUTDOWN && atomic_load(&m->state) == BM_STATE_STOPPING)
		how = BM_END_TERMINATED;                 /* a stop signal (signals.c) ended the run */
	bm_outcome_set(out, how, 0, end == BM_GUEST_FAULT ? bm_error.message : NULL);
	out->value = rax;
	if (how == BM_END_EXCEPTION) {
		out->vector = g->fault.vector;
		out->rip = g->fault.rip;
		out->address = g->fault.address;
		out->insn_len = g->fault.insn_len;
		memcpy(out->insn, g->fault.insn, sizeof out->insn);
	}
	free(g);
}

/* guest.h -- the flat-binary ABI front end (guest.c) and the table a CPU backend fills in.
 *
 * A flat binary (.app) runs on a CPU backend: cpu_kvm.c (hardware virtualization) or
 * cpu_emu.c (an emulated CPU).  Everything that is the BareMetal contract rather than the CPU
 * lives in guest.c: the loader state written into the machine's memory (GDT, IDT, page tables,
 * the call table), upstream's register ABI for the seven calls, guest-address checks, guest
 * SMP_SET on the cores' own threads, guest callbacks, stacks, fault reports, and stopping the
 * vCPUs at the end of a run.  A backend only creates vCPUs, runs one until something happens,
 * moves registers in and out, and stops one from another thread (struct bm_cpu_ops).
 * Adding a backend = one C file with a `const struct bm_cpu_ops` + one Python module.
 */
#ifndef BM_GUEST_H
#define BM_GUEST_H

#include "machine.h"

#define BM_APP_VIRTUAL     0xFFFF800000000000ull  /* where .app images are linked to run */
#define BM_APP_PHYSICAL    0x200000ull            /* ...and the physical memory behind it */
#define BM_GUEST_STUBS     0x100100ull            /* call stubs: out CALL_PORT+n, al ; ret */
#define BM_GUEST_OUTPUT_STUB 0x100160ull          /* out CALL_PORT+8 ; ret: the console output */
#define BM_GUEST_EXIT_STUB 0x100180ull            /* hlt: where guest code returns to */
#define BM_GUEST_CALLS     9                      /* the 7 calls, reserved, the console output */
#define BM_GUEST_FAULTS    0x100200ull            /* exception stubs, 8 bytes per vector */
#define BM_GUEST_CALL_PORT 0xE0                   /* out CALL_PORT+n: call n of the call table */
#define BM_GUEST_FAULT_PORT 0xEF                  /* out FAULT_PORT, al=vector: an exception */
#define BM_GUEST_VECTORS   32
#define BM_GUEST_CMDLINE   0x5A00ull              /* the kernel command line, NUL-terminated */
#define BM_GUEST_CMDLINE_MAX 0x600ull             /* up to 0x6000 (the InfoMap page's end) */

/* How a run of guest code ended (bm_guest_run_app's and a backend's run's value). */
enum bm_guest_end {
	BM_GUEST_RETURNED = 0,  /* the code returned (ret to the exit stub); RAX is its value */
	BM_GUEST_SHUTDOWN = 1,  /* b_system(SHUTDOWN), or the machine was stopped from outside */
	BM_GUEST_REBOOT = 2,    /* b_system(REBOOT) */
	BM_GUEST_GO_ON = 3,     /* bm_guest_must_stop: nothing to stop for */
	BM_GUEST_DEBUG = 4,     /* under a debugger: a step, a breakpoint or an interrupt stopped it */
	BM_GUEST_FAULT = -1,    /* the app crashed or the backend failed: the error says which */
};

/* Registers the ABI uses (a backend copies these in and out; others stay untouched). */
struct bm_guest_regs {
	u64 rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, rip, rflags;
};

/* The whole register state a debugger or a core file shows (gdb's amd64 order). */
struct bm_cpu_state {
	u64 gpr[16];            /* rax rbx rcx rdx rsi rdi rbp rsp r8 .. r15 */
	u64 rip, rflags;
	u64 seg[6];             /* selectors: cs ss ds es fs gs */
	u64 fs_base, gs_base;
	u64 cr0, cr2, cr3, cr4, efer;
	u8 xmm[16][16];
	u32 mxcsr;
};

/* What the next run stops for, under a debugger (ops->debug). */
#define BM_CPU_BREAKPOINTS 64
struct bm_cpu_debug {
	int step;                        /* run one instruction, then BM_GUEST_DEBUG */
	int code_changed;                /* the debugger wrote guest memory: forget translated code */
	unsigned n;                      /* breakpoints: stop (BM_GUEST_DEBUG) before executing... */
	u64 at[BM_CPU_BREAKPOINTS];      /* ...an instruction at one of these virtual addresses */
};

struct bm_guest;
struct bm_gdb;

/* One vCPU: the backend's own struct starts with this one. */
struct bm_guest_cpu {
	struct bm_guest *guest;
	u32 core;
	pthread_t thread;       /* the core thread that runs it */
};

/* A CPU backend.  Every function but stop is called on the vCPU's own thread.
 *  open(g)           the run's backend state into g->backend; 0, or BM_GUEST_FAULT (error recorded)
 *  cpu_create(g, n)  vCPU for core n in long mode over the loader state; NULL (error recorded)
 *  set_regs/get_regs the ABI registers; 0, or BM_GUEST_FAULT
 *  run(c)            run until the code returns to BM_GUEST_EXIT_STUB (RETURNED), until
 *                    bm_guest_must_stop says to stop (its value), or a fault (bm_guest_fault's
 *                    value).  Calls go to bm_guest_call(c, n, regs) as they happen (RFLAGS
 *                    in and out: b_input sets ZF).  A guest `hlt` anywhere but the exit
 *                    stub calls bm_guest_halt(c) (without the turn, for emu), then goes on
 *                    after it, or returns what it says.
 *  stop(c)           from any thread: make run look at bm_guest_must_stop soon (< 100 ms)
 *  interrupt(c)      from any thread, or NULL: make run deliver a pending timer tick soon
 *                    (bm_guest_interrupt at an instruction boundary; NULL: run polls for it)
 *  cpu_free(c), close(g)
 * For a debugger (gdbstub.c) and core files, on a vCPU that is not running:
 *  get_state/set_state  every register of struct bm_cpu_state (set: gprs, rip, rflags,
 *                    fs_base, gs_base); 0, or BM_GUEST_FAULT
 *  debug(c, d)       what the next runs stop for (d: NULL or all zero = nothing): run then
 *                    returns BM_GUEST_DEBUG; 0, or BM_GUEST_FAULT (error recorded: unsupported) */
struct bm_cpu_ops {
	const char *name;
	int (*open)(struct bm_guest *g);
	struct bm_guest_cpu *(*cpu_create)(struct bm_guest *g, u32 core);
	int (*set_regs)(struct bm_guest_cpu *c, const struct bm_guest_regs *r);
	int (*get_regs)(struct bm_guest_cpu *c, struct bm_guest_regs *r);
	int (*run)(struct bm_guest_cpu *c);
	void (*stop)(struct bm_guest_cpu *c);
	void (*cpu_free)(struct bm_guest_cpu *c);
	void (*close)(struct bm_guest *g);
	int (*get_state)(struct bm_guest_cpu *c, struct bm_cpu_state *s);
	int (*set_state)(struct bm_guest_cpu *c, const struct bm_cpu_state *s);
	int (*debug)(struct bm_guest_cpu *c, const struct bm_cpu_debug *d);
	void (*interrupt)(struct bm_guest_cpu *c);
};

/* One run of a binary on a machine (guest.c owns it; m->guest points at it while it runs). */
struct bm_guest {
	struct bm_machine *m;
	const struct bm_cpu_ops *ops;
	void *backend;                        /* the backend's run state */
	u64 stacks, stacks_size;              /* physical: every core's stack, above the app window */
	_Atomic int ending;                   /* core 0's app has returned: other vCPUs stop */
	_Atomic int core0_running;            /* core 0's vCPU is in ops->run */
	pthread_mutex_t lock;
	_Atomic u64 callback[3];              /* guest functions of CALLBACK_TIMER/_NETWORK/_KEYBOARD */
	_Atomic int tick_pending;             /* a timer tick waits to be delivered to core 0's code */
	_Atomic u64 output;                   /* guest function of STDOUT_SET, 0 = the console */
	struct bm_guest_cpu *_Atomic cpus[BM_MAX_CORES + 1];   /* [num_cores]: the service thread's */
	struct bm_gdb *gdb;                   /* core 0 runs under this debugger (gdbstub.c), or NULL */
	_Atomic int debug_break;              /* the debugger asks core 0 to stop (BM_GUEST_DEBUG) */
	const char *core_dir;                 /* a fault writes a core file here (coredump.c), or NULL */
	char *core_path;                      /* ...and its path here (256 bytes), if not NULL */
	int fault_signal;                     /* the last fault's POSIX signal (for gdb) */
	int faulted;                          /* core 0 faulted: `fault` says how */
	struct { int vector; u64 rip, address; u32 insn_len; u8 insn[16]; } fault;
};

/* for backends */
void bm_guest_call(struct bm_guest_cpu *c, unsigned n, struct bm_guest_regs *r);
int bm_guest_must_stop(struct bm_guest_cpu *c);
int bm_guest_halt(struct bm_guest_cpu *c);
const u32 *bm_guest_host_brand(void);
int bm_guest_fault(struct bm_guest_cpu *c, unsigned vector, u64 error_code, u64 rip, u64 cr2);
void *bm_guest_to_host(struct bm_machine *m, u64 va, u64 len);
int bm_guest_state(struct bm_guest_cpu *c, struct bm_cpu_state *s);
int bm_guest_interrupt(struct bm_guest_cpu *c, struct bm_guest_regs *r);

/* bm_guest_tick_waiting -- cheap test for a backend's run loop: a tick waits for this vCPU */
static inline int bm_guest_tick_waiting(struct bm_guest_cpu *c)
{
	return c->core == 0 && atomic_load_explicit(&c->guest->tick_pending, memory_order_relaxed);
}

/* the backends (cpu_kvm.c, cpu_emu.c) */
const struct bm_cpu_ops *bm_cpu_kvm_ops(void);
const struct bm_cpu_ops *bm_cpu_emu_ops(void);

/* for Python (guest.cdef) */
void bm_guest_run_app(struct bm_machine *m, const struct bm_cpu_ops *ops, struct bm_outcome *out);
void bm_guest_run_debug(struct bm_machine *m, const struct bm_cpu_ops *ops, struct bm_gdb *gdb,
			const char *core_dir, char *core_path, struct bm_outcome *out);
void bm_guest_run_entry(struct bm_machine *m, const struct bm_cpu_ops *ops, u64 entry, struct bm_gdb *gdb,
			const char *core_dir, char *core_path, struct bm_outcome *out);
void bm_guest_kick(struct bm_machine *m);
void bm_guest_stop(struct bm_machine *m);
void bm_guest_shutdown(struct bm_machine *m);
u64 bm_guest_reserve_top(struct bm_machine *m, u64 nbytes);
int bm_guest_set_cmdline(struct bm_machine *m, const char *text);
void bm_guest_task(u64 guest_code);

#endif

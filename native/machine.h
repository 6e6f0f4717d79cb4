/* machine.h -- the machine: the struct that holds every part, and its life (machine.c).
 *
 * A hosted BareMetal machine is a `struct bm_machine`: one flat memory region (the app's
 * "physical" memory: byte p of the contract's memory map is mem[p]), a set of cores (threads),
 * a console, drives, NICs and the callback service thread.  Each subsystem lays out its part
 * in its own header (io.h, smp.h, nvs.h, net.h, service.h), which depends only on base.h; this
 * header puts the parts together.  Subsystem C files include it for the layout of the parts
 * they are handed (m->nvs, m->mem); they call nothing declared here.
 *
 * The run outcome: every way an app runs (a Python main, a C main, a flat binary) ends in one
 * struct bm_outcome, which the Python face turns into an exit code or an AppCrashed.
 */
#ifndef BM_MACHINE_H
#define BM_MACHINE_H

#include "base.h"
#include "io.h"
#include "smp.h"
#include "nvs.h"
#include "net.h"
#include "service.h"
#include "trace.h"

struct bm_guest;                /* the run of a flat binary (guest.c) */

/* The linear frame buffer, described to the app by SCREEN_* and the InfoMap. */
struct bm_screen {
	u64 lfb;                /* physical address in flat memory, 0 when there is no screen */
	u32 x, y, ppsl, bpp;
};

/* How an app's run ended (struct bm_outcome's `how`). */
enum bm_end {
	BM_END_RETURNED,        /* main returned / called exit / the binary returned: `value` */
	BM_END_SHUTDOWN,        /* b_system(SHUTDOWN) */
	BM_END_REBOOT,          /* b_system(REBOOT) */
	BM_END_SIGNAL,          /* C code faulted: `signal` (SIGSEGV, ...), `address`, `code` */
	BM_END_EXCEPTION,       /* a binary raised a CPU exception: `vector`, `rip`, `address` (CR2) */
	BM_END_FAILED,          /* the app could not run on (e.g. KVM refused): `message` */
	BM_END_TERMINATED,      /* a host signal ended the run (SIGTERM, SIGINT, SIGHUP): `signal` */
};

struct bm_outcome {
	int how;                /* enum bm_end */
	int signal;             /* BM_END_SIGNAL / BM_END_TERMINATED: the signal number */
	int vector;             /* BM_END_EXCEPTION: the CPU vector (6 #UD, 13 #GP, 14 #PF), -1 unknown */
	u32 core;               /* the core it happened on */
	u64 value;              /* BM_END_RETURNED: main's value, exit's status, the binary's RAX */
	u64 address;            /* the faulting address (si_addr, or CR2 for #PF), 0 if none */
	u64 rip;                /* BM_END_EXCEPTION: the instruction's guest address */
	u64 code;               /* the task that was running, 0 for main */
	u32 insn_len;           /* bytes of `insn` known */
	u8 insn[16];            /* the faulting instruction's first bytes */
	char message[240];      /* what happened, in words ("" when `how` says it all) */
};

struct bm_machine {
	u8 *mem;                /* flat memory, 2 MiB aligned; mem[p] is physical address p */
	u64 mem_size;           /* bytes, a multiple of 2 MiB */
	u32 num_cores;
	u32 cpu_mhz;            /* for the InfoMap; 0 when unknown */
	u64 boot_ns;            /* CLOCK_MONOTONIC at boot: TIMECOUNTER counts from here */
	_Atomic int state;      /* enum bm_machine_state */
	/* makes code that never calls the runtime (a binary's vCPUs) look at state; set by the
	 * CPU front end (guest.c), called by the signal watchdog (signals.c), NULL = nothing to do */
	void (*_Atomic kick)(struct bm_machine *m);
	void *owner;            /* the Python Machine owning this one (a cffi handle), or NULL */

	/* page allocator over [BM_SYSTEM_SIZE, mem_size), 2 MiB pages */
	pthread_mutex_t pages_lock;
	u64 num_pages;          /* pages in the whole region, system area included */
	u64 pages_free;
	u32 *page_run;          /* page_run[i] = length of the allocation starting at page i, 0 if none */
	u8 *page_used;

	_Atomic u64 callback[3]; /* CALLBACK_TIMER, _NETWORK, _KEYBOARD: function addresses */
	struct bm_guest *_Atomic guest; /* the run of a flat binary (guest.c), else NULL */
	_Atomic u32 guest_users;        /* threads that may be using `guest` (guest.c) */

	struct bm_console console;
	struct bm_smp smp;
	struct bm_nvs nvs;
	struct bm_net net;
	struct bm_service service;
	struct bm_screen screen;
	struct bm_trace *trace;   /* the call trace (trace.c), NULL when off: the calls' one branch */
};

/* A process address for physical address p of machine m. */
static inline void *bm_phys(struct bm_machine *m, u64 p) { return m->mem + p; }

/* 1 if [addr, addr+len) lies inside m's flat memory. */
static inline int bm_in_memory(struct bm_machine *m, const void *addr, u64 len)
{
	uintptr_t a = (uintptr_t)addr, base = (uintptr_t)m->mem;
	return a >= base && len <= m->mem_size && a - base <= m->mem_size - len;
}

/* machine.c: the machine's life, binding, memory pages (IN/OUT comments at each definition) */
struct bm_machine *bm_machine_new(u8 *mem, u64 mem_size, u32 num_cores, int out_fd, int in_fd);
void bm_machine_set_owner(struct bm_machine *m, void *owner);
void *bm_machine_owner(struct bm_machine *m);
void *bm_current_owner(void);
int bm_machine_boot(struct bm_machine *m);
int bm_machine_reboot(struct bm_machine *m);
void bm_machine_halt(struct bm_machine *m);
void bm_machine_free(struct bm_machine *m);
int bm_machine_state(struct bm_machine *m);
void bm_machine_set_cpu_mhz(struct bm_machine *m, u32 mhz);
void bm_user(void);
int bm_machine_add_nic(struct bm_machine *m, struct bm_nic *nic);
void bm_screen_configure(struct bm_machine *m, u64 lfb, u32 x, u32 y, u32 ppsl, u32 bpp);
struct bm_core *bm_bind(struct bm_machine *m, u32 core_id);
void bm_unbind(struct bm_core *previous);
u64 bm_mem_alloc(struct bm_machine *m, u64 nbytes);
u64 bm_mem_reserve(struct bm_machine *m, u64 phys, u64 nbytes);
u64 bm_mem_free(struct bm_machine *m, u64 phys);
void bm_outcome_set(struct bm_outcome *out, int how, u32 core, const char *message);

/* system.c: b_system's helpers other files use */
u64 bm_dump_mem(u64 address, u64 shown, u64 length);

#endif

/* smp.h -- cores: the threads that run a machine's code, their slots and the work queue. */
#ifndef BM_SMP_H
#define BM_SMP_H

#include <setjmp.h>
#include "base.h"
#include <signal.h>
#include <sys/types.h>

#define BM_QUEUE_DEFAULT 4096u
#define BM_QUEUE_MAX (1u << 24)
#define BM_FAULT_LOG 64                 /* C faults remembered per machine */
#define BM_PY_BATCH 1024                  /* Python tasks run under one GIL hold, at most */

/* Slot flags (upstream's layout at 0x1FF800): bit 0 present, bit 1 active.  Bit 2 is hosted:
 * SMP_SET is storing the task (between claiming the slot and publishing it). */
#define BM_SLOT_PRESENT 1ull
#define BM_SLOT_ACTIVE  2ull
#define BM_SLOT_CLAIMED 4ull
#define BM_SLOT_FLAGS   0xFull

typedef void (*bm_task_fn)(u64 arg);

struct bm_core {
	struct bm_machine *machine;
	u32 id;
	u32 counter_slot;               /* its set of NIC counters: id; the service thread's own */
	int cpu;                        /* host CPU the core is pinned to, -1 if not pinned */
	jmp_buf *exit_jmp;              /* set while a C main runs here: SHUTDOWN/REBOOT unwind to it */
	pthread_t thread;               /* cores 1..n-1: the worker thread */
	int started;                    /* the worker thread exists */
	pid_t tid;                      /* kernel thread id (core 0: the thread that booted) */
	void *altstack;                 /* the thread's signal stack (fault.c) */
	sigjmp_buf *fault_jmp;          /* where a fault in a C task returns to, NULL if none */
	volatile sig_atomic_t in_task;  /* 1 while C task code runs under fault_jmp */
	u64 task_code;                  /* the task running (for fault reports) */
	u64 slot_arg;                   /* argument given to the slot's code (Python slot tasks) */
	u64 slot_value;                 /* the slot word of the slot task running, 0 if none */
	_Atomic u64 slot;               /* the core's slot: host memory, the only word dispatch reads */
	_Atomic u64 slot_shown;         /* the code address the table at 0x1FF800 shows for it */
	u64 tasks_run;                  /* tasks this core ran (written by it only; stats) */
	u64 busy_ns;                    /* worker cores: time from wake-up to idle again (stats) */
	/* written by this core only, read by wait() and SMP_BUSY: on its own cache line */
	_Atomic u32 running __attribute__((aligned(BM_CACHE_LINE)));
	char pad[BM_CACHE_LINE - sizeof(u32)];
};

/* A queue cell: 32 bytes, two per cache line.  One cell per line (no sharing between
 * neighbours) measured 2x slower on the dispatch benchmark (40-55 ns vs 20 ns a task): with two
 * per line a producer running ahead and the consumer behind it move two tasks per line
 * transfer.  The indices producers and consumers CAS (enqueue_pos, dequeue_pos) each have a
 * line of their own.  BM_CELL_SIZE 64 gives one cell per line. */
#define BM_CELL_SIZE 32
struct bm_cell {
	_Atomic u64 seq;
	u64 code;
	u64 arg;
	char pad[BM_CELL_SIZE - 3 * sizeof(u64)];
};

struct bm_fault {
	u32 core;
	int signal;
	u64 address;                    /* the faulting address (si_addr) */
	u64 code;                       /* the task that was running, 0 if unknown */
};

struct bm_smp {
	struct bm_core *cores;          /* num_cores entries; cores[0] is the BSP */
	int pin;                        /* pin each core to its own CPU */
	int pinned_bsp;                 /* core 0's affinity was changed: restore it on stop */
	void *bsp_affinity;             /* cpu_set_t: core 0's affinity before boot */
	struct bm_cell *cells;          /* the work queue: capacity cells */
	u64 mask;                       /* capacity - 1 */
	_Atomic int stop;               /* workers exit */
	_Atomic u64 slot_gen;           /* bumped by each successful SMP_SET (for wait) */
	_Atomic u32 faults_count;       /* C faults recorded (the log keeps the last BM_FAULT_LOG) */
	struct bm_fault faults[BM_FAULT_LOG];
	/* hot words, one cache line each */
	_Atomic u64 enqueue_pos __attribute__((aligned(BM_CACHE_LINE)));
	_Atomic u64 dequeue_pos __attribute__((aligned(BM_CACHE_LINE)));
	_Atomic u32 wake_seq __attribute__((aligned(BM_CACHE_LINE)));  /* futex: idle cores sleep on it */
	_Atomic u32 sleepers;
	_Atomic u32 idle_seq __attribute__((aligned(BM_CACHE_LINE)));  /* futex: wait() sleeps on it */
	_Atomic u32 idle_waiters;
};

int bm_smp_init(struct bm_machine *m);      /* allocate cores and the queue; 0 ok, -1 error */
int bm_smp_configure(struct bm_machine *m, u32 queue_size, int pin);
int bm_smp_start(struct bm_machine *m);     /* start cores 1..n-1; mark slots present */
void bm_smp_stop(struct bm_machine *m);     /* stop and join cores 1..n-1 */
void bm_smp_free(struct bm_machine *m);
u64 bm_smp_id(struct bm_machine *m);
u64 bm_smp_set(struct bm_machine *m, u64 code, u64 core);
u64 bm_smp_get(struct bm_machine *m);
u64 bm_smp_lock(u64 address);
u64 bm_smp_unlock(u64 address);
u64 bm_smp_busy(struct bm_machine *m);
u64 bm_smp_reset(struct bm_machine *m);
void bm_smp_cancel(struct bm_machine *m, u64 code);

/* control-side helpers for the Python face (smp.cdef) */
u64 bm_smp_enqueue(struct bm_machine *m, u64 code, u64 arg);
u64 bm_smp_enqueue_wait(struct bm_machine *m, u64 code, u64 arg);
void bm_smp_wait(struct bm_machine *m);
u64 bm_smp_set_arg(struct bm_machine *m, u64 code, u64 core, u64 arg);
u64 bm_smp_set_shown(struct bm_machine *m, u64 code, u64 core, u64 arg, u64 shown);
u64 bm_smp_queue_size(struct bm_machine *m);
u64 bm_smp_queued(struct bm_machine *m);
u32 bm_smp_faults(struct bm_machine *m, u32 first, struct bm_fault *out, u32 max);
u32 bm_smp_fault_count(struct bm_machine *m);
int bm_smp_core_cpu(struct bm_machine *m, u32 core);
int bm_smp_core_counters(struct bm_machine *m, u32 core, u64 *tasks_run, u64 *busy_ns);
int bm_smp_host_cpus(void);

/* Python tasks: the code address of every Python task is bm_py_task; its argument is a
 * handle into pybaremetal.smp's table.  Cores hand runs of them to bm_py_run (cffi). */
void bm_py_task(u64 handle);
u64 bm_smp_py_task(void);
void bm_py_run(struct bm_machine *m, u32 core, u64 *handles, u32 count);

#include "fault.h"

#endif

/* smp.c -- cores, their slots and the work queue.
 *
 * A machine with N cores has core 0 (the BSP: the thread that booted it and runs the app) and
 * N-1 worker threads started here at boot, each pinned to its own CPU of the process's allowed
 * set (core 0 too, its old affinity restored at halt; Machine(pin=False) opts out).  Every core
 * knows its machine and id through the thread-locals bm_self and bm_self_machine (base.h).
 *
 * Two ways to give a core work, on the same cores:
 *  - the per-core slots of the current kernel (bit 0 present, bit 1 active, code address in
 *    bits 63:4).  SMP_SET claims an idle slot with a CAS (present -> code|present|claimed, hosted
 *    bit 2), stores the argument, then publishes code|present|active.  The core runs code(arg)
 *    and CASes the slot back to present.  The slot words the cores dispatch from live in host
 *    memory (struct bm_core): a flat binary is untrusted and can write anything in flat memory,
 *    so the host never calls what flat memory holds.  The table at 0x1FF800 that apps read is a
 *    mirror, rewritten after every change (show_slot), with the code address SMP_SET was given
 *    (for a binary: the guest's, not the host function that runs it); writes to it do nothing.
 *  - the work queue of older BareMetal: a bounded MPMC ring (Dmitry Vyukov's: each cell carries
 *    a sequence number; two 32-byte cells per cache line, see smp.h).  Producers CAS
 *    enqueue_pos, fill the cell and release seq = pos + 1; consumers CAS dequeue_pos when
 *    seq == pos + 1, read the cell and release seq = pos + capacity.  A full queue is a cell whose seq is behind pos.  The only
 *    shared writes per task are the two CASes and the cell itself.
 *
 * A worker's loop: while it finds work (its slot, then the queue) it runs it to completion, one
 * task at a time, never preempted.  When it finds none it clears its `running` flag and idles:
 * it spins with `pause` for BM_SPIN_NS, then sleeps on the futex `wake_seq`.
 *
 * Sleeping without losing a wake-up (Dekker): a sleeper reads wake_seq, increments `sleepers`
 * (seq_cst RMW), then looks for work once more (seq_cst loads of its slot and enqueue_pos)
 * before futex_wait(wake_seq, seen).  A producer claims its cell with a seq_cst CAS on
 * enqueue_pos (SMP_SET: a seq_cst store of the slot), publishes the task, then reads `sleepers`
 * (seq_cst): if it reads zero, the sleeper-to-be increments later and so sees the claim on its
 * last look (and the task, published before that read); otherwise the producer bumps wake_seq
 * (so a futex_wait still on its way returns at once) and wakes a sleeper.  No fence is needed
 * beyond the locked instructions the queue uses anyway.
 *
 * wait() (b_smp_wait): done when the queue is empty and no other core runs anything.  A core
 * sets `running` (seq_cst) before it tries to claim a queue cell and keeps it until it has
 * found the queue empty, so any task claimed before the waiter saw the queue empty belongs to a
 * core whose flag the waiter then sees (or that has already finished).  A running task may add
 * tasks or set slots, so the waiter reads enqueue_pos and slot_gen before and after reading the
 * flags and starts over if either moved.  The waiting core helps: it runs queued tasks itself
 * (on a 1-core machine it is the only one that can).
 *
 * SHUTDOWN / REBOOT from a core other than 0 only set the machine's state (system.c): from then
 * on the cores take no queued work, and core 0's wait() returns (b_smp_wait unwinds a C main
 * to bm_run_main, the Python face raises Shutdown / Reboot) so the app's run ends there.
 *
 * Python tasks all have the code address bm_py_task and a handle as argument; a core that takes
 * one also takes the Python tasks right behind it (up to BM_PY_BATCH) and hands the run to
 * bm_py_run (cffi, pybaremetal/smp.py) under one GIL hold.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include "machine.h"
#include "fault.h"
#include "signals.h"

#define BM_SPIN_NS 100000ull            /* an idle core polls this long before it sleeps */

static _Atomic u64 *slot_of(struct bm_machine *m, u32 core)
{
	return &m->smp.cores[core].slot;
}

/* shown_slot -- the slot word apps see for core `core` (SMP_GET, the table at 0x1FF800) */
static u64 shown_slot(struct bm_machine *m, u32 core)
{
	u64 value = atomic_load(slot_of(m, core));
	u64 flags = value & (BM_SLOT_PRESENT | BM_SLOT_ACTIVE);
	return value & BM_SLOT_ACTIVE ? atomic_load(&m->smp.cores[core].slot_shown) | flags : flags;
}

/* show_slot -- rewrite core `core`'s word of the table at 0x1FF800 from its host slot (again if
 * the slot changed meanwhile) */
static void show_slot(struct bm_machine *m, u32 core)
{
	_Atomic u64 *table = (_Atomic u64 *)bm_phys(m, BM_SMP_TABLE + 8ull * core);
	u64 shown;
	do {
		shown = shown_slot(m, core);
		atomic_store_explicit(table, shown, memory_order_relaxed);
	} while (shown_slot(m, core) != shown);
}

static inline void cpu_relax(void) { __builtin_ia32_pause(); }

static long futex(_Atomic u32 *word, int op, u32 value, const struct timespec *timeout)
{
	return syscall(SYS_futex, (u32 *)word, op, value, timeout, NULL, 0);
}

/* ---- the queue ------------------------------------------------------------------------- */

/* queue_clear -- empty the queue: sequence numbers 0..capacity-1, positions 0 (no core
 * may be using it) */
static void queue_clear(struct bm_smp *smp)
{
	for (u64 i = 0; i <= smp->mask; i++)
		atomic_store_explicit(&smp->cells[i].seq, i, memory_order_relaxed);
	atomic_store(&smp->enqueue_pos, 0);
	atomic_store(&smp->dequeue_pos, 0);
}

/* queue_alloc -- a new, empty queue of `capacity` cells in place of the old one
 *  IN:  smp, capacity (a power of two)
 * OUT:  0, -1 when out of host memory (the old queue stays) */
static int queue_alloc(struct bm_smp *smp, u32 capacity)
{
	struct bm_cell *cells = NULL;
	if (posix_memalign((void **)&cells, BM_CACHE_LINE, (size_t)capacity * sizeof *cells) != 0)
		return -1;
	free(smp->cells);
	smp->cells = cells;
	smp->mask = capacity - 1;
	queue_clear(smp);
	return 0;
}

/* queue_put -- add (code, arg); 1, or 0 when the queue is full */
static inline int queue_put(struct bm_smp *smp, u64 code, u64 arg)
{
	u64 pos = atomic_load_explicit(&smp->enqueue_pos, memory_order_relaxed);
	struct bm_cell *cell;
	for (;;) {
		cell = &smp->cells[pos & smp->mask];
		u64 seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
		int64_t dif = (int64_t)(seq - pos);
		if (dif == 0) {
			/* seq_cst: the sleepers' side of the Dekker pair (see wake_cores) */
			if (atomic_compare_exchange_weak_explicit(&smp->enqueue_pos, &pos, pos + 1,
								  memory_order_seq_cst, memory_order_relaxed))
				break;
		} else if (dif < 0) {
			return 0;
		} else {
			pos = atomic_load_explicit(&smp->enqueue_pos, memory_order_relaxed);
		}
	}
	cell->code = code;
	cell->arg = arg;
	atomic_store_explicit(&cell->seq, pos + 1, memory_order_release);
	return 1;
}

/* queue_take -- take the oldest task; when `only` is nonzero, only if its code is `only`
 *  OUT: 1 with *code, *arg set, or 0 when the queue is empty (or the head is not `only`) */
static inline int queue_take(struct bm_smp *smp, u64 only, u64 *code, u64 *arg)
{
	u64 pos = atomic_load_explicit(&smp->dequeue_pos, memory_order_relaxed);
	struct bm_cell *cell;
	for (;;) {
		cell = &smp->cells[pos & smp->mask];
		u64 seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
		int64_t dif = (int64_t)(seq - (pos + 1));
		if (dif == 0) {
			/* the cell is stable until the consumer of pos releases it: a stale read
			 * here only matters if our CAS succeeds, and then the cell is ours */
			if (only && __atomic_load_n(&cell->code, __ATOMIC_RELAXED) != only)
				return 0;
			if (atomic_compare_exchange_weak_explicit(&smp->dequeue_pos, &pos, pos + 1,
								  memory_order_relaxed, memory_order_relaxed))
				break;
		} else if (dif < 0) {
			return 0;
		} else {
			pos = atomic_load_explicit(&smp->dequeue_pos, memory_order_relaxed);
		}
	}
	*code = cell->code;
	*arg = cell->arg;
	atomic_store_explicit(&cell->seq, pos + smp->mask + 1, memory_order_release);
	/* the consumer of a stream of tasks: ask for cells ahead while this one runs */
	__builtin_prefetch(&smp->cells[(pos + 4) & smp->mask], 0);
	return 1;
}

static inline int queue_looks_empty(struct bm_smp *smp)
{
	return atomic_load(&smp->enqueue_pos) == atomic_load_explicit(&smp->dequeue_pos, memory_order_relaxed);
}

/* queue_head_ready -- the oldest cell is published: what a polling core watches (the cell's
 * line carries the task itself, so the core that sees it has it in cache already) */
static inline int queue_head_ready(struct bm_smp *smp)
{
	u64 pos = atomic_load_explicit(&smp->dequeue_pos, memory_order_relaxed);
	return atomic_load_explicit(&smp->cells[pos & smp->mask].seq, memory_order_relaxed) == pos + 1;
}

/* ---- waking -------------------------------------------------------------------------------- */

/* wake_cores -- after publishing work: wake `count` sleeping cores, if any sleep.  The caller
 * made its work visible with a seq_cst write first (the enqueue_pos CAS, or the fence after a
 * slot store), so this seq_cst load of `sleepers` cannot pass it; a sleeper increments
 * `sleepers` then reads enqueue_pos and its slot (seq_cst): one of the two sees the other. */
static inline void wake_cores(struct bm_smp *smp, int count)
{
	if (atomic_load(&smp->sleepers) != 0) {
		atomic_fetch_add(&smp->wake_seq, 1);
		futex(&smp->wake_seq, FUTEX_WAKE_PRIVATE, (u32)count, NULL);
	}
}

/* notify_idle -- after a core went idle or a slot emptied: wake wait()ers, if any */
static inline void notify_idle(struct bm_smp *smp)
{
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(&smp->idle_waiters, memory_order_relaxed) != 0) {
		atomic_fetch_add(&smp->idle_seq, 1);
		futex(&smp->idle_seq, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
	}
}

/* ---- running tasks ------------------------------------------------------------------------ */

/* run_task -- run one task on the calling core; a run of Python tasks goes to Python at once
 *  IN:  core, code, arg */
static void run_task(struct bm_core *core, u64 code, u64 arg)
{
	if (code == (u64)(uintptr_t)bm_py_task) {
		u64 handles[BM_PY_BATCH], next_code;
		u32 n = 1;
		handles[0] = arg;
		while (n < BM_PY_BATCH && queue_take(&core->machine->smp, code, &next_code, &handles[n]))
			n++;
		core->task_code = code;
		bm_py_run(core->machine, core->id, handles, n);
		core->task_code = 0;
		core->tasks_run += n;
		return;
	}
	core->tasks_run++;
	core->task_code = code;
	core->in_task = core->fault_jmp != NULL;
	((bm_task_fn)(uintptr_t)code)(arg);
	core->in_task = 0;
	core->task_code = 0;
}

/* run_slot -- run the calling core's slot task if it has one
 * OUT: 1 if it ran one */
static int run_slot(struct bm_core *core)
{
	_Atomic u64 *slot = slot_of(core->machine, core->id);
	u64 value = atomic_load_explicit(slot, memory_order_acquire);
	if (!(value & BM_SLOT_ACTIVE))
		return 0;
	u64 code = value & ~BM_SLOT_FLAGS;
	core->slot_value = value;
	if (code == (u64)(uintptr_t)bm_py_task) {
		core->task_code = code;
		bm_py_run(core->machine, core->id, &core->slot_arg, 1);
		core->task_code = 0;
		core->tasks_run++;
	} else {
		run_task(core, code, core->slot_arg);
	}
	/* a RESET (and a new SMP_SET after it) may have replaced the word: leave theirs */
	atomic_compare_exchange_strong(slot, &value, BM_SLOT_PRESENT);
	show_slot(core->machine, core->id);
	core->slot_value = 0;
	return 1;
}

/* work -- run whatever the core finds (slot first, then queue) until there is none
 *  IN:  core (its `running` flag is set) */
static void work(struct bm_core *core)
{
	struct bm_machine *m = core->machine;
	struct bm_smp *smp = &m->smp;
	u64 code, arg;
	for (;;) {
		if (run_slot(core))
			continue;
		if (atomic_load_explicit(&m->state, memory_order_relaxed) != BM_STATE_RUNNING ||
		    !queue_take(smp, 0, &code, &arg))
			return;
		run_task(core, code, arg);
	}
}

/* has_work -- what an idle core looks at: its slot, the queue, the stop flag.  Polling
 * (last_look 0) watches the head cell; the last look before sleeping reads enqueue_pos, the
 * word producers CAS before they read `sleepers` (see the top). */
static inline int has_work(struct bm_core *core, int last_look)
{
	struct bm_machine *m = core->machine;
	if ((atomic_load(slot_of(m, core->id)) & BM_SLOT_ACTIVE) ||
	    atomic_load_explicit(&m->smp.stop, memory_order_relaxed))
		return 1;
	if (atomic_load_explicit(&m->state, memory_order_relaxed) != BM_STATE_RUNNING)
		return 0;
	return last_look ? !queue_looks_empty(&m->smp) : queue_head_ready(&m->smp);
}

/* idle -- poll for BM_SPIN_NS, then sleep until woken; returns when there may be work */
static void idle(struct bm_core *core)
{
	struct bm_smp *smp = &core->machine->smp;
	u64 deadline = bm_now_ns() + BM_SPIN_NS;
	for (u32 i = 1;; i++) {
		if (has_work(core, 0))
			return;
		cpu_relax();
		if ((i & 127) == 0 && bm_now_ns() > deadline)
			break;
	}
	u32 seen = atomic_load(&smp->wake_seq);
	atomic_fetch_add(&smp->sleepers, 1);
	if (!has_work(core, 1))
		futex(&smp->wake_seq, FUTEX_WAIT_PRIVATE, seen, NULL);
	atomic_fetch_sub(&smp->sleepers, 1);
}

/* pin -- pin the calling thread to `cpu`; the core's cpu, or -1 if the host refused */
static int pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof set, &set) == 0 ? cpu : -1;
}

static int allowed_cpus[CPU_SETSIZE];
static int num_allowed_cpus;
static pthread_once_t allowed_once = PTHREAD_ONCE_INIT;

/* read_allowed_cpus -- the process's CPUs, read once, before any core is pinned */
static void read_allowed_cpus(void)
{
	cpu_set_t set;
	if (sched_getaffinity(getpid(), sizeof set, &set) != 0)
		return;
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
		if (CPU_ISSET(cpu, &set))
			allowed_cpus[num_allowed_cpus++] = cpu;
}

/* cpu_for -- the host CPU core `id` is pinned to (cores share CPUs when there are more) */
static int cpu_for(u32 id)
{
	pthread_once(&allowed_once, read_allowed_cpus);
	return num_allowed_cpus ? allowed_cpus[id % (u32)num_allowed_cpus] : -1;
}

/* abandon_task -- after a C task on `core` faulted and fault.c jumped back here: unblock the
 * fault signals, forget the task, free the slot if it was the slot's task */
static void abandon_task(struct bm_core *core)
{
	bm_fault_unblock();
	core->task_code = 0;
	u64 value = core->slot_value;
	if (value != 0) {
		atomic_compare_exchange_strong(slot_of(core->machine, core->id), &value, BM_SLOT_PRESENT);
		show_slot(core->machine, core->id);
	}
	core->slot_value = 0;
}

/* core_loop -- a worker core's life: run work, idle, until the machine stops */
static void core_loop(struct bm_core *core)
{
	struct bm_smp *smp = &core->machine->smp;
	while (!atomic_load_explicit(&smp->stop, memory_order_acquire)) {
		atomic_store(&core->running, 1);
		u64 woke = bm_now_ns();
		work(core);
		core->busy_ns += bm_now_ns() - woke;
		atomic_store_explicit(&core->running, 0, memory_order_release);
		notify_idle(smp);
		idle(core);
	}
}

/* bm_smp_host_cpus -- how many CPUs the process may run on (read once, before any pinning) */
int bm_smp_host_cpus(void)
{
	pthread_once(&allowed_once, read_allowed_cpus);
	return num_allowed_cpus;
}

/* core_main -- a worker core's thread.  A C task that faults comes back here through fault.c
 * (siglongjmp): locals may not survive that jump, so the core is read again from bm_self. */
static void *core_main(void *p)
{
	sigjmp_buf fault_jmp;
	bm_set_self(p, ((struct bm_core *)p)->machine);
	bm_self->tid = (pid_t)syscall(SYS_gettid);
	bm_self->altstack = bm_fault_altstack_new();
	bm_self->fault_jmp = &fault_jmp;
	if (sigsetjmp(fault_jmp, 0) != 0)
		abandon_task(bm_self);
	core_loop(bm_self);
	bm_self->fault_jmp = NULL;
	bm_fault_altstack_free(bm_self->altstack);
	bm_self->altstack = NULL;
	return NULL;
}

/* ---- the machine's life ------------------------------------------------------------------- */

/* bm_smp_init -- allocate the core structs and a queue of the default size
 *  IN:  m with num_cores set
 * OUT:  0, -1 when out of host memory */
int bm_smp_init(struct bm_machine *m)
{
	struct bm_smp *smp = &m->smp;
	if (posix_memalign((void **)&smp->cores, BM_CACHE_LINE, m->num_cores * sizeof *smp->cores) != 0)
		return -1;
	memset(smp->cores, 0, m->num_cores * sizeof *smp->cores);
	for (u32 i = 0; i < m->num_cores; i++) {
		smp->cores[i].machine = m;
		smp->cores[i].id = smp->cores[i].counter_slot = i;
		smp->cores[i].cpu = -1;
	}
	smp->pin = 1;
	smp->bsp_affinity = malloc(sizeof(cpu_set_t));
	if (smp->bsp_affinity == NULL || queue_alloc(smp, BM_QUEUE_DEFAULT) != 0) {
		free(smp->bsp_affinity);
		free(smp->cores);
		return -1;
	}
	return 0;
}

/* bm_smp_configure -- queue capacity and pinning, before boot
 *  IN:  m (not booted), queue_size = power of two 2..2^24, pin = 0/1
 * OUT:  0, -1 with BM_ERR_ARGUMENT / BM_ERR_STATE / BM_ERR_FULL recorded */
int bm_smp_configure(struct bm_machine *m, u32 queue_size, int pin_cores)
{
	bm_error_clear();
	if (atomic_load(&m->state) != BM_STATE_NEW)
		return (int)bm_fail(BM_ERR_STATE, "configure the queue before boot") - 1;
	if (queue_size < 2 || queue_size > BM_QUEUE_MAX || (queue_size & (queue_size - 1)) != 0)
		return (int)bm_fail(BM_ERR_ARGUMENT, "queue_size must be a power of two from 2 to %u, not %u",
				    BM_QUEUE_MAX, queue_size) - 1;
	if (queue_alloc(&m->smp, queue_size) != 0)
		return (int)bm_fail(BM_ERR_FULL, "out of host memory for a queue of %u", queue_size) - 1;
	m->smp.pin = pin_cores != 0;
	return 0;
}

/* bm_smp_start -- mark every core present, pin core 0 (the caller), start cores 1..n-1
 *  IN:  m; the calling thread is (becomes) core 0
 * OUT:  0, -1 with BM_ERR_IO recorded when a thread could not be created (none is left) */
int bm_smp_start(struct bm_machine *m)
{
	struct bm_smp *smp = &m->smp;
	for (u32 i = 0; i < m->num_cores; i++) {
		atomic_store(slot_of(m, i), BM_SLOT_PRESENT);
		show_slot(m, i);
		smp->cores[i].running = 0;
	}
	atomic_store(&smp->stop, 0);
	struct bm_core *bsp = &smp->cores[0];
	bsp->tid = (pid_t)syscall(SYS_gettid);
	bsp->cpu = -1;
	if (smp->pin && sched_getaffinity(0, sizeof(cpu_set_t), smp->bsp_affinity) == 0) {
		bsp->cpu = pin(cpu_for(0));
		smp->pinned_bsp = bsp->cpu >= 0;
	}
	bm_fault_install();
	/* core 0 gets a signal stack too (so a stack overflow in a C main is still reported),
	 * unless its thread has one already (Python's faulthandler makes one) */
	stack_t current;
	if (bsp->altstack == NULL && sigaltstack(NULL, &current) == 0 && (current.ss_flags & SS_DISABLE))
		bsp->altstack = bm_fault_altstack_new();
	/* workers take no asynchronous signals: Ctrl-C and friends go to the app's thread */
	sigset_t old;
	bm_block_async_signals(&old);
	int err = 0;
	for (u32 i = 1; i < m->num_cores && err == 0; i++) {
		struct bm_core *core = &smp->cores[i];
		pthread_attr_t attr;
		cpu_set_t set;
		pthread_attr_init(&attr);
		core->cpu = smp->pin ? cpu_for(i) : -1;
		if (core->cpu >= 0) {
			CPU_ZERO(&set);
			CPU_SET(core->cpu, &set);
			pthread_attr_setaffinity_np(&attr, sizeof set, &set);
		}
		err = pthread_create(&core->thread, &attr, core_main, core);
		if (err == EINVAL && core->cpu >= 0) {      /* the host refused the CPU: unpinned */
			core->cpu = -1;
			err = pthread_create(&core->thread, NULL, core_main, core);
		}
		pthread_attr_destroy(&attr);
		core->started = err == 0;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err != 0) {
		bm_smp_stop(m);
		bm_fail(BM_ERR_IO, "cannot start a core thread: %s", strerror(err));
		return -1;
	}
	return 0;
}

/* bm_smp_stop -- stop and join cores 1..n-1 (running tasks finish first: nothing preempts
 * them), empty the queue, restore core 0's affinity
 *  IN:  m */
void bm_smp_stop(struct bm_machine *m)
{
	struct bm_smp *smp = &m->smp;
	u64 code, arg;
	atomic_store(&smp->stop, 1);
	while (queue_take(smp, 0, &code, &arg))        /* queued work is abandoned */
		;
	atomic_fetch_add(&smp->wake_seq, 1);
	futex(&smp->wake_seq, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
	for (u32 i = 1; i < m->num_cores; i++) {
		struct bm_core *core = &smp->cores[i];
		if (!core->started)
			continue;
		if (pthread_equal(core->thread, pthread_self()))
			pthread_detach(core->thread);    /* a core stopping its own machine */
		else
			pthread_join(core->thread, NULL);
		core->started = 0;
	}
	queue_clear(smp);
	notify_idle(smp);
	struct bm_core *bsp = &smp->cores[0];
	if (bsp->altstack != NULL && bsp->tid == (pid_t)syscall(SYS_gettid)) {
		bm_fault_altstack_free(bsp->altstack);
		bsp->altstack = NULL;
	}
	if (smp->pinned_bsp) {
		sched_setaffinity(smp->cores[0].tid, sizeof(cpu_set_t), smp->bsp_affinity);
		smp->pinned_bsp = 0;
		smp->cores[0].cpu = -1;
	}
}

/* bm_smp_free -- release the core structs and the queue (cores stopped) */
void bm_smp_free(struct bm_machine *m)
{
	free(m->smp.cores);
	free(m->smp.cells);
	free(m->smp.bsp_affinity);
	m->smp.cores = NULL;
	m->smp.cells = NULL;
	m->smp.bsp_affinity = NULL;
}

/* ---- SMP_* -------------------------------------------------------------------------------- */

/* bm_smp_id -- SMP_ID: the calling core's id (the caller is a core: bm_current checked it) */
u64 bm_smp_id(struct bm_machine *m)
{
	(void)m;
	return bm_self->id;
}

/* bm_smp_set_arg -- SMP_SET with an argument for the code (the hosted form)
 *  IN:  code = 16-byte aligned function address, core = target core id, arg = code's argument
 * OUT:  code; 0 with BM_ERR_ARGUMENT (no such core, unaligned or null code) or BM_ERR_STATE
 *       (the core already has work, or the machine is not running) recorded */
u64 bm_smp_set_arg(struct bm_machine *m, u64 code, u64 core, u64 arg)
{
	return bm_smp_set_shown(m, code, core, arg, code);
}

/* bm_smp_set_shown -- SMP_SET with an argument, showing `shown` as the code in the table at
 * 0x1FF800 and to SMP_GET (guest.c: the guest's code address; the host runs `code`)
 *  IN:  as bm_smp_set_arg, shown = the address apps see
 * OUT:  as bm_smp_set_arg */
u64 bm_smp_set_shown(struct bm_machine *m, u64 code, u64 core, u64 arg, u64 shown)
{
	if (core >= m->num_cores)
		return bm_fail(BM_ERR_ARGUMENT, "SMP_SET: no core %lu (the machine has %u)", core, m->num_cores);
	if (code == 0 || (code & BM_SLOT_FLAGS) != 0)
		return bm_fail(BM_ERR_ARGUMENT, "SMP_SET: code address 0x%lx is not 16-byte aligned", code);
	if (atomic_load(&m->state) != BM_STATE_RUNNING)
		return bm_fail(BM_ERR_STATE, "SMP_SET: the machine is not running");
	_Atomic u64 *slot = slot_of(m, (u32)core);
	u64 idle_value = BM_SLOT_PRESENT;
	if (!atomic_compare_exchange_strong(slot, &idle_value, code | BM_SLOT_PRESENT | BM_SLOT_CLAIMED))
		return bm_fail(BM_ERR_STATE, "SMP_SET: core %lu already has work", core);
	m->smp.cores[core].slot_arg = arg;
	atomic_store(&m->smp.cores[core].slot_shown, shown & ~BM_SLOT_FLAGS);
	atomic_fetch_add(&m->smp.slot_gen, 1);
	atomic_store(slot, code | BM_SLOT_PRESENT | BM_SLOT_ACTIVE);   /* seq_cst: see wake_cores */
	show_slot(m, (u32)core);
	wake_cores(&m->smp, INT_MAX);
	return code;
}

/* bm_smp_set -- SMP_SET: give core `core` the code to run (upstream: no argument)
 *  IN:  code = 16-byte aligned function address, core = target core id
 * OUT:  code, or 0 (see bm_smp_set_arg) */
u64 bm_smp_set(struct bm_machine *m, u64 code, u64 core)
{
	return bm_smp_set_arg(m, code, core, 0);
}

/* bm_smp_get -- SMP_GET: the calling core's slot (code in 63:4, bit 0 present, bit 1 active) */
u64 bm_smp_get(struct bm_machine *m)
{
	return shown_slot(m, bm_self->id);
}

static BM_TLS uintptr_t lock_page_seen;       /* a page outside flat memory found mapped */

/* lock_word_mapped -- the C face's cheap check of a lock word: in the calling core's flat
 * memory, or on the page this thread last found mapped, or readable now (one
 * process_vm_readv, only for a new page outside flat memory; a host that refuses the probe
 * counts as mapped).  A mapped but read-only word still faults, as any bad store of the app.
 *  IN:  address
 * OUT:  1 if the word can be used, 0 for unmapped memory */
static int lock_word_mapped(u64 address)
{
	struct bm_core *self = bm_self;
	if (self != NULL && bm_in_memory(self->machine, (void *)(uintptr_t)address, 2))
		return 1;
	uintptr_t page = (uintptr_t)address & ~(uintptr_t)4095;
	int one_page = (((uintptr_t)address + 1) & ~(uintptr_t)4095) == page;
	if (page == lock_page_seen && one_page && page != 0)
		return 1;
	u8 probe[2];
	struct iovec local = { probe, 2 }, remote = { (void *)(uintptr_t)address, 2 };
	if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != 2)
		return errno != EFAULT;
	if (one_page)
		lock_page_seen = page;
	return 1;
}

/* lock_gives_up -- a wait for a lock when the caller's machine stops: a C main unwinds
 * (bm_stop_point); core 0 outside a task (a Python app) gives up; tasks wait on, as nothing
 * preempts them (a stop signal's watchdog ends the process if they never return)
 * OUT: 1 to give up */
static int lock_gives_up(void)
{
	struct bm_core *self = bm_self;
	if (self == NULL || !bm_stop_requested(self->machine))
		return 0;
	bm_stop_point(self->machine);
	return self->id == 0 && !self->in_task;
}

/* bm_smp_lock -- SMP_LOCK: spin until bit 0 of the 16-bit word at `address` is ours
 *  IN:  address of the lock word (any writable memory of the process)
 * OUT:  1; 0 with BM_ERR_RANGE (no memory there: nothing touched) or BM_ERR_STATE (the
 *       machine stopped while core 0's app waited) recorded */
u64 bm_smp_lock(u64 address)
{
	bm_error_clear();
	if (__builtin_expect(!lock_word_mapped(address), 0))
		return bm_fail(BM_ERR_RANGE, "SMP_LOCK: no memory at 0x%lx", address);
	_Atomic u16 *word = (_Atomic u16 *)(uintptr_t)address;
	u32 spins = 0;
	while (atomic_fetch_or_explicit(word, 1, memory_order_acquire) & 1)
		while (atomic_load_explicit(word, memory_order_relaxed) & 1) {
			if (__builtin_expect((++spins & 0xFFF) == 0, 0) && lock_gives_up())
				return bm_fail(BM_ERR_STATE, "SMP_LOCK: the machine stopped while waiting for 0x%lx", address);
			cpu_relax();
		}
	return 1;
}

/* bm_smp_unlock -- SMP_UNLOCK: clear bit 0 of the lock word
 *  IN:  address of the lock word
 * OUT:  1; 0 with BM_ERR_RANGE (no memory there: nothing touched) */
u64 bm_smp_unlock(u64 address)
{
	bm_error_clear();
	if (__builtin_expect(!lock_word_mapped(address), 0))
		return bm_fail(BM_ERR_RANGE, "SMP_UNLOCK: no memory at 0x%lx", address);
	atomic_fetch_and_explicit((_Atomic u16 *)(uintptr_t)address, (u16)~1u, memory_order_release);
	return 1;
}

/* core_busy -- core i has slot work or is running queue work */
static int core_busy(struct bm_machine *m, u32 i)
{
	return (atomic_load(slot_of(m, i)) & (BM_SLOT_ACTIVE | BM_SLOT_CLAIMED)) ||
	       atomic_load(&m->smp.cores[i].running);
}

/* bm_smp_busy -- SMP_BUSY: 1 if a core other than the caller has work (a slot task, or a
 * queue task it is running), else 0.  Tasks still waiting in the queue do not count.
 *  IN:  m (the caller may be any thread: then no core is skipped) */
u64 bm_smp_busy(struct bm_machine *m)
{
	struct bm_core *self = bm_self;
	for (u32 i = 0; i < m->num_cores; i++)
		if (!(self && self->machine == m && self->id == i) && core_busy(m, i))
			return 1;
	return 0;
}

/* bm_smp_reset -- RESET: forget the queued tasks and every other core's slot work.  Tasks
 * already running finish (nothing preempts them); their cores then go idle.
 *  IN:  m
 * OUT:  1 */
u64 bm_smp_reset(struct bm_machine *m)
{
	struct bm_core *self = bm_self;
	u64 code, arg;
	while (queue_take(&m->smp, 0, &code, &arg))
		;
	for (u32 i = 0; i < m->num_cores; i++)
		if (!(self && self->machine == m && self->id == i)) {
			atomic_store(slot_of(m, i), BM_SLOT_PRESENT);
			show_slot(m, i);
		}
	notify_idle(&m->smp);
	return 1;
}

/* bm_smp_cancel -- forget slot work `code` on every core: slots that hold it become idle (a
 * core already running it finishes it, as after RESET)
 *  IN:  m, code = the task's code address */
void bm_smp_cancel(struct bm_machine *m, u64 code)
{
	for (u32 i = 0; i < m->num_cores; i++) {
		_Atomic u64 *slot = slot_of(m, i);
		u64 value = atomic_load(slot);
		if ((value & ~BM_SLOT_FLAGS) == code && (value & BM_SLOT_ACTIVE)) {
			atomic_compare_exchange_strong(slot, &value, BM_SLOT_PRESENT);
			show_slot(m, i);
		}
	}
	notify_idle(&m->smp);
}

/* ---- the work queue -------------------------------------------------------------------- */

/* bm_smp_enqueue -- add task code(arg) to m's queue and wake a sleeping core
 *  IN:  m, code = address of `void task(u64)`, arg
 * OUT:  1; 0 with BM_ERR_FULL (queue full), BM_ERR_ARGUMENT (null code) or BM_ERR_STATE
 *       (machine not running) recorded */
u64 bm_smp_enqueue(struct bm_machine *m, u64 code, u64 arg)
{
	if (__builtin_expect(code == 0, 0))
		return bm_fail(BM_ERR_ARGUMENT, "enqueue: the task's code address is 0");
	if (__builtin_expect(atomic_load_explicit(&m->state, memory_order_relaxed) != BM_STATE_RUNNING, 0))
		return bm_fail(BM_ERR_STATE, "enqueue: the machine is not running");
	if (!queue_put(&m->smp, code, arg)) {
		/* producers spin on this: record it without formatting (bm_fail's vsnprintf) */
		static const char full[] = "the work queue is full";
		bm_error.code = BM_ERR_FULL;
		memcpy(bm_error.message, full, sizeof full);
		return 0;
	}
	wake_cores(&m->smp, 1);
	return 1;
}

/* help -- the calling core runs its own slot task or one queued task while it waits
 * OUT: 1 if it ran something */
static int help(struct bm_core *self)
{
	u64 code, arg;
	int ran = 0;
	u32 was = atomic_load_explicit(&self->running, memory_order_relaxed);
	if (atomic_load_explicit(slot_of(self->machine, self->id), memory_order_relaxed) & BM_SLOT_ACTIVE) {
		atomic_store(&self->running, 1);
		ran = run_slot(self);
	} else if (!queue_looks_empty(&self->machine->smp)) {
		atomic_store(&self->running, 1);     /* before the claim: see wait() at the top */
		ran = queue_take(&self->machine->smp, 0, &code, &arg);
		if (ran)
			run_task(self, code, arg);
	}
	if (atomic_load_explicit(&self->running, memory_order_relaxed) != was)
		atomic_store_explicit(&self->running, was, memory_order_release);
	return ran;
}

/* all_idle -- the queue is empty and no core but `self` runs anything (see the top) */
static int all_idle(struct bm_machine *m, struct bm_core *self)
{
	struct bm_smp *smp = &m->smp;
	u64 before = atomic_load(&smp->enqueue_pos), gen = atomic_load(&smp->slot_gen);
	if (before != atomic_load(&smp->dequeue_pos))
		return 0;
	for (u32 i = 0; i < m->num_cores; i++)
		if (&smp->cores[i] != self && core_busy(m, i))
			return 0;
	return atomic_load(&smp->enqueue_pos) == before && atomic_load(&smp->slot_gen) == gen;
}

/* wait_loop -- bm_smp_wait's loop; self = the caller if it is a core of m, else NULL */
static void wait_loop(struct bm_machine *m, struct bm_core *self)
{
	struct bm_smp *smp = &m->smp;
	u32 spins = 0;
	while (atomic_load(&m->state) == BM_STATE_RUNNING) {
		if (self != NULL && help(self)) {
			spins = 0;
			continue;
		}
		if (all_idle(m, self))
			break;
		if (++spins < 4096) {
			cpu_relax();
			continue;
		}
		/* a long task elsewhere: sleep until a core goes idle (or 10 ms, to look again) */
		u32 seen = atomic_load(&smp->idle_seq);
		atomic_fetch_add(&smp->idle_waiters, 1);
		if (!all_idle(m, self) && (self == NULL || queue_looks_empty(smp))) {
			struct timespec ten_ms = { 0, 10000000 };
			futex(&smp->idle_seq, FUTEX_WAIT_PRIVATE, seen, &ten_ms);
		}
		atomic_fetch_sub(&smp->idle_waiters, 1);
	}
}

/* bm_smp_wait -- return when m's queue is empty and every core but the caller is idle, or
 * when the machine stops running (SHUTDOWN/REBOOT from a core, halt).  A caller that is a core
 * of m runs queued tasks itself meanwhile (a C task among them that faults is abandoned, as on
 * the other cores); any other thread only waits.
 *  IN:  m */
void bm_smp_wait(struct bm_machine *m)
{
	if (!(bm_self && bm_self->machine == m)) {
		wait_loop(m, NULL);
		return;
	}
	sigjmp_buf fault_jmp, *volatile outer = bm_self->fault_jmp;
	volatile u32 was_running = atomic_load(&bm_self->running);
	bm_self->fault_jmp = &fault_jmp;
	if (sigsetjmp(fault_jmp, 0) != 0) {             /* locals may not survive: use bm_self */
		abandon_task(bm_self);
		atomic_store(&bm_self->running, was_running);
	}
	wait_loop(bm_self->machine, bm_self);
	bm_self->fault_jmp = outer;
}

/* bm_smp_enqueue_wait -- bm_smp_enqueue that waits while the queue is full; a caller that is
 * a core of m runs queued tasks itself meanwhile
 *  IN:  m, code, arg
 * OUT:  1; 0 with BM_ERR_ARGUMENT (null code) or BM_ERR_STATE (machine not running) recorded */
u64 bm_smp_enqueue_wait(struct bm_machine *m, u64 code, u64 arg)
{
	struct bm_core *self = (bm_self && bm_self->machine == m) ? bm_self : NULL;
	for (u32 spins = 0;; spins++) {
		if (bm_smp_enqueue(m, code, arg))
			return 1;
		if (bm_error.code != BM_ERR_FULL)
			return 0;
		if (self != NULL && help(self))
			continue;
		if (spins < 1024)
			cpu_relax();
		else
			sched_yield();
	}
}

/* bm_smp_queue_size -- the queue's capacity */
u64 bm_smp_queue_size(struct bm_machine *m) { return m->smp.mask + 1; }

/* bm_smp_queued -- tasks in the queue not yet taken (a snapshot) */
u64 bm_smp_queued(struct bm_machine *m)
{
	u64 d = atomic_load(&m->smp.dequeue_pos), e = atomic_load(&m->smp.enqueue_pos);
	return e > d ? e - d : 0;
}

/* bm_smp_core_cpu -- the host CPU core `core` is pinned to, -1 if not pinned or no such core */
int bm_smp_core_cpu(struct bm_machine *m, u32 core)
{
	return core < m->num_cores ? m->smp.cores[core].cpu : -1;
}

/* bm_smp_core_counters -- a core's counters, for stats
 *  IN:  m, core, tasks_run / busy_ns = where to store them
 * OUT:  1, or 0 for no such core (nothing stored).  Read while the core runs: a snapshot */
int bm_smp_core_counters(struct bm_machine *m, u32 core, u64 *tasks_run, u64 *busy_ns)
{
	if (core >= m->num_cores)
		return 0;
	*tasks_run = m->smp.cores[core].tasks_run;
	*busy_ns = m->smp.cores[core].busy_ns;
	return 1;
}

/* bm_smp_faults -- copy C faults number first.. (at most max) into out
 *  IN:  m, first = index of the first wanted (0 = the first ever), out, max
 * OUT:  how many were copied; faults older than the last BM_FAULT_LOG are lost */
u32 bm_smp_faults(struct bm_machine *m, u32 first, struct bm_fault *out, u32 max)
{
	u32 count = atomic_load(&m->smp.faults_count), n = 0;
	if (count > BM_FAULT_LOG && first < count - BM_FAULT_LOG)
		first = count - BM_FAULT_LOG;
	for (u32 i = first; i < count && n < max; i++)
		out[n++] = m->smp.faults[i % BM_FAULT_LOG];
	return n;
}

/* bm_smp_fault_count -- C faults recorded on the machine so far (the log keeps the last
 * BM_FAULT_LOG of them)
 *  IN:  m
 * OUT:  the count */
u32 bm_smp_fault_count(struct bm_machine *m) { return atomic_load(&m->smp.faults_count); }

/* ---- the hosted extension in libBareMetal.h -------------------------------------------- */

/* b_smp_enqueue -- add `void code(u64 arg)` to the calling core's machine's queue
 *  IN:  code, arg
 * OUT:  1, or 0 when the queue is full (or the caller is not a core) */
u64 b_smp_enqueue(void *code, u64 arg)
{
	struct bm_core *self = bm_self;
	if (__builtin_expect(self == NULL, 0))
		return bm_fail(BM_ERR_NO_MACHINE, "this thread is not a core of a running machine");
	return bm_smp_enqueue(self->machine, (u64)(uintptr_t)code, arg);
}

/* b_smp_dequeue -- take the oldest queued task without running it
 *  IN:  arg = where to store the task's argument
 * OUT:  the task's code address, 0 when the queue is empty (a C main polling an empty queue
 *       unwinds there when the machine stops: bm_stop_point) */
u64 b_smp_dequeue(u64 *arg)
{
	struct bm_core *self = bm_self;
	u64 code;
	if (self == NULL)
		return bm_fail(BM_ERR_NO_MACHINE, "this thread is not a core of a running machine");
	if (queue_take(&self->machine->smp, 0, &code, arg))
		return code;
	if (bm_stop_requested(self->machine))
		bm_stop_point(self->machine);
	return 0;
}

/* b_smp_run -- run code(arg) on the calling core, to completion
 *  IN:  code, arg */
void b_smp_run(u64 code, u64 arg)
{
	struct bm_core *self = bm_self;
	if (self == NULL || code == 0) {
		bm_fail(self ? BM_ERR_ARGUMENT : BM_ERR_NO_MACHINE, "b_smp_run: no core or no code");
		return;
	}
	u32 was = atomic_exchange(&self->running, 1);
	run_task(self, code, arg);
	atomic_store(&self->running, was);
}

/* b_smp_wait -- return when the queue is empty and every other core is idle (the caller runs
 * queued tasks meanwhile).  If the machine was shut down or rebooted from another core while a
 * C main runs on the caller, unwind to bm_run_main as SHUTDOWN/REBOOT would. */
void b_smp_wait(void)
{
	struct bm_core *self = bm_self;
	if (self == NULL) {
		bm_fail(BM_ERR_NO_MACHINE, "this thread is not a core of a running machine");
		return;
	}
	bm_smp_wait(self->machine);
	bm_stop_point(self->machine);                  /* SHUTDOWN, REBOOT, a stop signal */
}

/* bm_py_task -- the code address of every Python task: run the task of `handle` on the
 * calling core (cores recognise this address and batch runs of them; see run_task)
 *  IN:  handle = the task's handle in pybaremetal.smp */
void bm_py_task(u64 handle)
{
	struct bm_core *self = bm_self;
	if (self != NULL)
		bm_py_run(self->machine, self->id, &handle, 1);
}

/* bm_smp_py_task -- the address of bm_py_task as the cores compare it (cffi's addressof of a
 * function gives a wrapper's address, which the cores would not recognise) */
u64 bm_smp_py_task(void) { return (u64)(uintptr_t)bm_py_task; }

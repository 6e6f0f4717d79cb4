/* signals.c -- ending a run on SIGTERM, SIGINT, SIGHUP or a timeout, whatever code is running,
 * and giving the terminal back however the process ends.
 *
 * Python's own signal handlers only run between bytecodes of the main thread: while core 0 is
 * in native code (a C main spinning, a binary under KVM, a Python app inside a long DELAY or
 * halting a machine whose task spins on another core) a signal would wait for ever.  So, while
 * a machine is armed (bm_signals_arm: `baremetal run` arms its machine at boot):
 *
 *  1. A C handler on SIGTERM, SIGINT, SIGHUP (and SIGALRM for the timeout) is installed over
 *     Python's, and chained to it: Python still sees the signal and, when it gets control,
 *     ends the run the ordinary way (SystemExit / KeyboardInterrupt: machine halted, drives
 *     flushed and closed, terminal restored).  A signal Python ignores (SIG_IGN, nohup) is left
 *     alone.
 *  2. The handler (async-signal-safe: atomics, clock_gettime, futex) records the first signal,
 *     sets every armed machine that is running to BM_STATE_STOPPING, and wakes the watchdog.
 *     Stopping is the cooperative path: the loops that wait in C give up when the machine is
 *     not running (DELAY, SMP_LOCK, b_smp_wait, the cores' queue) and, under a C main, unwind
 *     it to bm_run_main as SHUTDOWN does (bm_stop_point).
 *  3. The watchdog, a thread that blocks every signal, gives Python a grace of 50 ms (tests
 *     may set longer, to prove the cooperative path alone ends a run) to end the run (bm_signals_disarm after the halt).  If it has not, code that nothing can
 *     interrupt is running (a C loop, a guest `jmp $`): the watchdog fdatasyncs every armed
 *     machine's drives, restores the terminals, flushes C stdio when it can take the lock
 *     without waiting, says so on stderr and _exits with 128 + the signal (124 after a
 *     timeout, as timeout(1)).
 *  4. The timeout (--timeout): the watchdog sends SIGALRM to the process at the deadline, which
 *     then goes through 1-3 like any other signal.
 *
 * The terminal: bm_terminal_raw puts a terminal in raw, non-echo mode and remembers its state,
 * so that code which cannot run Python (the watchdog above, the fault handler in fault.c)
 * restores it with one tcsetattr (async-signal-safe).  A process that ends without running
 * any code of ours (SIGKILL, os._exit, _exit, abort) is covered by a guard process
 * (pybaremetal/io.py) that restores the terminal when the process's end closes its pipe.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include "machine.h"
#include "signals.h"

static const int stop_signals[] = { SIGTERM, SIGINT, SIGHUP, SIGALRM };
#define NUM_STOP_SIGNALS (sizeof stop_signals / sizeof stop_signals[0])
#define KICK_EVERY_NS 5000000ull      /* while waiting out the grace, binaries are kicked this often */

static pthread_mutex_t arm_lock = PTHREAD_MUTEX_INITIALIZER;
static struct bm_machine *_Atomic armed[BM_SIGNALS_MACHINES];
static struct sigaction previous[NUM_STOP_SIGNALS];
static int installed[NUM_STOP_SIGNALS];
static _Atomic int stop_signal;         /* the first stop signal since arming, 0 if none */
static _Atomic int timed_out;           /* the watchdog sent SIGALRM for the timeout */
static _Atomic u64 stop_ns;             /* when stop_signal came */
static _Atomic u64 deadline_ns;         /* the timeout's deadline, 0 for none */
static _Atomic u64 grace_ns = BM_SIGNALS_GRACE_NS;
static _Atomic u64 finishing_ns;        /* Python, in control, writes the outputs until then */
static _Atomic u32 wake_word;           /* futex: the watchdog sleeps on it */
static _Atomic int watchdog_quit;
static pthread_t watchdog_thread;
static int watchdog_running;

static long futex(_Atomic u32 *word, int op, u32 value, const struct timespec *timeout)
{
	return syscall(SYS_futex, (u32 *)word, op, value, timeout, NULL, 0);
}

static void wake_watchdog(void)
{
	atomic_fetch_add(&wake_word, 1);
	futex(&wake_word, FUTEX_WAKE_PRIVATE, 1, NULL);
}

static int slot_of_signal(int sig)
{
	for (size_t i = 0; i < NUM_STOP_SIGNALS; i++)
		if (stop_signals[i] == sig)
			return (int)i;
	return -1;
}

/* pass_on -- the signal to the handler we replaced (Python's); a default action is left to
 * the watchdog while a machine is armed (it ends the process the same way, cleanly) */
static void pass_on(int sig, siginfo_t *info, void *context, int any_armed)
{
	struct sigaction *prev = &previous[slot_of_signal(sig)];
	if ((prev->sa_flags & SA_SIGINFO) && prev->sa_sigaction != NULL)
		prev->sa_sigaction(sig, info, context);
	else if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN && prev->sa_handler != NULL)
		prev->sa_handler(sig);
	else if (prev->sa_handler == SIG_DFL && !any_armed) {
		signal(sig, SIG_DFL);
		raise(sig);             /* pending until we return: then the default action */
	}
}

/* stop_armed -- step 2 of the top for signal `sig` (async-signal-safe): every armed machine
 * that runs stops, the first signal is recorded, the watchdog woken
 *  IN:  sig
 * OUT:  1 when a machine is armed, else 0 (nothing done) */
static int stop_armed(int sig)
{
	int any = 0;
	for (int i = 0; i < BM_SIGNALS_MACHINES; i++) {
		struct bm_machine *m = atomic_load(&armed[i]);
		if (m == NULL)
			continue;
		int running = BM_STATE_RUNNING;
		atomic_compare_exchange_strong(&m->state, &running, BM_STATE_STOPPING);
		any = 1;
	}
	if (any) {
		/* when, then which: the watchdog reads stop_signal first, so it never sees a signal
		 * without its time */
		u64 never = 0;
		int none = 0;
		atomic_compare_exchange_strong(&stop_ns, &never, bm_now_ns());
		atomic_compare_exchange_strong(&stop_signal, &none, sig);
		wake_watchdog();
	}
	return any;
}

/* on_stop_signal -- the handler (async-signal-safe; see the top, step 2) */
static void on_stop_signal(int sig, siginfo_t *info, void *context)
{
	int saved_errno = errno;
	int any = stop_armed(sig);
	pass_on(sig, info, context, any);
	errno = saved_errno;
}

/* bm_signals_broken_pipe -- the console's output is a pipe nobody reads any more (EPIPE; the
 * process ignores SIGPIPE, as Python does): an armed run stops as SIGPIPE's default action would
 * end it (`baremetal run app | head`: exit status 141, no message), instead of writing into
 * the void for ever.  Not armed: nothing (the lost bytes are counted, bm_console_lost). */
void bm_signals_broken_pipe(void)
{
	stop_armed(SIGPIPE);
}

/* put_text -- append s to out[at..255], returns the new length (no stdio: see hard_exit) */
static size_t put_text(char *out, size_t at, const char *s)
{
	while (*s && at < 255)
		out[at++] = *s++;
	return at;
}

/* decimal -- v in decimal into out (24 bytes), returned (no stdio: see hard_exit) */
static const char *decimal(char *out, u64 v)
{
	char *p = out + 23;
	*p = 0;
	do {
		*--p = (char)('0' + v % 10);
		v /= 10;
	} while (v && p > out);
	return p;
}

/* hard_exit -- end the process now: drives flushed, terminals restored (see the top, step 3).
 * A halt that is closing the drives at this very moment may free one under the flush (the
 * window is the halt's close loop; the process ends right after either way).
 *  IN:  sig = the stop signal
 * OUT:  does not return */
static void hard_exit(int sig)
{
	int timeout = sig == SIGALRM && atomic_load(&timed_out);
	int status = timeout ? BM_EXIT_TIMEOUT : 128 + sig;
	for (int i = 0; i < BM_SIGNALS_MACHINES; i++) {
		struct bm_machine *m = atomic_load(&armed[i]);
		if (m != NULL)
			bm_nvs_flush_all(m);
	}
	bm_terminal_restore_all();
	FILE *streams[2] = { stdout, stderr };
	for (int i = 0; i < 2; i++)            /* never wait for a lock a stuck thread may hold */
		if (ftrylockfile(streams[i]) == 0) {
			fflush_unlocked(streams[i]);
			funlockfile(streams[i]);
		}
	char line[256], status_digits[24], grace_digits[24];
	size_t n = put_text(line, 0, "baremetal: ");
	n = put_text(line, n, timeout ? "timeout" : sig == SIGTERM ? "SIGTERM" : sig == SIGINT ? "SIGINT"
			    : sig == SIGHUP ? "SIGHUP" : sig == SIGPIPE ? "SIGPIPE" : "SIGALRM");
	n = put_text(line, n, timeout ? ": the run did not end" : ": the app did not stop");
	n = put_text(line, n, " within ");
	n = put_text(line, n, decimal(grace_digits, atomic_load(&grace_ns) / 1000000ull));
	n = put_text(line, n, " ms of being asked; drives flushed, exit status ");
	n = put_text(line, n, decimal(status_digits, (u64)status));
	n = put_text(line, n, "\n");
	if (sig != SIGPIPE) {                  /* a broken pipe ends a process quietly */
		ssize_t ignored = write(2, line, n);
		(void)ignored;
	}
	_exit(status);
}

/* kick_binaries -- make the vCPUs of a binary running on an armed machine look at the state
 * (STOPPING ends their run, guest.c), so a binary spinning without calls ends without hard_exit */
static void kick_binaries(void)
{
	for (int i = 0; i < BM_SIGNALS_MACHINES; i++) {
		struct bm_machine *m = atomic_load(&armed[i]);
		void (*kick)(struct bm_machine *) = m != NULL ? atomic_load(&m->kick) : NULL;
		if (kick != NULL)
			kick(m);
	}
}

/* watchdog_main -- the watchdog thread (see the top, steps 3 and 4) */
static void *watchdog_main(void *unused)
{
	(void)unused;
	/* a watchdog must run when its time comes, however busy the CPUs are: real-time priority
	 * where the process may have it (root, CAP_SYS_NICE); it sleeps but for its few calls */
	struct sched_param lowest_rt = { .sched_priority = sched_get_priority_min(SCHED_FIFO) };
	pthread_setschedparam(pthread_self(), SCHED_FIFO, &lowest_rt);
	while (!atomic_load(&watchdog_quit)) {
		u32 seen = atomic_load(&wake_word);
		u64 now = bm_now_ns(), until = 0;
		int sig = atomic_load(&stop_signal);
		if (sig != 0) {
			until = atomic_load(&stop_ns) + atomic_load(&grace_ns);
			if (atomic_load(&finishing_ns) > until)
				until = atomic_load(&finishing_ns);
			if (now >= until)
				hard_exit(sig);
			kick_binaries();
			if (until - now > KICK_EVERY_NS)       /* kick again soon: a vCPU entering may miss one */
				until = now + KICK_EVERY_NS;
		} else if ((until = atomic_load(&deadline_ns)) != 0 && now >= until) {
			atomic_store(&deadline_ns, 0);
			atomic_store(&timed_out, 1);
			kill(getpid(), SIGALRM);
			continue;
		}
		struct timespec left = { (time_t)((until - now) / 1000000000ull), (long)((until - now) % 1000000000ull) };
		futex(&wake_word, FUTEX_WAIT_PRIVATE, seen, until ? &left : NULL);
	}
	return NULL;
}

/* install -- our handler on the stop signals (SIGALRM only with a timeout), over the ones in
 * place; a signal the process ignores stays ignored */
static void install(int with_alarm)
{
	for (size_t i = 0; i < NUM_STOP_SIGNALS; i++) {
		struct sigaction now;
		if (installed[i] || (stop_signals[i] == SIGALRM && !with_alarm))
			continue;
		if (sigaction(stop_signals[i], NULL, &now) != 0 || now.sa_handler == SIG_IGN)
			continue;
		struct sigaction ours;
		memset(&ours, 0, sizeof ours);
		ours.sa_sigaction = on_stop_signal;
		/* as Python's handlers: no SA_RESTART, so a blocking call in the app's thread
		 * returns EINTR and Python runs its handler at once */
		ours.sa_flags = SA_SIGINFO | SA_ONSTACK | (now.sa_flags & SA_RESTART);
		sigfillset(&ours.sa_mask);
		if (sigaction(stop_signals[i], &ours, &previous[i]) == 0)
			installed[i] = 1;
	}
}

/* uninstall -- give the stop signals back to the handlers we replaced, unless someone has
 * replaced ours since */
static void uninstall(void)
{
	for (size_t i = 0; i < NUM_STOP_SIGNALS; i++) {
		struct sigaction now;
		if (!installed[i])
			continue;
		installed[i] = 0;
		if (sigaction(stop_signals[i], NULL, &now) == 0 && (now.sa_flags & SA_SIGINFO) &&
		    now.sa_sigaction == on_stop_signal)
			sigaction(stop_signals[i], &previous[i], NULL);
	}
}

/* bm_signals_arm -- end m's run on a stop signal or after timeout_ms (see the top)
 *  IN:  m, timeout_ms = 0 for no timeout, grace_ms = how long Python has to end the run before
 *       the watchdog does (0: 50 ms; for the whole process).  Call after the process's Python
 *       handlers are set (ours chain to them) and before the app runs
 * OUT:  0; -1 with BM_ERR_FULL (too many machines armed) or BM_ERR_IO (no watchdog thread) */
int bm_signals_arm(struct bm_machine *m, u64 timeout_ms, u64 grace_ms)
{
	bm_error_clear();
	int rc = -1;
	pthread_mutex_lock(&arm_lock);
	int free_slot = -1, any = 0;
	for (int i = 0; i < BM_SIGNALS_MACHINES; i++) {
		struct bm_machine *other = atomic_load(&armed[i]);
		any |= other != NULL;
		if (other == m)
			free_slot = i;                   /* armed again: the same slot */
		else if (other == NULL && free_slot < 0)
			free_slot = i;
	}
	if (free_slot < 0) {
		bm_fail(BM_ERR_FULL, "more than %d machines armed for signals", BM_SIGNALS_MACHINES);
		goto out;
	}
	if (!any) {
		atomic_store(&stop_signal, 0);
		atomic_store(&stop_ns, 0);
		atomic_store(&finishing_ns, 0);
		atomic_store(&timed_out, 0);
	}
	if (!watchdog_running) {
		sigset_t all, old;
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);     /* the watchdog takes no signal */
		atomic_store(&watchdog_quit, 0);
		int err = pthread_create(&watchdog_thread, NULL, watchdog_main, NULL);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (err != 0) {
			bm_fail(BM_ERR_IO, "cannot start the signal watchdog: %s", strerror(err));
			goto out;
		}
		watchdog_running = 1;
	}
	atomic_store(&armed[free_slot], m);
	atomic_store(&grace_ns, grace_ms ? (grace_ms < 3600000ull ? grace_ms : 3600000ull) * 1000000ull
				       : BM_SIGNALS_GRACE_NS);
	if (timeout_ms != 0) {
		u64 ms = timeout_ms < (1ull << 40) ? timeout_ms : (1ull << 40);
		atomic_store(&deadline_ns, bm_now_ns() + ms * 1000000ull);
	}
	install(timeout_ms != 0);
	wake_watchdog();
	rc = 0;
out:
	pthread_mutex_unlock(&arm_lock);
	return rc;
}

/* bm_signals_disarm -- m's run has ended (halted): forget it; with no machine left armed the
 * handlers are given back and the watchdog stops (a stop signal already seen is forgotten)
 *  IN:  m (armed or not) */
void bm_signals_disarm(struct bm_machine *m)
{
	pthread_mutex_lock(&arm_lock);
	int any = 0;
	for (int i = 0; i < BM_SIGNALS_MACHINES; i++) {
		struct bm_machine *expected = m;
		atomic_compare_exchange_strong(&armed[i], &expected, NULL);
		any |= atomic_load(&armed[i]) != NULL;
	}
	if (!any) {
		uninstall();
		atomic_store(&deadline_ns, 0);
		atomic_store(&stop_signal, 0);
		atomic_store(&stop_ns, 0);
		atomic_store(&finishing_ns, 0);
		if (watchdog_running) {
			atomic_store(&watchdog_quit, 1);
			wake_watchdog();
			pthread_join(watchdog_thread, NULL);
			watchdog_running = 0;
		}
	}
	pthread_mutex_unlock(&arm_lock);
}

/* bm_signals_finishing -- after a stop signal or the timeout, Python has control again (the
 * app's run returned) and writes what the user asked for at the end (the last frame as a PNG):
 * the watchdog waits up to `ms` more from now before ending the process itself
 *  IN:  ms
 * OUT:  nothing (no stop under way: nothing) */
void bm_signals_finishing(u64 ms)
{
	if (atomic_load(&stop_signal) == 0)
		return;
	atomic_store(&finishing_ns, bm_now_ns() + ms * 1000000ull);
	wake_watchdog();
}

/* bm_signals_received -- the stop signal seen since arming (SIGALRM: the timeout), 0 if none */
int bm_signals_received(void) { return atomic_load(&stop_signal); }

/* bm_signals_exit_status -- the exit status for the stop: 128 + the signal, 124 after the
 * timeout, 0 when no stop signal came */
int bm_signals_exit_status(void)
{
	int sig = atomic_load(&stop_signal);
	if (sig == 0)
		return 0;
	return sig == SIGALRM && atomic_load(&timed_out) ? BM_EXIT_TIMEOUT : 128 + sig;
}

/* bm_stop_requested -- 1 when m is no longer running (a stop signal, SHUTDOWN or REBOOT from
 * a core, halt): the loops that wait in C give up then */
int bm_stop_requested(struct bm_machine *m)
{
	return atomic_load_explicit(&m->state, memory_order_relaxed) != BM_STATE_RUNNING;
}

/* bm_stop_point -- where a C main stops: when the calling core runs a C main (bm_run_main) and
 * m is stopping, shut down or rebooting, unwind to bm_run_main, which returns that state
 *  IN:  m
 * OUT:  returns when there is nothing to unwind */
void bm_stop_point(struct bm_machine *m)
{
	struct bm_core *self = bm_self;
	int state = atomic_load(&m->state);
	if (self == NULL || self->machine != m || self->exit_jmp == NULL)
		return;
	if (state == BM_STATE_STOPPING || state == BM_STATE_SHUTDOWN || state == BM_STATE_REBOOT)
		longjmp(*self->exit_jmp, state);
}

/* ---- the terminal ------------------------------------------------------------------------ */

struct terminal {
	_Atomic int active;
	int fd;
	struct termios saved;
};
static struct terminal terminals[BM_TERMINALS];
static pthread_mutex_t terminal_lock = PTHREAD_MUTEX_INITIALIZER;

/* bm_terminal_raw -- raw, non-echo mode on terminal fd (keys one at a time; Ctrl-C still
 * signals), its state remembered for bm_terminal_restore / bm_terminal_restore_all
 *  IN:  fd = a terminal
 * OUT:  0; -1 with BM_ERR_IO (not a terminal, tcsetattr refused) or BM_ERR_FULL recorded */
int bm_terminal_raw(int fd)
{
	bm_error_clear();
	struct termios saved, raw;
	if (tcgetattr(fd, &saved) != 0)
		return (int)bm_fail(BM_ERR_IO, "fd %d: not a terminal: %s", fd, strerror(errno)) - 1;
	pthread_mutex_lock(&terminal_lock);
	struct terminal *t = NULL;
	for (int i = 0; i < BM_TERMINALS && t == NULL; i++)
		if (!atomic_load(&terminals[i].active))
			t = &terminals[i];
	if (t != NULL) {
		t->fd = fd;
		t->saved = saved;
		atomic_store(&t->active, 1);
	}
	pthread_mutex_unlock(&terminal_lock);
	if (t == NULL)
		return (int)bm_fail(BM_ERR_FULL, "more than %d terminals in raw mode", BM_TERMINALS) - 1;
	raw = saved;
	raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
	raw.c_cc[VMIN] = 1;
	raw.c_cc[VTIME] = 0;
	if (tcsetattr(fd, TCSANOW, &raw) != 0) {
		int err = errno;
		atomic_store(&t->active, 0);
		return (int)bm_fail(BM_ERR_IO, "fd %d: cannot set raw mode: %s", fd, strerror(err)) - 1;
	}
	return 0;
}

/* bm_terminal_restore -- give terminal fd back the state bm_terminal_raw found
 *  IN:  fd
 * OUT:  0; -1 if fd was not made raw here (nothing done) */
int bm_terminal_restore(int fd)
{
	int rc = -1;
	pthread_mutex_lock(&terminal_lock);
	for (int i = 0; i < BM_TERMINALS; i++) {
		struct terminal *t = &terminals[i];
		if (atomic_load(&t->active) && t->fd == fd) {
			tcsetattr(fd, TCSANOW, &t->saved);
			atomic_store(&t->active, 0);
			rc = 0;
		}
	}
	pthread_mutex_unlock(&terminal_lock);
	return rc;
}

/* bm_terminal_restore_all -- restore every terminal in raw mode (async-signal-safe: the
 * watchdog and the fault handler call it; the records stay, a later restore is harmless) */
void bm_terminal_restore_all(void)
{
	for (int i = 0; i < BM_TERMINALS; i++)
		if (atomic_load(&terminals[i].active))
			tcsetattr(terminals[i].fd, TCSANOW, &terminals[i].saved);
}

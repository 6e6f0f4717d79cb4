/* fault.c -- crash reports and recovery for code running on cores (see fault.h). */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "machine.h"
#include "fault.h"
#include "signals.h"

static const int fault_signals[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL };
#define NUM_FAULT_SIGNALS (sizeof fault_signals / sizeof fault_signals[0])
static struct sigaction previous[NUM_FAULT_SIGNALS];
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *signal_name(int sig)
{
	switch (sig) {
	case SIGSEGV: return "SIGSEGV";
	case SIGBUS: return "SIGBUS";
	case SIGFPE: return "SIGFPE";
	case SIGILL: return "SIGILL";
	default: return "signal";
	}
}

/* put_* -- build the report in a buffer without stdio (async-signal-safe) */
static size_t put_str(char *out, size_t at, const char *s)
{
	while (*s && at < 255)
		out[at++] = *s++;
	return at;
}

static size_t put_dec(char *out, size_t at, u64 v)
{
	char digits[20];
	int n = 0;
	do {
		digits[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n && at < 255)
		out[at++] = digits[--n];
	return at;
}

static size_t put_hex(char *out, size_t at, u64 v)
{
	int shift = 60;
	at = put_str(out, at, "0x");
	while (shift > 0 && ((v >> shift) & 0xF) == 0)
		shift -= 4;
	for (; shift >= 0 && at < 255; shift -= 4)
		out[at++] = "0123456789abcdef"[(v >> shift) & 0xF];
	return at;
}

static int slot_of_signal(int sig)
{
	for (size_t i = 0; i < NUM_FAULT_SIGNALS; i++)
		if (fault_signals[i] == sig)
			return (int)i;
	return 0;
}

/* record_fault -- remember a C fault on `core` in its machine's log (bm_smp_faults reads it;
 * async-signal-safe)
 *  IN:  core, signal number, faulting address */
static void record_fault(struct bm_core *core, int signal, u64 address)
{
	struct bm_smp *smp = &core->machine->smp;
	u32 n = atomic_fetch_add(&smp->faults_count, 1);
	smp->faults[n % BM_FAULT_LOG] = (struct bm_fault){ .core = core->id, .signal = signal,
							   .address = address, .code = core->task_code };
}

/* pass_on -- hand the signal to whoever had it before us, or to the default action */
static void pass_on(int sig, siginfo_t *info, void *context)
{
	struct sigaction *prev = &previous[slot_of_signal(sig)];
	if ((prev->sa_flags & SA_SIGINFO) && prev->sa_sigaction != NULL) {
		prev->sa_sigaction(sig, info, context);
		return;
	}
	if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN && prev->sa_handler != NULL) {
		prev->sa_handler(sig);
		return;
	}
	signal(sig, SIG_DFL);
	raise(sig);                     /* pending until we return: then the default action */
}

/* on_fault -- the handler (see fault.h for what it does) */
static void on_fault(int sig, siginfo_t *info, void *context)
{
	struct bm_core *core = bm_self;
	if (core == NULL) {
		pass_on(sig, info, context);
		return;
	}
	char line[256];
	size_t n = put_str(line, 0, "core ");
	n = put_dec(line, n, core->id);
	n = put_str(line, n, ": ");
	n = put_str(line, n, signal_name(sig));
	n = put_str(line, n, " at address ");
	n = put_hex(line, n, (u64)(uintptr_t)info->si_addr);
	if (core->task_code) {
		n = put_str(line, n, " in task ");
		n = put_hex(line, n, core->task_code);
	}
	record_fault(core, sig, (u64)(uintptr_t)info->si_addr);
	int recover = core->in_task && core->fault_jmp != NULL;
	n = put_str(line, n, recover ? " (task abandoned, core back to idle)\n" : " (machine stopped)\n");
	ssize_t ignored = write(2, line, n);
	(void)ignored;
	if (recover) {
		core->in_task = 0;
		siglongjmp(*core->fault_jmp, sig);
	}
	bm_nvs_flush_all(core->machine);
	bm_terminal_restore_all();      /* the process ends: give the terminal back first */
	pass_on(sig, info, context);
}

/* bm_fault_install -- see fault.h */
int bm_fault_install(void)
{
	int rc = 0;
	pthread_mutex_lock(&install_lock);
	for (size_t i = 0; i < NUM_FAULT_SIGNALS; i++) {
		struct sigaction now;
		if (sigaction(fault_signals[i], NULL, &now) != 0) {
			rc = -1;
			continue;
		}
		if ((now.sa_flags & SA_SIGINFO) && now.sa_sigaction == on_fault)
			continue;
		struct sigaction ours;
		memset(&ours, 0, sizeof ours);
		ours.sa_sigaction = on_fault;
		ours.sa_flags = SA_SIGINFO | SA_ONSTACK;
		sigemptyset(&ours.sa_mask);
		if (sigaction(fault_signals[i], &ours, &previous[i]) != 0)
			rc = -1;
	}
	pthread_mutex_unlock(&install_lock);
	return rc;
}

/* bm_fault_altstack_new -- see fault.h */
void *bm_fault_altstack_new(void)
{
	size_t size = 64 * 1024;
	void *stack = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (stack == MAP_FAILED)
		return NULL;
	stack_t ss = { .ss_sp = stack, .ss_size = size, .ss_flags = 0 };
	if (sigaltstack(&ss, NULL) != 0) {
		munmap(stack, size);
		return NULL;
	}
	return stack;
}

/* bm_fault_altstack_free -- drop the calling thread's alternate stack made above */
void bm_fault_altstack_free(void *stack)
{
	if (stack == NULL)
		return;
	stack_t ss = { .ss_sp = NULL, .ss_size = 0, .ss_flags = SS_DISABLE };
	sigaltstack(&ss, NULL);
	munmap(stack, 64 * 1024);
}

/* bm_fault_unblock -- see fault.h */
void bm_fault_unblock(void)
{
	sigset_t set;
	sigemptyset(&set);
	for (size_t i = 0; i < NUM_FAULT_SIGNALS; i++)
		sigaddset(&set, fault_signals[i]);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

/* bm_fault_call -- see fault.h */
int bm_fault_call(void (*fn)(void *), void *ctx)
{
	struct bm_core *core = bm_self;
	if (core == NULL)
		return -1;
	sigjmp_buf here, *outer = core->fault_jmp;
	volatile sig_atomic_t outer_in_task = core->in_task;
	int sig = sigsetjmp(here, 0);
	if (sig == 0) {
		core->fault_jmp = &here;
		core->in_task = 1;
		fn(ctx);
	} else {
		bm_fault_unblock();
	}
	core->in_task = outer_in_task;
	core->fault_jmp = outer;
	return sig;
}

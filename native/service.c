/* service.c -- the machine's callback thread: CALLBACK_TIMER, CALLBACK_NETWORK and
 * CALLBACK_KEYBOARD.
 *
 * One thread per machine, started by boot (bm_machine_boot) and stopped by halt, NICs or not.
 * It acts as core 0 -- upstream delivers interrupts to the BSP, so SMP_ID in a callback says 0
 * -- but with a core struct of its own (core 0's exit_jmp belongs to the app's thread) and its
 * own set of NIC counters (BM_NIC_SERVICE_SLOT).  It sleeps in epoll on: a timerfd (period
 * TIMER_SET, default 1 ms, while CALLBACK_TIMER is set), the NICs' fds (edge-triggered, while
 * CALLBACK_NETWORK is set) and an eventfd to wake it.  It re-reads the callback words every
 * wakeup and at least every 10 ms, so a callback set from C starts within 10 ms; b_system's
 * CALLBACK_* and TIMER_SET wake it at once.  A late timer calls its callback once per wakeup
 * (missed ticks are not replayed).
 *
 * Network callbacks: each arriving frame calls the callback once; the callback reads the frame
 * with b_net_rx.  A callback that leaves its frame unread is called again on the next arrival
 * only.  Edges and frames do not match one to one: a frame that arrives while the thread is
 * offering earlier ones (or is waiting when a NIC is armed: epoll reports it at EPOLL_CTL_ADD)
 * is offered by the loop that is running, and its edge is still queued afterwards.  Such a
 * stale edge is harmless when the callback read everything (the next pass finds nothing
 * pending), but after a callback left a frame unread it would offer that same frame again.  So
 * when a NIC stalls the thread takes the edges already queued (epoll_wait with no timeout) and
 * drops that NIC's: they belong to frames already offered.  The cost: a genuine arrival in the
 * few instructions between the callback's return and that drain does not re-offer the unread
 * frame; the arrival after it does.
 *
 * Keyboard callbacks: upstream's keyboard interrupt calls the callback once per key, and the
 * callback reads it with b_input.  Here, while CALLBACK_KEYBOARD is set, the console's input
 * fd is in the epoll set (edge-triggered); each arrival, and the keys already waiting when the
 * callback is set, call the callback once per key while it reads one each time; a callback that
 * leaves its key unread is called again on the next arrival only (as frames above).  An input
 * epoll cannot watch (a file, /dev/null: all its bytes are there at once) is offered when the
 * callback is set.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include "machine.h"

enum { EV_WAKE = 1000, EV_TIMER = 1001, EV_KEY = 1002 };   /* epoll tags; NICs: their iid */

/* offer -- offer NIC nic's waiting frames to the network callback, one call per frame, while
 * the callback is set
 *  IN:  m, nic
 * OUT:  1 when the callback left its frame unread (the NIC stalls until the next arrival), else 0 */
static int offer(struct bm_machine *m, struct bm_nic *nic)
{
	while (!atomic_load(&m->service.stop) && nic->ops->pending(nic)) {
		u64 fn = atomic_load(&m->callback[1]);
		if (fn == 0 || atomic_load(&m->state) != BM_STATE_RUNNING)
			return 0;
		_Atomic u64 *received = &nic->stats.counts[BM_NIC_SERVICE_SLOT].rx_packets;
		u64 before = atomic_load(received);
		((void (*)(void))(uintptr_t)fn)();
		atomic_fetch_add(&m->service.network_calls, 1);
		if (atomic_load(received) == before)
			return 1;
	}
	return 0;
}

/* offer_keys -- call the keyboard callback once per waiting key, while it is set and reads
 * the key it is called for
 *  IN:  m
 * OUT:  nothing (a callback that left its key unread waits for the next arrival) */
static void offer_keys(struct bm_machine *m)
{
	while (!atomic_load(&m->service.stop) && bm_console_key_waiting(m)) {
		u64 fn = atomic_load(&m->callback[2]);
		if (fn == 0 || atomic_load(&m->state) != BM_STATE_RUNNING)
			return;
		u64 before = bm_console_keys_read(m);
		((void (*)(void))(uintptr_t)fn)();
		atomic_fetch_add(&m->service.keyboard_calls, 1);
		if (bm_console_keys_read(m) == before)
			return;
	}
}

/* set_timer -- (re)program the timerfd: period_ns, or off (0) */
static void set_timer(int tfd, u64 period_ns)
{
	struct timespec t = { (time_t)(period_ns / 1000000000ull), (long)(period_ns % 1000000000ull) };
	struct itimerspec spec = { t, t };
	timerfd_settime(tfd, 0, &spec, NULL);
}

/* take_events -- handle what epoll returned: wakeups read, timer ticks run, NIC edges added to
 * *ready (a bit per iid) */
static void take_events(struct bm_machine *m, int tfd, struct epoll_event *events, int got, u32 *ready,
			int *keys)
{
	struct bm_service *s = &m->service;
	for (int i = 0; i < got; i++) {
		u64 scratch;
		if (events[i].data.u32 == EV_WAKE) {
			if (read(s->wake_fd, &scratch, sizeof scratch) < 0) { /* nothing: a wakeup */ }
		} else if (events[i].data.u32 == EV_TIMER) {
			if (read(tfd, &scratch, sizeof scratch) < 0) { /* spurious */ }
			u64 fn = atomic_load(&m->callback[0]);
			if (fn != 0 && atomic_load(&m->state) == BM_STATE_RUNNING && !atomic_load(&s->stop)) {
				((void (*)(void))(uintptr_t)fn)();
				atomic_fetch_add(&s->timer_ticks, 1);
			}
		} else if (events[i].data.u32 == EV_KEY) {
			*keys = 1;
		} else if (events[i].data.u32 < BM_MAX_NICS) {
			*ready |= 1u << events[i].data.u32;
		}
	}
}

/* service_main -- the service thread's loop (see the top of this file) */
static void *service_main(void *arg)
{
	struct bm_machine *m = arg;
	struct bm_service *s = &m->service;
	bm_set_self(s->core, m);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN, .data.u32 = EV_WAKE };
	epoll_ctl(ep, EPOLL_CTL_ADD, s->wake_fd, &ev);
	ev.data.u32 = EV_TIMER;
	epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
	u64 timer_on = 0;                      /* the period programmed, 0 when off */
	u32 armed = 0;                         /* NICs 0..armed-1 are in the epoll set */
	u32 ready = 0;                         /* NICs with an edge not yet handled */
	int keyboard = 0;                      /* 1: the input fd is in the epoll set, 2: unwatchable */
	int keys = 0;                          /* keys to offer */
	struct epoll_event events[BM_MAX_NICS + 3];
	while (!atomic_load(&s->stop)) {
		int running = atomic_load(&m->state) == BM_STATE_RUNNING;
		u64 timer_fn = running ? atomic_load(&m->callback[0]) : 0;
		u64 net_fn = running ? atomic_load(&m->callback[1]) : 0;
		u64 key_fn = running ? atomic_load(&m->callback[2]) : 0;
		if (key_fn != 0 && keyboard == 0 && m->console.in_fd >= 0) {
			struct epoll_event kev = { .events = EPOLLIN | EPOLLET, .data.u32 = EV_KEY };
			keyboard = epoll_ctl(ep, EPOLL_CTL_ADD, m->console.in_fd, &kev) == 0 ? 1 : 2;
			keys = 1;                  /* keys that arrived before the callback was set */
		} else if (key_fn == 0 && keyboard != 0) {
			if (keyboard == 1)
				epoll_ctl(ep, EPOLL_CTL_DEL, m->console.in_fd, NULL);
			keyboard = keys = 0;
		}
		if (keyboard != 0 && keys) {
			keys = 0;
			offer_keys(m);
		}
		u64 period = timer_fn != 0 ? atomic_load(&s->timer_period_ns) : 0;
		if (period != timer_on) {
			timer_on = period;
			set_timer(tfd, period);
		}
		u32 n = atomic_load_explicit(&m->net.num_nics, memory_order_acquire);
		if (net_fn != 0 && armed < n) {
			for (; armed < n; armed++) {
				struct bm_nic *nic = m->net.nics[armed];
				int fd = nic->ops->event_fd(nic, 1);
				struct epoll_event nev = { .events = EPOLLIN | EPOLLET, .data.u32 = armed };
				if (fd >= 0)
					epoll_ctl(ep, EPOLL_CTL_ADD, fd, &nev);
				ready |= 1u << armed;  /* frames that arrived before the callback was set */
			}
		} else if (net_fn == 0 && armed > 0) {
			for (u32 i = 0; i < armed; i++) {
				int fd = m->net.nics[i]->ops->event_fd(m->net.nics[i], 0);
				if (fd >= 0)
					epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
			}
			armed = 0;
			ready = 0;
		}
		if (ready != 0 && armed != 0) {
			u32 stalled = 0;
			for (u32 i = 0; i < armed; i++)
				if ((ready & (1u << i)) && offer(m, m->net.nics[i]))
					stalled |= 1u << i;
			ready = 0;
			if (stalled) {             /* drop the stalled NICs' stale edges (see above) */
				int got = epoll_wait(ep, events, BM_MAX_NICS + 3, 0);
				take_events(m, tfd, events, got, &ready, &keys);
				ready &= ~stalled;
			}
			continue;
		}
		int got = epoll_wait(ep, events, BM_MAX_NICS + 3, 10);
		take_events(m, tfd, events, got, &ready, &keys);
	}
	for (u32 i = 0; i < armed; i++)
		m->net.nics[i]->ops->event_fd(m->net.nics[i], 0);
	if (keyboard == 1)
		epoll_ctl(ep, EPOLL_CTL_DEL, m->console.in_fd, NULL);
	close(tfd);
	close(ep);
	return NULL;
}

/* bm_service_start -- start the machine's service thread (boot; idempotent)
 *  IN:  m
 * OUT:  0, or -1 with BM_ERR_IO / BM_ERR_FULL recorded */
int bm_service_start(struct bm_machine *m)
{
	struct bm_service *s = &m->service;
	pthread_mutex_lock(&s->lock);
	int r = 0;
	if (!s->running) {
		if (s->core == NULL)
			s->core = calloc(1, sizeof *s->core);
		if (s->core == NULL) {
			r = (int)bm_fail(BM_ERR_FULL, "out of host memory") - 1;
		} else {
			s->core->machine = m;
			s->core->id = 0;
			s->core->counter_slot = BM_NIC_SERVICE_SLOT;
			s->core->cpu = -1;
			s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
			atomic_store(&s->stop, 0);
			/* like the worker cores, it takes no asynchronous signals (they go to the app's
			 * thread): block them while it is created, it inherits the mask */
			sigset_t old;
			bm_block_async_signals(&old);
			int e = s->wake_fd < 0 ? errno : pthread_create(&s->thread, NULL, service_main, m);
			pthread_sigmask(SIG_SETMASK, &old, NULL);
			if (e != 0) {
				if (s->wake_fd >= 0)
					close(s->wake_fd);
				r = (int)bm_fail(BM_ERR_IO, "cannot start the callback service thread: %s", strerror(e)) - 1;
			} else {
				s->running = 1;
			}
		}
	}
	pthread_mutex_unlock(&s->lock);
	return r;
}

/* bm_service_wake -- make the service thread re-read the callbacks, timer period and NICs now */
void bm_service_wake(struct bm_machine *m)
{
	u64 one = 1;
	if (m->service.running && write(m->service.wake_fd, &one, sizeof one) < 0) {
		/* the counter is saturated: the thread is awake anyway */
	}
}

/* bm_service_stop -- stop and join the service thread (halt, reboot; idempotent).  Called from
 * a callback (the thread itself), it detaches it instead: the loop ends after the callback. */
void bm_service_stop(struct bm_machine *m)
{
	struct bm_service *s = &m->service;
	pthread_mutex_lock(&s->lock);
	int was_running = s->running;
	s->running = 0;
	pthread_mutex_unlock(&s->lock);
	if (!was_running)
		return;
	atomic_store(&s->stop, 1);
	u64 one = 1;
	if (write(s->wake_fd, &one, sizeof one) < 0) { /* saturated: awake anyway */ }
	if (pthread_equal(pthread_self(), s->thread)) {
		pthread_detach(s->thread);         /* it keeps its core struct and eventfd */
		return;
	}
	pthread_join(s->thread, NULL);
	close(s->wake_fd);
	free(s->core);
	s->core = NULL;
}

/* bm_service_count -- callbacks run so far: which = 0 timer ticks, 1 network calls, 2 keyboard
 * calls */
u64 bm_service_count(struct bm_machine *m, int which)
{
	return atomic_load(which == 0 ? &m->service.timer_ticks :
			   which == 1 ? &m->service.network_calls : &m->service.keyboard_calls);
}

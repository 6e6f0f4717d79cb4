/* smp_helpers.c -- C tasks for tests/test_smp.py (built by tests/smp_helpers.py with gcc).
 * The calls arrive as function pointers (helpers_init), as an app would find them in the
 * call table. */
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

#define SMP_ID 0x10
#define SMP_GET 0x13
#define SMP_LOCK 0x14
#define SMP_UNLOCK 0x15
#define SHUTDOWN 0x7F

static u64 (*b_system)(u64, u64, u64);
static u64 (*b_smp_enqueue)(void *, u64);
static u64 (*b_smp_dequeue)(u64 *);
static void (*b_smp_run)(u64, u64);

u64 counter;
u16 lock_word __attribute__((aligned(64)));
u32 *seen;
u64 ids[256];
volatile u64 probe_slot, probe_id, probe_started, probe_release;

void helpers_init(void *system, void *enqueue, void *dequeue, void *run, u32 *seen_array)
{
	b_system = (u64 (*)(u64, u64, u64))system;
	b_smp_enqueue = (u64 (*)(void *, u64))enqueue;
	b_smp_dequeue = (u64 (*)(u64 *))dequeue;
	b_smp_run = (void (*)(u64, u64))run;
	seen = seen_array;
	counter = 0;
	probe_slot = probe_id = probe_started = probe_release = 0;
}

void noop(u64 arg) { (void)arg; }

/* put -- enqueue code(arg); while the queue is full, run a queued task here (as an app on a
 * machine whose cores all produce must, or they would all wait for room) */
static void put(void (*code)(u64), u64 arg)
{
	while (!b_smp_enqueue((void *)code, arg)) {
		u64 other_arg, other = b_smp_dequeue(&other_arg);
		if (other)
			b_smp_run(other, other_arg);
	}
}

/* mark -- seen[arg] += 1 */
void mark(u64 arg) { __atomic_fetch_add(&seen[arg], 1, __ATOMIC_RELAXED); }

/* count_locked -- arg times: take the SMP lock, counter++ (not atomic), release */
void count_locked(u64 arg)
{
	for (u64 i = 0; i < arg; i++) {
		b_system(SMP_LOCK, (u64)&lock_word, 0);
		counter = counter + 1;
		b_system(SMP_UNLOCK, (u64)&lock_word, 0);
	}
}

/* produce -- enqueue mark(base + i) for i < count; arg = base << 32 | count */
void produce(u64 arg)
{
	u64 base = arg >> 32, count = arg & 0xFFFFFFFFull;
	for (u64 i = 0; i < count; i++)
		put(mark, base + i);
}

/* chain -- mark(depth), and enqueue chain(depth - 1) */
void chain(u64 depth)
{
	mark(depth);
	if (depth > 0)
		put(chain, depth - 1);
}

/* record_id -- ids[arg] = the id of the core running this */
void record_id(u64 arg) { ids[arg] = b_system(SMP_ID, 0, 0); }

/* probe -- (a slot task) note SMP_GET and SMP_ID, then hold the core until released */
void probe(void)
{
	probe_slot = b_system(SMP_GET, 0, 0);
	probe_id = b_system(SMP_ID, 0, 0);
	__atomic_store_n(&probe_started, 1, __ATOMIC_SEQ_CST);
	while (!__atomic_load_n(&probe_release, __ATOMIC_ACQUIRE))
		__builtin_ia32_pause();
	__atomic_fetch_add(&counter, 1, __ATOMIC_SEQ_CST);
}

/* crash -- write to address arg */
void crash(u64 arg) { *(volatile int *)arg = 1; }

/* divide -- 1 / arg (SIGFPE when arg is 0) */
volatile u64 quotient;
void divide(u64 arg) { quotient = 1000 / arg; }

/* shutdown -- SHUTDOWN from whichever core runs this */
void shutdown(u64 arg) { (void)arg; b_system(SHUTDOWN, 0, 0); }

/* ---- network callbacks (tests/test_spine.py) ---- */
static u64 (*net_rx)(void **, u64);
static void (*net_tx)(void *, u64, u64);
volatile u64 net_calls, net_frames, net_empty, net_arrivals, net_seen[64];

void net_helpers_init(void *rx, void *tx)
{
	net_rx = (u64 (*)(void **, u64))rx;
	net_tx = (void (*)(void *, u64, u64))tx;
	net_calls = net_frames = net_empty = net_arrivals = 0;
}

/* CALLBACK_NETWORK: read one frame of interface 0, counting calls that found none */
void net_read_one(void)
{
	void *frame;
	net_calls++;
	if (net_rx(&frame, 0))
		net_frames++;
	else
		net_empty++;
}

/* CALLBACK_NETWORK on a loopback wire: the first call reads its frame and sends one more to
 * itself (it arrives while the service thread is still offering frames); later calls leave
 * their frame unread.  Each call records how many frames had arrived when it ran
 * (net_arrivals: counted by the test before each frame it sends, and here) */
void net_echo_once(void)
{
	static u8 frame[60];
	void *got;
	u64 n = ++net_calls;
	if (n <= 64)
		net_seen[n - 1] = net_arrivals;
	if (n == 1) {
		net_rx(&got, 0);
		for (int i = 0; i < 12; i++)
			frame[i] = 0xff;
		net_arrivals++;
		net_tx(frame, sizeof frame, 0);
	}
}

/* a burst of n frames on a NIC through `send` (bm_nic_send, a harness end): how many were sent */
u64 net_burst(void *send, void *nic, u64 n)
{
	int (*send_fn)(void *, const void *, u64) = (int (*)(void *, const void *, u64))send;
	u8 frame[60];
	u64 sent = 0;
	for (int i = 0; i < 12; i++)
		frame[i] = 0xff;
	for (u64 i = 0; i < n; i++) {
		for (int b = 0; b < 8; b++)
			frame[14 + b] = (u8)(i >> (8 * b));
		sent += send_fn(nic, frame, sizeof frame) == 0;
	}
	return sent;
}

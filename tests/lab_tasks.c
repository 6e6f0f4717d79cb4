/* lab_tasks.c -- a task for tests/test_lab.py: counts how often each request index is served. */
typedef unsigned long long u64;
typedef unsigned int u32;

u32 served[1 << 16];

/* mark -- served[arg] += 1 (arg: the request's index) */
void mark(u64 arg) { __atomic_fetch_add(&served[arg & 0xFFFF], 1, __ATOMIC_RELAXED); }

/* crash_on -- fault when arg is 7 (the request the test sends to core 1), else nothing */
void crash_on(u64 arg)
{
	if (arg == 7)
		*(volatile int *)16 = 1;
}

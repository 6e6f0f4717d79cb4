/* io_loops.c -- timing loops for bench/test_io.py: the C face of b_output / b_system and the
 * raw system calls they are compared with, in the same compiled form.  Each returns the
 * elapsed nanoseconds for n calls. */
#include <time.h>
#include <unistd.h>
#include "libBareMetal.h"

static u64 now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (u64)ts.tv_sec * 1000000000ull + (u64)ts.tv_nsec;
}

/* loop_b_output -- n calls of b_output(msg, len) on the calling core */
u64 loop_b_output(const char *msg, u64 len, u64 n)
{
	u64 start = now_ns();
	for (u64 i = 0; i < n; i++)
		b_output(msg, len);
	return now_ns() - start;
}

/* loop_write -- n calls of write(fd, msg, len): the peer of loop_b_output */
u64 loop_write(int fd, const char *msg, u64 len, u64 n)
{
	u64 start = now_ns();
	for (u64 i = 0; i < n; i++)
		if (write(fd, msg, len) < 0)
			return 0;
	return now_ns() - start;
}

/* loop_timecounter -- n calls of b_system(TIMECOUNTER) */
u64 loop_timecounter(u64 n)
{
	volatile u64 sink = 0;
	u64 start = now_ns();
	for (u64 i = 0; i < n; i++)
		sink += b_system(TIMECOUNTER, 0, 0);
	return now_ns() - start;
}

/* loop_clock_gettime -- n calls of clock_gettime(CLOCK_MONOTONIC): the peer of loop_timecounter */
u64 loop_clock_gettime(u64 n)
{
	struct timespec ts;
	volatile u64 sink = 0;
	u64 start = now_ns();
	for (u64 i = 0; i < n; i++) {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		sink += (u64)ts.tv_nsec;
	}
	return now_ns() - start;
}

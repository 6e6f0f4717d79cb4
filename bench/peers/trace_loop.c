/* trace_loop.c -- bench/test_trace.py: b_system(TIMECOUNTER) from a hosted C app, timed with
 * io_loops.c's loop, next to clock_gettime in the same app.  Run it with and without --trace
 * (to /dev/null).  Prints the best ns per call over several rounds:
 *   timecounter NS / clock_gettime NS
 * argv[1]: calls per round (default 200000). */
#include <stdio.h>
#include <stdlib.h>
#include "io_loops.c"

#define ROUNDS 5

int main(int argc, char **argv)
{
	u64 calls = argc > 1 ? strtoull(argv[1], NULL, 10) : 200000;
	u64 best[2] = { ~0ull, ~0ull };
	for (int round = 0; round < ROUNDS; round++) {
		u64 t[2] = { loop_timecounter(calls), loop_clock_gettime(calls) };
		for (int i = 0; i < 2; i++)
			if (t[i] < best[i])
				best[i] = t[i];
	}
	printf("timecounter %.2f\nclock_gettime %.2f\n", (double)best[0] / calls, (double)best[1] / calls);
	return 0;
}

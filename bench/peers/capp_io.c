/* capp_io.c -- bench/test_capps.py: io_loops.c's timing loops run inside a hosted C app (so
 * b_output flushes C stdio first, as it does for every C app).  Prints, with printf, the best
 * ns per call of each loop over several rounds:
 *   b_output NS / write NS / timecounter NS / clock_gettime NS
 * b_output goes to the machine's console (run with --console /dev/null); write(2) to /dev/null. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include "io_loops.c"

#define CALLS 200000
#define ROUNDS 7

int main(void)
{
	char message[64];
	memset(message, 'x', sizeof message - 1);
	message[63] = '\n';
	int devnull = open("/dev/null", O_WRONLY);
	u64 best[4] = { ~0ull, ~0ull, ~0ull, ~0ull };
	for (int round = 0; round < ROUNDS; round++) {
		u64 t[4] = { loop_b_output(message, 64, CALLS), loop_write(devnull, message, 64, CALLS),
			     loop_timecounter(CALLS), loop_clock_gettime(CALLS) };
		for (int i = 0; i < 4; i++)
			if (t[i] < best[i])
				best[i] = t[i];
	}
	printf("b_output %.2f\nwrite %.2f\ntimecounter %.2f\nclock_gettime %.2f\n",
	       (double)best[0] / CALLS, (double)best[1] / CALLS, (double)best[2] / CALLS, (double)best[3] / CALLS);
	return 0;
}

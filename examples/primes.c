/* primes.c -- count primes on every core with the work queue; print the count and speedup.
 *
 *   baremetal run examples/primes.c --cores 4 -- 2000000
 *
 * The range is cut into PRIMES_CHUNKS tasks.  Once on core 0 alone (each task called in turn),
 * then on all cores: the BSP puts every task on the queue (b_smp_enqueue), the other cores
 * take them as they poll, the BSP takes its share too (b_smp_dequeue + b_smp_run) and then
 * waits for the others (b_smp_wait).  Results meet in one counter (atomic add).
 */
#include "libBareMetal.h"
#include <stdio.h>
#include <stdlib.h>
#include "primes.h"

static u64 limit = 1000000;
static u64 total;

static void task(u64 chunk)
{
	unsigned long lo, hi;
	chunk_bounds(chunk, limit, &lo, &hi);
	__atomic_fetch_add(&total, count_primes(lo, hi), __ATOMIC_RELAXED);
}

int main(int argc, char **argv)
{
	if (argc > 1)
		limit = strtoul(argv[1], NULL, 0);
	u64 cores = b_system(SMP_NUMCORES, 0, 0);

	u64 start = b_system(TIMECOUNTER, 0, 0);
	for (u64 chunk = 0; chunk < PRIMES_CHUNKS; chunk++)
		task(chunk);
	u64 one_core = b_system(TIMECOUNTER, 0, 0) - start, serial_total = total;

	total = 0;
	start = b_system(TIMECOUNTER, 0, 0);
	for (u64 chunk = 0; chunk < PRIMES_CHUNKS; chunk++)
		if (b_smp_enqueue((void *)task, chunk) == 0)
			task(chunk);            /* queue full: do it here */
	u64 code, arg;
	while ((code = b_smp_dequeue(&arg)) != 0)
		b_smp_run(code, arg);
	b_smp_wait();
	u64 all_cores = b_system(TIMECOUNTER, 0, 0) - start;

	printf("primes below %lu: %lu\n", limit, total);
	printf("1 core: %lu us, %lu cores: %lu us, speedup %.2fx\n", one_core / 1000, cores,
	       all_cores / 1000, (double)one_core / (double)all_cores);
	return total == serial_total ? 0 : 1;
}

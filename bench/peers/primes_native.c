/* primes_native.c -- the peer of examples/primes.c for bench/test_capps.py: the same kernel
 * (examples/primes.h) and the same PRIMES_CHUNKS work items, as an ordinary Linux program:
 * N pthreads take chunks from an atomic counter.  Prints the count and the microseconds of
 * the parallel pass, as primes.c prints its all-cores pass.
 *   primes_native LIMIT THREADS */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "../../examples/primes.h"

static unsigned long limit, next_chunk, total;

static unsigned long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long)ts.tv_sec * 1000000000ul + (unsigned long)ts.tv_nsec;
}

static void *worker(void *unused)
{
	(void)unused;
	for (;;) {
		unsigned long chunk = __atomic_fetch_add(&next_chunk, 1, __ATOMIC_RELAXED), lo, hi;
		if (chunk >= PRIMES_CHUNKS)
			return NULL;
		chunk_bounds(chunk, limit, &lo, &hi);
		__atomic_fetch_add(&total, count_primes(lo, hi), __ATOMIC_RELAXED);
	}
}

int main(int argc, char **argv)
{
	limit = argc > 1 ? strtoul(argv[1], NULL, 0) : 1000000;
	int threads = argc > 2 ? atoi(argv[2]) : 1;
	pthread_t helper[256];
	unsigned long start = now_ns();
	for (int i = 1; i < threads && i < 256; i++)
		pthread_create(&helper[i], NULL, worker, NULL);
	worker(NULL);                   /* the main thread works too, as the BSP does */
	for (int i = 1; i < threads && i < 256; i++)
		pthread_join(helper[i], NULL);
	unsigned long elapsed = now_ns() - start;
	printf("primes below %lu: %lu\n%d threads: %lu us\n", limit, total, threads, elapsed / 1000);
	return 0;
}

/* primes.h -- the prime counting kernel of primes.c (bench/ builds the same one natively). */
#ifndef PRIMES_H
#define PRIMES_H

#define PRIMES_CHUNKS 200       /* work items: the queue holds 256 */

/* count_primes -- how many primes p with lo <= p < hi (trial division by odd numbers) */
static unsigned long count_primes(unsigned long lo, unsigned long hi)
{
	unsigned long count = 0;
	for (unsigned long n = lo < 2 ? 2 : lo; n < hi; n++) {
		int prime = n == 2 || (n & 1);
		for (unsigned long d = 3; prime && d * d <= n; d += 2)
			prime = n % d != 0;
		count += prime;
	}
	return count;
}

/* chunk_bounds -- the range [*lo, *hi) of chunk i of PRIMES_CHUNKS over [0, limit) */
static void chunk_bounds(unsigned long i, unsigned long limit, unsigned long *lo, unsigned long *hi)
{
	*lo = limit * i / PRIMES_CHUNKS;
	*hi = limit * (i + 1) / PRIMES_CHUNKS;
}

#endif

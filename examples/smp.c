/* smp.c -- every core says hello, one at a time, under SMP_LOCK; the BSP waits with SMP_BUSY.
 *
 *   baremetal run examples/smp.c --cores 4
 */
#include "libBareMetal.h"
#include <stdio.h>

static u16 lock;                /* SMP_LOCK takes bit 0 of a 16-bit word */
static u64 said;                /* how many cores said hello (changed under the lock) */

static void hello(void)
{
	char line[64];
	u64 id = b_system(SMP_ID, 0, 0);
	b_system(SMP_LOCK, (u64)&lock, 0);
	int n = snprintf(line, sizeof line, "Hello from core %lu\n", id);
	b_output(line, (u64)n);
	said++;
	b_system(SMP_UNLOCK, (u64)&lock, 0);
}

int main(void)
{
	u64 cores = b_system(SMP_NUMCORES, 0, 0);
	for (u64 core = 1; core < cores; core++)
		if (b_system(SMP_SET, (u64)hello, core) == 0)
			printf("core %lu refused the work\n", core);
	hello();
	while (b_system(SMP_BUSY, 0, 0))
		;
	printf("%lu of %lu cores said hello\n", said, cores);
	return said == cores ? 0 : 1;
}

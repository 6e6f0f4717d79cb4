/* helloc.c -- a first C app: b_output and b_system next to libc's printf.
 *
 *   baremetal run examples/helloc.c -- some arguments
 */
#include "libBareMetal.h"
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
	const char *hello = "Hello from C!\n";
	b_output(hello, strlen(hello));
	printf("%lu cores, %lu MiB free, screen %lux%lu\n", b_system(SMP_NUMCORES, 0, 0),
	       b_system(FREE_MEMORY, 0, 0), b_system(SCREEN_X_GET, 0, 0), b_system(SCREEN_Y_GET, 0, 0));
	for (int i = 1; i < argc; i++)
		printf("argv[%d] = %s\n", i, argv[i]);
	return 0;
}

/* mandelbrot.c -- render the Mandelbrot set into the frame buffer on every core.
 *
 *   baremetal run examples/mandelbrot.c --screen 1024x768 --screen-png mandelbrot.png
 *
 * Every core runs render(): it takes the next unrendered row (an atomic counter) until none
 * is left.  The BSP hands render() to each other core with SMP_SET, renders rows itself,
 * then waits with SMP_BUSY until the other cores are idle again.  Pixels are 0x00RRGGBB.
 */
#include "libBareMetal.h"
#include <math.h>
#include <stdio.h>

#define MAX_ITER 256

static u32 *lfb;
static u64 width, height, ppsl;
static u64 next_row;            /* taken with __atomic_fetch_add by every core */
static u64 rows_done[256];      /* rows rendered by each core */

static u32 colour(int iter)
{
	if (iter >= MAX_ITER)
		return 0x000000;                        /* inside the set: black */
	double t = sqrt((double)iter / MAX_ITER);      /* outside: deep blue to violet to pink */
	u32 r = (u32)(255 * fmin(1.0, 2.0 * t)), g = (u32)(255 * t * t), b = (u32)(64 + 191 * 4 * t * (1 - t));
	return (r << 16) | (g << 8) | b;
}

static void render(void)
{
	u64 core = b_system(SMP_ID, 0, 0);
	for (;;) {
		u64 y = __atomic_fetch_add(&next_row, 1, __ATOMIC_RELAXED);
		if (y >= height)
			break;
		double ci = ((double)y / (double)height - 0.5) * 2.4;
		for (u64 x = 0; x < width; x++) {
			double cr = (double)x / (double)width * 3.5 - 2.5, zr = 0, zi = 0;
			int iter = 0;
			while (iter < MAX_ITER && zr * zr + zi * zi <= 4.0) {
				double t = zr * zr - zi * zi + cr;
				zi = 2 * zr * zi + ci;
				zr = t;
				iter++;
			}
			lfb[y * ppsl + x] = colour(iter);
		}
		rows_done[core & 255]++;
	}
}

int main(void)
{
	lfb = (u32 *)b_system(SCREEN_LFB_GET, 0, 0);
	width = b_system(SCREEN_X_GET, 0, 0);
	height = b_system(SCREEN_Y_GET, 0, 0);
	ppsl = b_system(SCREEN_PPSL_GET, 0, 0);
	if (lfb == NULL || b_system(SCREEN_BPP_GET, 0, 0) != 32) {
		printf("mandelbrot: needs a 32 bpp screen\n");
		return 1;
	}
	u64 cores = b_system(SMP_NUMCORES, 0, 0), helpers = 0, start = b_system(TIMECOUNTER, 0, 0);
	for (u64 core = 1; core < cores; core++)
		if (b_system(SMP_SET, (u64)render, core) != 0)
			helpers++;
	render();
	while (b_system(SMP_BUSY, 0, 0))
		;
	u64 ms = (b_system(TIMECOUNTER, 0, 0) - start) / 1000000;
	printf("rendered %lux%lu on %lu cores in %lu ms\n", width, height, helpers + 1, ms);
	for (u64 core = 0; core < cores && core < 256; core++)
		printf("  core %lu: %lu rows\n", core, rows_done[core]);
	return 0;
}

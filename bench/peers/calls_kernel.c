/* calls_kernel.c -- a call-heavy kernel in the shape of upstream's raytrace demo: small global
 * (not static) vector functions called per pixel and per sphere, and the app's own rand().
 * Built twice by bench/test_capps.py: as a hosted C app (`baremetal run`) and as an ordinary
 * executable with the same flags; prints "calls: N us" for the traced frames and a checksum. */
#include <stdio.h>
#include <time.h>

typedef struct { double x, y, z; } vec;

static unsigned long seed = 1;
int rand(void) { seed = seed * 1103515245 + 12345; return (int)((seed >> 16) & 0x7FFF); }

vec add(vec a, vec b) { return (vec){ a.x + b.x, a.y + b.y, a.z + b.z }; }
vec sub(vec a, vec b) { return (vec){ a.x - b.x, a.y - b.y, a.z - b.z }; }
vec scale(vec a, double s) { return (vec){ a.x * s, a.y * s, a.z * s }; }
double dot(vec a, vec b) { return a.x * b.x + a.y * b.y + a.z * b.z; }

double hit(vec origin, vec dir, vec centre, double radius)
{
	vec oc = sub(origin, centre);
	double b = dot(oc, dir), c = dot(oc, oc) - radius * radius, d = b * b - c;
	return d < 0 ? -1 : -b - d / (2 * (b > 0 ? b : -b) + 1);
}

double trace(vec origin, vec dir, int depth)
{
	static const vec centres[4] = { { 0, 0, 5 }, { 2, 1, 7 }, { -2, -1, 6 }, { 0, -101, 5 } };
	double best = 1e9;
	int which = -1;
	for (int i = 0; i < 4; i++) {
		double t = hit(origin, dir, centres[i], i == 3 ? 100 : 1);
		if (t > 0 && t < best) { best = t; which = i; }
	}
	if (which < 0 || depth == 0)
		return 0.1;
	vec point = add(origin, scale(dir, best));
	vec normal = sub(point, centres[which]);
	double jitter = (rand() % 100) / 1000.0;
	return 0.5 * dot(normal, normal) / (1 + dot(normal, normal)) + jitter
	       + 0.5 * trace(point, scale(add(dir, normal), 0.5), depth - 1);
}

int main(void)
{
	struct timespec start, end;
	double sum = 0;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (int frame = 0; frame < 4; frame++)
		for (int y = 0; y < 300; y++)
			for (int x = 0; x < 400; x++)
				sum += trace((vec){ 0, 0, 0 }, (vec){ (x - 200) / 400.0, (y - 150) / 400.0, 1 }, 3);
	clock_gettime(CLOCK_MONOTONIC, &end);
	printf("calls: %ld us checksum %.3f\n",
	       (end.tv_sec - start.tv_sec) * 1000000L + (end.tv_nsec - start.tv_nsec) / 1000, sum);
	return 0;
}

/* crt0.c -- entry of a flat C app: the first byte of the image.  Zeroes .bss, calls main,
 * returns its value in RAX to the Monitor.  Also the few memory functions gcc may call even
 * in freestanding code. */
typedef unsigned long size_t;

extern char __bss_start[], __bss_end[];
int main(void);

__attribute__((section(".text.start"), used)) int _start(void)
{
	for (char *p = __bss_start; p < __bss_end; p++)
		*(volatile char *)p = 0;
	return main();
}

void *memset(void *dest, int c, size_t n)
{
	unsigned char *d = dest;
	while (n--)
		*d++ = (unsigned char)c;
	return dest;
}

void *memcpy(void *dest, const void *src, size_t n)
{
	unsigned char *d = dest;
	const unsigned char *s = src;
	while (n--)
		*d++ = *s++;
	return dest;
}

void *memmove(void *dest, const void *src, size_t n)
{
	unsigned char *d = dest;
	const unsigned char *s = src;
	if (d < s)
		return memcpy(dest, src, n);
	while (n--)
		d[n] = s[n];
	return dest;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *x = a, *y = b;
	for (; n--; x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}

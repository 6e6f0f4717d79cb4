/* libBareMetal.c -- the calls for flat binaries: each goes through the kernel's call table at
 * 0x100010 with upstream's register ABI (baremetal-api.md section 4).  The kernel preserves
 * every register it does not return in, so only the outputs are clobbered.  Build with
 * -mno-red-zone: the `call` pushes below the stack pointer. */
#include "libBareMetal.h"

u8 b_input(void)
{
	u64 key;
	__asm__ volatile ("call *0x100010" : "=a"(key) : : "memory");
	return (u8)key;
}

void b_output(const char *str, u64 nbr)
{
	__asm__ volatile ("call *0x100018" : : "S"(str), "c"(nbr) : "memory");
}

void b_net_tx(void *mem, u64 len, u64 iid)
{
	__asm__ volatile ("call *0x100020" : : "S"(mem), "c"(len), "d"(iid) : "memory");
}

u64 b_net_rx(void **mem, u64 iid)
{
	void *frame;
	u64 len;
	__asm__ volatile ("call *0x100028" : "=D"(frame), "=c"(len) : "d"(iid) : "memory");
	*mem = frame;
	return len;
}

u64 b_nvs_read(void *mem, u64 start, u64 num, u64 drive)
{
	u64 done;
	__asm__ volatile ("call *0x100030" : "=c"(done) : "a"(start), "c"(num), "d"(drive), "D"(mem) : "memory");
	return done;
}

u64 b_nvs_write(void *mem, u64 start, u64 num, u64 drive)
{
	u64 done;
	__asm__ volatile ("call *0x100038" : "=c"(done) : "a"(start), "c"(num), "d"(drive), "S"(mem) : "memory");
	return done;
}

u64 b_system(u64 function, u64 var1, u64 var2)
{
	u64 result;
	__asm__ volatile ("call *0x100040" : "=a"(result) : "c"(function), "a"(var1), "d"(var2) : "memory");
	return result;
}

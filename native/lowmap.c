/* lowmap.c -- the machine's low system area at its own physical addresses.
 *
 * Upstream apps read system data by absolute address: the InfoMap (cores active at 0x5012,
 * core ids at 0x5100, the frame buffer at 0x5080), the kernel's free-memory word at 0x110104.
 * In a hosted machine that data is in flat memory, at m->mem + p.  So that such reads work
 * unmodified, bm_lowmap_claim moves the low 2 MiB of the machine's flat memory onto a memfd
 * and maps the same memfd a second time at process address 0x1000 (0x1000..0x1FFFFF: page 0
 * stays unmapped, so a NULL dereference still faults).  Both mappings share their pages: a
 * write through one is seen through the other, by every core, with no copying.
 *
 * Linux allows a mapping at 0x1000 only when vm.mmap_min_addr <= 0x1000 (the usual value is
 * 65536; `sysctl vm.mmap_min_addr=4096` lowers it; root with CAP_SYS_RAWIO may map below it).
 *
 * One machine per process owns the window: the first that claims it, until it releases it
 * (Machine.halt does).  The C app loader claims it for the machine running a C app; while
 * another machine owns it, a claim fails and that machine runs without the window.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "machine.h"
#include "lowmap.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

static pthread_mutex_t lowmap_lock = PTHREAD_MUTEX_INITIALIZER;
static struct bm_machine *lowmap_owner;        /* guarded by lowmap_lock */

/* min_addr -- vm.mmap_min_addr, or -1 if it cannot be read */
static long min_addr(void)
{
	long value = -1;
	FILE *f = fopen("/proc/sys/vm/mmap_min_addr", "r");
	if (f != NULL) {
		if (fscanf(f, "%ld", &value) != 1)
			value = -1;
		fclose(f);
	}
	return value;
}

/* bm_lowmap_claim -- map m's low system area at 0x1000..0x1FFFFF (call before the app runs)
 *  IN:  m
 * OUT:  1 (m owns the window, now or already); 0 with the reason recorded: BM_ERR_STATE when
 *       another machine owns it, BM_ERR_IO when Linux refused (vm.mmap_min_addr, or something
 *       already mapped there) */
int bm_lowmap_claim(struct bm_machine *m)
{
	bm_error_clear();
	int ok = 0, fd = -1;
	pthread_mutex_lock(&lowmap_lock);
	if (lowmap_owner == m) {
		ok = 1;
		goto out;
	}
	if (lowmap_owner != NULL) {
		bm_fail(BM_ERR_STATE, "another machine of this process owns the low window (0x1000..0x1FFFFF)");
		goto out;
	}
	fd = memfd_create("baremetal-system-area", MFD_CLOEXEC);
	if (fd < 0 || ftruncate(fd, BM_SYSTEM_SIZE) != 0) {
		bm_fail(BM_ERR_IO, "memfd for the system area: %s", strerror(errno));
		goto out;
	}
	void *window = mmap((void *)(uintptr_t)BM_LOWMAP_START, BM_SYSTEM_SIZE - BM_LOWMAP_START,
			    PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, BM_LOWMAP_START);
	if (window == MAP_FAILED || window != (void *)(uintptr_t)BM_LOWMAP_START) {
		int error = errno;
		if (window != MAP_FAILED)      /* a kernel without MAP_FIXED_NOREPLACE put it elsewhere */
			munmap(window, BM_SYSTEM_SIZE - BM_LOWMAP_START);
		long floor = min_addr();
		if (window == MAP_FAILED && error == EPERM && floor > (long)BM_LOWMAP_START)
			bm_fail(BM_ERR_IO, "vm.mmap_min_addr is %ld: reads of the system area by absolute "
				"address (0x5012, 0x110104, ...) will fault; `sysctl vm.mmap_min_addr=4096` "
				"enables them", floor);
		else
			bm_fail(BM_ERR_IO, "cannot map the system area at 0x1000: %s",
				window == MAP_FAILED ? strerror(error) : "the kernel placed it elsewhere");
		goto out;
	}
	/* the memfd takes over the low 2 MiB of flat memory: copy what is there, then swap it in
	 * at the same address (nothing runs on the machine yet, so nothing writes meanwhile) */
	if (pwrite(fd, m->mem, BM_SYSTEM_SIZE, 0) != (ssize_t)BM_SYSTEM_SIZE ||
	    mmap(m->mem, BM_SYSTEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) {
		bm_fail(BM_ERR_IO, "cannot share the system area: %s", strerror(errno));
		munmap(window, BM_SYSTEM_SIZE - BM_LOWMAP_START);
		goto out;
	}
	lowmap_owner = m;
	ok = 1;
out:
	if (fd >= 0)
		close(fd);                      /* the two mappings keep the memfd alive */
	pthread_mutex_unlock(&lowmap_lock);
	return ok;
}

/* bm_lowmap_release -- unmap the window if m owns it (halt); m's flat memory keeps its pages
 *  IN:  m
 * OUT:  nothing */
void bm_lowmap_release(struct bm_machine *m)
{
	pthread_mutex_lock(&lowmap_lock);
	if (lowmap_owner == m) {
		munmap((void *)(uintptr_t)BM_LOWMAP_START, BM_SYSTEM_SIZE - BM_LOWMAP_START);
		lowmap_owner = NULL;
	}
	pthread_mutex_unlock(&lowmap_lock);
}

/* bm_lowmap_clear -- zero the low 2 MiB if m owns the window (reboot: MADV_DONTNEED, which
 * zeroes private memory, leaves a memfd's pages as they were)
 *  IN:  m, with no core running
 * OUT:  nothing */
void bm_lowmap_clear(struct bm_machine *m)
{
	pthread_mutex_lock(&lowmap_lock);
	if (lowmap_owner == m)
		memset(m->mem, 0, BM_SYSTEM_SIZE);
	pthread_mutex_unlock(&lowmap_lock);
}

/* bm_lowmap_owner -- 1 if m owns the window */
int bm_lowmap_owner(struct bm_machine *m)
{
	pthread_mutex_lock(&lowmap_lock);
	int owns = lowmap_owner == m;
	pthread_mutex_unlock(&lowmap_lock);
	return owns;
}

/* bm_low_address -- the memory an app means by an address it hands to a call.  Upstream apps
 * name the system area by its physical address, page 0 included (raytrace locks address 0:
 * on the real kernel that is the IDT, and the lock works).  A process has nothing mapped below
 * 2 MiB but the low window, which is the same memory, so an address there (with the range
 * inside the system area) is the machine's system area in flat memory; any other address is
 * the app's own.  Host pointers into flat memory are never below 2 MiB, so this changes nothing
 * for callers that pass them (Python apps, binaries through their guest translation).
 *  IN:  m, address, length = bytes the call touches from there
 * OUT:  the process address to use */
u64 bm_low_address(struct bm_machine *m, u64 address, u64 length)
{
	if (address < BM_SYSTEM_SIZE && length <= BM_SYSTEM_SIZE - address)
		return (u64)(uintptr_t)(m->mem + address);
	return address;
}

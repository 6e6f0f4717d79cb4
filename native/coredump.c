/* coredump.c -- the core file of a flat binary that faulted (`--dumpcore DIR`), for gdb:
 * `gdb app.elf DIR/core.baremetal.PID` (or just the core) shows the registers at the fault and
 * the machine's memory at the addresses the app used.
 *
 * The format is what Linux writes for a process: an ELF64 ET_CORE file for x86-64 with a
 * PT_NOTE segment (NT_PRPSINFO, then NT_PRSTATUS holding the faulting core's registers and the
 * signal a process would have got) and PT_LOAD segments of memory: the whole flat memory at
 * its identity-mapped addresses (loader state, call stubs, stacks) and the app window
 * 0xFFFF800000000000 (physical 0x200000 up, where apps are linked and keep their heap).  All-zero
 * pages are left as holes, so the file is sparse on disk.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "coredump.h"

#define CORE_PAGE 4096ull
#define NOTE_NAME "CORE"
#define PRSTATUS_SIZE 336                 /* struct elf_prstatus on x86-64 */
#define PRSTATUS_REGS 112                 /* offset of pr_reg (27 u64: user_regs_struct) */
#define PRPSINFO_SIZE 136                 /* struct elf_prpsinfo on x86-64 */

/* note -- one ELF note ("CORE", type, desc) at buf; returns its size (4-byte aligned parts) */
static size_t note(u8 *buf, u32 type, const void *desc, u32 size)
{
	Elf64_Nhdr head = { sizeof NOTE_NAME, size, type };
	memcpy(buf, &head, sizeof head);
	memset(buf + sizeof head, 0, 8);
	memcpy(buf + sizeof head, NOTE_NAME, sizeof NOTE_NAME);
	memcpy(buf + sizeof head + 8, desc, size);
	return sizeof head + 8 + ((size + 3) & ~3u);
}

/* prstatus -- struct elf_prstatus for core `core` with signal `signal` and registers s */
static void prstatus(u8 *out, u32 core, const struct bm_cpu_state *s, int signal)
{
	memset(out, 0, PRSTATUS_SIZE);
	int signo = signal;
	short cursig = (short)signal;
	int pid = (int)core + 1;
	memcpy(out, &signo, 4);
	memcpy(out + 12, &cursig, 2);
	memcpy(out + 32, &pid, 4);
	const u64 *g = s->gpr;          /* rax rbx rcx rdx rsi rdi rbp rsp r8..r15 */
	u64 regs[27] = { g[15], g[14], g[13], g[12], g[6], g[1], g[11], g[10], g[9], g[8], g[0],
			 g[2], g[3], g[4], g[5], ~0ull, s->rip, s->seg[0], s->rflags, g[7], s->seg[1],
			 s->fs_base, s->gs_base, s->seg[2], s->seg[3], s->seg[4], s->seg[5] };
	memcpy(out + PRSTATUS_REGS, regs, sizeof regs);
}

/* write_sparse -- write [data, data+size) at file offset `at`, skipping all-zero pages
 *  IN:  fd, data, size, at
 * OUT:  0, or -1 with errno */
static int write_sparse(int fd, const u8 *data, u64 size, u64 at)
{
	static const u8 zero[CORE_PAGE];
	for (u64 done = 0; done < size; done += CORE_PAGE) {
		u64 n = size - done < CORE_PAGE ? size - done : CORE_PAGE;
		if (memcmp(data + done, zero, n) == 0)
			continue;
		if (pwrite(fd, data + done, n, (off_t)(at + done)) != (ssize_t)n)
			return -1;
	}
	return 0;
}

/* bm_core_write -- write DIR/core.baremetal.PID for a fault on `core`
 *  IN:  m, dir, core, s = the registers at the fault, signal (SIGSEGV, ...), path (NULL or 256
 *       bytes for the file's path)
 * OUT:  0 and the path; -1 (one line on stderr, path "") when it cannot be written: the fault
 *       report itself must not be lost for it */
int bm_core_write(struct bm_machine *m, const char *dir, u32 core, const struct bm_cpu_state *s,
		  int signal, char *path)
{
	char name[256];
	snprintf(name, sizeof name, "%s/core.baremetal.%d", dir, (int)getpid());
	if (path != NULL)
		path[0] = 0;
	int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		dprintf(2, "baremetal: --dumpcore: cannot write %s: %s\n", name, strerror(errno));
		return -1;
	}
	u64 window = m->mem_size > BM_APP_PHYSICAL ? m->mem_size - BM_APP_PHYSICAL : 0;
	struct { u64 vaddr, phys, size; } load[2] = {
		{ 0, 0, m->mem_size }, { BM_APP_VIRTUAL, BM_APP_PHYSICAL, window } };
	u8 notes[512], status[PRSTATUS_SIZE], info[PRPSINFO_SIZE] = { 0 };
	prstatus(status, core, s, signal);
	info[1] = 'R';
	memcpy(info + 40, "baremetal-app", 14);
	memcpy(info + 56, "baremetal run (flat binary)", 28);
	size_t notes_size = note(notes, NT_PRPSINFO, info, sizeof info);
	notes_size += note(notes + notes_size, NT_PRSTATUS, status, sizeof status);

	Elf64_Ehdr eh = { .e_type = ET_CORE, .e_machine = EM_X86_64, .e_version = EV_CURRENT,
			  .e_phoff = sizeof(Elf64_Ehdr), .e_ehsize = sizeof(Elf64_Ehdr),
			  .e_phentsize = sizeof(Elf64_Phdr), .e_phnum = 3 };
	memcpy(eh.e_ident, ELFMAG, SELFMAG);
	eh.e_ident[EI_CLASS] = ELFCLASS64;
	eh.e_ident[EI_DATA] = ELFDATA2LSB;
	eh.e_ident[EI_VERSION] = EV_CURRENT;
	Elf64_Phdr ph[3] = { { .p_type = PT_NOTE, .p_offset = sizeof eh + sizeof ph,
			       .p_filesz = notes_size, .p_align = 4 } };
	u64 at = (sizeof eh + sizeof ph + notes_size + CORE_PAGE - 1) & ~(CORE_PAGE - 1);
	for (int i = 0; i < 2; i++) {
		ph[i + 1] = (Elf64_Phdr){ .p_type = PT_LOAD, .p_flags = PF_R | PF_W | PF_X, .p_offset = at,
					  .p_vaddr = load[i].vaddr, .p_filesz = load[i].size,
					  .p_memsz = load[i].size, .p_align = CORE_PAGE };
		at += load[i].size;
	}
	int ok = pwrite(fd, &eh, sizeof eh, 0) == sizeof eh &&
		 pwrite(fd, ph, sizeof ph, sizeof eh) == sizeof ph &&
		 pwrite(fd, notes, notes_size, sizeof eh + sizeof ph) == (ssize_t)notes_size;
	for (int i = 0; ok && i < 2; i++)
		ok = write_sparse(fd, m->mem + load[i].phys, load[i].size, ph[i + 1].p_offset) == 0;
	ok = ok && ftruncate(fd, (off_t)at) == 0;      /* trailing holes count too */
	int error = errno;
	close(fd);
	if (!ok) {
		dprintf(2, "baremetal: --dumpcore: writing %s failed: %s\n", name, strerror(error));
		unlink(name);
		return -1;
	}
	if (path != NULL)
		snprintf(path, 256, "%s", name);
	return 0;
}

/*
 * LD_PRELOAD shim that lets user-mode Linux 6.1 run on hosts with a large XSAVE area.
 *
 * UML saves and restores a guest thread's FPU state with
 * ptrace(PTRACE_GETREGSET/PTRACE_SETREGSET, pid, NT_X86_XSTATE, {buf, len}), len = UML's
 * HOST_FP_SIZE (2,696 bytes in Debian's 6.1 builds: legacy, AVX and AVX-512). The host
 * kernel truncates a short GETREGSET, but rejects a SETREGSET that is not exactly its full
 * user xstate size with EFAULT (11,008 bytes on this AVX-512/AMX machine: AMX tile state
 * comes on top), and UML panics: "userspace - ptrace set fp regs failed, errno = 14".
 * PMIPLAB_SHIM_DEBUG=1 prints both sizes once.
 *
 * This shim keeps, for every UML register buffer (one per guest thread: regs->fp and
 * aux_fp_regs live in the thread's task struct), a full-size copy of the state last read
 * into it. GETREGSET reads the full state into that copy and hands UML the part it asked
 * for; SETREGSET overlays UML's part on the copy and writes the full copy back, so the
 * registers UML does not know about (AMX) come back unchanged for that thread.
 * The full size is what the host kernel reports for a GETREGSET with a large buffer.
 *
 * Build: gcc -O2 -shared -fPIC -o xstate_shim.so xstate_shim.c -ldl
 * Allocation uses mmap only (UML may call ptrace from signal context).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif
#define PROBE_SIZE (64 * 1024)
#define NBUCKETS 4096

typedef long (*ptrace_fn)(int, pid_t, void *, void *);

struct entry {
	struct entry *next;
	void *key; /* UML's buffer address */
	unsigned char state[];
};

static ptrace_fn real_ptrace;
static size_t full_size; /* host kernel's xstate regset size, 0 until probed */
static struct entry *buckets[NBUCKETS];
static unsigned char probe_buf[PROBE_SIZE];

static size_t bucket_of(void *key)
{
	return ((uintptr_t)key >> 4) * 0x9E3779B97F4A7C15ull >> 52 & (NBUCKETS - 1);
}

static struct entry *lookup(void *key, int *created)
{
	size_t b = bucket_of(key);
	struct entry *e;

	*created = 0;
	for (e = buckets[b]; e; e = e->next)
		if (e->key == key)
			return e;
	e = mmap(NULL, sizeof(*e) + full_size, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (e == MAP_FAILED)
		return NULL;
	e->key = key;
	e->next = buckets[b];
	buckets[b] = e;
	*created = 1;
	return e;
}

static long get_full(pid_t pid, void *buf)
{
	struct iovec iov = { buf, full_size };

	return real_ptrace(PTRACE_GETREGSET, pid, (void *)NT_X86_XSTATE, &iov);
}

static long xstate(int request, pid_t pid, struct iovec *user)
{
	struct entry *e;
	int created;
	long rc;

	if (!full_size) { /* the kernel tells its size when the buffer is large enough */
		struct iovec iov = { probe_buf, PROBE_SIZE };

		rc = real_ptrace(PTRACE_GETREGSET, pid, (void *)NT_X86_XSTATE, &iov);
		if (rc < 0)
			return rc;
		full_size = iov.iov_len;
		if (getenv("PMIPLAB_SHIM_DEBUG")) {
			char msg[96];
			int n = snprintf(msg, sizeof(msg), "xstate shim: UML passes %zu bytes, host wants %zu\n",
					 user->iov_len, full_size);
			(void)!write(2, msg, n);
		}
	}
	if (user->iov_len >= full_size)
		return real_ptrace(request, pid, (void *)NT_X86_XSTATE, user);
	e = lookup(user->iov_base, &created);
	if (!e) {
		errno = ENOMEM;
		return -1;
	}
	if (request == PTRACE_GETREGSET) {
		rc = get_full(pid, e->state);
		if (rc < 0)
			return rc;
		memcpy(user->iov_base, e->state, user->iov_len);
		return rc;
	}
	/* SETREGSET of a buffer never read: the extra state is the process's current one */
	if (created && (rc = get_full(pid, e->state)) < 0)
		return rc;
	memcpy(e->state, user->iov_base, user->iov_len);
	struct iovec iov = { e->state, full_size };
	return real_ptrace(PTRACE_SETREGSET, pid, (void *)NT_X86_XSTATE, &iov);
}

long ptrace(enum __ptrace_request request, ...)
{
	va_list ap;
	pid_t pid;
	void *addr, *data;

	va_start(ap, request);
	pid = va_arg(ap, pid_t);
	addr = va_arg(ap, void *);
	data = va_arg(ap, void *);
	va_end(ap);
	if (!real_ptrace)
		real_ptrace = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
	if ((request == PTRACE_GETREGSET || request == PTRACE_SETREGSET) &&
	    (uintptr_t)addr == NT_X86_XSTATE && data)
		return xstate(request, pid, data);
	return real_ptrace(request, pid, addr, data);
}

/*
 * Two threads keep different AVX-512 state (zmm16-31, opmask k1) across sched_yield();
 * in the one-CPU UML guest each yield switches threads, so the state of each is saved and
 * restored by UML's ptrace (and the xstate shim). Prints the number of corrupted values
 * and of yields during which the other thread ran.
 * Exit 77 when the CPU has no AVX-512F.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

#define ROUNDS 3000

#define SET(n) "vpbroadcastq %%rax, %%zmm" #n "\n\tinc %%rax\n\t"
#define GET(n) "vmovdqu64 %%zmm" #n ", " #n "*64-1024(%[o])\n\t"

static long check(uint64_t v)
{
	uint64_t out[16 * 8] __attribute__((aligned(64)));
	uint64_t k = 0;
	long bad = 0;

	__asm__ volatile(
		"mov %[v], %%rax\n\t"
		SET(16) SET(17) SET(18) SET(19) SET(20) SET(21) SET(22) SET(23)
		SET(24) SET(25) SET(26) SET(27) SET(28) SET(29) SET(30) SET(31)
		"kmovw %k[v], %%k1\n\t"
		"mov $24, %%eax\n\tsyscall\n\t" /* sched_yield */
		GET(16) GET(17) GET(18) GET(19) GET(20) GET(21) GET(22) GET(23)
		GET(24) GET(25) GET(26) GET(27) GET(28) GET(29) GET(30) GET(31)
		"kmovw %%k1, %k[k]\n\t"
		: [k] "+r"(k)
		: [v] "r"(v), [o] "r"(out)
		: "rax", "rcx", "r11", "memory");
	for (int r = 0; r < 16; r++)
		for (int j = 0; j < 8; j++)
			bad += out[r * 8 + j] != v + r;
	bad += (k & 0xffff) != (v & 0xffff);
	return bad;
}

static pthread_barrier_t start;
static volatile uint64_t progress[2];
static long switches[2]; /* yields during which the other thread ran */

static void *worker(void *arg)
{
	int me = (int)(uintptr_t)arg;
	uint64_t base = 0x1000000 * (me + 1);
	long bad = 0;

	pthread_barrier_wait(&start);
	for (uint64_t i = 0; i < ROUNDS; i++) {
		uint64_t other = progress[!me];

		bad += check(base + i * 32);
		switches[me] += progress[!me] != other;
		progress[me] = i + 1;
	}
	return (void *)bad;
}

int main(void)
{
	pthread_t t[2];
	void *bad[2];

	if (!__builtin_cpu_supports("avx512f"))
		return 77;
	pthread_barrier_init(&start, NULL, 2);
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)i);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], &bad[i]);
	printf("corrupted %ld %ld of %d, switches %ld %ld\n", (long)bad[0], (long)bad[1],
	       ROUNDS * (16 * 8 + 1), switches[0], switches[1]);
	return bad[0] || bad[1];
}

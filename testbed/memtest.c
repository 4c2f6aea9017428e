/* SPDX-License-Identifier: MIT */
/*
 * memtest: the guest's memory workload writer/verifier for scripts/testbed.
 *
 *   memtest MIB [SYSCALL [PAUSE_MS]]
 *
 * Fills MIB MiB of anonymous memory, every 4 KiB page with a pattern that
 * encodes its index and a per-page generation, then loops forever: each
 * pass checks EVERY page (all 512 words) against its expected pattern and
 * rewrites a rotating quarter of them with the next generation (so the
 * guest keeps dirtying memory, as a running workload does).  One line per
 * pass on stdout:
 *
 *   MEMTEST pass N ok=1 pages=P bad=B rewritten=R secs=S maxgap_ms=G
 *
 * maxgap_ms is the longest time between two consecutive page checks in
 * the pass (CLOCK_REALTIME; a migration's stall shows up there).  A bad
 * page prints "MEMTEST BAD page=I word=J want=... got=..." (first 8 only).
 *
 * With SYSCALL=1 every pass also allocates fresh buffers and makes system
 * calls on them (write to a pipe, read back, getrandom, uname), so Xen
 * itself copies to and from guest pages that may still be owed after a
 * post-copy switch.  "MEMTEST syscalls N ok" per pass.  PAUSE_MS (200)
 * is the sleep between passes.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define WORDS (PAGE / 8)

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static inline uint64_t pat(uint64_t page, uint64_t gen, uint64_t w)
{
	uint64_t x = (page + 1) * 0x9E3779B97F4A7C15ULL ^ (gen << 40) ^ (w * 0xBF58476D1CE4E5B9ULL);
	return x ^ (x >> 31);
}

static void fill(uint64_t *p, uint64_t page, uint64_t gen)
{
	for (uint64_t w = 0; w < WORDS; w++)
		p[w] = pat(page, gen, w);
}

static int syscalls(unsigned long pass)
{
	size_t n = 256 * 1024;
	char *a = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *b = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int fd[2], ok = 1;
	struct utsname u;
	if (a == MAP_FAILED || b == MAP_FAILED || pipe(fd))
		return 0;
	for (size_t off = 0; off < n; off += 4096) {
		if (getrandom(a + off, 4096, 0) != 4096)
			ok = 0;
		if (write(fd[1], a + off, 4096) != 4096 || read(fd[0], b + off, 4096) != 4096)
			ok = 0;
	}
	if (memcmp(a, b, n) || uname(&u))
		ok = 0;
	close(fd[0]);
	close(fd[1]);
	munmap(a, n);
	munmap(b, n);
	printf("MEMTEST syscalls %lu ok=%d\n", pass, ok);
	return ok;
}

int main(int argc, char **argv)
{
	uint64_t mib = argc > 1 ? strtoull(argv[1], NULL, 0) : 64;
	int sys = argc > 2 && atoi(argv[2]);
	int pause_ms = argc > 3 ? atoi(argv[3]) : 200;
	uint64_t pages = mib * 256;
	uint64_t *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	uint8_t *gen = calloc(pages, 1);
	if (mem == MAP_FAILED || !gen) {
		printf("MEMTEST alloc failed\n");
		return 1;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	double t0 = now();
	for (uint64_t i = 0; i < pages; i++)
		fill(mem + i * WORDS, i, 0);
	printf("MEMTEST filled pages=%llu secs=%.2f\n", (unsigned long long)pages, now() - t0);
	unsigned long totalbad = 0;
	for (unsigned long pass = 1;; pass++) {
		double s = now(), last = s, maxgap = 0;
		uint64_t bad = 0, rew = 0;
		for (uint64_t i = 0; i < pages; i++) {
			uint64_t *p = mem + i * WORDS;
			for (uint64_t w = 0; w < WORDS; w++) {
				uint64_t want = pat(i, gen[i], w);
				if (p[w] != want) {
					if (totalbad + bad < 8)
						printf("MEMTEST BAD page=%llu word=%llu want=%016llx got=%016llx\n",
						       (unsigned long long)i, (unsigned long long)w,
						       (unsigned long long)want, (unsigned long long)p[w]);
					bad++;
					break;
				}
			}
			if ((i & 3) == (pass & 3)) {
				gen[i]++;
				fill(p, i, gen[i]);
				rew++;
			}
			if ((i & 63) == 0) {
				double t = now();
				if (t - last > maxgap)
					maxgap = t - last;
				last = t;
			}
		}
		totalbad += bad;
		printf("MEMTEST pass %lu ok=%d pages=%llu bad=%llu rewritten=%llu secs=%.2f maxgap_ms=%.0f\n",
		       pass, bad == 0, (unsigned long long)pages, (unsigned long long)bad,
		       (unsigned long long)rew, now() - s, maxgap * 1000);
		if (sys)
			syscalls(pass);
		usleep(pause_ms * 1000);
	}
}

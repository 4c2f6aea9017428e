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
 *
 *   memtest MIB 0 0 RATE_MIBPS
 *
 * The seed's stress writer (Hines & Gopalan's dirtying test): the working
 * set of MIB MiB is dirtied at RATE_MIBPS MiB/s (pages spread over the set
 * by a fixed stride), one word per page (word 0 carries the page's
 * generation, words 1..511 its index: one write dirties the page for
 * log-dirty as a full rewrite would), paced in 10 ms slices; whatever time
 * a slice leaves is spent verifying whole pages (all 512 words), so every
 * page is checked once per "MEMTEST pass" line (at most one pass every
 * VERIFY_SECS) (same format as above;
 * rewritten = pages dirtied during the pass, maxgap_ms = the longest gap
 * between two slices).  Each dirtying also checks the page's word 0 first.
 * Once a second, the work rate for the degradation figures:
 *
 *   MEMTEST rate t=EPOCH secs=S dirtied=N
 *
 * (N pages dirtied in the S seconds ending at EPOCH, CLOCK_REALTIME; when
 * the guest is stopped or waits on absent pages, S grows and N falls
 * behind RATE_MIBPS * 256 * S.)
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
#define VERIFY_SECS 2.0

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

static void bad_word(uint64_t page, uint64_t w, uint64_t want, uint64_t got, unsigned long *nbad)
{
	if ((*nbad)++ < 8)
		printf("MEMTEST BAD page=%llu word=%llu want=%016llx got=%016llx\n",
		       (unsigned long long)page, (unsigned long long)w, (unsigned long long)want,
		       (unsigned long long)got);
}

/* The dirtying writer (see the header): never returns. */
static int dirty_loop(uint64_t *mem, uint8_t *gen, uint64_t pages, double mibps)
{
	const double slice = 0.010;
	double per_sec = mibps * 256, owed = 0, prev;
	/* an odd stride coprime with the page count spreads the writes */
	uint64_t stride = pages > 7 ? (pages / 7) | 1 : 1, d = 0, v = 0, rew = 0, pass_bad = 0;
	unsigned long nbad = 0, pass = 1;
	uint64_t dirtied_sec = 0;
	double t = now(), pass_start = t, sec_start = t, last = t, maxgap = 0;

	prev = t;

	while (stride > 1 && pages % stride == 0)
		stride += 2;
	for (;;) {
		double s = now(), end = s + slice;

		if (s - last > maxgap)
			maxgap = s - last;
		last = s;
		/* the pages due since the last slice; time the guest could not
		 * run (stopped, waiting on a page) is not made up for */
		owed += (s - prev) * per_sec;
		if (owed > 2 * slice * per_sec)
			owed = 2 * slice * per_sec;
		prev = s;
		/* dirty: check word 0, write the next generation */
		while (owed >= 1) {
			uint64_t *p = mem + d * WORDS, want = pat(d, gen[d], 0);
			unsigned long b = nbad;

			if (p[0] != want)
				bad_word(d, 0, want, p[0], &nbad);
			pass_bad += nbad - b;
			gen[d]++;
			p[0] = pat(d, gen[d], 0);
			d = (d + stride) % pages;
			owed -= 1;
			rew++;
			dirtied_sec++;
			/* behind by more than a slice (stopped, faulting): the
			 * rate is what the guest managed, not a backlog */
			if ((rew & 255) == 0 && now() > end + slice) {
				owed = 0;
				break;
			}
		}
		/* verify whole pages with the rest of the slice, at most a
		 * pass every VERIFY_SECS, then wait for the slice's end */
		uint64_t vquota = (uint64_t)(pages * slice / VERIFY_SECS) + 1;
		do {
			uint64_t *p = mem + v * WORDS;
			unsigned long b = nbad;

			for (uint64_t w = 0; w < WORDS; w++) {
				uint64_t want = pat(v, w ? 0 : gen[v], w);
				if (p[w] != want) {
					bad_word(v, w, want, p[w], &nbad);
					break;
				}
			}
			pass_bad += nbad - b;
			if (++v == pages) {
				double e = now();
				printf("MEMTEST pass %lu ok=%d pages=%llu bad=%llu rewritten=%llu secs=%.2f maxgap_ms=%.0f\n",
				       pass, pass_bad == 0, (unsigned long long)pages,
				       (unsigned long long)pass_bad, (unsigned long long)rew,
				       e - pass_start, maxgap * 1000);
				pass++;
				v = 0;
				rew = 0;
				pass_bad = 0;
				maxgap = 0;
				pass_start = e;
			}
		} while (--vquota && now() < end);
		/* spin to the slice's end: a sleep per slice means a timer
		 * interrupt and an idle exit every 10 ms, which the emulated
		 * host's nested SVM survives worst (docs/issue-21-triple-fault.md) */
		while ((t = now()) < end)
			;
		if (t - sec_start >= 1.0) {
			printf("MEMTEST rate t=%.3f secs=%.3f dirtied=%llu\n", t, t - sec_start,
			       (unsigned long long)dirtied_sec);
			dirtied_sec = 0;
			sec_start = t;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	uint64_t mib = argc > 1 ? strtoull(argv[1], NULL, 0) : 64;
	int sys = argc > 2 && atoi(argv[2]);
	int pause_ms = argc > 3 ? atoi(argv[3]) : 200;
	double rate = argc > 4 ? atof(argv[4]) : 0;
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
	if (rate > 0)
		return dirty_loop(mem, gen, pages, rate);
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

/* SPDX-License-Identifier: MIT */
/*
 * iotest: the two-host scenarios' disk and network verifiers
 * (scripts/testbed twohost*).
 *
 *   iotest disk DEV MIB [POOL_MIB]
 *
 * In the guest, on its PV disk: MIB MiB in 64 KiB blocks, written with
 * O_DIRECT (past every cache), each block a pattern of its index and a
 * per-block generation; then for ever: rewrite a rotating quarter of the
 * blocks with the next generation, fdatasync, and read EVERY block back
 * and check it.  One line per pass:
 *
 *   DISK pass N ok=1 blocks=B bad=0 errors=0 written=W secs=S maxgap_ms=G
 *
 * (G: the longest single read or write).  A bad block prints "DISK BAD
 * block=I want_gen=.. got=..", an I/O error "DISK ERROR op=.. block=..
 * errno=.." (both make the pass ok=0).
 *
 * With POOL_MIB (> 0), the reads go into a rotating pool of POOL_MIB MiB
 * of 64 KiB buffers, filled with a poison word once at the start, and a
 * buffer is read by the CPU only after the disk has written into it.  After
 * a post-copy switch most of the pool is still on the source, so blkback
 * writes into pages that have not arrived (grant copy or map of a
 * paged-out frame, GNTST_eagain): the dom0 backend's faults the scenario
 * counts by origin.  A buffer the backend left unwritten still holds the
 * poison or an older block and fails the check.
 *
 *   iotest net-client IP PORT [PAUSE_MS [FILE_MIB]]
 *
 * In the guest: a TCP stream to an `iotest net-server` on another host.
 * Each round sends 64 KiB of data generated from the round number and
 * reads the echo back, byte for byte the same; the server checks what it
 * received too.  One line a second:
 *
 *   NET pass N ok=1 rounds=R bytes=B errors=E bad=0 maxgap_ms=G
 *
 * (G: the longest round trip; PAUSE_MS, 20, between rounds: the
 * emulated hosts' CPUs are shared with the rest of the scenario).  A
 * connection error or a 60 s silence is an error ("NET ERROR ..."), the
 * client reconnects; a wrong byte is "NET BAD ..." (ok=0).
 *
 * With FILE_MIB (> 0), the rounds' data comes from a memfd of FILE_MIB MiB
 * written once at the start, one 64 KiB block per round in rotation, and
 * goes out with sendfile(): the kernel hands the file's own pages to the
 * NIC, and xen-netfront grants them to netback without the guest's CPU
 * reading them again.  After a post-copy switch most of the file is still
 * on the source, so netback's grant copy or map of the guest's transmit
 * pages meets frames that have not arrived (GNTST_eagain; in Linux's
 * netback that happens in NAPI context).  The server checks the data as
 * for any round; the echo is checked against the generator, never by
 * reading the file.
 *
 *   iotest net-server PORT
 *
 * In a dom0: accepts clients (one process each), checks every round's
 * data against the generator and echoes it back; "NETSRV conn=C
 * rounds=R bad=B" every 100 rounds and at the connection's end.  A
 * connection silent for 300 s mid-round or between rounds is closed
 * ("NETSRV conn=C end ... errno=11").
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BLOCK (64 * 1024)
#define ROUND (64 * 1024)
#define MAGIC 0x78706f73u /* "xpos" */

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_REALTIME, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

/* splitmix64: the data of (stream, index, word) */
static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static void fill(uint64_t *w, size_t n, uint64_t a, uint64_t b)
{
	for (size_t i = 0; i < n; i++)
		w[i] = mix((a << 40) ^ (b << 20) ^ i);
}

/* the first word that differs, or -1 */
static long check(const uint64_t *w, size_t n, uint64_t a, uint64_t b)
{
	for (size_t i = 0; i < n; i++)
		if (w[i] != mix((a << 40) ^ (b << 20) ^ i))
			return (long)i;
	return -1;
}

/* ------------------------------------------------------------------ disk */

static int disk_io(int fd, int wr, void *buf, long blk, double *maxgap)
{
	double t = now();
	ssize_t n = wr ? pwrite(fd, buf, BLOCK, blk * BLOCK) : pread(fd, buf, BLOCK, blk * BLOCK);
	double g = (now() - t) * 1000;
	if (g > *maxgap)
		*maxgap = g;
	if (n == BLOCK)
		return 0;
	printf("DISK ERROR op=%s block=%ld ret=%zd errno=%d (%s)\n", wr ? "write" : "read", blk, n, errno,
	       n < 0 ? strerror(errno) : "short");
	fflush(stdout);
	return -1;
}

static int disk(const char *dev, long mib, long pool_mib)
{
	long nb = mib * 1024 * 1024 / BLOCK, next = 0, pass = 0;
	long np = pool_mib * 1024 * 1024 / BLOCK, slot = 0;
	uint64_t *gen = calloc(nb, sizeof(*gen));
	char *pool = NULL;
	void *buf;
	int fd = -1;
	if (!gen || posix_memalign(&buf, 4096, BLOCK))
		return 1;
	if (np > 0) {
		if (posix_memalign((void **)&pool, 4096, (size_t)np * BLOCK))
			return 1;
		/* every page populated (so owed after a switch), none zero */
		for (size_t i = 0; i < (size_t)np * BLOCK / 8; i++)
			((uint64_t *)pool)[i] = 0xdeadbeefdeadbeefull;
	}
	for (int t = 0; t < 60 && fd < 0; t++) {
		fd = open(dev, O_RDWR | O_DIRECT);
		if (fd < 0)
			sleep(1);
	}
	if (fd < 0) {
		printf("DISK ERROR op=open dev=%s errno=%d (%s)\n", dev, errno, strerror(errno));
		fflush(stdout);
		return 1;
	}
	printf("DISK ready dev=%s mib=%ld blocks=%ld pool_buffers=%ld\n", dev, mib, nb, np);
	fflush(stdout);
	for (;;) {
		double t0 = now(), maxgap = 0;
		long bad = 0, errors = 0, written = 0;
		/* the first pass writes every block, the others a quarter */
		long nw = pass == 0 ? nb : (nb + 3) / 4;
		for (long k = 0; k < nw; k++, next = (next + 1) % nb) {
			gen[next]++;
			fill(buf, BLOCK / 8, gen[next], (uint64_t)next);
			if (disk_io(fd, 1, buf, next, &maxgap))
				errors++;
			else
				written++;
		}
		if (fdatasync(fd)) {
			printf("DISK ERROR op=fdatasync errno=%d (%s)\n", errno, strerror(errno));
			errors++;
		}
		for (long b = 0; b < nb; b++) {
			/* the pool's next buffer, untouched since its last check */
			void *rb = np > 0 ? pool + (size_t)slot * BLOCK : buf;
			if (np > 0)
				slot = (slot + 1) % np;
			if (disk_io(fd, 0, rb, b, &maxgap)) {
				errors++;
				continue;
			}
			long w = check(rb, BLOCK / 8, gen[b], (uint64_t)b);
			if (w >= 0) {
				if (bad < 8)
					printf("DISK BAD block=%ld word=%ld want_gen=%llu got=%016llx\n", b, w,
					       (unsigned long long)gen[b],
					       (unsigned long long)((uint64_t *)rb)[w]);
				bad++;
			}
		}
		pass++;
		printf("DISK pass %ld ok=%d blocks=%ld bad=%ld errors=%ld written=%ld secs=%.1f maxgap_ms=%.0f\n",
		       pass, bad == 0 && errors == 0, nb, bad, errors, written, now() - t0, maxgap);
		fflush(stdout);
		usleep(200 * 1000);
	}
}

/* ------------------------------------------------------------------- net */

struct hdr {
	uint32_t magic, len;
	uint64_t seq;
};

static int full(int fd, void *p, size_t n, int wr)
{
	char *c = p;
	while (n) {
		ssize_t k = wr ? send(fd, c, n, MSG_NOSIGNAL) : recv(fd, c, n, 0);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k == 0 ? -2 : -1;
		c += k;
		n -= (size_t)k;
	}
	return 0;
}

static int dial(const char *ip, int port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	struct timeval tv = {.tv_sec = 60};
	int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || inet_pton(AF_INET, ip, &a.sin_addr) != 1)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&a, sizeof(a))) {
		close(fd);
		return -1;
	}
	return fd;
}

/* the seq of file block b: its own range, never a plain round's */
#define FILE_SEQ(stream, b) (((stream) << 32) ^ (1ull << 31) ^ (uint64_t)(b))

/* A memfd of nb blocks, block b the data of FILE_SEQ(stream, b). */
static int net_file(long nb, uint64_t stream, uint64_t *scratch)
{
	int f = memfd_create("iotest-net", 0);
	if (f < 0)
		return -1;
	for (long b = 0; b < nb; b++) {
		fill(scratch, ROUND / 8, FILE_SEQ(stream, b), 7);
		if (pwrite(f, scratch, ROUND, (off_t)b * ROUND) != ROUND) {
			close(f);
			return -1;
		}
	}
	return f;
}

/* sendfile() all of block b of f to the socket */
static int send_block(int fd, int f, long b)
{
	off_t off = (off_t)b * ROUND, end = off + ROUND;
	while (off < end) {
		ssize_t k = sendfile(fd, f, &off, (size_t)(end - off));
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k == 0 ? -2 : -1;
	}
	return 0;
}

static int net_client(const char *ip, int port, int pause_ms, long file_mib)
{
	uint64_t *out = malloc(ROUND), *in = malloc(ROUND), seq = 0, bytes = 0, rounds = 0;
	long errors = 0, bad = 0, pass = 0, nb = file_mib * 1024 * 1024 / ROUND;
	int fd = -1, f = -1;
	double tick = now(), maxgap = 0;
	if (!out || !in)
		return 1;
	/* each run its own data stream: a reconnecting client after a reboot
	 * is not mistaken for the old one */
	uint64_t stream = (uint64_t)getpid() ^ ((uint64_t)time(NULL) << 16);
	if (nb > 0) {
		f = net_file(nb, stream, out);
		if (f < 0) {
			printf("NET ERROR file mib=%ld errno=%d (%s)\n", file_mib, errno, strerror(errno));
			return 1;
		}
		printf("NET file ready mib=%ld blocks=%ld (rounds sent with sendfile)\n", file_mib, nb);
		fflush(stdout);
	}
	for (;;) {
		if (fd < 0) {
			fd = dial(ip, port);
			if (fd < 0) {
				/* before the first round: the link or the server
				 * is not up yet, not an error */
				printf("NET %s connect %s:%d errno=%d (%s)\n", rounds ? "ERROR" : "waiting", ip, port,
				       errno, strerror(errno));
				fflush(stdout);
				errors += rounds > 0;
				sleep(1);
				continue;
			}
		}
		seq++;
		struct hdr h = {.magic = MAGIC, .len = ROUND, .seq = (stream << 32) ^ seq};
		long b = nb > 0 ? (long)((seq - 1) % (uint64_t)nb) : -1;
		if (b >= 0)
			h.seq = FILE_SEQ(stream, b);
		else
			fill(out, ROUND / 8, h.seq, 7);
		double t = now();
		int rc = full(fd, &h, sizeof(h), 1);
		if (!rc)
			rc = b >= 0 ? send_block(fd, f, b) : full(fd, out, ROUND, 1);
		struct hdr r;
		if (!rc)
			rc = full(fd, &r, sizeof(r), 0);
		if (!rc && (r.magic != MAGIC || r.len != ROUND || r.seq != h.seq)) {
			printf("NET BAD header seq=%llu got_seq=%llu len=%u\n", (unsigned long long)h.seq,
			       (unsigned long long)r.seq, r.len);
			bad++;
			rc = -3;
		}
		if (!rc)
			rc = full(fd, in, ROUND, 0);
		if (rc) {
			if (rc != -3) {
				printf("NET ERROR round seq=%llu rc=%d errno=%d (%s)\n", (unsigned long long)seq, rc,
				       errno, strerror(errno));
				errors++;
			}
			fflush(stdout);
			close(fd);
			fd = -1;
			sleep(1);
			continue;
		}
		double g = (now() - t) * 1000;
		if (g > maxgap)
			maxgap = g;
		long w = check(in, ROUND / 8, h.seq, 7);
		if (w >= 0) {
			printf("NET BAD data seq=%llu word=%ld\n", (unsigned long long)seq, w);
			bad++;
		}
		rounds++;
		bytes += 2 * ROUND;
		if (now() - tick >= 1.0) {
			pass++;
			printf("NET pass %ld ok=%d rounds=%llu bytes=%llu errors=%ld bad=%ld maxgap_ms=%.0f\n", pass,
			       bad == 0 && errors == 0, (unsigned long long)rounds, (unsigned long long)bytes, errors,
			       bad, maxgap);
			fflush(stdout);
			tick = now();
			maxgap = 0;
		}
		if (pause_ms > 0)
			usleep(pause_ms * 1000);
	}
}

static void serve(int fd, int conn)
{
	uint64_t *buf = malloc(ROUND);
	long rounds = 0, bad = 0;
	/* longer than a guest can stall across a post-copy switch on the
	 * emulated hosts (102 s seen, twohost-netfault): the server's own
	 * timeout must not be what fails the net check; the guest's stalls
	 * are measured and bounded on their own (HEARTBEAT) */
	struct timeval tv = {.tv_sec = 300};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	for (; buf;) {
		struct hdr h;
		int rc = full(fd, &h, sizeof(h), 0);
		if (rc || h.magic != MAGIC || h.len != ROUND) {
			printf("NETSRV conn=%d end rounds=%ld bad=%ld rc=%d errno=%d magic_ok=%d\n", conn, rounds, bad,
			       rc, rc ? errno : 0, rc ? -1 : h.magic == MAGIC);
			break;
		}
		if (full(fd, buf, ROUND, 0)) {
			printf("NETSRV conn=%d end mid-round rounds=%ld bad=%ld errno=%d\n", conn, rounds, bad, errno);
			break;
		}
		if (check(buf, ROUND / 8, h.seq, 7) >= 0) {
			bad++;
			printf("NETSRV conn=%d BAD seq=%llu\n", conn, (unsigned long long)h.seq);
		}
		rounds++;
		if (full(fd, &h, sizeof(h), 1) || full(fd, buf, ROUND, 1)) {
			printf("NETSRV conn=%d end on send rounds=%ld bad=%ld errno=%d\n", conn, rounds, bad, errno);
			break;
		}
		if (rounds % 100 == 0)
			printf("NETSRV conn=%d rounds=%ld bad=%ld t=%.3f\n", conn, rounds, bad, now());
		fflush(stdout);
	}
	fflush(stdout);
	close(fd);
}

static int net_server(int port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	int one = 1, conn = 0, s = socket(AF_INET, SOCK_STREAM, 0);
	signal(SIGCHLD, SIG_IGN);
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 8)) {
		perror("NETSRV bind");
		return 1;
	}
	printf("NETSRV listening port=%d\n", port);
	fflush(stdout);
	for (;;) {
		struct sockaddr_in p;
		socklen_t pl = sizeof(p);
		int c = accept(s, (struct sockaddr *)&p, &pl);
		if (c < 0)
			continue;
		conn++;
		printf("NETSRV conn=%d from %s t=%.3f\n", conn, inet_ntoa(p.sin_addr), now());
		fflush(stdout);
		if (fork() == 0) {
			close(s);
			serve(c, conn);
			_exit(0);
		}
		close(c);
	}
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if ((argc == 4 || argc == 5) && !strcmp(argv[1], "disk"))
		return disk(argv[2], atol(argv[3]), argc == 5 ? atol(argv[4]) : 0);
	if (argc >= 4 && argc <= 6 && !strcmp(argv[1], "net-client"))
		return net_client(argv[2], atoi(argv[3]), argc >= 5 ? atoi(argv[4]) : 20,
				  argc == 6 ? atol(argv[5]) : 0);
	if (argc == 3 && !strcmp(argv[1], "net-server"))
		return net_server(atoi(argv[2]));
	fprintf(stderr, "usage: iotest disk DEV MIB [POOL_MIB] | net-client IP PORT [PAUSE_MS [FILE_MIB]] | net-server PORT\n");
	return 2;
}

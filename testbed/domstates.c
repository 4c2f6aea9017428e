/* SPDX-License-Identifier: MIT */
/*
 * domstates: dom0's independent clock on the guests' paused time, for
 * scripts/testbed (built on the host against libxenctrl, run in dom0).
 *
 *   domstates [PERIOD_MS]
 *
 * Samples every domain but dom0 with xc_domain_getinfolist() every
 * PERIOD_MS (5) and prints a line on stdout whenever a domain appears,
 * changes its paused/shutdown/dying state, or disappears:
 *
 *   T dom=ID paused=0|1 shutdown=none|poweroff|reboot|suspend|crash|watchdog|soft_reset dying=0|1
 *   T dom=ID gone
 *
 * T is CLOCK_REALTIME in seconds (dom0's clock, the same for every domain).
 * A sample that comes more than 50 ms late (dom0 busy) is reported as
 * "T lag_ms=N" so that the accuracy of the transitions around it is known.
 * The migration's paused time is then: from the source domain's first
 * paused=1 or shutdown=suspend to the destination domain's first paused=0.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xenctrl.h>

#define MAXDOM 256

struct seen {
	unsigned int domid;
	unsigned int key;
};

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static const char *reason(unsigned int flags)
{
	static const char *const names[] = { "poweroff", "reboot", "suspend", "crash",
					     "watchdog", "soft_reset" };
	unsigned int r = (flags >> XEN_DOMINF_shutdownshift) & XEN_DOMINF_shutdownmask;

	if (!(flags & XEN_DOMINF_shutdown))
		return "none";
	return r < sizeof(names) / sizeof(names[0]) ? names[r] : "other";
}

/* The bits that make a transition (not running/blocked: they flip all the time). */
static unsigned int key(unsigned int flags)
{
	unsigned int k = flags & (XEN_DOMINF_paused | XEN_DOMINF_shutdown | XEN_DOMINF_dying);

	if (flags & XEN_DOMINF_shutdown)
		k |= flags & (XEN_DOMINF_shutdownmask << XEN_DOMINF_shutdownshift);
	return k;
}

/* Was DOMID in the previous sample (PREV, N entries)?  Its index or -1. */
static int find(const struct seen *prev, int n, unsigned int domid)
{
	for (int i = 0; i < n; i++)
		if (prev[i].domid == domid)
			return i;
	return -1;
}

int main(int argc, char **argv)
{
	long period_ms = argc > 1 ? atol(argv[1]) : 5;
	struct timespec p = { .tv_sec = 0, .tv_nsec = period_ms * 1000000L };
	static xc_domaininfo_t info[MAXDOM];
	static struct seen a[MAXDOM], b[MAXDOM];
	struct seen *prev = a, *cur = b, *tmp;
	int nprev = 0;
	xc_interface *xch;
	double last;

	if (period_ms <= 0 || period_ms >= 1000) {
		fprintf(stderr, "domstates: PERIOD_MS must be 1..999\n");
		return 2;
	}
	xch = xc_interface_open(NULL, NULL, 0);
	if (!xch) {
		fprintf(stderr, "domstates: xc_interface_open: %s\n", strerror(errno));
		return 1;
	}
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("%.3f start period_ms=%ld\n", now(), period_ms);
	last = now();
	while (!stop) {
		int n = xc_domain_getinfolist(xch, 1, MAXDOM, info);
		double t = now();

		if (n < 0) {
			printf("%.3f getinfolist failed: %s\n", t, strerror(errno));
			break;
		}
		if (t - last > 0.050)
			printf("%.3f lag_ms=%.0f\n", t, (t - last) * 1000);
		last = t;
		for (int i = 0; i < n; i++) {
			unsigned int d = info[i].domain, f = info[i].flags;
			int j = find(prev, nprev, d);

			cur[i].domid = d;
			cur[i].key = key(f);
			if (j >= 0 && prev[j].key == cur[i].key)
				continue;
			printf("%.3f dom=%u paused=%d shutdown=%s dying=%d\n", t, d,
			       !!(f & XEN_DOMINF_paused), reason(f), !!(f & XEN_DOMINF_dying));
		}
		for (int j = 0; j < nprev; j++) {
			int i;

			for (i = 0; i < n && cur[i].domid != prev[j].domid; i++)
				;
			if (i == n)
				printf("%.3f dom=%u gone\n", t, prev[j].domid);
		}
		tmp = prev;
		prev = cur;
		cur = tmp;
		nprev = n;
		nanosleep(&p, NULL);
	}
	printf("%.3f stop\n", now());
	xc_interface_close(xch);
	return 0;
}

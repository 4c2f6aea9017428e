/* SPDX-License-Identifier: MIT */
/*
 * heartbeat: the guest's stall probe for scripts/testbed.
 *
 *   heartbeat [PERIOD_MS [REPORT_MS]]
 *
 * Runs at the highest SCHED_FIFO priority (so the guest's other work never
 * delays it), wakes every PERIOD_MS (10) and measures the time between two
 * wake-ups on CLOCK_REALTIME (which moves on while the domain is paused and
 * while its kernel resumes).  Every REPORT_MS (1000) one line:
 *
 *   HEARTBEAT n=N maxgap_ms=G
 *
 * G is the longest gap in that window: a migration's stall (suspend,
 * paused time, resume, the pages the guest waited for) shows up in the
 * first line printed after the guest runs again.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	long period_ms = argc > 1 ? atol(argv[1]) : 10;
	long report_ms = argc > 2 ? atol(argv[2]) : 1000;
	struct sched_param sp = { .sched_priority = sched_get_priority_max(SCHED_FIFO) };
	struct timespec p = { .tv_sec = period_ms / 1000, .tv_nsec = (period_ms % 1000) * 1000000L };
	double last, start, maxgap = 0;
	unsigned long n = 0;

	if (period_ms <= 0 || report_ms < period_ms)
		return 2;
	if (sched_setscheduler(0, SCHED_FIFO, &sp))
		printf("HEARTBEAT no SCHED_FIFO (running at normal priority)\n");
	setvbuf(stdout, NULL, _IOLBF, 0);
	last = start = now();
	for (;;) {
		double t;

		nanosleep(&p, NULL);
		t = now();
		if (t - last > maxgap)
			maxgap = t - last;
		last = t;
		if ((t - start) * 1000 >= report_ms) {
			printf("HEARTBEAT n=%lu maxgap_ms=%.0f\n", ++n, maxgap * 1000);
			maxgap = 0;
			start = t;
		}
	}
}

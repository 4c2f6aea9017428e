// SPDX-License-Identifier: GPL-2.0
/*
 * Prints the self-ballooning target over time for a scripted
 * guest: a 4 GiB domain that idles, then needs 2 GiB at once, gives it back,
 * and sees a burst of direct reclaim while the balloon inflates again.
 *
 * The guest model, one step per second:
 *   - the balloon driver reaches every target at once (current == target),
 *     and pages it takes or gives come out of or go into the free count;
 *   - 64 MiB of the domain are never in totalram (kernel image, memblock);
 *   - free = totalram - used, avail = free, committed = used + 128 MiB;
 *   - when the workload needs more than free - 16 MiB (the watermark),
 *     reclaim runs and calls the shrinker with the shortfall, rounded up to
 *     batches of 128 pages as shrink_slab() asks;
 *   - the module's tick runs every d.delay_ms (5 s).
 *
 * Uses the module's defaults: free_pct 95, min_mb 128, reserve_mb 64,
 * max_step_mb 256, holdoff_ms 20000, interval_ms 5000.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "../dsb_policy.h"

#define SHIFT		12
#define MB(x)		((u64)(x) << (20 - SHIFT))
#define TO_MB(p)	((p) >> (20 - SHIFT))
#define OVERHEAD	MB(64)
#define WATERMARK	MB(16)
#define BATCH		128
#define ARRAY_SIZE(a)	(sizeof(a) / sizeof((a)[0]))

struct event {
	u64 t_s;
	u64 used_mb;		/* new workload size; 0: unchanged */
	int vmstat;		/* 1: direct reclaim seen this second */
	const char *what;
};

static const struct event script[] = {
	{ 0, 400, 0, "boot: 400 MiB in use" },
	{ 60, 2400, 0, "job starts: +2 GiB at once" },
	{ 90, 500, 0, "job ends: back to 500 MiB" },
	{ 102, 0, 1, "direct reclaim burst (vmstat)" },
};

int main(void)
{
	struct dsb_config cfg = {
		.interval_ms = 5000,
		.free_pct = 95,
		.min_pages = MB(128),
		.reserve_pages = MB(64),
		.max_step_pages = MB(256),
		.holdoff_ms = 20000,
		.hysteresis_pages = MB(1),
		.enabled = true,
	};
	struct dsb_state s;
	struct dsb_decision d;
	struct dsb_sample smp;
	u64 current = MB(4096), used = 0, next_tick_ms = 5000;
	u64 t, i, ev;
	const char *note;

	dsb_state_init(&s, current);
	printf("%5s %9s %8s %8s %9s %8s %8s  %s\n", "t(s)", "target", "used",
	       "free", "floor", "95%rule", "action", "event");

	for (t = 0; t <= 160; t++) {
		u64 now_ms = t * 1000;
		u64 totalram, free, need, up, rule;

		note = "";
		ev = 0;
		for (i = 0; i < ARRAY_SIZE(script); i++) {
			if (script[i].t_s != t)
				continue;
			if (script[i].used_mb)
				used = MB(script[i].used_mb);
			if (script[i].vmstat)
				dsb_note_pressure(&s, &cfg, now_ms,
						  DSB_SRC_VMSTAT);
			note = script[i].what;
			ev = 1;
		}

		/* reclaim: the shrinker is asked for the shortfall */
		totalram = current - OVERHEAD;
		need = used + WATERMARK;
		if (need > totalram) {
			u64 want = need - totalram;

			want = (want + BATCH - 1) / BATCH * BATCH;
			up = dsb_reclaim(&s, &cfg, now_ms, want,
					 DSB_SRC_SHRINKER);
			current = s.target;
			printf("%5" PRIu64 " %6" PRIu64 " MiB %4" PRIu64
			       " MiB %8s %9s %8s %8s  shrinker asked %" PRIu64
			       " MiB, got %" PRIu64 " MiB; hold-off to %" PRIu64
			       " s\n", t, TO_MB(s.target), TO_MB(used), "", "",
			       "", "deflate", TO_MB(want), TO_MB(up),
			       s.holdoff_until_ms / 1000);
		}

		if (now_ms < next_tick_ms) {
			if (ev)
				printf("%5" PRIu64 " %6" PRIu64 " MiB %4" PRIu64
				       " MiB %8s %9s %8s %8s  %s\n", t,
				       TO_MB(s.target), TO_MB(used), "", "",
				       "", "", note);
			continue;
		}

		totalram = current - OVERHEAD;
		free = totalram > used ? totalram - used : 0;
		smp = (struct dsb_sample) {
			.now_ms = now_ms,
			.free_pages = free,
			.avail_pages = free,
			.committed_pages = used + MB(128),
			.totalram_pages = totalram,
			.current_pages = current,
			.target_pages = s.target,
		};
		rule = dsb_sat_sub(current, dsb_pct_of(free, cfg.free_pct));
		d = dsb_tick(&s, &cfg, &smp);
		current = d.target;
		next_tick_ms = now_ms + d.delay_ms;
		printf("%5" PRIu64 " %6" PRIu64 " MiB %4" PRIu64 " MiB %4"
		       PRIu64 " MiB %5" PRIu64 " MiB %4" PRIu64 " MiB %8s  %s%s\n",
		       t, TO_MB(d.target), TO_MB(used), TO_MB(free),
		       TO_MB(d.floor), TO_MB(rule), dsb_action_name(d.action),
		       d.holdoff ? "(hold-off) " : "", note);
	}
	printf("inflations %" PRIu64 ", deflations %" PRIu64
	       ", returned %" PRIu64 " MiB, reclaimed %" PRIu64
	       " MiB, pressure events %" PRIu64 "\n", s.inflations,
	       s.deflations, TO_MB(s.pages_returned),
	       TO_MB(s.pages_reclaimed), s.pressure_events);
	return 0;
}

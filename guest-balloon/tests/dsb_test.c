// SPDX-License-Identifier: GPL-2.0
/*
 * User-space tests of the self-ballooning policy arithmetic.
 *
 * Builds dsb_policy.c exactly as the module does and drives it with
 * hand-made samples.  Prints one line per failed check and a last line
 * "N passed, M failed"; exits 1 if any check failed.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "../dsb_policy.h"

#define PAGE_SHIFT_4K	12
#define MB(x)		((u64)(x) << (20 - PAGE_SHIFT_4K))

static unsigned int passed, failed;

#define CHECK(cond) check((cond), #cond, __FILE__, __LINE__)
#define CHECK_EQ(a, b) check_eq((a), (b), #a, #b, __FILE__, __LINE__)

static void check(int ok, const char *what, const char *file, int line)
{
	if (ok) {
		passed++;
		return;
	}
	failed++;
	printf("FAIL %s:%d: %s\n", file, line, what);
}

static void check_eq(u64 a, u64 b, const char *sa, const char *sb,
		     const char *file, int line)
{
	if (a == b) {
		passed++;
		return;
	}
	failed++;
	printf("FAIL %s:%d: %s == %s (%" PRIu64 " != %" PRIu64 ")\n",
	       file, line, sa, sb, a, b);
}

/* The module's defaults, in 4 KiB pages. */
static struct dsb_config default_cfg(void)
{
	return (struct dsb_config) {
		.interval_ms = 5000,
		.free_pct = 95,
		.min_pages = MB(128),
		.reserve_pages = MB(64),
		.max_step_pages = MB(256),
		.holdoff_ms = 20000,
		.hysteresis_pages = MB(1),
		.enabled = true,
	};
}

/*
 * A 4 GiB guest whose driver is at its target; 64 MiB of overhead
 * (current - totalram), 400 MiB in use, 512 MiB committed.
 */
static struct dsb_sample guest_4g(u64 now_ms)
{
	struct dsb_sample smp = {
		.now_ms = now_ms,
		.current_pages = MB(4096),
		.target_pages = MB(4096),
		.totalram_pages = MB(4096 - 64),
		.committed_pages = MB(512),
	};

	smp.free_pages = smp.totalram_pages - MB(400);
	smp.avail_pages = smp.free_pages + MB(100);
	return smp;
}

/* The driver reaches @target and the freed pages leave the free count. */
static void driver_reaches(struct dsb_sample *smp, u64 target)
{
	u64 delta;

	if (target < smp->current_pages) {
		delta = smp->current_pages - target;
		smp->free_pages = dsb_sat_sub(smp->free_pages, delta);
		smp->avail_pages = dsb_sat_sub(smp->avail_pages, delta);
		smp->totalram_pages -= delta;
	} else {
		delta = target - smp->current_pages;
		smp->free_pages += delta;
		smp->avail_pages += delta;
		smp->totalram_pages += delta;
	}
	smp->current_pages = target;
	smp->target_pages = target;
}

static void test_helpers(void)
{
	unsigned __int128 ref;

	CHECK_EQ(dsb_mb_to_pages(1, 12), 256);
	CHECK_EQ(dsb_mb_to_pages(1, 16), 16);
	CHECK_EQ(dsb_mb_to_pages(3, 21), 1);
	CHECK_EQ(dsb_mb_to_pages(DSB_U64_MAX, 12), DSB_U64_MAX);
	CHECK_EQ(dsb_mb_to_pages(DSB_MB_MAX, 12), DSB_MB_MAX << 8);
	CHECK_EQ(dsb_pages_to_kb(256, 12), 1024);
	CHECK_EQ(dsb_pages_to_kb(DSB_U64_MAX / 2, 12), DSB_U64_MAX);

	CHECK_EQ(dsb_pct_of(1000, 95), 950);
	CHECK_EQ(dsb_pct_of(999, 95), 949);	/* 949.05 rounds down */
	CHECK_EQ(dsb_pct_of(12345, 0), 0);
	CHECK_EQ(dsb_pct_of(12345, 100), 12345);
	CHECK_EQ(dsb_pct_of(12345, 250), 12345);	/* clamped */
	/* x * 95 overflows u64 here; the split computation must not. */
	ref = (unsigned __int128)DSB_U64_MAX * 95 / 100;
	CHECK_EQ(dsb_pct_of(DSB_U64_MAX, 95), (u64)ref);
	ref = (unsigned __int128)(DSB_U64_MAX - 7) * 33 / 100;
	CHECK_EQ(dsb_pct_of(DSB_U64_MAX - 7, 33), (u64)ref);

	CHECK_EQ(dsb_sat_add(DSB_U64_MAX - 1, 5), DSB_U64_MAX);
	CHECK_EQ(dsb_sat_sub(3, 5), 0);
}

/* One tick takes the target to exactly 95% of free memory returned. */
static void test_inflate_to_95pct(void)
{
	struct dsb_config cfg = default_cfg();
	struct dsb_sample smp = guest_4g(1000);
	struct dsb_state s;
	struct dsb_decision d;
	u64 want;

	cfg.max_step_pages = DSB_U64_MAX;	/* no gradual limit here */
	dsb_state_init(&s, smp.target_pages);
	want = smp.current_pages - dsb_pct_of(smp.free_pages, 95);

	d = dsb_tick(&s, &cfg, &smp);
	CHECK_EQ(d.action, DSB_INFLATE);
	CHECK_EQ(d.goal, want);
	CHECK_EQ(d.target, want);
	CHECK_EQ(s.target, want);
	CHECK_EQ(s.inflations, 1);
	CHECK_EQ(s.pages_returned, MB(4096) - want);
	CHECK_EQ(d.delay_ms, 5000);
	/* 95% of free memory went: 5% of it is left */
	driver_reaches(&smp, d.target);
	CHECK_EQ(smp.free_pages, MB(3632) - dsb_pct_of(MB(3632), 95));

	/* avail smaller than free: avail is what counts */
	smp = guest_4g(1000);
	smp.avail_pages = MB(1000);
	dsb_state_init(&s, smp.target_pages);
	d = dsb_tick(&s, &cfg, &smp);
	/* 95% of 1000 MiB would go, but the rest of RAM is in use */
	CHECK_EQ(d.goal, MB(4032 - 1000 + 64 + 64));
	CHECK_EQ(d.target, d.goal);

	/* free_pct 0: nothing is ever returned */
	cfg.free_pct = 0;
	smp = guest_4g(1000);
	dsb_state_init(&s, smp.target_pages);
	d = dsb_tick(&s, &cfg, &smp);
	CHECK_EQ(d.action, DSB_KEEP);
	CHECK_EQ(s.target, MB(4096));
}

static void test_floor(void)
{
	struct dsb_config cfg = default_cfg();
	struct dsb_sample smp = guest_4g(1000);
	struct dsb_state s, s2;
	struct dsb_decision d;
	u64 floor;

	/* committed + reserve + overhead = 512 + 64 + 64 MiB */
	floor = dsb_floor(&cfg, &smp, MB(4096));
	CHECK_EQ(floor, MB(640));

	/* Almost everything free: the floor stops the inflation. */
	cfg.max_step_pages = DSB_U64_MAX;
	smp.free_pages = MB(4000);
	smp.avail_pages = MB(4000);
	dsb_state_init(&s, smp.target_pages);
	d = dsb_tick(&s, &cfg, &smp);
	CHECK_EQ(d.floor, MB(640));
	CHECK_EQ(d.target, MB(640));

	/*
	 * tmpfs-heavy guest: little committed, little available; what is
	 * in use (totalram - avail) sets the floor, not Committed_AS.
	 */
	smp.free_pages = MB(500);
	smp.avail_pages = MB(500);
	smp.committed_pages = MB(100);
	CHECK_EQ(dsb_floor(&cfg, &smp, MB(4096)), MB(4032 - 500 + 64 + 64));
	dsb_state_init(&s2, smp.target_pages);
	d = dsb_tick(&s2, &cfg, &smp);
	CHECK_EQ(d.target, MB(4032 - 500 + 64 + 64));
	/* so inflation never takes more than avail - reserve */
	CHECK(MB(4096) - d.target <= smp.avail_pages - cfg.reserve_pages);
	smp = guest_4g(1000);
	smp.free_pages = MB(4000);
	smp.avail_pages = MB(4000);

	/* min_mb above committed + reserve wins */
	cfg.min_pages = MB(2048);
	CHECK_EQ(dsb_floor(&cfg, &smp, MB(4096)), MB(2048));
	/* a floor above the ceiling is the ceiling: never deflate past it */
	CHECK_EQ(dsb_floor(&cfg, &smp, MB(1024)), MB(1024));
	cfg.min_pages = 0;

	/* committed grows: the floor follows it, the target deflates */
	smp = guest_4g(6000);
	smp.current_pages = MB(640);
	smp.target_pages = MB(640);
	smp.totalram_pages = MB(640 - 64);
	smp.free_pages = MB(30);
	smp.avail_pages = MB(30);
	smp.committed_pages = MB(1536);
	d = dsb_tick(&s, &cfg, &smp);
	CHECK_EQ(d.action, DSB_DEFLATE);
	CHECK_EQ(d.target, MB(1536 + 64 + 64));
	CHECK_EQ(s.deflations, 1);
	CHECK_EQ(s.pages_reclaimed, MB(1024));
}

/* max_step_pages per tick, never more, until the goal is reached. */
static void test_gradual_steps(void)
{
	struct dsb_config cfg = default_cfg();
	struct dsb_sample smp = guest_4g(0);
	struct dsb_state s;
	struct dsb_decision d;
	u64 goal, prev;
	int ticks = 0;

	dsb_state_init(&s, smp.target_pages);
	goal = dsb_goal(&cfg, &smp, s.ceiling);
	CHECK(MB(4096) - goal > 4 * cfg.max_step_pages);

	prev = s.target;
	for (;;) {
		smp.now_ms += 5000;
		d = dsb_tick(&s, &cfg, &smp);
		if (d.action != DSB_INFLATE)
			break;
		ticks++;
		CHECK(prev - d.target <= cfg.max_step_pages);
		CHECK(d.target >= d.floor);
		if (d.target > d.goal)
			CHECK_EQ(prev - d.target, cfg.max_step_pages);
		prev = d.target;
		driver_reaches(&smp, d.target);
		if (ticks > 100)
			break;
	}
	/*
	 * The goal sits on the floor from the first tick (640 MiB), so the
	 * 3456 MiB are returned in 13 full steps and one of 128 MiB.
	 */
	CHECK_EQ(d.action, DSB_KEEP);
	CHECK_EQ(ticks, 14);
	CHECK_EQ(s.inflations, ticks);
	CHECK_EQ(s.target, MB(4096) - s.pages_returned);
	CHECK_EQ(s.target, MB(640));
	/* what is left free: 640 - 64 overhead - 400 in use */
	CHECK_EQ(smp.free_pages, MB(176));
}

/* The shrinker raises the target at once and starts a hold-off. */
static void test_pressure_deflation(void)
{
	struct dsb_config cfg = default_cfg();
	struct dsb_state s;
	struct dsb_sample smp = guest_4g(1000);
	struct dsb_decision d;
	u64 up;

	dsb_state_init(&s, MB(4096));
	s.target = MB(1024);		/* 3 GiB ballooned out */
	smp.current_pages = MB(1024);
	smp.target_pages = MB(1024);
	smp.totalram_pages = MB(960);
	smp.free_pages = MB(10);
	smp.avail_pages = MB(10);
	smp.committed_pages = MB(600);
	CHECK_EQ(dsb_reclaimable(&s), MB(3072));

	up = dsb_reclaim(&s, &cfg, 7000, 128, DSB_SRC_SHRINKER);
	CHECK_EQ(up, 128);
	CHECK_EQ(s.target, MB(1024) + 128);
	CHECK_EQ(s.deflations, 1);
	CHECK_EQ(s.pages_reclaimed, 128);
	CHECK_EQ(s.pressure_events, 1);
	CHECK_EQ(s.last_pressure_ms, 7000);
	CHECK_EQ(s.last_pressure_src, DSB_SRC_SHRINKER);
	CHECK_EQ(s.holdoff_until_ms, 27000);
	CHECK(dsb_in_holdoff(&s, 26999));

	/* a huge request is capped at the ceiling */
	up = dsb_reclaim(&s, &cfg, 8000, DSB_U64_MAX, DSB_SRC_OOM);
	CHECK_EQ(up, MB(3072) - 128);
	CHECK_EQ(s.target, MB(4096));
	CHECK_EQ(s.pages_reclaimed, MB(3072));
	CHECK_EQ(s.last_pressure_src, DSB_SRC_OOM);
	CHECK_EQ(s.holdoff_until_ms, 28000);

	/* nothing left to give: 0, but the pressure still counts */
	up = dsb_reclaim(&s, &cfg, 9000, 128, DSB_SRC_SHRINKER);
	CHECK_EQ(up, 0);
	CHECK_EQ(s.deflations, 2);
	CHECK_EQ(s.pressure_events, 3);
	CHECK_EQ(s.holdoff_until_ms, 29000);

	/* the driver follows; the next tick does not inflate again */
	smp.now_ms = 10000;
	driver_reaches(&smp, s.target);
	d = dsb_tick(&s, &cfg, &smp);
	CHECK_EQ(d.action, DSB_KEEP);
	CHECK(d.holdoff);
	CHECK_EQ(s.target, MB(4096));
}

static void test_holdoff_expiry(void)
{
	struct dsb_config cfg = default_cfg();
	struct dsb_sample smp = guest_4g(1000);
	struct dsb_state s;
	struct dsb_decision d;

	dsb_state_init(&s, smp.target_pages);
	dsb_note_pressure(&s, &cfg, 1000, DSB_SRC_VMSTAT);
	CHECK_EQ(s.holdoff_until_ms, 21000);

	smp.now_ms = 20999;
	d = dsb_tick(&s, &cfg, &smp);
	CHECK_EQ(d.action, DSB_KEEP);
	CHECK(d.holdoff);
	CHECK_EQ(s.target, MB(4096));

	/* deflation is never held off */
	dsb_state_init(&s, MB(4096));
	dsb_note_pressure(&s, &cfg, 1000, DSB_SRC_VMSTAT);
	s.target = MB(700);
	smp.current_pages = MB(700);
	smp.target_pages = MB(700);
	smp.totalram_pages = MB(636);
	smp.free_pages = MB(5);
	smp.avail_pages = MB(5);
	smp.committed_pages = MB(900);
	d = dsb_tick(&s, &cfg, &smp);
	CHECK_EQ(d.action, DSB_DEFLATE);
	CHECK_EQ(d.target, MB(900 + 64 + 64));

	/* exactly at the end of the hold-off inflation resumes */
	smp = guest_4g(21000);
	dsb_state_init(&s, smp.target_pages);
	dsb_note_pressure(&s, &cfg, 1000, DSB_SRC_VMSTAT);
	d = dsb_tick(&s, &cfg, &smp);
	CHECK_EQ(d.action, DSB_INFLATE);
	CHECK(!d.holdoff);
	CHECK_EQ(d.target, MB(4096) - cfg.max_step_pages);

	/* a later, shorter hold-off never shortens a running one */
	dsb_state_init(&s, MB(4096));
	dsb_note_pressure(&s, &cfg, 1000, DSB_SRC_VMSTAT);
	cfg.holdoff_ms = 10;
	dsb_note_pressure(&s, &cfg, 2000, DSB_SRC_SHRINKER);
	CHECK_EQ(s.holdoff_until_ms, 21000);
	/* holdoff_ms 0: no hold-off at all */
	cfg.holdoff_ms = 0;
	dsb_state_init(&s, MB(4096));
	dsb_note_pressure(&s, &cfg, 5000, DSB_SRC_VMSTAT);
	CHECK(!dsb_in_holdoff(&s, 5000));
}

static void test_vmstat_pressure(void)
{
	CHECK_EQ(dsb_vmpressure(0, 0), 0);
	CHECK_EQ(dsb_vmpressure(511, 0), 0);		/* below the window */
	CHECK_EQ(dsb_vmpressure(1000, 1000), 0);
	CHECK_EQ(dsb_vmpressure(1000, 1200), 0);
	CHECK_EQ(dsb_vmpressure(1000, 400), 60);
	CHECK_EQ(dsb_vmpressure(1000, 401), 59);
	CHECK_EQ(dsb_vmpressure(DSB_U64_MAX, 0), 100);
	CHECK_EQ(dsb_vmpressure(DSB_U64_MAX, DSB_U64_MAX / 2), 50);
	CHECK(dsb_vmstat_pressure(1, 0, 0));
	CHECK(dsb_vmstat_pressure(0, 1000, 400));
	CHECK(!dsb_vmstat_pressure(0, 1000, 401));
	CHECK(!dsb_vmstat_pressure(0, 100, 0));
}

/* Nothing wraps, whatever the sizes. */
static void test_overflow(void)
{
	struct dsb_config cfg = default_cfg();
	struct dsb_sample smp = {
		.now_ms = DSB_U64_MAX - 5,
		.free_pages = DSB_U64_MAX,
		.avail_pages = DSB_U64_MAX,
		.committed_pages = DSB_U64_MAX - 3,
		.totalram_pages = 1,
		.current_pages = DSB_U64_MAX,
		.target_pages = DSB_U64_MAX,
	};
	struct dsb_state s;
	struct dsb_decision d;
	u64 big = 1ULL << 62;		/* 16 EiB of 4 KiB pages */

	/* committed + reserve + overhead saturates to the ceiling */
	CHECK_EQ(dsb_floor(&cfg, &smp, DSB_U64_MAX), DSB_U64_MAX);
	dsb_state_init(&s, DSB_U64_MAX);
	d = dsb_tick(&s, &cfg, &smp);
	CHECK_EQ(d.action, DSB_KEEP);
	CHECK_EQ(s.target, DSB_U64_MAX);

	/* hold-off near the end of time saturates instead of wrapping */
	dsb_note_pressure(&s, &cfg, DSB_U64_MAX - 5, DSB_SRC_SHRINKER);
	CHECK_EQ(s.holdoff_until_ms, DSB_U64_MAX);
	CHECK(dsb_in_holdoff(&s, DSB_U64_MAX - 1));

	/* a huge guest, 95% of a huge free count, gradual steps */
	cfg.max_step_pages = dsb_mb_to_pages(DSB_MB_MAX, 12);
	cfg.min_pages = 0;
	smp = (struct dsb_sample) {
		.now_ms = 1,
		.free_pages = big - (big >> 4),
		.avail_pages = big,
		.committed_pages = big >> 8,
		.totalram_pages = big - 1000,
		.current_pages = big,
		.target_pages = big,
	};
	dsb_state_init(&s, big);
	d = dsb_tick(&s, &cfg, &smp);
	CHECK_EQ(d.goal, big - dsb_pct_of(big - (big >> 4), 95));
	CHECK(d.goal < big && d.goal > big >> 8);
	CHECK_EQ(d.action, DSB_INFLATE);
	CHECK_EQ(d.target, big - cfg.max_step_pages);
	CHECK_EQ(dsb_reclaim(&s, &cfg, 2, DSB_U64_MAX, DSB_SRC_OOM),
		 cfg.max_step_pages);
	CHECK_EQ(s.target, big);

	/* backoff saturates: a giant interval never wraps to a short one */
	CHECK_EQ(dsb_backoff_ms(DSB_U64_MAX / 2, 5), DSB_U64_MAX / 2);
	CHECK_EQ(dsb_backoff_ms(5000, 1), 10000);
	CHECK_EQ(dsb_backoff_ms(5000, 99), 5000 << DSB_MAX_BACKOFF_SHIFT);
	CHECK_EQ(dsb_backoff_ms(3000000, 5), DSB_INTERVAL_MS_MAX);
}

/* The toolstack's target is the ceiling; the module follows changes. */
static void test_adopt_external_target(void)
{
	struct dsb_config cfg = default_cfg();
	struct dsb_sample smp = guest_4g(1000);
	struct dsb_state s;
	struct dsb_decision d;

	dsb_state_init(&s, smp.target_pages);
	d = dsb_tick(&s, &cfg, &smp);
	CHECK_EQ(d.action, DSB_INFLATE);
	driver_reaches(&smp, d.target);

	smp.target_pages = MB(2048);		/* xl mem-set 2048 */
	smp.now_ms += 5000;
	d = dsb_tick(&s, &cfg, &smp);
	CHECK_EQ(d.action, DSB_ADOPT);
	CHECK_EQ(s.ceiling, MB(2048));
	CHECK_EQ(s.target, MB(2048));
	CHECK_EQ(s.adoptions, 1);
	/* pressure can never take the guest above the new ceiling */
	CHECK_EQ(dsb_reclaim(&s, &cfg, smp.now_ms, 1000, DSB_SRC_SHRINKER), 0);
	CHECK_EQ(s.target, MB(2048));
}

/* A driver that cannot reach the target: back off, then give up. */
static void test_stalled_driver(void)
{
	struct dsb_config cfg = default_cfg();
	struct dsb_sample smp = guest_4g(1000);
	struct dsb_state s;
	struct dsb_decision d;
	u64 t;
	int i;

	dsb_state_init(&s, smp.target_pages);
	d = dsb_tick(&s, &cfg, &smp);
	CHECK_EQ(d.action, DSB_INFLATE);
	t = d.target;
	smp.target_pages = t;			/* driver never moves */

	for (i = 1; i <= DSB_MAX_RETRIES; i++) {
		d = dsb_tick(&s, &cfg, &smp);
		CHECK_EQ(d.action, DSB_KEEP);
		CHECK_EQ(s.bp_state, DSB_BP_EAGAIN);
		CHECK_EQ(d.delay_ms, dsb_backoff_ms(5000, i));
		CHECK_EQ(s.target, t);
	}
	d = dsb_tick(&s, &cfg, &smp);
	CHECK_EQ(d.action, DSB_RESYNC);
	CHECK_EQ(s.bp_state, DSB_BP_ECANCELED);
	CHECK_EQ(s.target, MB(4096));
	CHECK_EQ(s.stalls, 1);
	CHECK_EQ(s.retries, 0);
	CHECK_EQ(d.delay_ms, 5000 << DSB_MAX_BACKOFF_SHIFT);
}

static void test_disabled_and_hysteresis(void)
{
	struct dsb_config cfg = default_cfg();
	struct dsb_sample smp = guest_4g(1000);
	struct dsb_state s;
	struct dsb_decision d;

	/* disabled: deflate all the way to the ceiling, exactly */
	dsb_state_init(&s, MB(4096));
	s.target = MB(4096) - 10;
	smp.current_pages = s.target;
	smp.target_pages = s.target;
	cfg.enabled = false;
	d = dsb_tick(&s, &cfg, &smp);
	CHECK_EQ(d.action, DSB_DEFLATE);
	CHECK_EQ(s.target, MB(4096));
	cfg.enabled = true;

	/* a goal within the hysteresis band is left alone, both ways */
	smp = guest_4g(1000);
	smp.free_pages = 200;
	smp.avail_pages = MB(3000);	/* page cache */
	smp.committed_pages = 0;
	dsb_state_init(&s, smp.target_pages);
	d = dsb_tick(&s, &cfg, &smp);
	CHECK_EQ(d.goal, MB(4096) - 190);
	CHECK_EQ(d.action, DSB_KEEP);

	dsb_state_init(&s, MB(4096));
	s.target = MB(3000);
	smp.current_pages = MB(3000);
	smp.target_pages = MB(3000);
	smp.totalram_pages = MB(2936);
	smp.free_pages = 100;
	smp.avail_pages = MB(2900);	/* page cache */
	smp.committed_pages = MB(3000) - 50;
	d = dsb_tick(&s, &cfg, &smp);
	CHECK(d.goal > MB(3000) && d.goal - MB(3000) < MB(1) + MB(128));
	CHECK_EQ(d.action, DSB_DEFLATE);	/* 128 MiB: above the band */
	smp.committed_pages = MB(3000) - MB(128) - 50;
	dsb_state_init(&s, MB(4096));
	s.target = MB(3000);
	d = dsb_tick(&s, &cfg, &smp);
	CHECK_EQ(d.action, DSB_KEEP);		/* 50 pages: inside it */
}

/* Random samples: whatever happens, floor <= target <= ceiling holds. */
static void test_invariants(void)
{
	struct dsb_config cfg = default_cfg();
	struct dsb_state s;
	struct dsb_decision d;
	struct dsb_sample smp;
	u64 x = 0x9e3779b97f4a7c15ULL, prev;
	unsigned int bad = 0, i;

#define RND() (x ^= x << 13, x ^= x >> 7, x ^= x << 17, x)
	dsb_state_init(&s, MB(8192));
	for (i = 0; i < 200000; i++) {
		cfg.free_pct = RND() % 101;
		cfg.max_step_pages = 1 + RND() % MB(512);
		smp.now_ms = i * 5000ULL;
		smp.current_pages = RND() % (MB(8192) + 1);
		smp.totalram_pages = dsb_sat_sub(smp.current_pages,
						 RND() % MB(64));
		smp.free_pages = RND() % (smp.totalram_pages + 1);
		smp.avail_pages = RND() % (smp.totalram_pages + 1);
		smp.committed_pages = RND() % MB(16384);
		smp.target_pages = (RND() % 64) ? s.target :
				   RND() % (MB(8192) + 1);
		prev = s.target;
		d = dsb_tick(&s, &cfg, &smp);
		if (d.target != s.target || s.target > s.ceiling)
			bad++;
		if (d.action == DSB_INFLATE &&
		    (s.target < d.floor || prev - s.target >
		     cfg.max_step_pages || dsb_in_holdoff(&s, smp.now_ms)))
			bad++;
		if (d.action == DSB_DEFLATE && s.target < prev)
			bad++;
		if (RND() % 16 == 0) {
			prev = s.target;
			dsb_reclaim(&s, &cfg, smp.now_ms, RND() % MB(64),
				    DSB_SRC_SHRINKER);
			if (s.target < prev || s.target > s.ceiling)
				bad++;
		}
	}
#undef RND
	CHECK_EQ(bad, 0);
}

static void test_names(void)
{
	CHECK(dsb_src_name(DSB_SRC_SHRINKER)[0] == 's');
	CHECK(dsb_src_name((enum dsb_pressure_src)99)[0] == '?');
	CHECK(dsb_action_name(DSB_INFLATE)[0] == 'i');
	CHECK(dsb_action_name((enum dsb_action)99)[0] == '?');
}

int main(void)
{
	test_helpers();
	test_inflate_to_95pct();
	test_floor();
	test_gradual_steps();
	test_pressure_deflation();
	test_holdoff_expiry();
	test_vmstat_pressure();
	test_overflow();
	test_adopt_external_target();
	test_stalled_driver();
	test_disabled_and_hysteresis();
	test_invariants();
	test_names();

	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}

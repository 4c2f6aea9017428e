/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The arithmetic of dynamic self-ballooning (DSB).
 *
 * Everything in here is a pure function of its arguments: no locks, no
 * clocks, no global state and no kernel calls.  The module (dsb_main.c)
 * samples the memory counters, takes its lock and calls these; the
 * user-space tests (tests/dsb_test.c) and the trace program
 * (tests/dsb_trace.c) compile the very same dsb_policy.c against a
 * scripted sequence of samples.  See the essay at the top of dsb_main.c for
 * the policy itself.
 *
 * All quantities are counts of pages (of the guest's PAGE_SIZE) or
 * milliseconds, held in u64 and combined with saturating helpers, so that
 * no input -- however absurd -- can wrap around into a tiny target.
 */
#ifndef DSB_POLICY_H
#define DSB_POLICY_H

#ifdef __KERNEL__
#include <linux/types.h>
#include <linux/math64.h>
/* u64 / u64 needs a helper on 32-bit kernels. */
#define dsb_div64(a, b)	div64_u64((a), (b))
#else
#include <stdbool.h>
#include <stdint.h>
typedef uint64_t u64;
#define dsb_div64(a, b)	((a) / (b))
#endif

#define DSB_U64_MAX		(~(u64)0)

/* Exponential backoff while the balloon driver lags: interval << 1..5. */
#define DSB_MAX_BACKOFF_SHIFT	5
/* Stalled ticks after which the unreachable part of the target is dropped. */
#define DSB_MAX_RETRIES		6
/* vmpressure(): scanned pages below which a window says nothing. */
#define DSB_VMPRESSURE_WIN	512
/* vmpressure(): percentage at and above which reclaim is struggling. */
#define DSB_VMPRESSURE_MEDIUM	60

/* Parameter bounds, shared by the module's kernel_param_ops and the tests. */
#define DSB_INTERVAL_MS_MIN	100ULL
#define DSB_INTERVAL_MS_MAX	3600000ULL		/* 1 hour */
#define DSB_FREE_PCT_MAX	100ULL
#define DSB_MB_MAX		(1ULL << 30)		/* 1 PiB */
#define DSB_STEP_MB_MIN		1ULL
#define DSB_HOLDOFF_MS_MAX	86400000ULL		/* 1 day */

/*
 * Progress of the balloon driver towards the target we set, in the spirit
 * of drivers/xen/balloon.c's enum bp_state.
 */
enum dsb_bp_state {
	DSB_BP_DONE,		/* driver reached (or passed) our target */
	DSB_BP_EAGAIN,		/* driver still above target: back off */
	DSB_BP_ECANCELED,	/* gave up: target resynced to the driver */
};

enum dsb_pressure_src {
	DSB_SRC_NONE,
	DSB_SRC_SHRINKER,	/* reclaim called our shrinker */
	DSB_SRC_VMSTAT,		/* direct reclaim or vmpressure >= medium */
	DSB_SRC_OOM,		/* the OOM notifier chain */
	DSB_SRC_NR,
};

enum dsb_action {
	DSB_KEEP,		/* target unchanged */
	DSB_INFLATE,		/* target lowered: pages go to Xen */
	DSB_DEFLATE,		/* target raised: pages come back */
	DSB_ADOPT,		/* someone else set the target: follow it */
	DSB_RESYNC,		/* driver stuck: target raised to its size */
	DSB_ACTION_NR,
};

/* Tunables, already converted to pages and checked against the bounds. */
struct dsb_config {
	u64 interval_ms;
	u64 free_pct;		/* 0..100 */
	u64 min_pages;		/* absolute floor */
	u64 reserve_pages;	/* floor is committed + reserve (+ overhead) */
	u64 max_step_pages;	/* largest inflation per tick, >= 1 */
	u64 holdoff_ms;		/* no inflation this long after pressure */
	u64 hysteresis_pages;	/* ignore target moves smaller than this */
	bool enabled;		/* false: deflate to the ceiling and stay */
};

/* What one tick sees of the guest and of the balloon driver. */
struct dsb_sample {
	u64 now_ms;
	u64 free_pages;		/* NR_FREE_PAGES */
	u64 avail_pages;	/* si_mem_available() */
	u64 committed_pages;	/* vm_memory_committed() */
	u64 totalram_pages;	/* totalram_pages() */
	u64 current_pages;	/* balloon_stats.current_pages */
	u64 target_pages;	/* balloon_stats.target_pages */
};

struct dsb_state {
	u64 ceiling;		/* the target set by the toolstack */
	u64 target;		/* the target this module last set */
	u64 holdoff_until_ms;
	enum dsb_bp_state bp_state;
	u64 retries;
	/* counters, exported in sysfs */
	u64 inflations;
	u64 deflations;
	u64 pages_returned;	/* sum of target decreases */
	u64 pages_reclaimed;	/* sum of target increases */
	u64 pressure_events;
	u64 last_pressure_ms;	/* 0: never */
	enum dsb_pressure_src last_pressure_src;
	u64 stalls;		/* DSB_RESYNC decisions */
	u64 adoptions;		/* DSB_ADOPT decisions */
};

struct dsb_decision {
	enum dsb_action action;
	u64 target;		/* the target after this tick */
	u64 goal;		/* where the policy wants to go */
	u64 floor;		/* the floor in force this tick */
	u64 delay_ms;		/* until the next tick */
	bool holdoff;		/* inflation was wanted but held off */
};

static inline u64 dsb_sat_add(u64 a, u64 b)
{
	return a > DSB_U64_MAX - b ? DSB_U64_MAX : a + b;
}

static inline u64 dsb_sat_sub(u64 a, u64 b)
{
	return a > b ? a - b : 0;
}

static inline u64 dsb_min(u64 a, u64 b)
{
	return a < b ? a : b;
}

static inline u64 dsb_max(u64 a, u64 b)
{
	return a > b ? a : b;
}

u64 dsb_mb_to_pages(u64 mb, unsigned int page_shift);
u64 dsb_pages_to_kb(u64 pages, unsigned int page_shift);
u64 dsb_pct_of(u64 x, u64 pct);
u64 dsb_floor(const struct dsb_config *cfg, const struct dsb_sample *smp,
	      u64 ceiling);
u64 dsb_goal(const struct dsb_config *cfg, const struct dsb_sample *smp,
	     u64 ceiling);
u64 dsb_backoff_ms(u64 interval_ms, u64 retries);
u64 dsb_vmpressure(u64 scanned, u64 reclaimed);
bool dsb_vmstat_pressure(u64 d_allocstall, u64 d_scanned, u64 d_reclaimed);

void dsb_state_init(struct dsb_state *s, u64 target);
bool dsb_in_holdoff(const struct dsb_state *s, u64 now_ms);
void dsb_note_pressure(struct dsb_state *s, const struct dsb_config *cfg,
		       u64 now_ms, enum dsb_pressure_src src);
u64 dsb_reclaimable(const struct dsb_state *s);
u64 dsb_reclaim(struct dsb_state *s, const struct dsb_config *cfg,
		u64 now_ms, u64 nr_pages, enum dsb_pressure_src src);
struct dsb_decision dsb_tick(struct dsb_state *s,
			     const struct dsb_config *cfg,
			     const struct dsb_sample *smp);

const char *dsb_src_name(enum dsb_pressure_src src);
const char *dsb_action_name(enum dsb_action action);

#endif /* DSB_POLICY_H */

// SPDX-License-Identifier: GPL-2.0
/*
 * The arithmetic of dynamic self-ballooning (DSB).
 *
 * Pure functions only: this file is compiled into the kernel module and,
 * unchanged, into the user-space tests.  It must not include anything but
 * dsb_policy.h.  The policy is described in the essay in dsb_main.c.
 */
#include "dsb_policy.h"

/* Shift @x left by @shift, saturating instead of losing high bits. */
static u64 dsb_shl_sat(u64 x, unsigned int shift)
{
	if (shift >= 64)
		return x ? DSB_U64_MAX : 0;
	if (x > (DSB_U64_MAX >> shift))
		return DSB_U64_MAX;
	return x << shift;
}

u64 dsb_mb_to_pages(u64 mb, unsigned int page_shift)
{
	if (page_shift >= 20)
		return page_shift - 20 >= 64 ? 0 : mb >> (page_shift - 20);
	return dsb_shl_sat(mb, 20 - page_shift);
}

u64 dsb_pages_to_kb(u64 pages, unsigned int page_shift)
{
	if (page_shift < 10)
		return pages >> (10 - page_shift);
	return dsb_shl_sat(pages, page_shift - 10);
}

/*
 * @pct percent of @x, rounded down, for any u64 @x: x * pct would overflow
 * for x above 2^57 pages, so split x into hundreds and a remainder.
 */
u64 dsb_pct_of(u64 x, u64 pct)
{
	u64 hundreds, rest;

	if (pct >= 100)
		return x;
	hundreds = dsb_div64(x, 100);
	rest = x - hundreds * 100;
	return hundreds * pct + dsb_div64(rest * pct, 100);
}

/*
 * The lowest target the policy will ever set this tick:
 *
 *   max(min_pages, max(committed, in use) + reserve + overhead),
 *   but not above @ceiling
 *
 * committed is what the kernel has promised to processes (Committed_AS),
 * as the in-tree xen-selfballoon driver used; "in use" is totalram minus
 * si_mem_available(), the memory reclaim cannot give back (tmpfs, kernel
 * allocations, ...), which Committed_AS does not count.  Both are in the
 * currency of totalram_pages (memory the page allocator manages); the
 * target is in the currency of the balloon driver's current_pages (every
 * page the domain has), so the difference current - totalram ("overhead":
 * kernel image, memblock reservations) is added.
 */
u64 dsb_floor(const struct dsb_config *cfg, const struct dsb_sample *smp,
	      u64 ceiling)
{
	u64 overhead = dsb_sat_sub(smp->current_pages, smp->totalram_pages);
	u64 in_use = dsb_sat_sub(smp->totalram_pages, smp->avail_pages);
	u64 need;

	need = dsb_max(smp->committed_pages, in_use);
	need = dsb_sat_add(need, cfg->reserve_pages);
	need = dsb_sat_add(need, overhead);
	return dsb_min(dsb_max(cfg->min_pages, need), ceiling);
}

/*
 * Where the policy wants the target to be: free_pct percent of the free
 * memory handed to Xen, clamped to [floor, ceiling].  "Free" is the smaller
 * of the page allocator's free count and si_mem_available(), so neither
 * watermark reserves nor memory that only looks free are counted.
 */
u64 dsb_goal(const struct dsb_config *cfg, const struct dsb_sample *smp,
	     u64 ceiling)
{
	u64 spare, goal;

	if (!cfg->enabled)
		return ceiling;
	spare = dsb_min(smp->free_pages, smp->avail_pages);
	goal = dsb_sat_sub(smp->current_pages,
			   dsb_pct_of(spare, cfg->free_pct));
	goal = dsb_max(goal, dsb_floor(cfg, smp, ceiling));
	return dsb_min(goal, ceiling);
}

/* interval << min(retries, DSB_MAX_BACKOFF_SHIFT), at most an hour. */
u64 dsb_backoff_ms(u64 interval_ms, u64 retries)
{
	unsigned int shift = (unsigned int)dsb_min(retries,
						   DSB_MAX_BACKOFF_SHIFT);
	u64 cap = dsb_max(interval_ms, DSB_INTERVAL_MS_MAX);

	return dsb_min(dsb_shl_sat(interval_ms, shift), cap);
}

/*
 * The vmpressure level of a window, as mm/vmpressure.c computes it: the
 * share of scanned pages that reclaim failed to free, in percent.  Windows
 * smaller than DSB_VMPRESSURE_WIN pages say nothing (0).
 */
u64 dsb_vmpressure(u64 scanned, u64 reclaimed)
{
	if (scanned < DSB_VMPRESSURE_WIN || reclaimed >= scanned)
		return 0;
	/* keep (scanned - reclaimed) * 100 inside u64 */
	while (scanned > DSB_U64_MAX / 100) {
		scanned >>= 1;
		reclaimed >>= 1;
	}
	return dsb_div64((scanned - reclaimed) * 100, scanned);
}

/* Did the last interval see memory pressure, by the vm event counters? */
bool dsb_vmstat_pressure(u64 d_allocstall, u64 d_scanned, u64 d_reclaimed)
{
	return d_allocstall > 0 ||
	       dsb_vmpressure(d_scanned, d_reclaimed) >= DSB_VMPRESSURE_MEDIUM;
}

void dsb_state_init(struct dsb_state *s, u64 target)
{
	*s = (struct dsb_state) {
		.ceiling = target,
		.target = target,
		.bp_state = DSB_BP_DONE,
		.last_pressure_src = DSB_SRC_NONE,
	};
}

bool dsb_in_holdoff(const struct dsb_state *s, u64 now_ms)
{
	return now_ms < s->holdoff_until_ms;
}

/* Pressure seen at @now_ms: no inflation until holdoff_ms have passed. */
void dsb_note_pressure(struct dsb_state *s, const struct dsb_config *cfg,
		       u64 now_ms, enum dsb_pressure_src src)
{
	s->holdoff_until_ms = dsb_max(s->holdoff_until_ms,
				      dsb_sat_add(now_ms, cfg->holdoff_ms));
	s->pressure_events = dsb_sat_add(s->pressure_events, 1);
	s->last_pressure_ms = now_ms;
	s->last_pressure_src = src;
}

/* Pages the module has taken from the guest and could give back now. */
u64 dsb_reclaimable(const struct dsb_state *s)
{
	return dsb_sat_sub(s->ceiling, s->target);
}

static void dsb_raise(struct dsb_state *s, u64 up)
{
	s->target += up;
	s->deflations = dsb_sat_add(s->deflations, 1);
	s->pages_reclaimed = dsb_sat_add(s->pages_reclaimed, up);
	s->bp_state = DSB_BP_DONE;
	s->retries = 0;
}

/*
 * Reclaim (or the OOM killer) wants @nr_pages: raise the target by that
 * much at once, never above the ceiling, and start a hold-off.  Returns the
 * number of pages the target was raised by.
 */
u64 dsb_reclaim(struct dsb_state *s, const struct dsb_config *cfg,
		u64 now_ms, u64 nr_pages, enum dsb_pressure_src src)
{
	u64 up = dsb_min(nr_pages, dsb_reclaimable(s));

	dsb_note_pressure(s, cfg, now_ms, src);
	if (up)
		dsb_raise(s, up);
	return up;
}

/*
 * One tick of the policy.  Updates @s and says what to do; the caller
 * hands d.target to the balloon driver when d.action is not DSB_KEEP and
 * schedules the next tick d.delay_ms from now.
 */
struct dsb_decision dsb_tick(struct dsb_state *s,
			     const struct dsb_config *cfg,
			     const struct dsb_sample *smp)
{
	struct dsb_decision d = {
		.action = DSB_KEEP,
		.delay_ms = cfg->interval_ms,
	};
	u64 gap, step;

	/*
	 * The toolstack (memory/target in xenstore) or an admin changed the
	 * target behind our back: that is the new ceiling.  Follow it and
	 * let the driver work for one interval before deciding anything.
	 */
	if (smp->target_pages != s->target) {
		s->ceiling = smp->target_pages;
		s->target = smp->target_pages;
		s->bp_state = DSB_BP_DONE;
		s->retries = 0;
		s->adoptions = dsb_sat_add(s->adoptions, 1);
		d.action = DSB_ADOPT;
		d.target = s->target;
		d.floor = dsb_floor(cfg, smp, s->ceiling);
		d.goal = dsb_goal(cfg, smp, s->ceiling);
		return d;
	}

	d.floor = dsb_floor(cfg, smp, s->ceiling);
	d.goal = dsb_goal(cfg, smp, s->ceiling);
	d.target = s->target;

	/* Deflation: at once, whatever the hold-off says. */
	if (d.goal > s->target) {
		gap = d.goal - s->target;
		if (gap < cfg->hysteresis_pages && d.goal != s->ceiling)
			return d;
		dsb_raise(s, gap);
		d.action = DSB_DEFLATE;
		d.target = s->target;
		return d;
	}

	gap = s->target - d.goal;
	if (gap == 0 || gap < cfg->hysteresis_pages)
		return d;

	/* Inflation: not during a hold-off ... */
	if (dsb_in_holdoff(s, smp->now_ms)) {
		d.holdoff = true;
		return d;
	}

	/* ... nor while the driver has not reached the last target. */
	if (smp->current_pages > s->target) {
		s->retries++;
		if (s->retries > DSB_MAX_RETRIES) {
			s->target = dsb_min(smp->current_pages, s->ceiling);
			s->bp_state = DSB_BP_ECANCELED;
			s->retries = 0;
			s->stalls = dsb_sat_add(s->stalls, 1);
			d.action = DSB_RESYNC;
			d.target = s->target;
			d.delay_ms = dsb_backoff_ms(cfg->interval_ms,
						    DSB_MAX_BACKOFF_SHIFT);
			return d;
		}
		s->bp_state = DSB_BP_EAGAIN;
		d.delay_ms = dsb_backoff_ms(cfg->interval_ms, s->retries);
		return d;
	}

	step = dsb_min(gap, dsb_max(cfg->max_step_pages, 1));
	s->target -= step;
	s->inflations = dsb_sat_add(s->inflations, 1);
	s->pages_returned = dsb_sat_add(s->pages_returned, step);
	s->bp_state = DSB_BP_DONE;
	s->retries = 0;
	d.action = DSB_INFLATE;
	d.target = s->target;
	return d;
}

const char *dsb_src_name(enum dsb_pressure_src src)
{
	static const char * const names[DSB_SRC_NR] = {
		[DSB_SRC_NONE] = "none",
		[DSB_SRC_SHRINKER] = "shrinker",
		[DSB_SRC_VMSTAT] = "vmstat",
		[DSB_SRC_OOM] = "oom",
	};

	return (unsigned int)src < DSB_SRC_NR ? names[src] : "?";
}

const char *dsb_action_name(enum dsb_action action)
{
	static const char * const names[DSB_ACTION_NR] = {
		[DSB_KEEP] = "keep",
		[DSB_INFLATE] = "inflate",
		[DSB_DEFLATE] = "deflate",
		[DSB_ADOPT] = "adopt",
		[DSB_RESYNC] = "resync",
	};

	return (unsigned int)action < DSB_ACTION_NR ? names[action] : "?";
}

// SPDX-License-Identifier: GPL-2.0
/*
 * guest_balloon - dynamic self-ballooning (DSB) for Linux Xen guests.
 *
 * Why
 * ---
 * Post-copy live migration (Hines & Gopalan, VEE'09) moves a guest's pages
 * on demand after the guest already runs on the destination.  A free page
 * is as expensive to move as a used one unless the source knows it is free.
 * The cheapest way to tell it is for the guest to hand its free pages back
 * to Xen: the in-kernel Xen balloon driver then unpopulates them, their
 * frames vanish from the physmap, and the migration never sends them.  This
 * module keeps doing that, all the time, so that a guest is always ready to
 * be migrated cheaply -- and gives the memory back the moment the guest
 * needs it.
 *
 * The policy
 * ----------
 * Every interval_ms (5 s) a work item samples free memory and sets the
 * balloon target (the number of pages the domain should have) to
 *
 *	goal  = current - free_pct% * min(NR_FREE_PAGES, si_mem_available())
 *	floor = max(min_mb, max(committed, in use) + reserve_mb + overhead)
 *	goal  = clamp(goal, floor, ceiling)
 *
 * where "committed" is vm_memory_committed() (Committed_AS), "in use" is
 * totalram_pages - si_mem_available() (memory reclaim cannot give back:
 * tmpfs, kernel allocations; Committed_AS misses those), "overhead" is
 * current_pages - totalram_pages (pages the domain has that the page
 * allocator never sees), and "ceiling" is the target the toolstack set
 * (memory/target in xenstore): the module never asks for more than that.
 * The committed part of the floor is the one the removed
 * drivers/xen/xen-selfballoon.c used: the guest keeps what it has promised
 * to its processes plus a reserve.  The "in use" part means that a tick
 * never takes more than si_mem_available() - reserve.
 *
 * Inflation (lowering the target, giving pages to Xen) is gradual: at most
 * max_step_mb per tick, so that a sudden 3 GiB inflation does not push the
 * guest through reclaim in one blow.  Each tick returns free_pct of what is
 * free at that moment, so the target falls geometrically until the floor
 * stops it: the floor is the steady state of an idle guest, and free_pct
 * sets how fast it is approached when max_step_mb does not.  Moves smaller
 * than 1 MiB are ignored so that the target does not chase the noise of
 * the free counter.
 *
 * Deflation (raising the target, taking pages back) is immediate:
 *   - a tick whose goal is above the target raises it at once (the floor
 *     rose because committed memory grew, or free memory fell);
 *   - a shrinker: when reclaim runs it asks every shrinker to free objects;
 *     ours reports the pages it ballooned out as its objects and, asked to
 *     scan N of them, raises the target by N pages at once.  The balloon
 *     driver's thread then repopulates them from Xen.  This makes ballooned
 *     memory the first thing reclaim takes back, before page cache;
 *   - an OOM notifier: before the OOM killer picks a victim, the target
 *     goes back to the ceiling;
 * and every one of these, plus a vmpressure-style signal computed from the
 * vm event counters each tick (any direct-reclaim stall, or reclaim
 * failing to free >= 60% of what it scanned, as mm/vmpressure.c rates a
 * "medium" level), starts a hold-off: no inflation for holdoff_ms.  PSI
 * triggers and vmpressure events are user-space interfaces, so the module
 * reads the same counters they are made of.
 *
 * The balloon driver may fail to reach a lower target (its allocations use
 * __GFP_NORETRY).  While it lags, the module does not lower the target
 * further and backs off exponentially (interval << 1..5); after
 * DSB_MAX_RETRIES such ticks it gives up and sets the target to what the
 * driver has, as balloon.c's own bp_state machine gives up on a failed
 * reservation change.
 *
 * The arithmetic lives in dsb_policy.c, a pure function of a sample and the
 * state, compiled into this module and into the user-space tests.
 *
 * Safety
 * ------
 * - Loading fails with -ENODEV off Xen, in dom0, or without the balloon
 *   driver (CONFIG_XEN_BALLOON=n, or not initialised).
 * - All state is under one spinlock; nothing under it sleeps or allocates
 *   (balloon_set_new_target() only stores and wakes the balloon thread).
 *   The only sleeping call, all_vm_events(), is made before taking it.
 * - If someone else changes the target (xl mem-set, the admin writing
 *   target_kb), the module takes it as the new ceiling.  A change landing
 *   between our read and our write of the target is lost: the balloon
 *   driver has no compare-and-set.
 * - Unloading stops the work item, unregisters the shrinker and OOM
 *   notifier, then restores the ceiling (the target in force before the
 *   module loaded, or the toolstack's later one).
 * - Parameters are checked against bounds on every write (-ERANGE).
 *
 * Interactions worth knowing: `echo 3 > /proc/sys/vm/drop_caches` calls the
 * shrinker too and so deflates the balloon (until the hold-off ends);
 * memory-cgroup limits do not (the shrinker is not memcg-aware: only
 * global reclaim means the guest is short of memory).
 */
#define pr_fmt(fmt) "xen:" KBUILD_MODNAME ": " fmt

#include <linux/init.h>
#include <linux/jiffies.h>
#include <linux/ktime.h>
#include <linux/kernel.h>
#include <linux/kobject.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/notifier.h>
#include <linux/oom.h>
#include <linux/shrinker.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/sysfs.h>
#include <linux/timekeeping.h>
#include <linux/version.h>
#include <linux/vmstat.h>
#include <linux/workqueue.h>

#include <xen/balloon.h>
#include <xen/xen.h>

#include "dsb_policy.h"

/* Target moves smaller than this are noise. */
#define DSB_HYSTERESIS_MB	1

/* ---- parameters ------------------------------------------------------ */

struct dsb_param {
	unsigned long val;
	unsigned long min;
	unsigned long max;
};

static struct dsb_param p_interval_ms = {
	5000, DSB_INTERVAL_MS_MIN, DSB_INTERVAL_MS_MAX
};

static struct dsb_param p_free_pct = { 95, 0, DSB_FREE_PCT_MAX };
static struct dsb_param p_min_mb = { 128, 0, DSB_MB_MAX };
static struct dsb_param p_reserve_mb = { 64, 0, DSB_MB_MAX };
static struct dsb_param p_max_step_mb = { 256, DSB_STEP_MB_MIN, DSB_MB_MAX };
static struct dsb_param p_holdoff_ms = { 20000, 0, DSB_HOLDOFF_MS_MAX };
static struct dsb_param p_enabled = { 1, 0, 1 };

static DEFINE_SPINLOCK(dsb_lock);
static struct dsb_state dsb;		/* under dsb_lock */
static bool dsb_running;		/* under dsb_lock */

static void dsb_work_fn(struct work_struct *work);
static DECLARE_DELAYED_WORK(dsb_work, dsb_work_fn);

/* A parameter changed: run the policy now rather than at the next tick. */
static void dsb_kick(void)
{
	spin_lock(&dsb_lock);
	if (dsb_running)
		mod_delayed_work(system_freezable_wq, &dsb_work, 0);
	spin_unlock(&dsb_lock);
}

static int dsb_param_set(const char *val, const struct kernel_param *kp)
{
	struct dsb_param *p = kp->arg;
	unsigned long v;
	int ret;

	ret = kstrtoul(val, 0, &v);
	if (ret)
		return ret;
	if (v < p->min || v > p->max) {
		pr_warn("%s=%lu out of range [%lu, %lu]\n",
			kp->name, v, p->min, p->max);
		return -ERANGE;
	}
	WRITE_ONCE(p->val, v);
	dsb_kick();
	return 0;
}

static int dsb_param_get(char *buf, const struct kernel_param *kp)
{
	const struct dsb_param *p = kp->arg;

	return scnprintf(buf, PAGE_SIZE, "%lu\n", READ_ONCE(p->val));
}

static const struct kernel_param_ops dsb_param_ops = {
	.set = dsb_param_set,
	.get = dsb_param_get,
};

module_param_cb(interval_ms, &dsb_param_ops, &p_interval_ms, 0644);
MODULE_PARM_DESC(interval_ms, "Policy period in ms (100..3600000, default 5000)");
module_param_cb(free_pct, &dsb_param_ops, &p_free_pct, 0644);
MODULE_PARM_DESC(free_pct, "Percentage of free memory returned to Xen per tick (0..100, default 95)");
module_param_cb(min_mb, &dsb_param_ops, &p_min_mb, 0644);
MODULE_PARM_DESC(min_mb, "Never balloon the guest below this many MiB (default 128)");
module_param_cb(reserve_mb, &dsb_param_ops, &p_reserve_mb, 0644);
MODULE_PARM_DESC(reserve_mb, "MiB kept above committed memory (default 64)");
module_param_cb(max_step_mb, &dsb_param_ops, &p_max_step_mb, 0644);
MODULE_PARM_DESC(max_step_mb, "Largest inflation per tick in MiB (>= 1, default 256)");
module_param_cb(holdoff_ms, &dsb_param_ops, &p_holdoff_ms, 0644);
MODULE_PARM_DESC(holdoff_ms, "No inflation for this long after memory pressure, ms (0..86400000, default 20000)");
module_param_cb(enabled, &dsb_param_ops, &p_enabled, 0644);
MODULE_PARM_DESC(enabled, "0: give everything back and stop inflating; 1: self-balloon (default)");

static void dsb_read_config(struct dsb_config *cfg)
{
	*cfg = (struct dsb_config) {
		.interval_ms = READ_ONCE(p_interval_ms.val),
		.free_pct = READ_ONCE(p_free_pct.val),
		.min_pages = dsb_mb_to_pages(READ_ONCE(p_min_mb.val),
					     PAGE_SHIFT),
		.reserve_pages = dsb_mb_to_pages(READ_ONCE(p_reserve_mb.val),
						 PAGE_SHIFT),
		.max_step_pages = dsb_mb_to_pages(READ_ONCE(p_max_step_mb.val),
						  PAGE_SHIFT),
		.holdoff_ms = READ_ONCE(p_holdoff_ms.val),
		.hysteresis_pages = dsb_mb_to_pages(DSB_HYSTERESIS_MB,
						    PAGE_SHIFT),
		.enabled = READ_ONCE(p_enabled.val) != 0,
	};
}

/* ---- the balloon driver ----------------------------------------------- */

#if IS_ENABLED(CONFIG_XEN_BALLOON)
static bool dsb_balloon_present(void)
{
	return true;
}

static void dsb_balloon_read(u64 *current_pages, u64 *target_pages)
{
	*current_pages = READ_ONCE(balloon_stats.current_pages);
	*target_pages = READ_ONCE(balloon_stats.target_pages);
}

static void dsb_balloon_set(u64 target_pages)
{
	balloon_set_new_target((unsigned long)target_pages);
}
#else
static bool dsb_balloon_present(void)
{
	return false;
}

static void dsb_balloon_read(u64 *current_pages, u64 *target_pages)
{
	*current_pages = 0;
	*target_pages = 0;
}

static void dsb_balloon_set(u64 target_pages)
{
}
#endif

/* ---- sampling ----------------------------------------------------------- */

/* Milliseconds since boot, suspend included: the clock of the hold-off. */
static u64 dsb_now_ms(void)
{
	return div_u64(ktime_get_boottime_ns(), NSEC_PER_MSEC);
}

/* Memory counters; the balloon driver's are read under dsb_lock. */
static void dsb_read_sample(struct dsb_sample *smp)
{
	long avail = si_mem_available();

	smp->now_ms = dsb_now_ms();
	smp->free_pages = global_zone_page_state(NR_FREE_PAGES);
	smp->avail_pages = avail > 0 ? avail : 0;
	smp->committed_pages = vm_memory_committed();
	smp->totalram_pages = totalram_pages();
}

#ifdef CONFIG_VM_EVENT_COUNTERS
static unsigned long *dsb_events;	/* only the work item uses it */

static int dsb_vmstat_alloc(void)
{
	dsb_events = kcalloc(NR_VM_EVENT_ITEMS, sizeof(*dsb_events),
			     GFP_KERNEL);
	return dsb_events ? 0 : -ENOMEM;
}

static void dsb_vmstat_free(void)
{
	kfree(dsb_events);
	dsb_events = NULL;
}

/* Sums of the reclaim counters; all_vm_events() may sleep. */
static bool dsb_vmstat_read(u64 *allocstall, u64 *scanned, u64 *reclaimed)
{
	int i;

	all_vm_events(dsb_events);
	*allocstall = 0;
	for (i = ALLOCSTALL_NORMAL - ZONE_NORMAL; i <= ALLOCSTALL_MOVABLE; i++)
		*allocstall += dsb_events[i];
	*scanned = (u64)dsb_events[PGSCAN_KSWAPD] + dsb_events[PGSCAN_DIRECT];
	*reclaimed = (u64)dsb_events[PGSTEAL_KSWAPD] +
		     dsb_events[PGSTEAL_DIRECT];
	return true;
}
#else
static int dsb_vmstat_alloc(void)
{
	return 0;
}

static void dsb_vmstat_free(void)
{
}

static bool dsb_vmstat_read(u64 *allocstall, u64 *scanned, u64 *reclaimed)
{
	return false;
}
#endif

/* ---- the policy tick ---------------------------------------------------- */

static void dsb_work_fn(struct work_struct *work)
{
	static u64 prev_stall, prev_scan, prev_steal;
	static bool have_prev;
	struct dsb_config cfg;
	struct dsb_sample smp;
	struct dsb_decision d;
	u64 stall, scan, steal;
	bool pressure = false;

	dsb_read_config(&cfg);
	if (dsb_vmstat_read(&stall, &scan, &steal)) {
		if (have_prev)
			pressure = dsb_vmstat_pressure(stall - prev_stall,
						       scan - prev_scan,
						       steal - prev_steal);
		prev_stall = stall;
		prev_scan = scan;
		prev_steal = steal;
		have_prev = true;
	}
	dsb_read_sample(&smp);

	spin_lock(&dsb_lock);
	if (!dsb_running) {
		spin_unlock(&dsb_lock);
		return;
	}
	if (pressure)
		dsb_note_pressure(&dsb, &cfg, smp.now_ms, DSB_SRC_VMSTAT);
	dsb_balloon_read(&smp.current_pages, &smp.target_pages);
	d = dsb_tick(&dsb, &cfg, &smp);
	if (d.action == DSB_INFLATE || d.action == DSB_DEFLATE ||
	    d.action == DSB_RESYNC)
		dsb_balloon_set(d.target);
	queue_delayed_work(system_freezable_wq, &dsb_work,
			   msecs_to_jiffies((unsigned int)d.delay_ms));
	spin_unlock(&dsb_lock);

	if (d.action == DSB_ADOPT)
		pr_info("target changed elsewhere to %llu kB: new ceiling\n",
			dsb_pages_to_kb(d.target, PAGE_SHIFT));
	else if (d.action == DSB_RESYNC)
		pr_warn_ratelimited("balloon driver stuck above target; target reset to %llu kB\n",
				    dsb_pages_to_kb(d.target, PAGE_SHIFT));
}

/* ---- deflation under pressure ---------------------------------------- */

static unsigned long dsb_shrink_count(struct shrinker *shrinker,
				      struct shrink_control *sc)
{
	u64 n = 0;

	spin_lock(&dsb_lock);
	if (dsb_running)
		n = dsb_reclaimable(&dsb);
	spin_unlock(&dsb_lock);
	return n ? (unsigned long)min_t(u64, n, SHRINK_EMPTY - 1) : SHRINK_EMPTY;
}

static unsigned long dsb_shrink_scan(struct shrinker *shrinker,
				     struct shrink_control *sc)
{
	struct dsb_config cfg;
	u64 up = 0;

	dsb_read_config(&cfg);
	spin_lock(&dsb_lock);
	if (dsb_running) {
		up = dsb_reclaim(&dsb, &cfg, dsb_now_ms(), sc->nr_to_scan,
				 DSB_SRC_SHRINKER);
		if (up)
			dsb_balloon_set(dsb.target);
	}
	spin_unlock(&dsb_lock);
	return up ? (unsigned long)up : SHRINK_STOP;
}

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 7, 0)
static struct shrinker *dsb_shrinker;

static int dsb_shrinker_register(void)
{
	dsb_shrinker = shrinker_alloc(0, KBUILD_MODNAME);
	if (!dsb_shrinker)
		return -ENOMEM;
	dsb_shrinker->count_objects = dsb_shrink_count;
	dsb_shrinker->scan_objects = dsb_shrink_scan;
	dsb_shrinker->seeks = DEFAULT_SEEKS;
	shrinker_register(dsb_shrinker);
	return 0;
}

static void dsb_shrinker_unregister(void)
{
	shrinker_free(dsb_shrinker);
}
#else
static struct shrinker dsb_shrinker = {
	.count_objects = dsb_shrink_count,
	.scan_objects = dsb_shrink_scan,
	.seeks = DEFAULT_SEEKS,
};

static int dsb_shrinker_register(void)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 0, 0)
	return register_shrinker(&dsb_shrinker, KBUILD_MODNAME);
#else
	return register_shrinker(&dsb_shrinker);
#endif
}

static void dsb_shrinker_unregister(void)
{
	unregister_shrinker(&dsb_shrinker);
}
#endif

/* Before the OOM killer picks a victim: everything back, now. */
static int dsb_oom_notify(struct notifier_block *nb, unsigned long unused,
			  void *parm)
{
	unsigned long *freed = parm;
	struct dsb_config cfg;
	u64 up = 0;

	dsb_read_config(&cfg);
	spin_lock(&dsb_lock);
	if (dsb_running) {
		up = dsb_reclaim(&dsb, &cfg, dsb_now_ms(), DSB_U64_MAX,
				 DSB_SRC_OOM);
		if (up)
			dsb_balloon_set(dsb.target);
	}
	spin_unlock(&dsb_lock);
	/* not free yet: the balloon thread repopulates them; the allocator retries */
	*freed += (unsigned long)up;
	return NOTIFY_OK;
}

static struct notifier_block dsb_oom_nb = {
	.notifier_call = dsb_oom_notify,
};

/* ---- sysfs: /sys/kernel/guest_balloon/ ---------------------------------- */

static struct kobject *dsb_kobj;

#define DSB_PAGES_TO_KB(p)	dsb_pages_to_kb((p), PAGE_SHIFT)

#define DSB_ATTR_U64(_name, _expr)					\
static ssize_t _name##_show(struct kobject *kobj,			\
			    struct kobj_attribute *attr, char *buf)	\
{									\
	u64 v;								\
									\
	spin_lock(&dsb_lock);						\
	v = (_expr);							\
	spin_unlock(&dsb_lock);						\
	return sysfs_emit(buf, "%llu\n", v);				\
}									\
static struct kobj_attribute _name##_attr = __ATTR_RO(_name)

DSB_ATTR_U64(target_kb, DSB_PAGES_TO_KB(dsb.target));
DSB_ATTR_U64(ceiling_kb, DSB_PAGES_TO_KB(dsb.ceiling));
DSB_ATTR_U64(inflations, dsb.inflations);
DSB_ATTR_U64(deflations, dsb.deflations);
DSB_ATTR_U64(pages_returned, dsb.pages_returned);
DSB_ATTR_U64(pages_reclaimed, dsb.pages_reclaimed);
DSB_ATTR_U64(pressure_events, dsb.pressure_events);
DSB_ATTR_U64(last_pressure_ms, dsb.last_pressure_ms);
DSB_ATTR_U64(holdoff_remaining_ms,
	     dsb_sat_sub(dsb.holdoff_until_ms, dsb_now_ms()));
DSB_ATTR_U64(stalls, dsb.stalls);
DSB_ATTR_U64(adoptions, dsb.adoptions);

static ssize_t last_pressure_source_show(struct kobject *kobj,
					 struct kobj_attribute *attr,
					 char *buf)
{
	enum dsb_pressure_src src;

	spin_lock(&dsb_lock);
	src = dsb.last_pressure_src;
	spin_unlock(&dsb_lock);
	return sysfs_emit(buf, "%s\n", dsb_src_name(src));
}

static struct kobj_attribute last_pressure_source_attr =
	__ATTR_RO(last_pressure_source);

static ssize_t state_show(struct kobject *kobj, struct kobj_attribute *attr,
			  char *buf)
{
	static const char * const names[] = {
		[DSB_BP_DONE] = "done",
		[DSB_BP_EAGAIN] = "eagain",
		[DSB_BP_ECANCELED] = "ecanceled",
	};
	enum dsb_bp_state st;

	spin_lock(&dsb_lock);
	st = dsb.bp_state;
	spin_unlock(&dsb_lock);
	return sysfs_emit(buf, "%s\n", (unsigned int)st < ARRAY_SIZE(names) ?
			  names[st] : "?");
}

static struct kobj_attribute state_attr = __ATTR_RO(state);

static struct attribute *dsb_attrs[] = {
	&target_kb_attr.attr,
	&ceiling_kb_attr.attr,
	&inflations_attr.attr,
	&deflations_attr.attr,
	&pages_returned_attr.attr,
	&pages_reclaimed_attr.attr,
	&pressure_events_attr.attr,
	&last_pressure_ms_attr.attr,
	&last_pressure_source_attr.attr,
	&holdoff_remaining_ms_attr.attr,
	&stalls_attr.attr,
	&adoptions_attr.attr,
	&state_attr.attr,
	NULL,
};

static const struct attribute_group dsb_attr_group = {
	.attrs = dsb_attrs,
};

/* ---- load and unload ----------------------------------------------------- */

static int __init dsb_init(void)
{
	u64 cur, tgt;
	int ret;

	if (!xen_domain()) {
		pr_err("not a Xen guest: nothing to balloon\n");
		return -ENODEV;
	}
	if (xen_initial_domain()) {
		pr_err("refusing to self-balloon dom0\n");
		return -ENODEV;
	}
	if (!dsb_balloon_present()) {
		pr_err("Xen balloon driver absent (CONFIG_XEN_BALLOON=n)\n");
		return -ENODEV;
	}
	dsb_balloon_read(&cur, &tgt);
	if (!cur || !tgt) {
		pr_err("Xen balloon driver not initialised\n");
		return -ENODEV;
	}

	ret = dsb_vmstat_alloc();
	if (ret)
		return ret;

	spin_lock(&dsb_lock);
	dsb_state_init(&dsb, tgt);
	spin_unlock(&dsb_lock);

	dsb_kobj = kobject_create_and_add(KBUILD_MODNAME, kernel_kobj);
	if (!dsb_kobj) {
		ret = -ENOMEM;
		goto err_vmstat;
	}
	ret = sysfs_create_group(dsb_kobj, &dsb_attr_group);
	if (ret)
		goto err_kobj;
	ret = dsb_shrinker_register();
	if (ret)
		goto err_kobj;
	ret = register_oom_notifier(&dsb_oom_nb);
	if (ret)
		goto err_shrinker;

	spin_lock(&dsb_lock);
	dsb_running = true;
	queue_delayed_work(system_freezable_wq, &dsb_work,
			   msecs_to_jiffies(READ_ONCE(p_interval_ms.val)));
	spin_unlock(&dsb_lock);

	pr_info("loaded: target %llu kB, every %lu ms return %lu%% of free memory, floor %lu MiB + committed + %lu MiB\n",
		dsb_pages_to_kb(tgt, PAGE_SHIFT), READ_ONCE(p_interval_ms.val),
		READ_ONCE(p_free_pct.val), READ_ONCE(p_min_mb.val),
		READ_ONCE(p_reserve_mb.val));
	return 0;

err_shrinker:
	dsb_shrinker_unregister();
err_kobj:
	kobject_put(dsb_kobj);
err_vmstat:
	dsb_vmstat_free();
	return ret;
}

static void __exit dsb_exit(void)
{
	u64 cur, tgt, restored;
	struct dsb_state last;

	spin_lock(&dsb_lock);
	dsb_running = false;
	spin_unlock(&dsb_lock);
	/* the work item requeues itself only while dsb_running */
	cancel_delayed_work_sync(&dsb_work);
	unregister_oom_notifier(&dsb_oom_nb);
	dsb_shrinker_unregister();

	spin_lock(&dsb_lock);
	dsb_balloon_read(&cur, &tgt);
	/* leave a target someone else set after our last tick alone */
	restored = tgt == dsb.target ? dsb.ceiling : tgt;
	dsb_balloon_set(restored);
	last = dsb;
	spin_unlock(&dsb_lock);

	kobject_put(dsb_kobj);
	dsb_vmstat_free();
	pr_info("unloaded: target restored to %llu kB after %llu inflations, %llu deflations\n",
		dsb_pages_to_kb(restored, PAGE_SHIFT), last.inflations,
		last.deflations);
}

module_init(dsb_init);
module_exit(dsb_exit);

MODULE_DESCRIPTION("Dynamic self-ballooning for Xen guests (post-copy migration)");
MODULE_AUTHOR("xen-postcopy developers");
MODULE_LICENSE("GPL");

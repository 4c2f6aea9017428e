// SPDX-License-Identifier: GPL-2.0
/*
 * postcopy_grants - make every frame present before this guest grants it.
 *
 * Why
 * ---
 * During post-copy, the pages that have not arrived yet are absent on the
 * destination (paged out in Xen's p2m).  A vCPU of the guest that touches
 * one simply waits inside Xen while the pager fetches it: the guest never
 * sees a fault.  A backend in dom0 does not wait that way.  When netback or
 * blkback maps or copies an absent frame through a grant, Xen answers
 * GNTST_eagain and Linux's gnttab_retry_eagain_gop() retries with msleep()
 * for up to ~32 s, then fails the operation.  netback's transmit path runs
 * that retry in NAPI (softirq) context, where any sleep is a "BUG:
 * scheduling while atomic"; blkback stalls its ring for the retry.
 *
 * The frontends grant pages the guest's CPU may not have touched since the
 * switch: page-cache pages handed to xen-netfront by sendfile(), receive
 * buffers and read buffers filled only by the backend.
 *
 * How
 * ---
 * Every grant this kernel issues goes through the grant table's entry
 * update (gnttab_update_entry_v1/_v2, called through gnttab_interface), and
 * that function writes the entry's flags last.  A kprobe on its entry reads
 * one byte of the frame first.  If the frame is absent this vCPU stalls in
 * Xen until the pager has loaded it, as for any access of the guest's own;
 * the read is not a guest page fault, so it is fine in any context (NAPI,
 * hard IRQ, under spinlocks).  Only then is the grant published, so a
 * backend never finds an absent frame behind a grant issued after the
 * switch.  A present frame costs one cache-line read per grant.
 *
 * Grants issued before the switch are not covered: the frontends reconnect
 * to the destination's backends on resume and grant their rings and
 * buffers anew, which this module sees.
 *
 * Safety
 * ------
 * - Loading fails with -ENODEV off Xen, in dom0, and in PV guests (Xen's
 *   paging, which post-copy uses, exists only for HVM and PVH guests, whose
 *   grant frames are their own pfns).
 * - The read uses copy_from_kernel_nofault(): a frame outside the kernel's
 *   direct map (not RAM, highmem) is counted in "skipped", never an oops.
 * - "enabled" can be cleared at run time; the probes stay registered until
 *   unload, which waits for running handlers (unregister_kprobe()).
 */
#define pr_fmt(fmt) "xen:" KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/ptrace.h>
#include <linux/uaccess.h>

#include <xen/features.h>
#include <xen/xen.h>

static bool enabled = true;
module_param(enabled, bool, 0644);
MODULE_PARM_DESC(enabled, "Read each frame before it is granted (default 1)");

static atomic64_t touched = ATOMIC64_INIT(0);
static atomic64_t skipped = ATOMIC64_INIT(0);

static int pcg_counter_get(char *buf, const struct kernel_param *kp)
{
	return scnprintf(buf, PAGE_SIZE, "%lld\n",
			 (long long)atomic64_read(kp->arg));
}

static const struct kernel_param_ops pcg_counter_ops = {
	.get = pcg_counter_get,
};

module_param_cb(touched, &pcg_counter_ops, &touched, 0444);
MODULE_PARM_DESC(touched, "Frames read before being granted");
module_param_cb(skipped, &pcg_counter_ops, &skipped, 0444);
MODULE_PARM_DESC(skipped, "Granted frames outside the direct map (not read)");

/*
 * A probed function and the position (0-based) of its frame argument.  The
 * entry updates are preferred: every grant goes through them.  The exported
 * grant calls are the fallback for a kernel whose entry updates cannot be
 * probed; they cover the frontends, which are modules and so always call
 * them out of line.
 */
struct pcg_probe {
	struct kprobe kp;
	unsigned int frame_arg;
	bool registered;
};

static struct pcg_probe pcg_primary[] = {
	{ .kp = { .symbol_name = "gnttab_update_entry_v1" }, .frame_arg = 2 },
	{ .kp = { .symbol_name = "gnttab_update_entry_v2" }, .frame_arg = 2 },
};

static struct pcg_probe pcg_fallback[] = {
	{ .kp = { .symbol_name = "gnttab_grant_foreign_access_ref" }, .frame_arg = 2 },
	{ .kp = { .symbol_name = "gnttab_grant_foreign_access" }, .frame_arg = 1 },
};

static int pcg_pre(struct kprobe *kp, struct pt_regs *regs)
{
	const struct pcg_probe *p = container_of(kp, struct pcg_probe, kp);
	unsigned long pfn;
	void *addr;
	u8 byte;

	if (!READ_ONCE(enabled))
		return 0;
	/* HVM/PVH: the granted frame is a gfn, which is the guest's pfn. */
	pfn = regs_get_kernel_argument(regs, p->frame_arg);
	addr = pfn_valid(pfn) ? page_address(pfn_to_page(pfn)) : NULL;
	if (!addr || copy_from_kernel_nofault(&byte, addr, 1)) {
		atomic64_inc(&skipped);
		return 0;
	}
	atomic64_inc(&touched);
	return 0;
}

static void pcg_unregister(struct pcg_probe *probes, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (probes[i].registered)
			unregister_kprobe(&probes[i].kp);
		probes[i].registered = false;
	}
}

/* Registers what it can of @probes; returns how many it registered. */
static unsigned int pcg_register(struct pcg_probe *probes, size_t n)
{
	unsigned int ok = 0;
	size_t i;
	int ret;

	for (i = 0; i < n; i++) {
		probes[i].kp.pre_handler = pcg_pre;
		ret = register_kprobe(&probes[i].kp);
		if (ret) {
			pr_info("%s: not probed (%d)\n",
				probes[i].kp.symbol_name, ret);
			continue;
		}
		probes[i].registered = true;
		ok++;
		pr_info("%s: probed\n", probes[i].kp.symbol_name);
	}
	return ok;
}

static int __init pcg_init(void)
{
	if (!xen_domain() || xen_initial_domain()) {
		pr_info("not a Xen guest (domU): nothing to do\n");
		return -ENODEV;
	}
	if (!xen_feature(XENFEAT_auto_translated_physmap)) {
		pr_info("PV guest: Xen pages out only HVM and PVH guests\n");
		return -ENODEV;
	}
	if (pcg_register(pcg_primary, ARRAY_SIZE(pcg_primary)))
		return 0;
	if (pcg_register(pcg_fallback, ARRAY_SIZE(pcg_fallback)))
		return 0;
	pr_err("no grant function could be probed\n");
	return -ENOENT;
}

static void __exit pcg_exit(void)
{
	pcg_unregister(pcg_primary, ARRAY_SIZE(pcg_primary));
	pcg_unregister(pcg_fallback, ARRAY_SIZE(pcg_fallback));
	pr_info("unloaded: %lld frames read, %lld skipped\n",
		(long long)atomic64_read(&touched),
		(long long)atomic64_read(&skipped));
}

module_init(pcg_init);
module_exit(pcg_exit);

MODULE_DESCRIPTION("Make frames present before they are granted (post-copy migration on Xen)");
MODULE_AUTHOR("xen-postcopy developers");
MODULE_LICENSE("GPL");

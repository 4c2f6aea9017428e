/* SPDX-License-Identifier: LGPL-2.1-only */
/*
 * libxl_postcopy.h - C ABI of libxl_postcopy.so, the Rust post-copy engine
 * as seen from patched libxenguest (inside libxl-save-helper).
 *
 * Contract: libxenguest dlopen()s LIBXL_POSTCOPY_SONAME, resolves
 * libxl_postcopy_abi_version() first and refuses to continue unless it
 * returns LIBXL_POSTCOPY_ABI_VERSION.  Every other entry point returns 0 on
 * success or a negative errno value on failure, after logging the reason
 * through the xentoollog logger it was given.  No entry point ever unwinds
 * (a Rust panic is caught and returned as -EIO).
 *
 * Save side, called from xg_sr_save.c:save() when XCFLAGS_POSTCOPY is set:
 *
 *   (libxenguest: log-dirty mode on)
 *   (libxenguest: optional live pre-copy rounds; without them:)
 *   libxl_postcopy_save_prescan(&params) -> finds the populated pfns while
 *                                           the guest still runs; with
 *                                           LIBXL_POSTCOPY_EVICT_EARLY=on
 *                                           sends them (EARLY_PFNS) and
 *                                           waits for EARLY_DONE on back_fd
 *   (libxenguest: suspend_domain, the final log-dirty bitmap)
 *   h = libxl_postcopy_save_begin(&params, dirty_bitmap, nr_dirty_bits)
 *       -> computes the owed pfn set, writes POSTCOPY_BEGIN and the
 *          pages that must be present before the guest runs
 *   (libxenguest: end_of_checkpoint: TSC_INFO, HVM_CONTEXT, HVM_PARAMS)
 *   libxl_postcopy_save_transition(h)   -> POSTCOPY_PFNS..., an empty
 *                                          POSTCOPY_VCPU_STATE (end of the
 *                                          pre-switch records), waits for
 *                                          POSTCOPY_READY on back_fd, then
 *                                          TRANSITION; -ECANCELED if the
 *                                          destination sent POSTCOPY_ABORT
 *                                          instead (the guest never ran
 *                                          there: the source may resume it)
 *   (libxenguest: callbacks->postcopy_transition(); libxl writes its records)
 *   libxl_postcopy_save_serve(h)        -> serves faults, pushes the rest,
 *                                          returns after POSTCOPY_COMPLETE:
 *                                          0, or
 *                                          LIBXL_POSTCOPY_STREAM_REPLACED
 *                                          (then no END record: the
 *                                          stream is gone); -ECANCELED if
 *                                          the destination proved the
 *                                          guest never ran there (its
 *                                          domain destroyed before libxl
 *                                          unpaused it: ABORT without
 *                                          RESUMED): libxl undoes the
 *                                          transition and resumes it here
 *   libxl_postcopy_save_free(h)
 *   (libxenguest: write_end_record)
 *
 * Restore side, called from xg_sr_restore.c:process_record():
 *
 *   POSTCOPY_EARLY_PFNS (before BEGIN, while the source's guest runs)
 *                      -> libxl_postcopy_restore_early(&params, body, len):
 *                         pages the pfns out, answers POSTCOPY_EARLY_DONE
 *                         on back_fd; the next restore_begin of the domain
 *                         takes that memory over
 *   POSTCOPY_BEGIN     -> h = libxl_postcopy_restore_begin(&params, body, len)
 *   POSTCOPY_PAGE_DATA / POSTCOPY_PFNS (before TRANSITION)
 *                      -> libxl_postcopy_restore_record(h, type, body, len)
 *   POSTCOPY_VCPU_STATE (the source's end-of-pre-switch marker)
 *                      -> libxl_postcopy_restore_record() answers
 *                         POSTCOPY_READY on back_fd; a record that fails
 *                         before it answers POSTCOPY_ABORT instead
 *   POSTCOPY_TRANSITION-> (C: stream_complete, restore_results,
 *                          callbacks->postcopy_transition: guest unpaused)
 *                         libxl_postcopy_restore_serve(h): reads the rest
 *                         of the post-copy records from stream_fd, serves
 *                         mem_paging requests, sends POSTCOPY_FAULT and
 *                         POSTCOPY_COMPLETE on back_fd; returns when every
 *                         owed page is loaded: 0, or
 *                         LIBXL_POSTCOPY_STREAM_REPLACED (then the stream
 *                         is gone: no END record is read from it)
 *                         libxl_postcopy_restore_free(h)
 */
#ifndef LIBXL_POSTCOPY_H
#define LIBXL_POSTCOPY_H

#include <stddef.h>
#include <stdint.h>

#include <xenctrl.h>
#include <xentoollog.h>

#define LIBXL_POSTCOPY_ABI_VERSION 6
#define LIBXL_POSTCOPY_SONAME "libxl_postcopy.so.1"

/* Stream record types, allocated above Xen 4.17's last (0x12). */
#define REC_TYPE_POSTCOPY_BEGIN       0x00000013U
#define REC_TYPE_POSTCOPY_PFNS        0x00000014U
#define REC_TYPE_POSTCOPY_TRANSITION  0x00000015U
#define REC_TYPE_POSTCOPY_PAGE_DATA   0x00000016U
#define REC_TYPE_POSTCOPY_FAULT       0x00000017U
#define REC_TYPE_POSTCOPY_COMPLETE    0x00000018U
#define REC_TYPE_POSTCOPY_ZERO        0x00000019U
#define REC_TYPE_POSTCOPY_VCPU_STATE  0x0000001aU
#define REC_TYPE_POSTCOPY_RESUMED     0x0000001bU
#define REC_TYPE_POSTCOPY_RECOVER     0x0000001cU
#define REC_TYPE_POSTCOPY_ABORT       0x0000001dU
#define REC_TYPE_POSTCOPY_READY       0x0000001eU
/* Back channel only (the helpers' own; libxenguest never reads it). */
#define REC_TYPE_POSTCOPY_ACK         0x0000001fU
/*
 * Before POSTCOPY_BEGIN, while the source's guest still runs (opt-in,
 * LIBXL_POSTCOPY_EVICT_EARLY=on at the source): the populated pfns of its
 * prescan, which the destination pages out ahead of the stop, answered by
 * EARLY_DONE on the back channel (the helpers' own).
 */
#define REC_TYPE_POSTCOPY_EARLY_PFNS  0x00000020U
#define REC_TYPE_POSTCOPY_EARLY_DONE  0x00000021U

/* Pre-paging strategies (--prepage=); ids are stable on the wire. */
#define LIBXL_POSTCOPY_PREPAGE_NONE            0
#define LIBXL_POSTCOPY_PREPAGE_LINEAR          1
#define LIBXL_POSTCOPY_PREPAGE_BUBBLE          2
#define LIBXL_POSTCOPY_PREPAGE_BUBBLE_FORWARD  3
#define LIBXL_POSTCOPY_PREPAGE_MULTI_PIVOT     4
#define LIBXL_POSTCOPY_PREPAGE_HISTORY         5

/* Returns LIBXL_POSTCOPY_ABI_VERSION of the loaded library. */
uint32_t libxl_postcopy_abi_version(void);

/*
 * Parses a --prepage= argument ("bubble", "multi-pivot:7", ...), the one
 * source of truth for strategy names.  On success stores the strategy id
 * and its argument (K for multi-pivot, else 0) and returns 0.  On failure
 * returns -EINVAL and writes a one-line message naming the valid
 * strategies into err (always NUL-terminated when errlen > 0).
 */
int libxl_postcopy_parse_strategy(const char *arg, uint32_t *strategy,
                                  uint32_t *strategy_arg,
                                  char *err, size_t errlen);

/*
 * Parses an `xl migrate --max-bandwidth=` value: bytes per second with an
 * optional binary K, M or G suffix ("50M" is 50 MiB/s), at least 4K; the
 * rule libxl-save-helper applies to LIBXL_POSTCOPY_MAX_BANDWIDTH, the cap
 * on the post-copy push (fault replies exempt).  On success stores the
 * rate and returns 0; on failure returns -EINVAL with a one-line message
 * in err (always NUL-terminated when errlen > 0).  Added within ABI 5: a
 * caller that finds no such symbol has an older library.
 */
int libxl_postcopy_parse_rate(const char *arg, uint64_t *rate,
                              char *err, size_t errlen);

/*
 * This host's post-copy capabilities as one line (no newline, at most 512
 * bytes): the library's ABI and release, the hypervisor's version,
 * whether it has mem_paging, the strategies known.  `xl migrate-receive
 * --postcopy` sends it to the sender before anything is suspended.
 * Returns 0, or -errno with a message in buf (always NUL-terminated when
 * len > 0).
 */
int libxl_postcopy_host_capabilities(char *buf, size_t len);

/*
 * The sender's check of a receiver's capability line (as the receiver's
 * libxl_postcopy_host_capabilities() wrote it, or "error=<why>") against
 * this library's ABI and the --prepage= strategy: 0 with a one-line
 * summary of the receiver in buf, or -EPROTO with one sentence saying
 * what the receiver lacks (-EINVAL: bad strategy; -EIO: internal error).
 */
int libxl_postcopy_check_receiver(const char *line, const char *strategy,
                                  char *buf, size_t len);

/*
 * precopy_rounds value of --postcopy-after=auto (the same value as
 * libxl.h's LIBXL_POSTCOPY_PRECOPY_AUTO).
 */
#define LIBXL_POSTCOPY_PRECOPY_AUTO 255

/*
 * The precopy policy of a hybrid migration, called by libxenguest at each
 * step of its live loop with its struct precopy_stats (iteration and
 * dirty_count; dirty_count is -1 right after a round was sent).
 * precopy_rounds is N of --postcopy-after=N or
 * LIBXL_POSTCOPY_PRECOPY_AUTO (switch when the dirty rate stops falling,
 * xen-postcopy's postcopy::switch rule).  An admin's `xl-postcopy switch
 * DOMAIN` (the file <status dir>/<domid>.switch) switches at the next
 * call.  Returns 1 to stop and switch to post-copy, 0 to continue.
 */
int libxl_postcopy_precopy_policy(uint32_t domid, uint32_t precopy_rounds,
                                  unsigned int iteration, long dirty_count);

struct libxl_postcopy_save_params {
    uint32_t abi_version;     /* = LIBXL_POSTCOPY_ABI_VERSION */
    uint32_t domid;
    xc_interface *xch;
    xentoollog_logger *lg;    /* may be NULL: log to stderr */
    int stream_fd;            /* records to the destination */
    int back_fd;              /* fault requests from the destination */
    uint32_t strategy;        /* LIBXL_POSTCOPY_PREPAGE_* */
    uint32_t strategy_arg;
    uint32_t precopy_rounds;  /* live rounds already sent (hybrid) */
    uint32_t flags;           /* reserved, must be 0 */
};

struct libxl_postcopy_restore_params {
    uint32_t abi_version;     /* = LIBXL_POSTCOPY_ABI_VERSION */
    uint32_t domid;
    xc_interface *xch;
    xentoollog_logger *lg;    /* may be NULL: log to stderr */
    int stream_fd;            /* records from the source */
    int back_fd;              /* fault requests to the source */
    uint32_t flags;           /* reserved, must be 0 */
};

struct libxl_postcopy_save;
struct libxl_postcopy_restore;

/*
 * Without pre-copy rounds, called while the domain still runs, after
 * log-dirty mode was turned on: finds the domain's populated pfns (a type
 * query of every pfn up to max_gpfn, the slow part) for the next
 * libxl_postcopy_save_begin() of the same domain, which then asks only
 * about the pfns the final dirty bitmap names.  Exact only with the
 * hypervisor's xen-logdirty-p2m-changes (a pfn populated or freed is
 * marked dirty); PoD guests (HVM, memory < maxmem) are not covered.
 * Returns 0 or a negative errno; after a failure pass no bitmap to
 * save_begin (it then looks at every pfn while the domain is stopped).
 */
int libxl_postcopy_save_prescan(const struct libxl_postcopy_save_params *params);

/*
 * dirty_bitmap: the log-dirty bitmap collected at suspend, nr_bits long:
 * with pre-copy rounds, bit n = pfn n dirtied since last sent (what is
 * owed); without, bit n = pfn n written, populated or freed since
 * libxl_postcopy_save_prescan() (what must be looked at again).  NULL:
 * nothing is known, every pfn is looked at and every populated one is
 * owed.  On failure returns NULL and stores a negative errno in *rc (if
 * rc is not NULL).
 */
struct libxl_postcopy_save *
libxl_postcopy_save_begin(const struct libxl_postcopy_save_params *params,
                          const unsigned long *dirty_bitmap,
                          uint64_t nr_bits, int *rc);
/*
 * What libxl_postcopy_save_serve() and libxl_postcopy_restore_serve()
 * return (instead of 0) when the migration completed, every owed page at
 * the destination, but over a connection that replaced the migration
 * stream after it broke (`xl-postcopy recover` on both hosts within
 * LIBXL_POSTCOPY_RECOVER_TIMEOUT seconds, default 60): nothing more can be
 * written to or read from stream_fd and back_fd, so libxenguest, libxl
 * and xl end the migration without their END records and final
 * handshake.
 */
#define LIBXL_POSTCOPY_STREAM_REPLACED 1

int libxl_postcopy_save_transition(struct libxl_postcopy_save *h);
int libxl_postcopy_save_serve(struct libxl_postcopy_save *h);
void libxl_postcopy_save_free(struct libxl_postcopy_save *h);

int libxl_postcopy_restore_early(
    const struct libxl_postcopy_restore_params *params,
    const void *body, uint32_t len);
struct libxl_postcopy_restore *
libxl_postcopy_restore_begin(const struct libxl_postcopy_restore_params *params,
                             const void *begin_body, uint32_t len, int *rc);
int libxl_postcopy_restore_record(struct libxl_postcopy_restore *h,
                                  uint32_t type, const void *body,
                                  uint32_t len);
int libxl_postcopy_restore_serve(struct libxl_postcopy_restore *h);
void libxl_postcopy_restore_free(struct libxl_postcopy_restore *h);

#endif /* LIBXL_POSTCOPY_H */

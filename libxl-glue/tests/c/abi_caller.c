/* SPDX-License-Identifier: LGPL-2.1-only */
/*
 * A C caller of libxl_postcopy.so, compiled by tests/c_abi.rs against
 * include/libxl_postcopy.h and linked against the library just built, so
 * that header and library cannot drift.  It prints what the Rust side
 * compares ("key=value" lines) and exits non-zero on the first failure.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libxl_postcopy.h"

static int failures;

#define CHECK(cond) do {                                                \
        if ( !(cond) ) {                                                \
            fprintf(stderr, "abi_caller: %s:%d: check failed: %s\n",    \
                    __FILE__, __LINE__, #cond);                         \
            failures++;                                                 \
        }                                                               \
    } while ( 0 )

#define SHOW(name) printf(#name "=%llu\n", (unsigned long long)(name))

static void parse_ok(const char *arg, uint32_t want, uint32_t want_arg)
{
    uint32_t s = 99, a = 99;
    char err[256] = "untouched";
    int rc = libxl_postcopy_parse_strategy(arg, &s, &a, err, sizeof(err));

    printf("parse %s=%d %u %u\n", arg, rc, s, a);
    CHECK(rc == 0);
    CHECK(s == want);
    CHECK(a == want_arg);
    CHECK(strcmp(err, "untouched") == 0);
}

static void parse_bad(const char *arg)
{
    uint32_t s = 99, a = 99;
    char err[256];
    char tiny[8];
    int rc;

    memset(err, 'x', sizeof(err));
    rc = libxl_postcopy_parse_strategy(arg, &s, &a, err, sizeof(err));
    printf("parse-bad %s=%d %s\n", arg, rc, err);
    CHECK(rc == -EINVAL);
    CHECK(s == 99 && a == 99);
    CHECK(memchr(err, '\0', sizeof(err)) != NULL);
    CHECK(strstr(err, "multi-pivot") != NULL);

    memset(tiny, 'x', sizeof(tiny));
    rc = libxl_postcopy_parse_strategy(arg, &s, &a, tiny, sizeof(tiny));
    CHECK(rc == -EINVAL);
    CHECK(tiny[sizeof(tiny) - 1] == '\0');
    CHECK(strlen(tiny) == sizeof(tiny) - 1);

    rc = libxl_postcopy_parse_strategy(arg, &s, &a, NULL, 0);
    CHECK(rc == -EINVAL);
}

/* xl-postcopy switch: create <status dir>/<domid>.switch. */
static void request_switch(uint32_t domid)
{
    const char *dir = getenv("XEN_POSTCOPY_STATUS_DIR");
    char path[4096];
    FILE *f;

    CHECK(dir != NULL);
    if ( !dir )
        return;
    snprintf(path, sizeof(path), "%s/%u.switch", dir, domid);
    f = fopen(path, "w");
    CHECK(f != NULL);
    if ( f )
        fclose(f);
}

/*
 * libxenguest's send_memory_live() loop with xg_sr_save.c's
 * postcopy_precopy_policy(): returns the rounds sent before the switch,
 * the guest dirtying dirty[i] pages during round i + 1.  With request_at,
 * an admin asks for the switch once that many rounds were sent.
 */
static unsigned int policy_rounds(uint32_t rounds, const long *dirty,
                                  unsigned int n, unsigned int request_at)
{
    unsigned int x = 0;
    long count = 100000;

    for ( ; ; )
    {
        int stop = libxl_postcopy_precopy_policy(9, rounds, x, count);

        x++; /* the round is sent either way */
        if ( stop || x > 60 )
            return x;
        if ( x == request_at )
            request_switch(9);
        if ( libxl_postcopy_precopy_policy(9, rounds, x, -1) )
            return x;
        count = x <= n ? dirty[x - 1] : 0;
    }
}

static void check_precopy_policy(void)
{
    static const long stalled[] = { 800, 790, 785, 780, 775, 770, 765 };
    static const long converging[] = { 20000, 4000, 800, 160, 30 };
    const unsigned int ns = sizeof(stalled) / sizeof(stalled[0]);
    const unsigned int nc = sizeof(converging) / sizeof(converging[0]);

    printf("policy.fixed=%u\n", policy_rounds(3, stalled, ns, 0));
    printf("policy.auto_stalled=%u\n",
           policy_rounds(LIBXL_POSTCOPY_PRECOPY_AUTO, stalled, ns, 0));
    printf("policy.auto_converging=%u\n",
           policy_rounds(LIBXL_POSTCOPY_PRECOPY_AUTO, converging, nc, 0));
    printf("policy.request=%u\n", policy_rounds(50, stalled, ns, 2));
}

int main(int argc, char **argv)
{
    struct libxl_postcopy_save_params sp;
    struct libxl_postcopy_restore_params rp;
    int rc;

    SHOW(LIBXL_POSTCOPY_ABI_VERSION);
    SHOW(REC_TYPE_POSTCOPY_BEGIN);
    SHOW(REC_TYPE_POSTCOPY_PFNS);
    SHOW(REC_TYPE_POSTCOPY_TRANSITION);
    SHOW(REC_TYPE_POSTCOPY_PAGE_DATA);
    SHOW(REC_TYPE_POSTCOPY_FAULT);
    SHOW(REC_TYPE_POSTCOPY_COMPLETE);
    SHOW(REC_TYPE_POSTCOPY_ZERO);
    SHOW(REC_TYPE_POSTCOPY_VCPU_STATE);
    SHOW(REC_TYPE_POSTCOPY_RESUMED);
    SHOW(REC_TYPE_POSTCOPY_RECOVER);
    SHOW(REC_TYPE_POSTCOPY_ABORT);
    SHOW(REC_TYPE_POSTCOPY_READY);
    SHOW(REC_TYPE_POSTCOPY_ACK);
    SHOW(REC_TYPE_POSTCOPY_EARLY_PFNS);
    SHOW(REC_TYPE_POSTCOPY_EARLY_DONE);
    SHOW(LIBXL_POSTCOPY_PREPAGE_NONE);
    SHOW(LIBXL_POSTCOPY_PREPAGE_LINEAR);
    SHOW(LIBXL_POSTCOPY_PREPAGE_BUBBLE);
    SHOW(LIBXL_POSTCOPY_PREPAGE_BUBBLE_FORWARD);
    SHOW(LIBXL_POSTCOPY_PREPAGE_MULTI_PIVOT);
    SHOW(LIBXL_POSTCOPY_PREPAGE_HISTORY);
    SHOW(LIBXL_POSTCOPY_PRECOPY_AUTO);
    printf("LIBXL_POSTCOPY_SONAME=%s\n", LIBXL_POSTCOPY_SONAME);
    check_precopy_policy();

    /* Layouts of the parameter structs, compared with the Rust ones. */
    printf("save_params.size=%zu\n", sizeof(sp));
    printf("save_params.xch=%zu\n", offsetof(struct libxl_postcopy_save_params, xch));
    printf("save_params.lg=%zu\n", offsetof(struct libxl_postcopy_save_params, lg));
    printf("save_params.stream_fd=%zu\n", offsetof(struct libxl_postcopy_save_params, stream_fd));
    printf("save_params.strategy=%zu\n", offsetof(struct libxl_postcopy_save_params, strategy));
    printf("save_params.flags=%zu\n", offsetof(struct libxl_postcopy_save_params, flags));
    printf("restore_params.size=%zu\n", sizeof(rp));
    printf("restore_params.back_fd=%zu\n", offsetof(struct libxl_postcopy_restore_params, back_fd));
    printf("restore_params.flags=%zu\n", offsetof(struct libxl_postcopy_restore_params, flags));

    CHECK(libxl_postcopy_abi_version() == LIBXL_POSTCOPY_ABI_VERSION);

    parse_ok("none", LIBXL_POSTCOPY_PREPAGE_NONE, 0);
    parse_ok("linear", LIBXL_POSTCOPY_PREPAGE_LINEAR, 0);
    parse_ok("bubble", LIBXL_POSTCOPY_PREPAGE_BUBBLE, 0);
    parse_ok("bubble-forward", LIBXL_POSTCOPY_PREPAGE_BUBBLE_FORWARD, 0);
    parse_ok("multi-pivot", LIBXL_POSTCOPY_PREPAGE_MULTI_PIVOT, 7);
    parse_ok("multi-pivot:3", LIBXL_POSTCOPY_PREPAGE_MULTI_PIVOT, 3);
    parse_ok("history", LIBXL_POSTCOPY_PREPAGE_HISTORY, 0);
    parse_bad("bogus");
    parse_bad("multi-pivot:0");
    parse_bad("multi-pivot:65");
    parse_bad("");
    CHECK(libxl_postcopy_parse_strategy(NULL, NULL, NULL, NULL, 0) == -EINVAL);

    /* Bad calls fail cleanly, with a negative errno, no crash. */
    rc = 0;
    CHECK(libxl_postcopy_save_begin(NULL, NULL, 0, &rc) == NULL);
    CHECK(rc == -EINVAL);
    memset(&sp, 0, sizeof(sp));
    sp.abi_version = LIBXL_POSTCOPY_ABI_VERSION + 1;
    rc = 0;
    CHECK(libxl_postcopy_save_begin(&sp, NULL, 0, &rc) == NULL);
    CHECK(rc == -EINVAL);
    sp.abi_version = LIBXL_POSTCOPY_ABI_VERSION;
    sp.strategy = 42;
    rc = 0;
    CHECK(libxl_postcopy_save_begin(&sp, NULL, 0, &rc) == NULL);
    CHECK(rc == -EINVAL);
    sp.strategy = LIBXL_POSTCOPY_PREPAGE_BUBBLE;
    rc = 0;   /* xch NULL: refused, not dereferenced */
    CHECK(libxl_postcopy_save_begin(&sp, NULL, 0, &rc) == NULL);
    CHECK(rc < 0);
    memset(&rp, 0, sizeof(rp));
    rp.abi_version = LIBXL_POSTCOPY_ABI_VERSION;
    rc = 0;
    CHECK(libxl_postcopy_restore_begin(&rp, NULL, 0, &rc) == NULL);
    CHECK(rc < 0);
    CHECK(libxl_postcopy_restore_early(NULL, NULL, 0) == -EINVAL);
    CHECK(libxl_postcopy_restore_early(&rp, NULL, 8) == -EINVAL);
    CHECK(libxl_postcopy_save_transition(NULL) == -EINVAL);
    CHECK(libxl_postcopy_save_serve(NULL) == -EINVAL);
    CHECK(libxl_postcopy_restore_record(NULL, REC_TYPE_POSTCOPY_PFNS, NULL, 0) == -EINVAL);
    CHECK(libxl_postcopy_restore_serve(NULL) == -EINVAL);
    libxl_postcopy_save_free(NULL);
    libxl_postcopy_restore_free(NULL);

    /* As libxenguest loads it: dlopen() by SONAME, every symbol resolves. */
    if ( argc > 1 && strcmp(argv[1], "--dlopen") == 0 )
    {
        static const char *const syms[] = {
            "libxl_postcopy_abi_version", "libxl_postcopy_parse_strategy",
            "libxl_postcopy_save_begin", "libxl_postcopy_save_transition",
            "libxl_postcopy_save_serve", "libxl_postcopy_save_free",
            "libxl_postcopy_restore_early",
            "libxl_postcopy_restore_begin", "libxl_postcopy_restore_record",
            "libxl_postcopy_restore_serve", "libxl_postcopy_restore_free",
            "libxl_postcopy_precopy_policy",
        };
        void *h = dlopen(LIBXL_POSTCOPY_SONAME, RTLD_NOW | RTLD_LOCAL);
        size_t i;

        CHECK(h != NULL);
        if ( h )
        {
            uint32_t (*ver)(void);

            for ( i = 0; i < sizeof(syms) / sizeof(syms[0]); i++ )
                CHECK(dlsym(h, syms[i]) != NULL);
            *(void **)&ver = dlsym(h, "libxl_postcopy_abi_version");
            CHECK(ver && ver() == LIBXL_POSTCOPY_ABI_VERSION);
            dlclose(h);
        }
        else
            fprintf(stderr, "abi_caller: dlopen: %s\n", dlerror());
        printf("dlopen=ok\n");
    }

    printf("failures=%d\n", failures);
    return failures ? 1 : 0;
}

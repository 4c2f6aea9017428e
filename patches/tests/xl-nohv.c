/*
 * xl-nohv.so: run the patched xl's informational commands (`xl help
 * migrate`) on a build machine without Xen.  xl allocates a libxl context
 * before it looks at the command, and libxl_ctx_alloc() fails without
 * /dev/xen/privcmd and xenstored.  Preloaded, this library hands libxl
 * placeholder libxc and xenstore handles; anything that really talks to
 * the hypervisor through them is not expected to work (and must not be
 * run this way).  Test use only: scripts/test.d/30-xen-patches.sh.
 */
#include <stddef.h>

struct xc_interface_core;
struct xs_handle;

static char placeholder_xch, placeholder_xsh;

struct xc_interface_core *xc_interface_open(void *logger, void *dombuild_logger,
                                            unsigned open_flags)
{
    return (struct xc_interface_core *)&placeholder_xch;
}

int xc_interface_close(struct xc_interface_core *xch)
{
    return 0;
}

struct xs_handle *xs_open(unsigned long flags)
{
    return (struct xs_handle *)&placeholder_xsh;
}

void xs_close(struct xs_handle *xsh)
{
}

/* xl's global setup: autoballoon detection and the affinity masks. */
int xc_version(struct xc_interface_core *xch, int cmd, void *arg)
{
    return -1;
}

/*
 * Xen 4.20's libxl_get_version_info() (which its xl calls at start-up)
 * reads the version strings with these, not with xc_version(): "unknown".
 */
char *xc_xenver_extraversion(struct xc_interface_core *xch)
{
    return NULL;
}

char *xc_xenver_capabilities(struct xc_interface_core *xch)
{
    return NULL;
}

char *xc_xenver_changeset(struct xc_interface_core *xch)
{
    return NULL;
}

char *xc_xenver_commandline(struct xc_interface_core *xch)
{
    return NULL;
}

char *xc_xenver_buildid(struct xc_interface_core *xch)
{
    return NULL;
}

int xc_get_max_cpus(struct xc_interface_core *xch)
{
    return 1;
}

int xc_get_max_nodes(struct xc_interface_core *xch)
{
    return 1;
}

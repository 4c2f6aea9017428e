/* SPDX-License-Identifier: LGPL-2.1-only */
/*
 * Input of bindgen (build.rs) and of consts.c.  xenctrl.h must come first:
 * it defines __XEN_TOOLS__, without which xen/vm_event.h and parts of
 * xen/memory.h are silently empty (build.rs passes -D__XEN_TOOLS__=1 too).
 */
#include <xenctrl.h>
#include <xenguest.h>
#include <xenforeignmemory.h>
#include <xenevtchn.h>
#include <xentoollog.h>
#include <xen/vm_event.h>
#include <xen/memory.h>
#include <xen/hvm/params.h>
#include <xen/hvm/save.h>
#include <libxl.h>
#include <libxl_utils.h>

/*
 * Exported by libxenctrl.so (VERS_4.17.0; libxenctrl_4.20.0) but declared
 * only in the private tools/libs/ctrl/xc_private.h of the Xen source tree.
 * These are copies of those declarations; consts.c is compiled against this file
 * and the public headers, so a conflicting public declaration would fail
 * the build, and the libxl-sys tests link both symbols.
 */
int xc_get_pfn_type_batch(xc_interface *xch, uint32_t dom,
                          unsigned int num, xen_pfn_t *arr);
void *xc_vm_event_enable(xc_interface *xch, uint32_t domain_id, int param,
                         uint32_t *port);

/* SPDX-License-Identifier: LGPL-2.1-only */
/*
 * The hypervisor's end of a vm_event ring, written with the real RING_*
 * macros of xen/io/ring.h.  Only the tests of libxl-glue call these, to
 * check its Rust back ring against the C definition; nothing else links
 * them (a static archive member is only pulled in when referenced).
 */
#include <string.h>
#include "wrapper.h"

struct libxl_sys_front_ring {
    vm_event_front_ring_t front;
};

size_t libxl_sys_test_front_ring_size(void)
{
    return sizeof(struct libxl_sys_front_ring);
}

/*
 * FRONT_RING_INIT over a page the back end has already initialised with
 * SHARED_RING_INIT, as Xen attaches to the pager's ring at enable time.
 */
void libxl_sys_test_front_init(struct libxl_sys_front_ring *r, void *page)
{
    FRONT_RING_INIT(&r->front, (vm_event_sring_t *)page, XC_PAGE_SIZE);
}

/* Queues one request as Xen's vm_event_put_request() does; 0, or -1 when full. */
int libxl_sys_test_front_put(struct libxl_sys_front_ring *r,
                             const vm_event_request_t *req)
{
    int notify;

    if ( RING_FULL(&r->front) )
        return -1;
    memcpy(RING_GET_REQUEST(&r->front, r->front.req_prod_pvt), req,
           sizeof(*req));
    r->front.req_prod_pvt++;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&r->front, notify);
    return notify;
}

/* Takes one response as Xen's vm_event_get_response() does; 1, or 0 when none. */
int libxl_sys_test_front_get(struct libxl_sys_front_ring *r,
                             vm_event_response_t *rsp)
{
    if ( !RING_HAS_UNCONSUMED_RESPONSES(&r->front) )
        return 0;
    memcpy(rsp, RING_GET_RESPONSE(&r->front, r->front.rsp_cons), sizeof(*rsp));
    r->front.rsp_cons++;
    r->front.sring->rsp_event = r->front.rsp_cons + 1;
    return 1;
}

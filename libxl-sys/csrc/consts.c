/* SPDX-License-Identifier: LGPL-2.1-only */
/*
 * The values of C macros and layouts, as the C compiler sees them, for the
 * cross-check tests in src/lib.rs (after userfaultfd-sys's consts.c).
 */
#include <stddef.h>
#include "wrapper.h"

#define C(name) const uint64_t libxl_sys_const_##name = (uint64_t)(name)

C(XC_PAGE_SHIFT);
C(XC_PAGE_SIZE);
C(XCFLAGS_LIVE);
C(XCFLAGS_DEBUG);
C(XENMEM_paging_op_nominate);
C(XENMEM_paging_op_evict);
C(XENMEM_paging_op_prep);
C(XEN_DOMCTL_PFINFO_LTAB_SHIFT);
C(XEN_DOMCTL_PFINFO_NOTAB);
C(XEN_DOMCTL_PFINFO_LTAB_MASK);
C(XEN_DOMCTL_PFINFO_XTAB);
C(XEN_DOMCTL_PFINFO_XALLOC);
C(XEN_DOMCTL_PFINFO_BROKEN);
C(XEN_DOMCTL_SHADOW_OP_OFF);
C(XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY);
C(XEN_DOMCTL_SHADOW_OP_CLEAN);
C(XEN_DOMCTL_SHADOW_OP_PEEK);
C(VM_EVENT_INTERFACE_VERSION);
C(VM_EVENT_FLAG_VCPU_PAUSED);
C(VM_EVENT_FLAG_EMULATE);
C(VM_EVENT_REASON_MEM_PAGING);
C(MEM_PAGING_DROP_PAGE);
C(MEM_PAGING_EVICT_FAIL);
C(HVM_PARAM_STORE_PFN);
C(HVM_PARAM_IOREQ_PFN);
C(HVM_PARAM_BUFIOREQ_PFN);
C(HVM_PARAM_IDENT_PT);
C(HVM_PARAM_CONSOLE_PFN);
C(HVM_PARAM_PAGING_RING_PFN);
C(HVM_PARAM_MONITOR_RING_PFN);
C(HVM_PARAM_SHARING_RING_PFN);
C(HVM_PARAM_IOREQ_SERVER_PFN);
C(HVM_PARAM_NR_IOREQ_SERVER_PAGES);
C(HVM_PARAM_VM86_TSS_SIZED);
C(LIBXL_VERSION);
C(__XEN_LATEST_INTERFACE_VERSION__);
C(ERROR_FAIL);

/* Layouts the vm_event ring code depends on. */
const uint64_t libxl_sys_const_sizeof_vm_event_request = sizeof(vm_event_request_t);
const uint64_t libxl_sys_const_sizeof_vm_event_sring_entry = sizeof(union vm_event_sring_entry);
const uint64_t libxl_sys_const_offsetof_vm_event_sring_ring = offsetof(struct vm_event_sring, ring);
const uint64_t libxl_sys_const_vm_event_ring_size = __CONST_RING_SIZE(vm_event, XC_PAGE_SIZE);
const uint64_t libxl_sys_const_sizeof_hvm_hw_cpu = sizeof(struct hvm_hw_cpu);
const uint64_t libxl_sys_const_hvm_save_code_cpu = HVM_SAVE_CODE(CPU);
const uint64_t libxl_sys_const_hvm_save_code_end = HVM_SAVE_CODE(END);

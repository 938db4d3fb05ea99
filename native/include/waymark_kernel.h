/* Kernel numbers shared with the TypeScript side: see src/constants.ts for the reasons.
 * test/unit/constants.test.ts checks that both files agree. */
#ifndef WAYMARK_KERNEL_H
#define WAYMARK_KERNEL_H

#define WAYMARK_TABLE_BASE 0x5c00
#define WAYMARK_MAX_SLOTS 30
#define WAYMARK_MARK_SHIFT 24
#define WAYMARK_MARK_MASK 0x3f000000u
#define WAYMARK_SOFT_FLAG 0x20000000u
#define WAYMARK_DENY_SLOT 63

#define WAYMARK_PRIO_DENY 4100
#define WAYMARK_PRIO_OIF 4200
#define WAYMARK_PRIO_MARK 4300
#define WAYMARK_PRIO_SOURCE 4400
#define WAYMARK_PRIO_DESTINATION 4500
#define WAYMARK_PRIO_SOFT_MARK 4550

#endif

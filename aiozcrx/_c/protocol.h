/*
 * The protocol between the C dispatcher (aiozcrx._fastpath, dispatch.c) and the
 * Python engines (aiozcrx/engines/ring.py): the ONE definition of each value
 * both sides use. Python does not restate them: aiozcrx/_abi_build.py exports
 * every integer #define of this header through the cffi module (lib.NAME), and
 * aiozcrx/_kernel.py takes them from there. So the text here stays within what
 * that export reads: object-like macros with an integer value, one per line;
 * macros with arguments are C only.
 */
#ifndef AIOZCRX_PROTOCOL_H
#define AIOZCRX_PROTOCOL_H

/* ---- user_data of every request we issue ----
 * bits 0..31 the slot of a connection, 32..39 the kind of request, 40..63 the
 * generation of the connection using the slot when the request was issued
 * (never 0 for a connection: 0 means "none"). A completion reaches a
 * connection only if its generation is the slot's current one; anything else
 * (a slot reused since) goes straight back to the kernel. */
#define UD_SLOT_MASK 0xffffffff
#define UD_KIND_SHIFT 32
#define UD_KIND_MASK 0xff
#define UD_GEN_SHIFT 40
#define UD_GEN_MASK 0xffffff

/* the kinds: issued by the engines */
#define UD_KIND_RECV 1            /* a connection's multishot receive */
#define UD_KIND_CANCEL 2          /* the cancel of one */
#define UD_KIND_NOTIF 3           /* zcrx notifications (registered with the instance) */
#define UD_KIND_NOP 4
/* made by the dispatcher itself, in the control list it hands to Python */
#define UD_KIND_OVER_SHARE 5      /* a connection's views reached its share */
#define UD_KIND_EVFD 6            /* the dispatcher's own read of the ring's eventfd (never leaves it) */
#define UD_KIND_SOCK_IDLE 7       /* a connection's socket wakes us for nothing */
#define UD_KIND_NOMEM 8           /* a delivery failed for want of memory */

#define UD_KIND(ud)  (((ud) >> UD_KIND_SHIFT) & UD_KIND_MASK)
#define UD_SLOT(ud)  ((uint32_t)(ud))
#define UD_GEN(ud)   ((uint32_t)((ud) >> UD_GEN_SHIFT))
#define UD_MAKE(kind, slot, gen) \
    ((((uint64_t)(gen) & UD_GEN_MASK) << UD_GEN_SHIFT) | ((uint64_t)(kind) << UD_KIND_SHIFT) | (uint32_t)(slot))
/* the same slot and generation, another kind */
#define UD_WITH_KIND(ud, kind) \
    (((ud) & ~((uint64_t)UD_KIND_MASK << UD_KIND_SHIFT)) | ((uint64_t)(kind) << UD_KIND_SHIFT))

/* ---- what a pump leaves behind (Dispatcher.pump(), the slow path's state) ---- */
#define PUMP_IDLE 0       /* the eventfd will tell of new work */
#define PUMP_PENDING 1    /* the kernel says work is queued, an enter found none: look again later */
#define PUMP_BUSY 2       /* the round limit was reached: continue after the loop's other callbacks */

#endif /* AIOZCRX_PROTOCOL_H */

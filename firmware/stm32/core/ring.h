/* Store-and-forward buffer: readings wait here, oldest first, until the broker
 * acknowledges them. Fixed slots, no allocation.
 *
 * Overflow policy: drop-oldest, counted. When the network has been down long
 * enough to fill every slot, a new reading evicts the oldest one; `dropped`
 * counts every eviction (the device reports it in its health data and log),
 * so a gap in seq at the gateway is explained. Newest data wins because a
 * field operator cares more about the current state than the oldest backlog.
 */
#ifndef IOTGW_RING_H
#define IOTGW_RING_H

#include <stddef.h>
#include <stdint.h>

#ifndef RING_BODY_MAX
#define RING_BODY_MAX 192
#endif

typedef struct {
    uint64_t seq;
    uint16_t len;
    uint8_t cls; /* topic_class */
    uint8_t attempts; /* publishes sent for this reading: > 0 means re-send with DUP */
    uint16_t packet_id;
    char body[RING_BODY_MAX];
} ring_slot;

typedef struct {
    ring_slot *slots;
    uint16_t cap;
    uint16_t head; /* oldest */
    uint16_t count;
    uint32_t dropped;
} ring;

typedef enum { RING_STORED = 0, RING_STORED_DROPPED_OLDEST = 1, RING_TOO_LARGE = -1 } ring_status;

void ring_init(ring *r, ring_slot *slots, uint16_t cap);
ring_status ring_push(ring *r, uint64_t seq, uint8_t cls, const char *body, size_t len);
/* Oldest reading, or NULL if empty. */
ring_slot *ring_peek(ring *r);
/* Remove the oldest reading if it still has this seq (it may have been
 * evicted meanwhile). Returns 1 if removed. */
int ring_pop(ring *r, uint64_t seq);

#endif

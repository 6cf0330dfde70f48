#include "ring.h"

#include <string.h>

void ring_init(ring *r, ring_slot *slots, uint16_t cap) {
    r->slots = slots;
    r->cap = cap;
    r->head = 0;
    r->count = 0;
    r->dropped = 0;
}

ring_status ring_push(ring *r, uint64_t seq, uint8_t cls, const char *body, size_t len) {
    if (len > RING_BODY_MAX || r->cap == 0) return RING_TOO_LARGE;
    ring_status st = RING_STORED;
    if (r->count == r->cap) {
        r->head = (uint16_t)((r->head + 1u) % r->cap);
        r->count--;
        r->dropped++;
        st = RING_STORED_DROPPED_OLDEST;
    }
    ring_slot *s = &r->slots[(r->head + r->count) % r->cap];
    s->seq = seq;
    s->len = (uint16_t)len;
    s->cls = cls;
    s->attempts = 0;
    s->packet_id = 0;
    memcpy(s->body, body, len);
    r->count++;
    return st;
}

ring_slot *ring_peek(ring *r) { return r->count ? &r->slots[r->head] : NULL; }

int ring_pop(ring *r, uint64_t seq) {
    if (r->count == 0 || r->slots[r->head].seq != seq) return 0;
    r->head = (uint16_t)((r->head + 1u) % r->cap);
    r->count--;
    return 1;
}

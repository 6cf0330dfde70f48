#include "backoff.h"

void backoff_init(backoff *b, uint32_t base_ms, uint32_t cap_ms, uint32_t seed) {
    b->base_ms = base_ms ? base_ms : 1u;
    b->cap_ms = cap_ms < b->base_ms ? b->base_ms : cap_ms;
    b->attempt = 0;
    b->rng = seed ? seed : 0x2545f491u;
}

uint32_t backoff_ceiling(const backoff *b) {
    uint32_t c = b->base_ms;
    for (uint32_t i = 0; i < b->attempt && c < b->cap_ms; i++) c = c > b->cap_ms / 2u ? b->cap_ms : c * 2u;
    return c < b->cap_ms ? c : b->cap_ms;
}

uint32_t backoff_next(backoff *b) {
    uint32_t ceiling = backoff_ceiling(b);
    if (b->attempt < 32u) b->attempt++;
    uint32_t x = b->rng; /* xorshift32 */
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    b->rng = x;
    return (uint32_t)(((uint64_t)x * ((uint64_t)ceiling + 1u)) >> 32);
}

void backoff_reset(backoff *b) { b->attempt = 0; }

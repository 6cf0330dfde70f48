/* Reconnect delays: exponential backoff with full jitter.
 *
 * Attempt n waits a uniform random time in [0, min(cap, base * 2^n)] ms, so a
 * fleet that lost its broker at the same moment does not reconnect in step.
 * The delay never exceeds cap; reset after a successful connection.
 */
#ifndef IOTGW_BACKOFF_H
#define IOTGW_BACKOFF_H

#include <stdint.h>

typedef struct {
    uint32_t base_ms;
    uint32_t cap_ms;
    uint32_t attempt;
    uint32_t rng;
} backoff;

void backoff_init(backoff *b, uint32_t base_ms, uint32_t cap_ms, uint32_t seed);
/* The upper bound of the next delay: min(cap, base * 2^attempt). */
uint32_t backoff_ceiling(const backoff *b);
/* Draw the next delay and count the attempt. */
uint32_t backoff_next(backoff *b);
void backoff_reset(backoff *b);

#endif

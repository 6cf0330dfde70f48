#include <stdio.h>
#include <string.h>

#include "backoff.h"
#include "power.h"
#include "ring.h"
#include "unit.h"

static void ring_keeps_order(void) {
    ring_slot slots[4];
    ring r;
    ring_init(&r, slots, 4);
    CHECK(ring_peek(&r) == NULL);
    for (uint64_t s = 10; s < 13; s++) {
        char body[16];
        int n = snprintf(body, sizeof body, "b%llu", (unsigned long long)s);
        CHECK(ring_push(&r, s, 0, body, (size_t)n) == RING_STORED);
    }
    for (uint64_t s = 10; s < 13; s++) {
        ring_slot *h = ring_peek(&r);
        REQUIRE(h != NULL);
        CHECK_EQ_U(h->seq, s);
        char want[16];
        int n = snprintf(want, sizeof want, "b%llu", (unsigned long long)s);
        CHECK(h->len == n && memcmp(h->body, want, (size_t)n) == 0);
        CHECK(ring_pop(&r, s) == 1);
    }
    CHECK(ring_peek(&r) == NULL);
    CHECK_EQ_U(r.dropped, 0);
}

static void ring_drops_oldest_and_counts(void) {
    ring_slot slots[4];
    ring r;
    ring_init(&r, slots, 4);
    for (uint64_t s = 0; s < 4; s++) CHECK(ring_push(&r, s, 0, "x", 1) == RING_STORED);
    for (uint64_t s = 4; s < 10; s++) CHECK(ring_push(&r, s, 0, "x", 1) == RING_STORED_DROPPED_OLDEST);
    CHECK_EQ_U(r.dropped, 6);
    CHECK_EQ_U(r.count, 4);
    /* the newest four survive, oldest first */
    for (uint64_t s = 6; s < 10; s++) {
        REQUIRE(ring_peek(&r) != NULL);
        CHECK_EQ_U(ring_peek(&r)->seq, s);
        CHECK(ring_pop(&r, s));
    }
}

static void ring_pop_checks_seq(void) {
    ring_slot slots[2];
    ring r;
    ring_init(&r, slots, 2);
    ring_push(&r, 1, 0, "a", 1);
    ring_push(&r, 2, 0, "b", 1);
    ring_push(&r, 3, 0, "c", 1); /* evicts 1 while it may be in flight */
    CHECK(ring_pop(&r, 1) == 0); /* the PUBACK of 1 must not pop 2 */
    CHECK_EQ_U(ring_peek(&r)->seq, 2);
    char big[RING_BODY_MAX + 1];
    memset(big, 'x', sizeof big);
    CHECK(ring_push(&r, 4, 0, big, sizeof big) == RING_TOO_LARGE);
    CHECK(ring_push(&r, 4, 0, big, RING_BODY_MAX) == RING_STORED_DROPPED_OLDEST);
}

static void backoff_within_bounds(void) {
    backoff b;
    backoff_init(&b, 100, 5000, 12345);
    uint32_t want_ceiling[] = {100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000};
    for (size_t i = 0; i < sizeof want_ceiling / sizeof want_ceiling[0]; i++) {
        CHECK_EQ_U(backoff_ceiling(&b), want_ceiling[i]);
        uint32_t d = backoff_next(&b);
        CHECK(d <= want_ceiling[i]);
    }
    for (int i = 0; i < 10000; i++) CHECK(backoff_next(&b) <= 5000); /* no overflow, ever */
    CHECK_EQ_U(backoff_ceiling(&b), 5000);
    backoff_reset(&b);
    CHECK_EQ_U(backoff_ceiling(&b), 100);
}

static void backoff_is_jittered_over_the_whole_range(void) {
    backoff b;
    backoff_init(&b, 1000, 1000, 99);
    uint32_t lo = 1000, hi = 0;
    uint64_t sum = 0;
    for (int i = 0; i < 4000; i++) {
        uint32_t d = backoff_next(&b);
        if (d < lo) lo = d;
        if (d > hi) hi = d;
        sum += d;
    }
    CHECK(lo < 50);  /* full jitter reaches down to ~0 */
    CHECK(hi > 950); /* and up to the ceiling */
    CHECK(sum / 4000 > 430 && sum / 4000 < 570); /* mean ~ ceiling/2 */
    backoff a, c;
    backoff_init(&a, 100, 5000, 1);
    backoff_init(&c, 100, 5000, 2);
    int differ = 0;
    for (int i = 0; i < 8; i++) differ += backoff_next(&a) != backoff_next(&c);
    CHECK(differ > 4); /* devices with different seeds spread out */
}

static const pwr_config PC = {1000, 10000, 3400, 3600, 4};

static void power_cycle_healthy(void) {
    pwr p;
    pwr_init(&p);
    CHECK(p.state == PWR_SAMPLE);
    CHECK(pwr_next(&p, &PC, PWR_EV_SAMPLED, 3900, 1) == PWR_SEND);
    CHECK(p.keep_link);
    CHECK(pwr_next(&p, &PC, PWR_EV_WOKE, 3900, 1) == PWR_SEND); /* ignored in SEND */
    CHECK(pwr_next(&p, &PC, PWR_EV_SENT, 0, 0) == PWR_SLEEP);
    CHECK_EQ_U(pwr_sleep_ms(&p, &PC), 1000);
    CHECK(pwr_next(&p, &PC, PWR_EV_WOKE, 0, 0) == PWR_SAMPLE);
    CHECK(pwr_next(&p, &PC, PWR_EV_SAMPLED, 3900, 0) == PWR_SLEEP); /* nothing to send */
}

static void power_batches_when_low(void) {
    pwr p;
    pwr_init(&p);
    for (uint16_t pending = 1; pending < 4; pending++) {
        CHECK(pwr_next(&p, &PC, PWR_EV_SAMPLED, 3300, pending) == PWR_SLEEP);
        CHECK(p.low && !p.keep_link);
        CHECK_EQ_U(pwr_sleep_ms(&p, &PC), 10000);
        CHECK(pwr_next(&p, &PC, PWR_EV_WOKE, 0, 0) == PWR_SAMPLE);
    }
    CHECK(pwr_next(&p, &PC, PWR_EV_SAMPLED, 3300, 4) == PWR_SEND); /* batch full */
    CHECK(pwr_next(&p, &PC, PWR_EV_SENT, 0, 0) == PWR_SLEEP);
    CHECK(pwr_next(&p, &PC, PWR_EV_WOKE, 0, 0) == PWR_SAMPLE);
    /* hysteresis: 3500 is above low but below ok, stays low */
    CHECK(pwr_next(&p, &PC, PWR_EV_SAMPLED, 3500, 1) == PWR_SLEEP);
    CHECK(p.low);
    CHECK(pwr_next(&p, &PC, PWR_EV_WOKE, 0, 0) == PWR_SAMPLE);
    CHECK(pwr_next(&p, &PC, PWR_EV_SAMPLED, 3600, 2) == PWR_SEND);
    CHECK(!p.low && p.keep_link);
}

UNIT_SUITE(ring) = {
    {"ring: keeps order", ring_keeps_order},
    {"ring: overflow drops oldest and counts", ring_drops_oldest_and_counts},
    {"ring: pop checks seq; size limit", ring_pop_checks_seq},
    {0, 0},
};

UNIT_SUITE(backoff) = {
    {"backoff: exponential ceiling, capped, reset", backoff_within_bounds},
    {"backoff: full jitter over [0, ceiling]", backoff_is_jittered_over_the_whole_range},
    {0, 0},
};

UNIT_SUITE(power) = {
    {"power: sample -> send -> sleep when healthy", power_cycle_healthy},
    {"power: batches when battery low, with hysteresis", power_batches_when_low},
    {0, 0},
};

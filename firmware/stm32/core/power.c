#include "power.h"

void pwr_init(pwr *p) {
    p->state = PWR_SAMPLE;
    p->low = 0;
    p->keep_link = 1;
}

pwr_state pwr_next(pwr *p, const pwr_config *c, pwr_event ev, uint16_t battery_mv,
                   uint16_t pending) {
    switch (p->state) {
    case PWR_SAMPLE:
        if (ev != PWR_EV_SAMPLED) break;
        if (!p->low && battery_mv < c->battery_low_mv) p->low = 1;
        else if (p->low && battery_mv >= c->battery_ok_mv) p->low = 0;
        p->keep_link = !p->low;
        if (pending > 0 && (!p->low || pending >= c->batch)) p->state = PWR_SEND;
        else p->state = PWR_SLEEP;
        break;
    case PWR_SEND:
        if (ev == PWR_EV_SENT) p->state = PWR_SLEEP;
        break;
    case PWR_SLEEP:
        if (ev == PWR_EV_WOKE) p->state = PWR_SAMPLE;
        break;
    }
    return p->state;
}

uint32_t pwr_sleep_ms(const pwr *p, const pwr_config *c) {
    return p->low ? c->low_period_ms : c->period_ms;
}

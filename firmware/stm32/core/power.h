/* Power state machine: SAMPLE -> (SEND) -> SLEEP -> SAMPLE.
 *
 * With a healthy battery every sample is followed by a send phase and the
 * link stays up (keep-alive). Below battery_low_mv the device batches: it
 * stays asleep with the radio off until `batch` readings wait, then connects,
 * sends them all, and disconnects; it also samples less often. The low state
 * is left only above battery_ok_mv (hysteresis), so a battery hovering at the
 * threshold does not flap between the two modes.
 */
#ifndef IOTGW_POWER_H
#define IOTGW_POWER_H

#include <stdint.h>

typedef enum { PWR_SAMPLE = 0, PWR_SEND = 1, PWR_SLEEP = 2 } pwr_state;
typedef enum { PWR_EV_SAMPLED = 0, PWR_EV_SENT = 1, PWR_EV_WOKE = 2 } pwr_event;

typedef struct {
    uint32_t period_ms;     /* sample period, battery healthy */
    uint32_t low_period_ms; /* sample period, battery low */
    uint16_t battery_low_mv;
    uint16_t battery_ok_mv; /* > battery_low_mv */
    uint16_t batch;         /* readings to collect before a send when low */
} pwr_config;

typedef struct {
    pwr_state state;
    int low;       /* battery low: batching mode */
    int keep_link; /* after a send phase: 1 keep the connection, 0 disconnect */
} pwr;

void pwr_init(pwr *p);
/* Feed an event; battery_mv and pending (readings waiting) are read on
 * PWR_EV_SAMPLED. Returns the new state. An event that does not belong to the
 * current state is ignored. */
pwr_state pwr_next(pwr *p, const pwr_config *c, pwr_event ev, uint16_t battery_mv,
                   uint16_t pending);
/* How long SLEEP lasts in the current mode. */
uint32_t pwr_sleep_ms(const pwr *p, const pwr_config *c);

#endif

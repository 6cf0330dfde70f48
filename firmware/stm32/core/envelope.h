/* Envelope body encoder: one reading as the JSON body the gateway validates.
 *
 * Body: {"seq":N,"ts"?:"...","metrics":{...},"tags":{...}}. The rules are the
 * gateway's (libs/core/iotgw_core/validation.py): keys ^[a-z][a-z0-9_]{0,31}$,
 * <= 32 metrics (finite numbers), <= 16 tags (strings of <= 64 characters),
 * seq in 0..2^63-1. Encoding refuses anything the gateway would reject, so a
 * bad reading fails on the device, where it is cheap to see, not in quarantine.
 */
#ifndef IOTGW_ENVELOPE_H
#define IOTGW_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#define ENV_MAX_METRICS 32
#define ENV_MAX_TAGS 16
#define ENV_KEY_MAX_LEN 32
#define ENV_TAG_VALUE_MAX_LEN 64
#define ENV_SEQ_MAX INT64_MAX
/* Magnitude limit of a metric value: keeps the integer part in a uint64 and
 * the printed number exact to the 6 decimals the encoder writes. */
#define ENV_METRIC_ABS_MAX 1e15

typedef enum {
    ENV_OK = 0,
    ENV_ERR_KEY = -1,       /* key does not match ^[a-z][a-z0-9_]{0,31}$ or repeats */
    ENV_ERR_VALUE = -2,     /* metric not finite / too large, tag value too long or not ASCII */
    ENV_ERR_TOO_MANY = -3,  /* > 32 metrics or > 16 tags */
    ENV_ERR_SPACE = -4,     /* output buffer too small */
    ENV_ERR_EMPTY = -5,     /* no metrics: the gateway needs metrics or a payload */
    ENV_ERR_TS = -6,        /* ts is not YYYY-MM-DDTHH:MM:SS[.fff]Z */
    ENV_ERR_SEQ = -7        /* seq above 2^63-1 */
} env_status;

typedef struct {
    const char *key;
    double value;
} env_metric;

typedef struct {
    const char *key;
    const char *value;
} env_tag;

typedef struct {
    uint64_t seq;
    const char *ts; /* NULL: the gateway stamps received_at and fills ts */
    const env_metric *metrics;
    size_t n_metrics;
    const env_tag *tags;
    size_t n_tags;
} env_reading;

/* 1 if key matches ^[a-z][a-z0-9_]{0,31}$. */
int env_key_valid(const char *key);

/* Encode r into out (NUL-terminated); *len gets the length without the NUL.
 * Returns ENV_OK or a negative env_status; out is unspecified on error. */
env_status env_encode(const env_reading *r, char *out, size_t cap, size_t *len);

/* Format a finite number as JSON (at most 6 decimals, trailing zeros cut).
 * Returns the length written (no NUL), or 0 if it is not finite, too large, or
 * does not fit. */
size_t env_format_number(double v, char *out, size_t cap);

#endif

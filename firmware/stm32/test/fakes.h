/* Test doubles: a clock that only moves when the code waits, and a transport
 * that plays a script of expected outgoing bytes and incoming replies. */
#ifndef FAKES_H
#define FAKES_H

#include <stddef.h>
#include <stdint.h>

#include "transport.h"

extern uint32_t fake_now;
uint32_t fake_now_ms(void);

#define SCRIPT_MAX_STEPS 64
#define SCRIPT_MAX_BYTES 512

typedef struct {
    char dir; /* '>' the device sends, '<' the peer sends */
    size_t len;
    uint8_t bytes[SCRIPT_MAX_BYTES];
} script_step;

typedef struct {
    script_step steps[SCRIPT_MAX_STEPS];
    size_t n_steps;
    size_t next;          /* next step to play */
    uint8_t tx[SCRIPT_MAX_BYTES]; /* bytes sent toward the current '>' step */
    size_t tx_len;
    uint8_t rx[4096];     /* bytes released to the device, not yet read */
    size_t rx_len, rx_pos;
    int mismatch;         /* set when the device sent something unexpected */
    char mismatch_info[200];
    size_t max_recv_chunk; /* hand out at most this many bytes per recv (0: any) */
    transport t;
} script;

void script_init(script *s);
void script_add(script *s, char dir, const void *bytes, size_t len);
/* Every step played and every released byte read. */
int script_done(const script *s);
/* Load an AT transcript: "> text" (device line + CRLF), ">x hex", "< text"
 * (module line + CRLF), "<x hex", "<r text" (raw, no CRLF), "#" comments. */
int script_load_transcript(script *s, const char *path);

#endif

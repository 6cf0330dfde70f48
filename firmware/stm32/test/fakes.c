#include "fakes.h"

#include <stdio.h>
#include <string.h>

uint32_t fake_now;
uint32_t fake_now_ms(void) { return fake_now; }

static void release_replies(script *s) {
    while (s->next < s->n_steps && s->steps[s->next].dir == '<') {
        script_step *st = &s->steps[s->next++];
        if (s->rx_len + st->len <= sizeof s->rx) {
            memcpy(s->rx + s->rx_len, st->bytes, st->len);
            s->rx_len += st->len;
        }
    }
}

static int script_send(void *ctx, const uint8_t *buf, size_t len, uint32_t timeout_ms) {
    (void)timeout_ms;
    script *s = ctx;
    for (size_t i = 0; i < len; i++) {
        if (s->next >= s->n_steps || s->steps[s->next].dir != '>') {
            if (!s->mismatch)
                snprintf(s->mismatch_info, sizeof s->mismatch_info,
                         "unexpected byte 0x%02x after step %zu", buf[i], s->next);
            s->mismatch = 1;
            return -1;
        }
        script_step *st = &s->steps[s->next];
        if (st->bytes[s->tx_len] != buf[i]) {
            if (!s->mismatch)
                snprintf(s->mismatch_info, sizeof s->mismatch_info,
                         "step %zu byte %zu: got 0x%02x want 0x%02x", s->next, s->tx_len, buf[i],
                         st->bytes[s->tx_len]);
            s->mismatch = 1;
            return -1;
        }
        s->tx_len++;
        if (s->tx_len == st->len) {
            s->tx_len = 0;
            s->next++;
            release_replies(s);
        }
    }
    return (int)len;
}

static int script_recv(void *ctx, uint8_t *buf, size_t len, uint32_t timeout_ms) {
    script *s = ctx;
    if (s->rx_pos == s->rx_len) {
        fake_now += timeout_ms; /* nothing comes: the wait runs out */
        return 0;
    }
    size_t n = s->rx_len - s->rx_pos;
    if (n > len) n = len;
    if (s->max_recv_chunk && n > s->max_recv_chunk) n = s->max_recv_chunk;
    memcpy(buf, s->rx + s->rx_pos, n);
    s->rx_pos += n;
    fake_now += 1;
    return (int)n;
}

void script_init(script *s) {
    memset(s, 0, sizeof *s);
    s->t.ctx = s;
    s->t.send = script_send;
    s->t.recv = script_recv;
    s->t.flush = NULL;
    s->t.open = NULL;
}

void script_add(script *s, char dir, const void *bytes, size_t len) {
    if (s->n_steps >= SCRIPT_MAX_STEPS || len > SCRIPT_MAX_BYTES) return;
    script_step *st = &s->steps[s->n_steps++];
    st->dir = dir;
    st->len = len;
    memcpy(st->bytes, bytes, len);
    if (s->next == s->n_steps - 1) release_replies(s); /* replies before any send */
}

int script_done(const script *s) {
    return !s->mismatch && s->next == s->n_steps && s->rx_pos == s->rx_len;
}

static size_t parse_hex(const char *p, uint8_t *out, size_t cap) {
    size_t n = 0;
    unsigned v;
    int k;
    while (n < cap && sscanf(p, " %2x%n", &v, &k) == 1) {
        out[n++] = (uint8_t)v;
        p += k;
    }
    return n;
}

int script_load_transcript(script *s, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[1100];
    while (fgets(line, sizeof line, f)) {
        size_t n = strlen(line);
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (n == 0 || line[0] == '#') continue;
        uint8_t buf[SCRIPT_MAX_BYTES];
        size_t len = 0;
        char dir = line[0];
        if (dir != '>' && dir != '<') continue;
        if (line[1] == 'x') {
            len = parse_hex(line + 2, buf, sizeof buf);
        } else if (line[1] == 'r') {
            len = strlen(line + 3);
            memcpy(buf, line + 3, len);
        } else {
            len = strlen(line + 2);
            memcpy(buf, line + 2, len);
            buf[len++] = '\r';
            buf[len++] = '\n';
        }
        script_add(s, dir, buf, len);
    }
    fclose(f);
    return 0;
}

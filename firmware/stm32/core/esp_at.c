#include "esp_at.h"

#include <string.h>

enum { EV_NONE = 0, EV_LINE = 1, EV_PROMPT = 2 };

static void rx_put(esp_at *e, uint8_t b) {
    if (e->rx_count == sizeof e->rx) {
        e->rx_overflow++;
        return;
    }
    e->rx[(e->rx_head + e->rx_count) % sizeof e->rx] = b;
    e->rx_count++;
}

static int starts_with(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Feed one UART byte. Returns EV_LINE when e->line holds a complete,
 * non-empty response line, EV_PROMPT on the CIPSEND prompt. */
static int feed(esp_at *e, uint8_t b) {
    if (e->ipd_left) {
        rx_put(e, b);
        e->ipd_left--;
        return EV_NONE;
    }
    if (b == '\n') {
        int ev = EV_NONE;
        if (e->line_len > 0) {
            e->line[e->line_len] = '\0';
            ev = EV_LINE;
            if (strcmp(e->line, "CLOSED") == 0 || strcmp(e->line, "0,CLOSED") == 0) e->link_up = 0;
            else if (strcmp(e->line, "WIFI GOT IP") == 0) e->wifi_got_ip = 1;
            else if (strcmp(e->line, "WIFI DISCONNECT") == 0) {
                e->wifi_got_ip = 0;
                e->link_up = 0;
            }
        }
        e->line_len = 0;
        return ev;
    }
    if (b == '\r' || (b == ' ' && e->line_len == 0)) return EV_NONE; /* "> " prompt's space */
    if (e->line_len < sizeof e->line - 1) e->line[e->line_len++] = (char)b;
    e->line[e->line_len] = '\0';
    if (e->line_len == 1 && b == '>') {
        e->line_len = 0;
        e->prompt = 1;
        return EV_PROMPT;
    }
    if (b == ':' && starts_with(e->line, "+IPD,")) {
        uint32_t n = 0;
        const char *p = e->line + 5;
        for (; *p >= '0' && *p <= '9'; p++) n = n * 10u + (uint32_t)(*p - '0');
        if (*p == ':' && p != e->line + 5) {
            e->ipd_left = n;
            e->line_len = 0;
        }
    }
    return EV_NONE;
}

/* Pump the UART until one of `finals` is seen as a whole line (or, with
 * want_prompt, the '>' prompt) or the deadline passes. Returns the index of
 * the final seen, the count of finals for the prompt, or a negative error. */
static int wait_for(esp_at *e, const char *const *finals, int n_finals, int want_prompt,
                    uint32_t deadline) {
    for (;;) {
        uint32_t now = e->now_ms();
        int32_t left = (int32_t)(deadline - now);
        if (left <= 0) return ESP_ERR_TIMEOUT;
        uint8_t buf[32];
        int n = e->uart->recv(e->uart->ctx, buf, sizeof buf, (uint32_t)left);
        if (n < 0) return ESP_ERR_UART;
        for (int i = 0; i < n; i++) {
            int ev = feed(e, buf[i]);
            if (ev == EV_PROMPT && want_prompt) {
                /* Bytes after the prompt are handled by the next wait. */
                for (int j = i + 1; j < n; j++) (void)feed(e, buf[j]);
                return n_finals;
            }
            if (ev != EV_LINE) continue;
            for (int k = 0; k < n_finals; k++) {
                if (strcmp(e->line, finals[k]) == 0) {
                    for (int j = i + 1; j < n; j++) (void)feed(e, buf[j]);
                    return k;
                }
            }
            if (starts_with(e->line, "+CWJAP:")) e->cwjap_error = e->line[7] - '0';
        }
    }
}

static esp_status send_raw(esp_at *e, const void *data, size_t len, uint32_t timeout_ms) {
    int rc = e->uart->send(e->uart->ctx, (const uint8_t *)data, len, timeout_ms);
    return rc == (int)len ? ESP_OK : ESP_ERR_UART;
}

static const char *const OK_ERROR[] = {"OK", "ERROR", "FAIL"};

static esp_status command(esp_at *e, const char *cmd, uint32_t timeout_ms) {
    uint32_t deadline = e->now_ms() + timeout_ms;
    esp_status st = send_raw(e, cmd, strlen(cmd), timeout_ms);
    if (st == ESP_OK) st = send_raw(e, "\r\n", 2, timeout_ms);
    if (st != ESP_OK) return st;
    int r = wait_for(e, OK_ERROR, 3, 0, deadline);
    if (r < 0) return (esp_status)r;
    return r == 0 ? ESP_OK : ESP_ERR_FAIL;
}

static int tcp_send(void *ctx, const uint8_t *buf, size_t len, uint32_t timeout_ms) {
    esp_at *e = ctx;
    size_t done = 0;
    while (done < len) { /* AT+CIPSEND takes at most 2048 bytes at a time */
        size_t n = len - done > 2048u ? 2048u : len - done;
        if (esp_at_send(e, buf + done, n, timeout_ms) != ESP_OK) return -1;
        done += n;
    }
    return (int)len;
}

static int tcp_recv(void *ctx, uint8_t *buf, size_t len, uint32_t timeout_ms) {
    return esp_at_recv(ctx, buf, len, timeout_ms);
}

static void tcp_flush(void *ctx) {
    esp_at *e = ctx;
    e->rx_count = 0;
}

static int tcp_open(void *ctx) {
    esp_at *e = ctx;
    if (e->host == NULL) return e->link_up ? 0 : ESP_ERR_CLOSED;
    if (!e->wifi_got_ip && e->ssid != NULL) {
        esp_status st = esp_at_join(e, e->ssid, e->password, e->open_timeout_ms);
        if (st != ESP_OK) return st;
        e->wifi_got_ip = 1;
    }
    if (e->link_up) return 0;
    return esp_at_connect(e, e->host, e->port, e->open_timeout_ms);
}

void esp_at_target(esp_at *e, const char *ssid, const char *password, const char *host,
                   uint16_t port, uint32_t timeout_ms) {
    e->ssid = ssid;
    e->password = password;
    e->host = host;
    e->port = port;
    e->open_timeout_ms = timeout_ms;
}

void esp_at_init(esp_at *e, transport *uart, uint32_t (*now_ms)(void)) {
    memset(e, 0, sizeof *e);
    e->uart = uart;
    e->now_ms = now_ms;
    e->tcp.ctx = e;
    e->tcp.send = tcp_send;
    e->tcp.recv = tcp_recv;
    e->tcp.flush = tcp_flush;
    e->tcp.open = tcp_open;
}

esp_status esp_at_setup(esp_at *e, uint32_t timeout_ms) {
    static const char *const cmds[] = {"AT", "ATE0", "AT+CWMODE=1", "AT+CIPMUX=0"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        esp_status st = command(e, cmds[i], timeout_ms);
        if (st != ESP_OK) return st;
    }
    return ESP_OK;
}

/* Append s quoted, with ", \ and , escaped as the AT firmware wants them. */
static int append_quoted(char *out, size_t cap, size_t *n, const char *s) {
    if (*n + 1 >= cap) return 0;
    out[(*n)++] = '"';
    for (; *s; s++) {
        if (*s == '"' || *s == '\\' || *s == ',') {
            if (*n + 1 >= cap) return 0;
            out[(*n)++] = '\\';
        }
        if (*n + 1 >= cap) return 0;
        out[(*n)++] = *s;
    }
    if (*n + 1 >= cap) return 0;
    out[(*n)++] = '"';
    out[*n] = '\0';
    return 1;
}

static int append(char *out, size_t cap, size_t *n, const char *s) {
    size_t k = strlen(s);
    if (*n + k + 1 > cap) return 0;
    memcpy(out + *n, s, k + 1);
    *n += k;
    return 1;
}

static void fmt_uint(char *out, uint32_t v) {
    char tmp[11];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v);
    for (int i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    out[n] = '\0';
}

esp_status esp_at_join(esp_at *e, const char *ssid, const char *password, uint32_t timeout_ms) {
    char cmd[160];
    size_t n = 0;
    e->cwjap_error = 0;
    if (!append(cmd, sizeof cmd, &n, "AT+CWJAP=") || !append_quoted(cmd, sizeof cmd, &n, ssid) ||
        !append(cmd, sizeof cmd, &n, ",") || !append_quoted(cmd, sizeof cmd, &n, password))
        return ESP_ERR_ARG;
    return command(e, cmd, timeout_ms);
}

esp_status esp_at_connect(esp_at *e, const char *host, uint16_t port, uint32_t timeout_ms) {
    char cmd[128];
    char num[12];
    size_t n = 0;
    fmt_uint(num, port);
    if (!append(cmd, sizeof cmd, &n, "AT+CIPSTART=\"TCP\",") ||
        !append_quoted(cmd, sizeof cmd, &n, host) || !append(cmd, sizeof cmd, &n, ",") ||
        !append(cmd, sizeof cmd, &n, num))
        return ESP_ERR_ARG;
    uint32_t deadline = e->now_ms() + timeout_ms;
    esp_status st = send_raw(e, cmd, n, timeout_ms);
    if (st == ESP_OK) st = send_raw(e, "\r\n", 2, timeout_ms);
    if (st != ESP_OK) return st;
    static const char *const finals[] = {"OK", "ALREADY CONNECTED", "ERROR", "FAIL"};
    int r = wait_for(e, finals, 4, 0, deadline);
    if (r < 0) return (esp_status)r;
    if (r >= 2) return ESP_ERR_FAIL;
    if (r == 1) {
        /* "ALREADY CONNECTED" is followed by ERROR: consume it here so the
         * next command does not take it for its own answer. */
        static const char *const tail[] = {"OK", "ERROR"};
        (void)wait_for(e, tail, 2, 0, deadline);
    }
    e->link_up = 1;
    e->rx_count = 0;
    e->ipd_left = 0;
    return ESP_OK;
}

esp_status esp_at_send(esp_at *e, const uint8_t *data, size_t len, uint32_t timeout_ms) {
    if (len == 0 || len > 2048u) return ESP_ERR_ARG;
    if (!e->link_up) return ESP_ERR_CLOSED;
    char cmd[24] = "AT+CIPSEND=";
    fmt_uint(cmd + 11, (uint32_t)len);
    uint32_t deadline = e->now_ms() + timeout_ms;
    e->prompt = 0;
    esp_status st = send_raw(e, cmd, strlen(cmd), timeout_ms);
    if (st == ESP_OK) st = send_raw(e, "\r\n", 2, timeout_ms);
    if (st != ESP_OK) return st;
    static const char *const refused[] = {"ERROR", "link is not valid", "CLOSED"};
    int r = wait_for(e, refused, 3, 1, deadline);
    if (r < 0) return (esp_status)r;
    if (r != 3) {
        if (r == 1) { /* "link is not valid" is followed by ERROR */
            static const char *const tail[] = {"ERROR"};
            (void)wait_for(e, tail, 1, 0, deadline);
        }
        e->link_up = 0;
        return ESP_ERR_CLOSED;
    }
    st = send_raw(e, data, len, timeout_ms);
    if (st != ESP_OK) return st;
    static const char *const finals[] = {"SEND OK", "SEND FAIL", "ERROR"};
    r = wait_for(e, finals, 3, 0, deadline);
    if (r < 0) return (esp_status)r;
    return r == 0 ? ESP_OK : ESP_ERR_FAIL;
}

int esp_at_recv(esp_at *e, uint8_t *buf, size_t len, uint32_t timeout_ms) {
    uint32_t deadline = e->now_ms() + timeout_ms;
    while (e->rx_count == 0) {
        if (!e->link_up) return ESP_ERR_CLOSED;
        int32_t left = (int32_t)(deadline - e->now_ms());
        if (left <= 0) return 0;
        uint8_t tmp[32];
        int n = e->uart->recv(e->uart->ctx, tmp, sizeof tmp, (uint32_t)left);
        if (n < 0) return ESP_ERR_UART;
        for (int i = 0; i < n; i++) (void)feed(e, tmp[i]);
    }
    size_t k = 0;
    while (k < len && e->rx_count > 0) {
        buf[k++] = e->rx[e->rx_head];
        e->rx_head = (e->rx_head + 1u) % sizeof e->rx;
        e->rx_count--;
    }
    return (int)k;
}

esp_status esp_at_close(esp_at *e, uint32_t timeout_ms) {
    esp_status st = command(e, "AT+CIPCLOSE", timeout_ms);
    e->link_up = 0;
    return st;
}

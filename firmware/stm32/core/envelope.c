#include "envelope.h"

#include <string.h>

typedef struct {
    char *p;
    size_t cap;
    size_t len;
    int overflow;
} sbuf;

static void put(sbuf *b, const char *s, size_t n) {
    if (b->overflow || b->len + n + 1 > b->cap) {
        b->overflow = 1;
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(sbuf *b, const char *s) { put(b, s, strlen(s)); }

static size_t fmt_u64(uint64_t v, char *out) {
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + (v % 10u));
        v /= 10u;
    } while (v != 0u);
    for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    return n;
}

int env_key_valid(const char *key) {
    if (key == NULL || !(key[0] >= 'a' && key[0] <= 'z')) return 0;
    size_t i = 1;
    for (; key[i] != '\0'; i++) {
        char c = key[i];
        if (i >= ENV_KEY_MAX_LEN) return 0;
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return 0;
    }
    return 1;
}

size_t env_format_number(double v, char *out, size_t cap) {
    /* v != v is NaN; the magnitude test also catches +-inf. */
    if (v != v || v >= ENV_METRIC_ABS_MAX || v <= -ENV_METRIC_ABS_MAX) return 0;
    char tmp[40];
    size_t n = 0;
    int neg = v < 0;
    double a = neg ? -v : v;
    uint64_t ip = (uint64_t)a;
    uint64_t frac = (uint64_t)((a - (double)ip) * 1e6 + 0.5);
    if (frac >= 1000000u) {
        ip += 1u;
        frac -= 1000000u;
    }
    if (neg && (ip != 0u || frac != 0u)) tmp[n++] = '-'; /* never "-0" */
    n += fmt_u64(ip, tmp + n);
    if (frac != 0u) {
        char digits[6];
        for (int i = 5; i >= 0; i--) {
            digits[i] = (char)('0' + (frac % 10u));
            frac /= 10u;
        }
        int last = 5;
        while (digits[last] == '0') last--;
        tmp[n++] = '.';
        for (int i = 0; i <= last; i++) tmp[n++] = digits[i];
    }
    if (n + 1 > cap) return 0;
    memcpy(out, tmp, n);
    out[n] = '\0';
    return n;
}

/* Tag values are kept to printable ASCII: the gateway counts characters and a
 * device has no business sending anything else in a tag. */
static int tag_value_valid(const char *s) {
    if (s == NULL) return 0;
    size_t i = 0;
    for (; s[i] != '\0'; i++) {
        if (i >= ENV_TAG_VALUE_MAX_LEN) return 0;
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20u || c > 0x7eu) return 0;
    }
    return 1;
}

static void put_json_string(sbuf *b, const char *s) {
    put(b, "\"", 1);
    for (; *s != '\0'; s++) {
        if (*s == '"' || *s == '\\') put(b, "\\", 1);
        put(b, s, 1);
    }
    put(b, "\"", 1);
}

static int ts_valid(const char *ts) {
    /* YYYY-MM-DDTHH:MM:SSZ or YYYY-MM-DDTHH:MM:SS.fffZ (RFC 3339, UTC). */
    static const char shape[] = "dddd-dd-ddTdd:dd:dd";
    size_t n = strlen(ts);
    if (n != 20 && n != 24) return 0;
    for (size_t i = 0; i < 19; i++) {
        if (shape[i] == 'd' ? !(ts[i] >= '0' && ts[i] <= '9') : ts[i] != shape[i]) return 0;
    }
    if (n == 24) {
        if (ts[19] != '.') return 0;
        for (size_t i = 20; i < 23; i++)
            if (!(ts[i] >= '0' && ts[i] <= '9')) return 0;
    }
    return ts[n - 1] == 'Z';
}

env_status env_encode(const env_reading *r, char *out, size_t cap, size_t *len) {
    if (r->n_metrics == 0) return ENV_ERR_EMPTY;
    if (r->n_metrics > ENV_MAX_METRICS || r->n_tags > ENV_MAX_TAGS) return ENV_ERR_TOO_MANY;
    if (r->seq > (uint64_t)ENV_SEQ_MAX) return ENV_ERR_SEQ;
    if (r->ts != NULL && !ts_valid(r->ts)) return ENV_ERR_TS;
    for (size_t i = 0; i < r->n_metrics; i++) {
        if (!env_key_valid(r->metrics[i].key)) return ENV_ERR_KEY;
        for (size_t j = 0; j < i; j++)
            if (strcmp(r->metrics[i].key, r->metrics[j].key) == 0) return ENV_ERR_KEY;
    }
    for (size_t i = 0; i < r->n_tags; i++) {
        if (!env_key_valid(r->tags[i].key)) return ENV_ERR_KEY;
        if (!tag_value_valid(r->tags[i].value)) return ENV_ERR_VALUE;
        for (size_t j = 0; j < i; j++)
            if (strcmp(r->tags[i].key, r->tags[j].key) == 0) return ENV_ERR_KEY;
    }
    if (cap == 0) return ENV_ERR_SPACE;
    sbuf b = {out, cap, 0, 0};
    out[0] = '\0';
    char num[40];
    puts_(&b, "{\"seq\":");
    put(&b, num, fmt_u64(r->seq, num));
    if (r->ts != NULL) {
        puts_(&b, ",\"ts\":");
        put_json_string(&b, r->ts);
    }
    puts_(&b, ",\"metrics\":{");
    for (size_t i = 0; i < r->n_metrics; i++) {
        size_t n = env_format_number(r->metrics[i].value, num, sizeof num);
        if (n == 0) return ENV_ERR_VALUE;
        if (i) put(&b, ",", 1);
        put_json_string(&b, r->metrics[i].key);
        put(&b, ":", 1);
        put(&b, num, n);
    }
    puts_(&b, "},\"tags\":{");
    for (size_t i = 0; i < r->n_tags; i++) {
        if (i) put(&b, ",", 1);
        put_json_string(&b, r->tags[i].key);
        put(&b, ":", 1);
        put_json_string(&b, r->tags[i].value);
    }
    puts_(&b, "}}");
    if (b.overflow) return ENV_ERR_SPACE;
    *len = b.len;
    return ENV_OK;
}

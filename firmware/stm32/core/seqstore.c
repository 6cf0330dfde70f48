#include "seqstore.h"

#include <string.h>

#define COMMIT_MARKER 0x5e9c0a11u
#define MAX_SLOT_RETRIES 4u

uint32_t seqstore_crc32(const uint8_t *data, uint32_t len) {
    uint32_t crc = 0xffffffffu;
    for (uint32_t i = 0; i < len; i++) {
        crc ^= data[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint32_t slots_per_page(const seqstore *s) {
    return s->flash->page_size / SEQSTORE_RECORD_SIZE;
}

/* Record: unit 1 = value (lo, hi); unit 2 = crc32(value), marker. */
static int record_value(const uint8_t rec[SEQSTORE_RECORD_SIZE], uint64_t *value) {
    if (get32(rec + 12) != COMMIT_MARKER) return 0;
    if (get32(rec + 8) != seqstore_crc32(rec, 8)) return 0;
    *value = (uint64_t)get32(rec) | (uint64_t)get32(rec + 4) << 32;
    return 1;
}

static int is_blank(const uint8_t *p, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        if (p[i] != 0xffu) return 0;
    return 1;
}

int seqstore_open(seqstore *s, flash_dev *flash, uint32_t lease) {
    memset(s, 0, sizeof *s);
    s->flash = flash;
    s->lease = lease ? lease : 1u;
    uint32_t per_page = slots_per_page(s);
    int found = 0;
    uint64_t best = 0;
    uint32_t best_page = 0;
    for (uint32_t p = 0; p < flash->page_count; p++) {
        for (uint32_t i = 0; i < per_page; i++) {
            uint8_t rec[SEQSTORE_RECORD_SIZE];
            int rc = flash->read(flash, p * flash->page_size + i * SEQSTORE_RECORD_SIZE, rec,
                                 sizeof rec);
            if (rc != FLASH_OK) return rc;
            uint64_t v;
            if (record_value(rec, &v) && (!found || v > best)) {
                found = 1;
                best = v;
                best_page = p;
            }
        }
    }
    if (!found) {
        /* Blank or garbage: start on page 0, erased before the first write. */
        s->page = 0;
        s->slot = 0;
        s->page_fresh = 0;
        return FLASH_OK;
    }
    /* Append after the last used slot of the newest page; a torn record there
     * is skipped, not overwritten (its bits can no longer be set back). */
    uint32_t last_used = 0;
    for (uint32_t i = 0; i < per_page; i++) {
        uint8_t rec[SEQSTORE_RECORD_SIZE];
        int rc = flash->read(flash, best_page * flash->page_size + i * SEQSTORE_RECORD_SIZE,
                             rec, sizeof rec);
        if (rc != FLASH_OK) return rc;
        if (!is_blank(rec, sizeof rec)) last_used = i + 1;
    }
    s->page = best_page;
    s->slot = last_used;
    s->page_fresh = 1;
    s->ceiling = best;
    s->next = best;
    return FLASH_OK;
}

static int write_record(seqstore *s, uint64_t value) {
    uint32_t per_page = slots_per_page(s);
    for (uint32_t attempt = 0; attempt < MAX_SLOT_RETRIES; attempt++) {
        if (s->slot >= per_page) {
            s->page = (s->page + 1u) % s->flash->page_count;
            s->slot = 0;
            s->page_fresh = 0;
        }
        if (!s->page_fresh) {
            int rc = s->flash->erase(s->flash, s->page);
            if (rc != FLASH_OK) return rc;
            s->page_fresh = 1;
        }
        uint8_t rec[SEQSTORE_RECORD_SIZE];
        put32(rec, (uint32_t)value);
        put32(rec + 4, (uint32_t)(value >> 32));
        put32(rec + 8, seqstore_crc32(rec, 8));
        put32(rec + 12, COMMIT_MARKER);
        uint32_t off = s->page * s->flash->page_size + s->slot * SEQSTORE_RECORD_SIZE;
        s->slot++;
        int rc = s->flash->program(s->flash, off, rec, FLASH_UNIT);
        if (rc == FLASH_OK) rc = s->flash->program(s->flash, off + FLASH_UNIT, rec + 8, FLASH_UNIT);
        if (rc == FLASH_ERR_POWER) return rc;
        if (rc == FLASH_OK) {
            /* Read back: a write the hardware reports done but that does not
             * verify is treated like a torn one, and the next slot is tried. */
            uint8_t back[SEQSTORE_RECORD_SIZE];
            uint64_t v;
            rc = s->flash->read(s->flash, off, back, sizeof back);
            if (rc != FLASH_OK) return rc;
            if (record_value(back, &v) && v == value) {
                s->writes++;
                return FLASH_OK;
            }
        }
    }
    return FLASH_ERR_IO;
}

int seqstore_next(seqstore *s, uint64_t *seq) {
    if (s->next >= s->ceiling) {
        uint64_t ceiling = s->next + s->lease;
        int rc = write_record(s, ceiling);
        if (rc != FLASH_OK) return rc;
        s->ceiling = ceiling;
    }
    *seq = s->next++;
    return FLASH_OK;
}

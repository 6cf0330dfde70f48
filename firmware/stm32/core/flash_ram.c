#include "flash_ram.h"

#include <string.h>

static uint32_t xorshift(uint32_t *s) {
    uint32_t x = *s ? *s : 0x9e3779b9u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}

/* 1 if this operation is the one during which the power fails. */
static int cut_now(flash_ram *f) {
    int cut = f->cut_after >= 0 && f->ops == (uint32_t)f->cut_after;
    f->ops++;
    if (cut) f->powered_off = 1;
    return cut;
}

static int ram_erase(flash_dev *dev, uint32_t page) {
    flash_ram *f = (flash_ram *)dev;
    if (f->powered_off) return FLASH_ERR_POWER;
    if (page >= dev->page_count) return FLASH_ERR_RANGE;
    uint8_t *p = f->mem + page * dev->page_size;
    if (page < FLASH_RAM_MAX_PAGES) f->erase_count[page]++;
    if (cut_now(f)) {
        uint32_t stop = xorshift(&f->rng) % dev->page_size;
        memset(p, 0xff, stop);
        p[stop] = (uint8_t)xorshift(&f->rng);
        return FLASH_ERR_POWER;
    }
    memset(p, 0xff, dev->page_size);
    return FLASH_OK;
}

static int ram_program(flash_dev *dev, uint32_t off, const uint8_t *data, uint32_t len) {
    flash_ram *f = (flash_ram *)dev;
    if (f->powered_off) return FLASH_ERR_POWER;
    if (off % FLASH_UNIT || len % FLASH_UNIT || off + len > dev->page_size * dev->page_count)
        return FLASH_ERR_RANGE;
    uint32_t stop = len;
    int cut = cut_now(f);
    if (cut) stop = xorshift(&f->rng) % len;
    for (uint32_t i = 0; i < stop; i++) f->mem[off + i] &= data[i];
    if (cut) {
        /* Some of the bits this byte should lose are lost, some are not. */
        f->mem[off + stop] &= (uint8_t)(data[stop] | xorshift(&f->rng));
        return FLASH_ERR_POWER;
    }
    return FLASH_OK;
}

static int ram_read(flash_dev *dev, uint32_t off, uint8_t *dst, uint32_t len) {
    flash_ram *f = (flash_ram *)dev;
    if (f->powered_off) return FLASH_ERR_POWER;
    if (off + len > dev->page_size * dev->page_count) return FLASH_ERR_RANGE;
    memcpy(dst, f->mem + off, len);
    return FLASH_OK;
}

void flash_ram_init(flash_ram *f, uint8_t *mem, uint32_t page_size, uint32_t page_count) {
    memset(f, 0, sizeof *f);
    f->dev.page_size = page_size;
    f->dev.page_count = page_count;
    f->dev.erase = ram_erase;
    f->dev.program = ram_program;
    f->dev.read = ram_read;
    f->mem = mem;
    f->cut_after = -1;
}

void flash_ram_cut_power_at(flash_ram *f, int32_t op_index, uint32_t seed) {
    f->ops = 0;
    f->cut_after = op_index;
    f->rng = seed;
}

void flash_ram_power_on(flash_ram *f) {
    f->powered_off = 0;
    f->cut_after = -1;
}

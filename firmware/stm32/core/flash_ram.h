/* NOR flash emulated in RAM: the host tests' flash, and the QEMU image's (QEMU's
 * netduinoplus2 does not emulate the STM32F4 flash interface).
 *
 * For the tests it can cut the power in the middle of the Nth operation: a
 * program leaves a prefix of the unit written and one byte half-programmed, an
 * erase leaves a prefix of the page erased and one byte garbled; afterwards
 * every call fails with FLASH_ERR_POWER until flash_ram_power_on().
 */
#ifndef IOTGW_FLASH_RAM_H
#define IOTGW_FLASH_RAM_H

#include "flash.h"

#define FLASH_RAM_MAX_PAGES 8

typedef struct {
    flash_dev dev; /* first member: a flash_dev * is a flash_ram * */
    uint8_t *mem;
    uint32_t erase_count[FLASH_RAM_MAX_PAGES];
    uint32_t ops;           /* erase + program calls that reached the memory */
    int32_t cut_after;      /* power fails during operation number cut_after (0-based); -1 never */
    uint32_t rng;           /* decides where the interrupted operation stops */
    int powered_off;
} flash_ram;

/* mem must hold page_size * page_count bytes; it is NOT erased here, so a
 * region that survives a reset (QEMU .noinit) keeps its contents. */
void flash_ram_init(flash_ram *f, uint8_t *mem, uint32_t page_size, uint32_t page_count);
void flash_ram_cut_power_at(flash_ram *f, int32_t op_index, uint32_t seed);
void flash_ram_power_on(flash_ram *f);

#endif

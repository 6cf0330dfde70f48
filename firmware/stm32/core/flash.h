/* Flash device interface used by the sequence store.
 *
 * NOR semantics: erase sets a whole page to 0xFF; programming can only clear
 * bits, in units of FLASH_UNIT bytes (8: the STM32L4 double word, written as
 * two words on the STM32F4). Every call returns FLASH_OK or a negative error.
 */
#ifndef IOTGW_FLASH_H
#define IOTGW_FLASH_H

#include <stdint.h>

#define FLASH_UNIT 8u

enum { FLASH_OK = 0, FLASH_ERR_IO = -1, FLASH_ERR_POWER = -2, FLASH_ERR_RANGE = -3 };

typedef struct flash_dev flash_dev;
struct flash_dev {
    uint32_t page_size;  /* bytes, multiple of 16 */
    uint32_t page_count; /* >= 2: the store rotates over them */
    int (*erase)(flash_dev *dev, uint32_t page);
    /* Program len bytes (multiple of FLASH_UNIT) at byte offset off (aligned). */
    int (*program)(flash_dev *dev, uint32_t off, const uint8_t *data, uint32_t len);
    int (*read)(flash_dev *dev, uint32_t off, uint8_t *dst, uint32_t len);
};

#endif

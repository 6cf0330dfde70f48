/* Monotonic message sequence number that survives resets and power loss.
 *
 * The store persists a ceiling: every seq handed out is below the last
 * ceiling that reached flash. seqstore_next() writes a new ceiling (seq +
 * lease) before it hands out the first seq at or above the old one, so after
 * any reset, even one in the middle of a flash write, the device resumes at a
 * value above every seq it may have used. lease = 1 writes once per message
 * and keeps seqs consecutive across reboots; a larger lease divides the flash
 * wear by the lease at the cost of a gap of < lease after a reboot.
 *
 * Wear levelling: 16-byte records are appended to the current page; a full
 * page moves the store to the next page in rotation, which is erased first.
 * The page holding the newest record is never the one erased. A record counts
 * only if its commit unit (CRC + marker, written after the value) is intact,
 * so a torn write reads as "not written".
 */
#ifndef IOTGW_SEQSTORE_H
#define IOTGW_SEQSTORE_H

#include <stdint.h>

#include "flash.h"

#define SEQSTORE_RECORD_SIZE 16u

typedef struct {
    flash_dev *flash;
    uint32_t lease;
    uint64_t next;    /* next seq to hand out */
    uint64_t ceiling; /* persisted: no seq >= ceiling has been handed out */
    uint32_t page;    /* where the next record goes */
    uint32_t slot;    /* == slots per page: the next write moves to a fresh page */
    int page_fresh;   /* 0: erase page before writing slot 0 */
    uint32_t writes;  /* records written since open (for tests and logs) */
} seqstore;

/* Scan the flash and resume above the newest intact record (0 on blank flash). */
int seqstore_open(seqstore *s, flash_dev *flash, uint32_t lease);

/* Hand out the next seq, persisting a new ceiling first when needed.
 * Returns FLASH_OK, or the flash error (then no seq was handed out). */
int seqstore_next(seqstore *s, uint64_t *seq);

uint32_t seqstore_crc32(const uint8_t *data, uint32_t len);

#endif

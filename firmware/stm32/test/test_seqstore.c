#include <stdlib.h>
#include <string.h>

#include "flash_ram.h"
#include "seqstore.h"
#include "unit.h"

/* Small pages (4 records) so that a few hundred seqs rotate through every page. */
#define PAGE 64u
#define PAGES 3u
static uint8_t mem[PAGE * PAGES];

static void blank(flash_ram *f, uint32_t pages) {
    memset(mem, 0xff, sizeof mem);
    flash_ram_init(f, mem, PAGE, pages);
}

static void starts_at_zero_and_counts(void) {
    flash_ram f;
    blank(&f, PAGES);
    seqstore s;
    REQUIRE(seqstore_open(&s, &f.dev, 1) == FLASH_OK);
    for (uint64_t want = 0; want < 50; want++) {
        uint64_t seq;
        REQUIRE(seqstore_next(&s, &seq) == FLASH_OK);
        CHECK_EQ_U(seq, want);
    }
}

static void survives_resets_consecutively_with_lease_1(void) {
    flash_ram f;
    blank(&f, PAGES);
    uint64_t expect = 0;
    for (int boot = 0; boot < 40; boot++) {
        seqstore s;
        REQUIRE(seqstore_open(&s, &f.dev, 1) == FLASH_OK);
        for (int i = 0; i < boot % 7; i++) { /* resets at every position in a page */
            uint64_t seq;
            REQUIRE(seqstore_next(&s, &seq) == FLASH_OK);
            CHECK_EQ_U(seq, expect);
            expect++;
        }
    }
}

static void lease_bounds_the_gap_and_the_writes(void) {
    flash_ram f;
    blank(&f, PAGES);
    seqstore s;
    REQUIRE(seqstore_open(&s, &f.dev, 8) == FLASH_OK);
    uint64_t seq = 0;
    for (int i = 0; i < 21; i++) REQUIRE(seqstore_next(&s, &seq) == FLASH_OK);
    CHECK_EQ_U(seq, 20);
    CHECK_EQ_U(s.writes, 3); /* ceilings 8, 16, 24 */
    seqstore again;
    REQUIRE(seqstore_open(&again, &f.dev, 8) == FLASH_OK);
    uint64_t after;
    REQUIRE(seqstore_next(&again, &after) == FLASH_OK);
    CHECK(after > seq);
    CHECK(after <= seq + 8);
}

static void wear_is_spread_over_pages(void) {
    flash_ram f;
    blank(&f, PAGES);
    seqstore s;
    REQUIRE(seqstore_open(&s, &f.dev, 1) == FLASH_OK);
    for (int i = 0; i < 1200; i++) {
        uint64_t seq;
        REQUIRE(seqstore_next(&s, &seq) == FLASH_OK);
    }
    uint32_t lo = f.erase_count[0], hi = f.erase_count[0], total = 0;
    for (uint32_t p = 0; p < PAGES; p++) {
        if (f.erase_count[p] < lo) lo = f.erase_count[p];
        if (f.erase_count[p] > hi) hi = f.erase_count[p];
        total += f.erase_count[p];
    }
    CHECK(hi - lo <= 1);
    CHECK_EQ_U(total, 1200 / (PAGE / SEQSTORE_RECORD_SIZE)); /* one erase per page filled */
}

static void garbage_flash_is_not_trusted(void) {
    flash_ram f;
    srand(7);
    for (size_t i = 0; i < sizeof mem; i++) mem[i] = (uint8_t)rand();
    flash_ram_init(&f, mem, PAGE, PAGES);
    seqstore s;
    REQUIRE(seqstore_open(&s, &f.dev, 1) == FLASH_OK);
    uint64_t seq;
    REQUIRE(seqstore_next(&s, &seq) == FLASH_OK);
    CHECK_EQ_U(seq, 0);
    REQUIRE(seqstore_next(&s, &seq) == FLASH_OK);
    CHECK_EQ_U(seq, 1);
}

/* Cut the power during every single flash operation of a run (each erase and
 * each program unit, at a random byte inside it), then boot again: the seq
 * handed out after the reboot must be above every seq handed out before. */
static void power_cut_at_every_operation(void) {
    const uint32_t leases[] = {1, 3};
    for (size_t li = 0; li < 2; li++) {
        for (int32_t cut = 0; cut < 120; cut++) {
            for (uint32_t seed = 1; seed <= 4; seed++) {
                flash_ram f;
                blank(&f, PAGES);
                seqstore s;
                REQUIRE(seqstore_open(&s, &f.dev, leases[li]) == FLASH_OK);
                /* some history first, so the cut also hits pages already in use */
                uint64_t seq = 0;
                int handed = 0;
                for (int i = 0; i < 9; i++) REQUIRE(seqstore_next(&s, &seq) == FLASH_OK);
                handed = 1;
                flash_ram_cut_power_at(&f, cut, seed * 2654435761u + (uint32_t)cut);
                for (int i = 0; i < 200; i++) {
                    uint64_t got;
                    if (seqstore_next(&s, &got) != FLASH_OK) break;
                    CHECK(got > seq);
                    seq = got;
                }
                REQUIRE(f.powered_off);
                flash_ram_power_on(&f);
                seqstore after;
                REQUIRE(seqstore_open(&after, &f.dev, leases[li]) == FLASH_OK);
                uint64_t next;
                REQUIRE(seqstore_next(&after, &next) == FLASH_OK);
                CHECK(!handed || next > seq);
                /* and the store keeps working after the recovery */
                for (int i = 0; i < 10; i++) {
                    uint64_t more;
                    REQUIRE(seqstore_next(&after, &more) == FLASH_OK);
                    CHECK_EQ_U(more, next + 1);
                    next = more;
                }
            }
        }
    }
}

/* Many boots, each cut short by a power loss at a random point. */
static void repeated_power_loss_stays_monotonic(void) {
    flash_ram f;
    blank(&f, PAGES);
    uint64_t highest = 0;
    int any = 0;
    srand(11);
    for (int boot = 0; boot < 500; boot++) {
        seqstore s;
        REQUIRE(seqstore_open(&s, &f.dev, 1 + (uint32_t)(boot % 4)) == FLASH_OK);
        flash_ram_cut_power_at(&f, rand() % 12, (uint32_t)rand());
        for (int i = 0; i < 100; i++) {
            uint64_t got;
            if (seqstore_next(&s, &got) != FLASH_OK) break;
            CHECK(!any || got > highest);
            highest = got;
            any = 1;
        }
        flash_ram_power_on(&f);
    }
    CHECK(any);
    CHECK(highest > 500);
}

UNIT_SUITE(seqstore) = {
    {"seqstore: starts at 0 and counts", starts_at_zero_and_counts},
    {"seqstore: consecutive across resets with lease 1", survives_resets_consecutively_with_lease_1},
    {"seqstore: lease bounds the gap and the writes", lease_bounds_the_gap_and_the_writes},
    {"seqstore: wear spread evenly over pages", wear_is_spread_over_pages},
    {"seqstore: garbage flash is not trusted", garbage_flash_is_not_trusted},
    {"seqstore: power cut during every flash operation", power_cut_at_every_operation},
    {"seqstore: 500 boots cut by power loss stay monotonic", repeated_power_loss_stays_monotonic},
    {0, 0},
};

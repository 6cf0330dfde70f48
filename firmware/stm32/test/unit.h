/* A minimal test runner: TEST(name) defines a test, CHECK records a failure
 * and goes on, REQUIRE stops the test. The runner prints one line per test
 * and closes with "N passed, N failed" (tests/firmware parses it). */
#ifndef UNIT_H
#define UNIT_H

#include <stdio.h>

typedef void (*unit_fn)(void);
typedef struct {
    const char *name;
    unit_fn fn;
} unit_test;

extern int unit_failures_in_test;

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            unit_failures_in_test++;                                             \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
        }                                                                        \
    } while (0)

#define REQUIRE(cond)                                                            \
    do {                                                                         \
        if (!(cond)) {                                                           \
            unit_failures_in_test++;                                             \
            fprintf(stderr, "  %s:%d: REQUIRE(%s) failed\n", __FILE__, __LINE__, #cond); \
            return;                                                              \
        }                                                                        \
    } while (0)

#define CHECK_EQ_U(a, b)                                                         \
    do {                                                                         \
        unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b); \
        if (a_ != b_) {                                                          \
            unit_failures_in_test++;                                             \
            fprintf(stderr, "  %s:%d: %s == %s failed: %llu != %llu\n", __FILE__, __LINE__, #a, #b, a_, b_); \
        }                                                                        \
    } while (0)

#define CHECK_STR(a, b)                                                          \
    do {                                                                         \
        const char *a_ = (a), *b_ = (b);                                         \
        if (strcmp(a_, b_) != 0) {                                               \
            unit_failures_in_test++;                                             \
            fprintf(stderr, "  %s:%d: %s\n    got:  %s\n    want: %s\n", __FILE__, __LINE__, #a, a_, b_); \
        }                                                                        \
    } while (0)

/* Each suite file defines one table: const unit_test NAME_tests[] = {..., {0, 0}}; */
#define UNIT_SUITE(name) const unit_test name##_tests[]

#endif

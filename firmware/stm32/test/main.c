/* Host unit tests of the portable core. Usage: host_tests [TRANSCRIPT_DIR] */
#include <stdio.h>
#include <string.h>

#include "unit.h"

int unit_failures_in_test;
const char *transcript_dir = "test/transcripts";

extern const unit_test envelope_tests[], topic_tests[], seqstore_tests[], ring_tests[],
    backoff_tests[], power_tests[], mqtt_tests[], esp_at_tests[], device_tests[];

int main(int argc, char **argv) {
    if (argc > 1) transcript_dir = argv[1];
    const unit_test *suites[] = {envelope_tests, topic_tests,  seqstore_tests,
                                 ring_tests,     backoff_tests, power_tests,
                                 mqtt_tests,     esp_at_tests, device_tests};
    int passed = 0, failed = 0;
    for (size_t s = 0; s < sizeof suites / sizeof suites[0]; s++) {
        for (const unit_test *t = suites[s]; t->name != NULL; t++) {
            unit_failures_in_test = 0;
            t->fn();
            if (unit_failures_in_test == 0) {
                passed++;
                printf("ok   %s\n", t->name);
            } else {
                failed++;
                printf("FAIL %s\n", t->name);
            }
            fflush(stdout);
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

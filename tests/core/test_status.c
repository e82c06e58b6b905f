/* Status names, the version query, and the per-thread last-error text: a thread that has not failed
 * sees "", and a failure on one thread is never visible on another. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>

#include "core/test_util.h"

/* Runs first, before any call in this process has failed. */
static void test_last_error_initially_empty(void **state)
{
    (void)state;
    const char *m = moe_last_error();
    assert_non_null(m);
    assert_string_equal(m, "");
    assert_string_equal(moe_ctx_last_error(NULL), "");
}

static void test_status_string_every_code(void **state)
{
    (void)state;
    static const struct {
        moe_status code;
        const char *name;
    } known[] = {
        {MOE_OK, "MOE_OK"},
        {MOE_ERR_INVALID_ARG, "MOE_ERR_INVALID_ARG"},
        {MOE_ERR_OUT_OF_MEMORY, "MOE_ERR_OUT_OF_MEMORY"},
        {MOE_ERR_IO, "MOE_ERR_IO"},
        {MOE_ERR_FORMAT, "MOE_ERR_FORMAT"},
        {MOE_ERR_UNSUPPORTED, "MOE_ERR_UNSUPPORTED"},
        {MOE_ERR_COMM, "MOE_ERR_COMM"},
        {MOE_ERR_DEVICE, "MOE_ERR_DEVICE"},
        {MOE_ERR_NUMERIC, "MOE_ERR_NUMERIC"},
        {MOE_ERR_STATE, "MOE_ERR_STATE"},
        {MOE_ERR_TIMEOUT, "MOE_ERR_TIMEOUT"},
    };
    /* the values are part of the ABI and must never change */
    assert_int_equal(MOE_OK, 0);
    assert_int_equal(MOE_ERR_INVALID_ARG, -1);
    assert_int_equal(MOE_ERR_OUT_OF_MEMORY, -2);
    assert_int_equal(MOE_ERR_IO, -3);
    assert_int_equal(MOE_ERR_FORMAT, -4);
    assert_int_equal(MOE_ERR_UNSUPPORTED, -5);
    assert_int_equal(MOE_ERR_COMM, -6);
    assert_int_equal(MOE_ERR_DEVICE, -7);
    assert_int_equal(MOE_ERR_NUMERIC, -8);
    assert_int_equal(MOE_ERR_STATE, -9);
    assert_int_equal(MOE_ERR_TIMEOUT, -10);
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        const char *s = moe_status_string(known[i].code);
        assert_non_null(s);
        assert_string_equal(s, known[i].name);
    }
}

static void test_status_string_unknown(void **state)
{
    (void)state;
    const moe_status unknown[] = {1, 2, -11, -12, 100, -1000, INT32_MIN, INT32_MAX, MOE_STATUS_FORCE32};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *s = moe_status_string(unknown[i]);
        assert_non_null(s);
        assert_string_equal(s, "MOE_ERR_UNKNOWN");
    }
}

static void test_version(void **state)
{
    (void)state;
    int32_t major = -1, minor = -1, patch = -1;
    const char *s = moe_version(&major, &minor, &patch);
    assert_non_null(s);
    assert_int_equal(major, MOE_VERSION_MAJOR);
    assert_int_equal(minor, MOE_VERSION_MINOR);
    assert_int_equal(patch, MOE_VERSION_PATCH);
    char want[64];
    snprintf(want, sizeof want, "%d.%d.%d", MOE_VERSION_MAJOR, MOE_VERSION_MINOR, MOE_VERSION_PATCH);
    assert_string_equal(s, want);
    /* every out-parameter is optional */
    const char *s2 = moe_version(NULL, NULL, NULL);
    assert_non_null(s2);
    assert_string_equal(s2, want);
    int32_t only_minor = -1;
    assert_string_equal(moe_version(NULL, &only_minor, NULL), want);
    assert_int_equal(only_minor, MOE_VERSION_MINOR);
}

/* ---- per-thread last error ------------------------------------------------------------------- */

typedef struct thread_report {
    int initially_empty;
    int initially_non_null;
    int failed_as_expected;
    int own_message_seen;
    int empty_while_other_failed;
    char own_message[256];
} thread_report;

static pthread_barrier_t g_barrier;

/* Fails a call on its own thread, then checks its own text. */
static void *failing_thread(void *arg)
{
    thread_report *r = arg;
    const char *m = moe_last_error();
    r->initially_non_null = m != NULL;
    r->initially_empty = m != NULL && m[0] == '\0';
    r->failed_as_expected = moe_ctx_config_init(NULL, (uint32_t)sizeof(moe_ctx_config)) == MOE_ERR_INVALID_ARG;
    m = moe_last_error();
    r->own_message_seen = m != NULL && strstr(m, "moe_ctx_config_init") != NULL;
    snprintf(r->own_message, sizeof r->own_message, "%s", m ? m : "");
    pthread_barrier_wait(&g_barrier); /* B checks its text while A's failure is recorded */
    pthread_barrier_wait(&g_barrier);
    m = moe_last_error();
    /* A's own text is unchanged by whatever B did meanwhile */
    r->own_message_seen = r->own_message_seen && strcmp(m, r->own_message) == 0;
    return NULL;
}

/* Waits until the other thread has failed, then checks that it sees nothing of it. */
static void *quiet_thread(void *arg)
{
    thread_report *r = arg;
    const char *m = moe_last_error();
    r->initially_non_null = m != NULL;
    r->initially_empty = m != NULL && m[0] == '\0';
    pthread_barrier_wait(&g_barrier);
    m = moe_last_error();
    r->empty_while_other_failed = m != NULL && m[0] == '\0';
    /* a failure of its own, with a different message, must not leak to A either */
    r->failed_as_expected = moe_dtype_size(12345, NULL) == MOE_ERR_INVALID_ARG &&
                            moe_cuda_device_count(NULL) == MOE_ERR_INVALID_ARG;
    m = moe_last_error();
    r->own_message_seen = m != NULL && strstr(m, "moe_cuda_device_count") != NULL;
    pthread_barrier_wait(&g_barrier);
    return NULL;
}

static void test_last_error_fresh_thread_is_empty(void **state)
{
    (void)state;
    /* make the main thread fail first: a new thread still starts with "" */
    assert_int_equal(moe_ctx_config_init(NULL, 8), MOE_ERR_INVALID_ARG);
    assert_non_null(strstr(moe_last_error(), "moe_ctx_config_init"));
    thread_report a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    assert_int_equal(pthread_barrier_init(&g_barrier, NULL, 2), 0);
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, failing_thread, &a), 0);
    assert_int_equal(pthread_create(&tb, NULL, quiet_thread, &b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    pthread_barrier_destroy(&g_barrier);

    assert_true(a.initially_non_null);
    assert_true(a.initially_empty);
    assert_true(a.failed_as_expected);
    assert_true(a.own_message_seen);
    assert_true(b.initially_non_null);
    assert_true(b.initially_empty);
    assert_true(b.empty_while_other_failed);
    assert_true(b.failed_as_expected);
    assert_true(b.own_message_seen);
    /* and neither thread touched the main thread's text */
    assert_non_null(strstr(moe_last_error(), "moe_ctx_config_init"));
    assert_null(strstr(moe_last_error(), "moe_cuda_device_count"));
}

static void *just_read(void *arg)
{
    char *out = arg;
    const char *m = moe_last_error();
    snprintf(out, 256, "%s", m ? m : "(null)");
    return NULL;
}

static void test_last_error_not_seen_by_later_thread(void **state)
{
    (void)state;
    ASSERT_FAILS(moe_cuda_device_count(NULL), MOE_ERR_INVALID_ARG, "moe_cuda_device_count", "count");
    char seen[256] = "not run";
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, just_read, seen), 0);
    pthread_join(t, NULL);
    assert_string_equal(seen, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_last_error_initially_empty),
        cmocka_unit_test(test_status_string_every_code),
        cmocka_unit_test(test_status_string_unknown),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_last_error_fresh_thread_is_empty),
        cmocka_unit_test(test_last_error_not_seen_by_later_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

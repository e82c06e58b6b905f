/* Crash safety of checkpoint saves. Fault injection fails the k-th file-system call (write, fsync,
 * rename, unlink, mkdir, rmdir, close, directory fsync) of a save, for every k, both for a new step
 * (with rotation) and for replacing an existing step: afterwards the root always loads, and loads
 * exactly the previous checkpoint or exactly the new one (the new one whenever the save reported
 * success); the next successful save leaves no temporary entry behind. Then a child process saving
 * in a loop is killed with SIGKILL at random moments: the root always loads a checkpoint that is
 * exactly one the child (or the parent) saved. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#include "ckpt_util.h"
#include "io/fsio.h"

static moe_optimizer_config opt_config(void)
{
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    oc.lr = 1e-2f;
    return oc;
}

static moe_model_config model_config(void)
{
    moe_model_config c;
    ck_tiny_config(&c);
    c.num_layers = 1; /* few tensors: fewer calls per save, so every k stays cheap */
    c.moe_bias_update_rate = 0.05f;
    return c;
}

static moe_status save_at(ck_run *r, const char *root, int64_t step, int32_t keep)
{
    moe_checkpoint_info info;
    moe_checkpoint_info_init(&info, sizeof info);
    info.step = step;
    info.data_position = step + 100;
    info.keep_last = keep;
    return moe_checkpoint_save(r->model, r->opt, root, &info);
}

static int count_hook(moei_fs_op op, const char *path, uint64_t n, void *user)
{
    (void)op;
    (void)path;
    (void)n;
    (void)user;
    return 0;
}

/* No temporary or aside entry left in the root. */
static void assert_clean(const char *root)
{
    assert_int_equal(ck_count_entries(root, ".tmp-", 0), 0);
    assert_int_equal(ck_count_entries(root, ".del-", 0), 0);
    assert_int_equal(ck_count_entries(root, "latest.tmp", 0), 0);
    assert_int_equal(ck_count_entries(root, ".old", 1), 0);
    assert_int_equal(ck_count_entries(root, ".tmp", 1), 0);
}

/* For every k: the root holds A (at step_a); the save of B (at step_b, keep) has its k-th call fail. */
static void every_call(int64_t step_a, int64_t step_b, int32_t keep)
{
    moe_model_config c = model_config();
    moe_optimizer_config oc = opt_config();
    ck_run a, probe;
    ck_run_create(&a, &c, &oc, 11);
    ck_run_create(&probe, &c, &oc, 11);
    ck_train_step(&a, 1);
    ck_state sa, sb;
    ck_snapshot(a.model, a.opt, &sa);
    /* B is A plus one step, held in a second run so both states can be saved at will */
    ck_run b;
    ck_run_create(&b, &c, &oc, 11);
    ck_train_step(&b, 1);
    ck_train_step(&b, 2);
    ck_snapshot(b.model, b.opt, &sb);
    assert_false(ck_state_equal(&sa, &sb));

    /* How many calls a clean save of B makes from this starting point. */
    char root[512];
    ck_make_temp(root, sizeof root, "faults");
    CK_ASSERT_OK(save_at(&a, root, step_a, 0));
    moei_fs_set_fault_hook(count_hook, NULL);
    CK_ASSERT_OK(save_at(&b, root, step_b, keep));
    uint64_t calls = moei_fs_call_count();
    moei_fs_reset_faults();
    ck_rmrf(root);
    assert_true(calls >= 20);

    const int errs[] = {EIO, ENOSPC, EACCES};
    int failed = 0, saw_a = 0, saw_b = 0;
    for (uint64_t k = 1; k <= calls + 1; k++) {
        ck_make_temp(root, sizeof root, "faults");
        CK_ASSERT_OK(save_at(&a, root, step_a, 0));
        moei_fs_fail_nth((int64_t)k, errs[k % 3]);
        moe_status st = save_at(&b, root, step_b, keep);
        moei_fs_reset_faults();
        if (st != MOE_OK) {
            failed++;
            if (st != MOE_ERR_IO) fail_msg("fault at call %llu: %s", (unsigned long long)k, moe_status_string(st));
            if (!strstr(moe_last_error(), strerror(errs[k % 3])))
                fail_msg("fault at call %llu: message '%s' lacks the system error", (unsigned long long)k,
                         moe_last_error());
        }
        moe_checkpoint_info info;
        moe_checkpoint_info_init(&info, sizeof info);
        moe_status ls = moe_checkpoint_load(probe.model, probe.opt, root, &info, NULL, 0);
        if (ls != MOE_OK)
            fail_msg("fault at call %llu (save %s): the root does not load: %s", (unsigned long long)k,
                     moe_status_string(st), moe_last_error());
        ck_state got;
        ck_snapshot(probe.model, probe.opt, &got);
        int is_a = ck_state_equal(&got, &sa), is_b = ck_state_equal(&got, &sb);
        ck_state_free(&got);
        if (!is_a && !is_b) fail_msg("fault at call %llu: the root loads neither A nor B", (unsigned long long)k);
        if (is_a && info.step != step_a) fail_msg("fault at call %llu: A's state with step %lld", (unsigned long long)k, (long long)info.step);
        if (is_b && (info.step != step_b || info.data_position != step_b + 100))
            fail_msg("fault at call %llu: B's state with step %lld", (unsigned long long)k, (long long)info.step);
        if (st == MOE_OK && !is_b) fail_msg("fault at call %llu: the save succeeded but A loads", (unsigned long long)k);
        saw_a += is_a;
        saw_b += is_b;
        /* the next save cleans up whatever the failed one left */
        CK_ASSERT_OK(save_at(&a, root, 3, 0));
        assert_clean(root);
        CK_ASSERT_OK(moe_checkpoint_load(probe.model, probe.opt, root, &info, NULL, 0));
        assert_int_equal(info.step, 3);
        ck_rmrf(root);
    }
    /* every call up to the last was a fault point; k = calls + 1 ran clean */
    assert_true(failed >= 1 && saw_a >= 1 && saw_b >= 1);
    print_message("steps %lld -> %lld: %llu calls per save; %d failed saves, %d left A, %d left B\n",
                  (long long)step_a, (long long)step_b, (unsigned long long)calls, failed, saw_a, saw_b);
    ck_state_free(&sa);
    ck_state_free(&sb);
    ck_run_destroy(&a);
    ck_run_destroy(&b);
    ck_run_destroy(&probe);
}

static void test_fault_new_step(void **state)
{
    (void)state;
    every_call(1, 2, 1); /* keep_last 1: the save also deletes step-1 */
}

static void test_fault_replace_step(void **state)
{
    (void)state;
    every_call(2, 2, 0);
}

/* ---- a saving process killed at random moments ------------------------------------------------- */

static float param_value(int64_t step, int64_t i) { return (float)((step * 7919 + i) % 10007) * 1e-3f - 5.0f; }

static void set_params(moe_model *m, int64_t step)
{
    for (int64_t i = 0; i < m->params.total; i++) m->params.data[i] = param_value(step, i);
}

static void test_killed_while_saving(void **state)
{
    (void)state;
    moe_model_config c = model_config();
    c.num_layers = 2;
    moe_optimizer_config oc = opt_config();
    ck_run r, probe;
    ck_run_create(&r, &c, &oc, 13);
    ck_run_create(&probe, &c, &oc, 13);
    char root[512];
    ck_make_temp(root, sizeof root, "killed");
    set_params(r.model, 0);
    CK_ASSERT_OK(save_at(&r, root, 0, 2));
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    int completed_any = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int trial = 0; trial < 20; trial++) {
        const int64_t base = (int64_t)(trial + 1) * 100000;
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            for (int64_t s = base + 1;; s++) {
                set_params(r.model, s);
                if (save_at(&r, root, s, 2) != MOE_OK) _exit(3);
            }
        }
        unsigned delay = (unsigned)(ck_next(&rng) % 120000u); /* microseconds */
        struct timespec ts = {0, (long)delay * 1000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!WIFSIGNALED(status)) fail_msg("trial %d: the child exited by itself (status %d)", trial, status);

        moe_checkpoint_info info;
        moe_checkpoint_info_init(&info, sizeof info);
        moe_status st = moe_checkpoint_load(probe.model, probe.opt, root, &info, NULL, 0);
        if (st != MOE_OK) fail_msg("trial %d (killed after %u us): %s", trial, delay, moe_last_error());
        for (int64_t i = 0; i < probe.model->params.total; i++) {
            float want = param_value(info.step, i);
            if (memcmp(&probe.model->params.data[i], &want, sizeof want) != 0)
                fail_msg("trial %d: step %lld loads wrong parameter %lld", trial, (long long)info.step, (long long)i);
        }
        assert_int_equal(info.data_position, info.step + 100);
        completed_any += info.step > base;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    /* the parent's own save afterwards cleans every leftover of the killed children */
    set_params(r.model, 7);
    CK_ASSERT_OK(save_at(&r, root, 10000000, 2));
    assert_clean(root);
    assert_int_equal(ck_count_entries(root, "step-", 0), 2);
    print_message("20 kills in %.1f s; %d trials had completed at least one save\n",
                  (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec), completed_any);
    assert_true(completed_any >= 1);
    ck_run_destroy(&r);
    ck_run_destroy(&probe);
    ck_rmrf(root);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fault_new_step),
        cmocka_unit_test(test_fault_replace_step),
        cmocka_unit_test(test_killed_while_saving),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

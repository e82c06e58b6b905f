/* One process, no launcher: the launcher detection from environment variables, and the clear
 * errors for a world above one without MPI (self backend; and, in a build without MPI, the MPI
 * backend and a launch under mpirun). Runs in every build; the MPI-only branches check the
 * build's own answer (moei_comm_mpi_built) rather than assume it. */
#define _POSIX_C_SOURCE 200809L /* setenv, clock_gettime */

#include <stdio.h>
#include <stdlib.h>

#include "comm/comm.h"
#include "core/test_util.h"
#include "parallel/mesh.h"

#define SENTINEL_M ((moe_mesh *)(uintptr_t)0xabcdef)

static const char *launcher_vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK",
                                      "SLURM_STEP_NUM_TASKS"};
#define N_VARS (sizeof launcher_vars / sizeof launcher_vars[0])

static void clear_launcher_env(void)
{
    for (size_t i = 0; i < N_VARS; i++) unsetenv(launcher_vars[i]);
}

static int setup_ctx(void **state)
{
    clear_launcher_env();
    moe_ctx *ctx = NULL;
    if (moe_ctx_create(NULL, &ctx) != MOE_OK) return -1;
    *state = ctx;
    return 0;
}

static int teardown_ctx(void **state)
{
    clear_launcher_env();
    moe_ctx_destroy(*state);
    return 0;
}

static void test_world_size_hint(void **state)
{
    (void)state;
    assert_int_equal(moei_comm_world_size_hint(), 1);
    setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
    assert_int_equal(moei_comm_world_size_hint(), 4);
    setenv("PMI_SIZE", "6", 1); /* Open MPI's own variable wins */
    assert_int_equal(moei_comm_world_size_hint(), 4);
    const char *bad[] = {"abc", "0", "-2", "4x", "", "99999999999", " 3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        setenv("OMPI_COMM_WORLD_SIZE", bad[i], 1);
        if (moei_comm_world_size_hint() != 6) fail_msg("OMPI_COMM_WORLD_SIZE='%s' was not ignored", bad[i]);
    }
    clear_launcher_env();
    setenv("PMI_SIZE", "3", 1);
    assert_int_equal(moei_comm_world_size_hint(), 3);
    clear_launcher_env();
    setenv("PMIX_RANK", "0", 1); /* PMIx without a size: launched, size unknown */
    assert_int_equal(moei_comm_world_size_hint(), 0);
    setenv("SLURM_STEP_NUM_TASKS", "8", 1);
    assert_int_equal(moei_comm_world_size_hint(), 8);
    clear_launcher_env();
    setenv("PMI_RANK", "2", 1);
    assert_int_equal(moei_comm_world_size_hint(), 0);
    clear_launcher_env();
    setenv("SLURM_STEP_NUM_TASKS", "8", 1); /* inside an allocation but not launched as a rank */
    assert_int_equal(moei_comm_world_size_hint(), 1);
    clear_launcher_env();
}

static void expect_create_fails(moe_ctx *ctx, const moe_mesh_config *c, moe_status code, const char *a,
                                const char *b)
{
    moe_mesh *out = SENTINEL_M;
    moe_status st = moe_mesh_create(ctx, c, &out);
    if (st != code)
        fail_msg("moe_mesh_create returned %s, want %s: %s", moe_status_string(st), moe_status_string(code),
                 moe_last_error());
    assert_ptr_equal(out, SENTINEL_M);
    const char *msg = moe_ctx_last_error(ctx);
    if (!strstr(msg, a) || (b && !strstr(msg, b))) fail_msg("message '%s' lacks '%s' / '%s'", msg, a, b ? b : "");
    if (strcmp(msg, moe_last_error()) != 0) fail_msg("thread and ctx messages differ");
}

static void test_self_world_above_one(void **state)
{
    moe_ctx *ctx = *state;
    const int32_t shapes[][3] = {{2, 1, 1}, {1, 4, 1}, {1, 1, 3}, {2, 2, 2}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        moe_mesh_config c;
        ASSERT_OK(moe_mesh_config_init(&c, sizeof c));
        c.dp = shapes[i][0];
        c.tp = shapes[i][1];
        c.pp = shapes[i][2];
        char want[96];
        snprintf(want, sizeof want, "dp * tp * pp = %d but the communicator has 1 rank(s)",
                 shapes[i][0] * shapes[i][1] * shapes[i][2]);
        c.comm_backend = MOE_COMM_SELF;
        expect_create_fails(ctx, &c, MOE_ERR_INVALID_ARG, want, "self backend is a world of one");
        c.comm_backend = MOE_COMM_AUTO; /* not launched: auto is the self backend */
        expect_create_fails(ctx, &c, MOE_ERR_INVALID_ARG, want, "self backend");
        if (!moei_comm_mpi_built()) expect_create_fails(ctx, &c, MOE_ERR_INVALID_ARG, want, "built without MPI");
    }
}

static void test_without_mpi(void **state)
{
    moe_ctx *ctx = *state;
    moei_comm *comm = NULL;
    if (moei_comm_mpi_built()) {
        /* an MPI build: the MPI paths are exercised under mpirun (test_mpi_comm, test_mpi_mesh) */
        skip();
    }
    ASSERT_FAILS_CTX(ctx, moei_comm_mpi_create(ctx, &comm), MOE_ERR_UNSUPPORTED, "built without MPI");
    assert_null(comm);
    moe_mesh_config c;
    ASSERT_OK(moe_mesh_config_init(&c, sizeof c));
    c.comm_backend = MOE_COMM_MPI;
    expect_create_fails(ctx, &c, MOE_ERR_UNSUPPORTED, "MOE_COMM_MPI", "built without MPI");
    c.dp = 4;
    expect_create_fails(ctx, &c, MOE_ERR_UNSUPPORTED, "MOE_COMM_MPI", "built without MPI");
    /* launched as 4 ranks of mpirun, in a build that cannot talk to them */
    c.comm_backend = MOE_COMM_AUTO;
    setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
    expect_create_fails(ctx, &c, MOE_ERR_UNSUPPORTED, "launched as one of 4 ranks", "built without MPI");
    c.dp = 1;
    expect_create_fails(ctx, &c, MOE_ERR_UNSUPPORTED, "launched as one of 4 ranks", "MOE_COMM_SELF");
    /* choosing the self backend explicitly runs this process alone */
    c.comm_backend = MOE_COMM_SELF;
    moe_mesh *m = NULL;
    ASSERT_OK(moe_mesh_create(ctx, &c, &m));
    moe_mesh_destroy(m);
    clear_launcher_env();
}

/* The self communicator answers agreement and host gathers without communication, and a
 * world-of-one mesh carries a communicator per axis. */
static void test_self_helpers_and_groups(void **state)
{
    moe_ctx *ctx = *state;
    moei_comm *c = NULL;
    ASSERT_OK(moei_comm_self_create(ctx, &c));
    moe_status g = 99;
    assert_int_equal(moei_comm_agree(c, MOE_OK, &g), MOE_OK);
    assert_int_equal(g, MOE_OK);
    assert_int_equal(moei_comm_agree(c, MOE_ERR_IO, &g), MOE_ERR_IO);
    assert_int_equal(g, MOE_ERR_IO);
    assert_int_equal(moei_comm_agree(c, MOE_ERR_FORMAT, NULL), MOE_ERR_FORMAT);
    const int32_t in[3] = {7, 8, 9};
    int32_t out[3] = {0};
    ASSERT_OK(moei_comm_host_all_gather(c, in, out, sizeof in));
    assert_memory_equal(in, out, sizeof in);
    assert_int_equal(c->bytes_sent, 0);
    moei_comm_destroy(c);

    moe_mesh *m = NULL;
    ASSERT_OK(moe_mesh_create(ctx, NULL, &m));
    for (int32_t a = 0; a < MOEI_MESH_COMM_COUNT; a++) {
        moei_comm *gc = moei_mesh_comm(m, a);
        assert_non_null(gc);
        assert_int_equal(gc->size, 1);
        assert_int_equal(gc->rank, 0);
        assert_int_equal(gc->bytes_sent, 0);
    }
    assert_ptr_equal(moei_mesh_comm(m, MOE_AXIS_WORLD), m->world);
    assert_null(moei_mesh_comm(m, -1));
    assert_null(moei_mesh_comm(m, MOEI_MESH_COMM_COUNT));
    assert_null(moei_mesh_comm(NULL, 0));
    moe_mesh_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_world_size_hint, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_self_world_above_one, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_without_mpi, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_self_helpers_and_groups, setup_ctx, teardown_ctx),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

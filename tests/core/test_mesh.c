/* The mesh: config defaults and validation through the public API on the self communicator, and
 * (white-box) the rank-coordinate arithmetic of DESIGN.md §4 and validation for worlds above one.
 * The expected coordinates are built here from the layout rule, independently of the library. */
#include <stdio.h>
#include <stdlib.h>

#include "core/test_util.h"
#include "parallel/mesh.h"

#define SENTINEL_M ((moe_mesh *)(uintptr_t)0xabcdef)

static int setup_ctx(void **state)
{
    moe_ctx *ctx = NULL;
    if (moe_ctx_create(NULL, &ctx) != MOE_OK) return -1;
    *state = ctx;
    return 0;
}

static int teardown_ctx(void **state)
{
    moe_ctx_destroy(*state);
    return 0;
}

static void default_cfg(moe_mesh_config *c)
{
    ASSERT_OK(moe_mesh_config_init(c, (uint32_t)sizeof *c));
}

/* ---- config_init ------------------------------------------------------------------------------ */

static void test_config_init(void **state)
{
    (void)state;
    moe_mesh_config c;
    memset(&c, 0x77, sizeof c);
    ASSERT_OK(moe_mesh_config_init(&c, sizeof c));
    assert_int_equal(c.struct_size, sizeof c);
    assert_int_equal(c.dp, 1);
    assert_int_equal(c.tp, 1);
    assert_int_equal(c.pp, 1);
    assert_int_equal(c.ep, 1);
    assert_int_equal(c.etp, 1);
    assert_int_equal(c.sequence_parallel, 0);
    assert_int_equal(c.comm_backend, MOE_COMM_AUTO);

    ASSERT_FAILS(moe_mesh_config_init(NULL, sizeof c), MOE_ERR_INVALID_ARG, "moe_mesh_config_init", "cfg");
    memset(&c, 0x77, sizeof c);
    moe_mesh_config before = c;
    ASSERT_FAILS(moe_mesh_config_init(&c, 3), MOE_ERR_INVALID_ARG, "moe_mesh_config_init", "struct_size");
    assert_memory_equal(&c, &before, sizeof c);

    /* an older caller whose struct ends before `etp`: nothing past it is written, and create uses
     * the defaults for the fields it does not know */
    const uint32_t trunc = (uint32_t)offsetof(moe_mesh_config, etp);
    union {
        moe_mesh_config cfg;
        unsigned char bytes[sizeof(moe_mesh_config) + 8];
    } u;
    memset(&u, 0xEE, sizeof u);
    ASSERT_OK(moe_mesh_config_init(&u.cfg, trunc));
    for (size_t i = trunc; i < sizeof u.bytes; i++) assert_int_equal(u.bytes[i], 0xEE);
    assert_int_equal(u.cfg.ep, 1);
    moe_ctx *ctx = NULL;
    ASSERT_OK(moe_ctx_create(NULL, &ctx));
    moe_mesh *m = NULL;
    ASSERT_OK(moe_mesh_create(ctx, &u.cfg, &m)); /* 0xEEEEEEEE in etp etc. would be rejected if read */
    int32_t s = 0;
    ASSERT_OK(moe_mesh_group_size(m, MOE_AXIS_ETP, &s));
    assert_int_equal(s, 1);
    moe_mesh_destroy(m);
    moe_ctx_destroy(ctx);
}

/* ---- create on the self communicator ---------------------------------------------------------- */

static void expect_invalid(moe_ctx *ctx, const moe_mesh_config *c, const char *field)
{
    moe_mesh *out = SENTINEL_M;
    moe_status st = moe_mesh_create(ctx, c, &out);
    if (st != MOE_ERR_INVALID_ARG)
        fail_msg("moe_mesh_create (%s) returned %s: %s", field, moe_status_string(st), moe_last_error());
    if (!strstr(moe_last_error(), field)) fail_msg("message '%s' does not name '%s'", moe_last_error(), field);
    if (!strstr(moe_ctx_last_error(ctx), field))
        fail_msg("ctx message '%s' lacks '%s'", moe_ctx_last_error(ctx), field);
    assert_ptr_equal(out, SENTINEL_M);
}

static void test_create_invalid_fields(void **state)
{
    moe_ctx *ctx = *state;
    moe_mesh_config c;
    const int32_t bad[] = {0, -1, -7, INT32_MIN, 65537, INT32_MAX};
    const struct {
        const char *name;
        size_t off;
    } fields[] = {{"moe_mesh_config.dp", offsetof(moe_mesh_config, dp)},
                  {"moe_mesh_config.tp", offsetof(moe_mesh_config, tp)},
                  {"moe_mesh_config.pp", offsetof(moe_mesh_config, pp)},
                  {"moe_mesh_config.ep", offsetof(moe_mesh_config, ep)},
                  {"moe_mesh_config.etp", offsetof(moe_mesh_config, etp)}};
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++)
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            default_cfg(&c);
            memcpy((char *)&c + fields[f].off, &bad[i], sizeof bad[i]);
            expect_invalid(ctx, &c, fields[f].name);
        }
    const uint32_t bad_sp[] = {2, 3, UINT32_MAX};
    for (size_t i = 0; i < sizeof bad_sp / sizeof bad_sp[0]; i++) {
        default_cfg(&c);
        c.sequence_parallel = bad_sp[i];
        expect_invalid(ctx, &c, "sequence_parallel");
    }
    const int32_t bad_backend[] = {-1, 3, 7, MOE_COMM_BACKEND_FORCE32};
    for (size_t i = 0; i < sizeof bad_backend / sizeof bad_backend[0]; i++) {
        default_cfg(&c);
        c.comm_backend = bad_backend[i];
        expect_invalid(ctx, &c, "comm_backend");
    }
    /* ep * etp must divide dp * tp (checked before the world size) */
    default_cfg(&c);
    c.ep = 2;
    expect_invalid(ctx, &c, "ep * etp");
    default_cfg(&c);
    c.etp = 3;
    expect_invalid(ctx, &c, "ep * etp");
    default_cfg(&c);
    c.dp = 2;
    c.tp = 3;
    c.ep = 4;
    expect_invalid(ctx, &c, "ep * etp");
    /* a valid layout for a world the self communicator does not have */
    const int32_t worlds[][3] = {{2, 1, 1}, {1, 2, 1}, {1, 1, 2}, {2, 2, 2}};
    for (size_t i = 0; i < sizeof worlds / sizeof worlds[0]; i++) {
        default_cfg(&c);
        c.dp = worlds[i][0];
        c.tp = worlds[i][1];
        c.pp = worlds[i][2];
        c.comm_backend = MOE_COMM_SELF;
        expect_invalid(ctx, &c, "communicator");
        c.comm_backend = MOE_COMM_AUTO;
        expect_invalid(ctx, &c, "communicator");
    }
    /* a bad struct_size */
    default_cfg(&c);
    c.struct_size = 0;
    expect_invalid(ctx, &c, "struct_size");
    /* NULL arguments */
    moe_mesh *out = SENTINEL_M;
    ASSERT_FAILS(moe_mesh_create(NULL, NULL, &out), MOE_ERR_INVALID_ARG, "moe_mesh_create", "ctx");
    assert_ptr_equal(out, SENTINEL_M);
    ASSERT_FAILS_CTX(ctx, moe_mesh_create(ctx, NULL, NULL), MOE_ERR_INVALID_ARG, "moe_mesh_create", "out");
}

static void test_create_mpi_unsupported(void **state)
{
    moe_ctx *ctx = *state;
    /* With MPI built in, MOE_COMM_MPI works; tests/mpi runs it under mpirun. */
    if (moei_comm_mpi_built()) skip();
    moe_mesh_config c;
    default_cfg(&c);
    c.comm_backend = MOE_COMM_MPI;
    moe_mesh *out = SENTINEL_M;
    ASSERT_FAILS_CTX(ctx, moe_mesh_create(ctx, &c, &out), MOE_ERR_UNSUPPORTED, "moe_mesh_create", "MPI");
    assert_ptr_equal(out, SENTINEL_M);
}

static void test_world_one_queries(void **state)
{
    moe_ctx *ctx = *state;
    const int32_t backends[] = {MOE_COMM_AUTO, MOE_COMM_SELF};
    for (size_t b = 0; b < 2; b++)
        for (uint32_t sp = 0; sp <= 1; sp++) {
            moe_mesh_config c;
            default_cfg(&c);
            c.comm_backend = backends[b];
            c.sequence_parallel = sp;
            moe_mesh *m = NULL;
            ASSERT_OK(moe_mesh_create(ctx, &c, &m));
            for (int32_t axis = MOE_AXIS_WORLD; axis <= MOE_AXIS_EDP; axis++) {
                int32_t size = -1, rank = -1;
                ASSERT_OK(moe_mesh_group_size(m, axis, &size));
                ASSERT_OK(moe_mesh_group_rank(m, axis, &rank));
                assert_int_equal(size, 1);
                assert_int_equal(rank, 0);
            }
            uint32_t en = 7;
            ASSERT_OK(moe_mesh_sequence_parallel(m, &en));
            assert_int_equal(en, sp);
            moe_mesh_destroy(m);
        }
    /* NULL config = a world of one */
    moe_mesh *m = NULL;
    ASSERT_OK(moe_mesh_create(ctx, NULL, &m));
    int32_t v = 5;
    const int32_t bad_axes[] = {-1, 7, 100, MOE_MESH_AXIS_FORCE32, INT32_MIN};
    for (size_t i = 0; i < sizeof bad_axes / sizeof bad_axes[0]; i++) {
        ASSERT_FAILS_CTX(ctx, moe_mesh_group_size(m, bad_axes[i], &v), MOE_ERR_INVALID_ARG, "moe_mesh_group_size",
                         "axis");
        ASSERT_FAILS_CTX(ctx, moe_mesh_group_rank(m, bad_axes[i], &v), MOE_ERR_INVALID_ARG, "moe_mesh_group_rank",
                         "axis");
    }
    assert_int_equal(v, 5);
    ASSERT_FAILS(moe_mesh_group_size(NULL, MOE_AXIS_DP, &v), MOE_ERR_INVALID_ARG, "moe_mesh_group_size", "mesh");
    ASSERT_FAILS_CTX(ctx, moe_mesh_group_size(m, MOE_AXIS_DP, NULL), MOE_ERR_INVALID_ARG, "moe_mesh_group_size");
    ASSERT_FAILS(moe_mesh_group_rank(NULL, MOE_AXIS_DP, &v), MOE_ERR_INVALID_ARG, "moe_mesh_group_rank", "mesh");
    ASSERT_FAILS_CTX(ctx, moe_mesh_group_rank(m, MOE_AXIS_DP, NULL), MOE_ERR_INVALID_ARG, "moe_mesh_group_rank");
    uint32_t en = 9;
    ASSERT_FAILS(moe_mesh_sequence_parallel(NULL, &en), MOE_ERR_INVALID_ARG, "moe_mesh_sequence_parallel", "mesh");
    ASSERT_FAILS_CTX(ctx, moe_mesh_sequence_parallel(m, NULL), MOE_ERR_INVALID_ARG, "moe_mesh_sequence_parallel",
                     "enabled");
    assert_int_equal(v, 5);
    assert_int_equal(en, 9);
    moe_mesh_destroy(m);
    moe_mesh_destroy(NULL);
}

/* ---- coordinates (white-box) ------------------------------------------------------------------ */

typedef struct coords {
    int32_t c[MOEI_AXIS_COUNT];
} coords;

/* Build the coordinate table of every rank by enumerating the layout (tp fastest, then dp, then
 * pp; inside a stage, etp fastest, then ep, then edp) rather than by dividing the rank. */
static void expected_coords(int32_t dp, int32_t tp, int32_t pp, int32_t ep, int32_t etp, coords *out)
{
    int32_t edp = dp * tp / (ep * etp);
    int32_t r = 0;
    for (int32_t p = 0; p < pp; p++)
        for (int32_t d = 0; d < dp; d++)
            for (int32_t t = 0; t < tp; t++, r++) {
                out[r].c[MOE_AXIS_WORLD] = r;
                out[r].c[MOE_AXIS_PP] = p;
                out[r].c[MOE_AXIS_DP] = d;
                out[r].c[MOE_AXIS_TP] = t;
            }
    for (int32_t p = 0; p < pp; p++) {
        int32_t s = 0; /* position inside the stage */
        for (int32_t e2 = 0; e2 < edp; e2++)
            for (int32_t e1 = 0; e1 < ep; e1++)
                for (int32_t e0 = 0; e0 < etp; e0++, s++) {
                    int32_t rr = p * dp * tp + s;
                    out[rr].c[MOE_AXIS_EDP] = e2;
                    out[rr].c[MOE_AXIS_EP] = e1;
                    out[rr].c[MOE_AXIS_ETP] = e0;
                }
    }
}

/* Ranks that agree on every coordinate in `others` must form groups of exactly `size` members whose
 * coordinates on `axis` are 0..size-1, each once. */
static void check_groups(const coords *cs, int32_t world, int32_t axis, const int32_t *others, int n_others,
                         int32_t size)
{
    int32_t *seen = calloc((size_t)world, sizeof *seen);
    int32_t *used = calloc((size_t)world, sizeof *used);
    assert_non_null(seen);
    assert_non_null(used);
    for (int32_t r = 0; r < world; r++) {
        if (seen[r]) continue;
        int32_t members = 0;
        memset(used, 0, (size_t)world * sizeof *used);
        for (int32_t q = 0; q < world; q++) {
            int same = 1;
            for (int i = 0; i < n_others; i++) same = same && cs[q].c[others[i]] == cs[r].c[others[i]];
            if (!same) continue;
            seen[q] = 1;
            members++;
            int32_t k = cs[q].c[axis];
            if (k < 0 || k >= size) fail_msg("axis %d: coordinate %d out of range [0,%d)", axis, k, size);
            if (used[k]) fail_msg("axis %d: coordinate %d appears twice in a group", axis, k);
            used[k] = 1;
        }
        if (members != size) fail_msg("axis %d: group of rank %d has %d members, want %d", axis, r, members, size);
    }
    free(seen);
    free(used);
}

static void test_mesh_coords(void **state)
{
    (void)state;
    int n_configs = 0;
    for (int32_t pp = 1; pp <= 3; pp++)
        for (int32_t dp = 1; dp <= 6; dp++)
            for (int32_t tp = 1; tp <= 4; tp++)
                for (int32_t ep = 1; ep <= dp * tp; ep++)
                    for (int32_t etp = 1; etp <= dp * tp; etp++) {
                        if ((dp * tp) % (ep * etp) != 0) continue;
                        n_configs++;
                        moe_mesh_config cfg;
                        default_cfg(&cfg);
                        cfg.dp = dp;
                        cfg.tp = tp;
                        cfg.pp = pp;
                        cfg.ep = ep;
                        cfg.etp = etp;
                        int32_t world = dp * tp * pp;
                        coords *want = calloc((size_t)world, sizeof *want);
                        coords *got = calloc((size_t)world, sizeof *got);
                        assert_non_null(want);
                        assert_non_null(got);
                        expected_coords(dp, tp, pp, ep, etp, want);
                        int32_t edp = dp * tp / (ep * etp);
                        const int32_t sizes[MOEI_AXIS_COUNT] = {world, dp, tp, pp, ep, etp, edp};
                        for (int32_t r = 0; r < world; r++) {
                            int32_t size[MOEI_AXIS_COUNT], rank[MOEI_AXIS_COUNT];
                            for (int a = 0; a < MOEI_AXIS_COUNT; a++) size[a] = rank[a] = -1;
                            moei_mesh_coords(&cfg, r, size, rank);
                            for (int a = 0; a < MOEI_AXIS_COUNT; a++) {
                                if (size[a] != sizes[a])
                                    fail_msg("dp%d tp%d pp%d ep%d etp%d rank %d: size[%d] = %d, want %d", dp, tp, pp,
                                             ep, etp, r, a, size[a], sizes[a]);
                                if (rank[a] != want[r].c[a])
                                    fail_msg("dp%d tp%d pp%d ep%d etp%d rank %d: rank[%d] = %d, want %d", dp, tp, pp,
                                             ep, etp, r, a, rank[a], want[r].c[a]);
                                got[r].c[a] = rank[a];
                            }
                        }
                        /* group structure, from the library's own coordinates */
                        const int32_t o_dp[] = {MOE_AXIS_TP, MOE_AXIS_PP};
                        const int32_t o_tp[] = {MOE_AXIS_DP, MOE_AXIS_PP};
                        const int32_t o_pp[] = {MOE_AXIS_DP, MOE_AXIS_TP};
                        const int32_t o_ep[] = {MOE_AXIS_ETP, MOE_AXIS_EDP, MOE_AXIS_PP};
                        const int32_t o_etp[] = {MOE_AXIS_EP, MOE_AXIS_EDP, MOE_AXIS_PP};
                        const int32_t o_edp[] = {MOE_AXIS_EP, MOE_AXIS_ETP, MOE_AXIS_PP};
                        check_groups(got, world, MOE_AXIS_WORLD, NULL, 0, world);
                        check_groups(got, world, MOE_AXIS_DP, o_dp, 2, dp);
                        check_groups(got, world, MOE_AXIS_TP, o_tp, 2, tp);
                        check_groups(got, world, MOE_AXIS_PP, o_pp, 2, pp);
                        check_groups(got, world, MOE_AXIS_EP, o_ep, 3, ep);
                        check_groups(got, world, MOE_AXIS_ETP, o_etp, 3, etp);
                        check_groups(got, world, MOE_AXIS_EDP, o_edp, 3, edp);
                        free(want);
                        free(got);
                    }
    assert_true(n_configs > 100);
}

/* Megatron-Core's example: 16 ranks, tp = 2, dp = 4, pp = 2 -> the documented groups. */
static void test_mesh_coords_known_layout(void **state)
{
    (void)state;
    moe_mesh_config cfg;
    default_cfg(&cfg);
    cfg.dp = 4;
    cfg.tp = 2;
    cfg.pp = 2;
    cfg.ep = 2;
    cfg.etp = 2;
    /* tp groups {0,1},{2,3},...; dp groups {0,2,4,6},{1,3,5,7},{8,10,12,14},...; pp groups {0,8},{1,9},... */
    const int32_t tp_of[16] = {0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1};
    const int32_t dp_of[16] = {0, 0, 1, 1, 2, 2, 3, 3, 0, 0, 1, 1, 2, 2, 3, 3};
    const int32_t pp_of[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
    /* expert fold of 8 stage ranks as edp 2 x ep 2 x etp 2 */
    const int32_t etp_of[16] = {0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1};
    const int32_t ep_of[16] = {0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1};
    const int32_t edp_of[16] = {0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1};
    for (int32_t r = 0; r < 16; r++) {
        int32_t size[MOEI_AXIS_COUNT], rank[MOEI_AXIS_COUNT];
        moei_mesh_coords(&cfg, r, size, rank);
        assert_int_equal(rank[MOE_AXIS_TP], tp_of[r]);
        assert_int_equal(rank[MOE_AXIS_DP], dp_of[r]);
        assert_int_equal(rank[MOE_AXIS_PP], pp_of[r]);
        assert_int_equal(rank[MOE_AXIS_ETP], etp_of[r]);
        assert_int_equal(rank[MOE_AXIS_EP], ep_of[r]);
        assert_int_equal(rank[MOE_AXIS_EDP], edp_of[r]);
        assert_int_equal(size[MOE_AXIS_EDP], 2);
    }
}

/* ---- validation for worlds above one (white-box) ---------------------------------------------- */

static moe_mesh_config mk(int32_t dp, int32_t tp, int32_t pp, int32_t ep, int32_t etp)
{
    moe_mesh_config c;
    default_cfg(&c);
    c.dp = dp;
    c.tp = tp;
    c.pp = pp;
    c.ep = ep;
    c.etp = etp;
    return c;
}

static void test_mesh_validate(void **state)
{
    moe_ctx *ctx = *state;
    const struct {
        int32_t dp, tp, pp, ep, etp, world;
    } ok[] = {{2, 1, 1, 1, 1, 2}, {1, 2, 1, 2, 1, 2}, {2, 2, 2, 4, 1, 8}, {2, 2, 2, 2, 2, 8}, {4, 2, 1, 8, 1, 8},
              {8, 1, 1, 2, 4, 8}, {3, 1, 1, 3, 1, 3},  {2, 3, 1, 3, 2, 6}, {1, 1, 4, 1, 1, 4}, {64, 8, 4, 64, 1, 2048},
              {65536, 1, 1, 1, 1, 65536}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        moe_mesh_config c = mk(ok[i].dp, ok[i].tp, ok[i].pp, ok[i].ep, ok[i].etp);
        c.sequence_parallel = (uint32_t)(i & 1);
        moe_status st = moei_mesh_validate(ctx, &c, ok[i].world);
        if (st != MOE_OK) fail_msg("valid config %zu rejected: %s", i, moe_last_error());
    }
    const struct {
        int32_t dp, tp, pp, ep, etp, world;
        const char *field;
    } bad[] = {
        {2, 2, 2, 1, 1, 4, "communicator"},   {2, 2, 2, 1, 1, 16, "communicator"}, {2, 1, 1, 1, 1, 1, "communicator"},
        {2, 2, 1, 3, 1, 4, "ep * etp"},       {2, 2, 1, 1, 8, 4, "ep * etp"},      {4, 1, 2, 2, 4, 8, "ep * etp"},
        {3, 1, 1, 2, 1, 3, "ep * etp"},       {0, 2, 1, 1, 1, 0, ".dp"},           {2, 0, 1, 1, 1, 0, ".tp"},
        {2, 2, -1, 1, 1, 4, ".pp"},           {2, 2, 1, 0, 1, 4, ".ep"},           {2, 2, 1, 1, -2, 4, ".etp"},
        {65537, 1, 1, 1, 1, 65537, ".dp"},    {1, 70000, 1, 1, 1, 70000, ".tp"},
        /* sizes whose product overflows 32 bits are a mismatch, not a wrap-around */
        {65536, 65536, 1, 1, 1, 0, "communicator"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        moe_mesh_config c = mk(bad[i].dp, bad[i].tp, bad[i].pp, bad[i].ep, bad[i].etp);
        char label[64];
        snprintf(label, sizeof label, "bad config %zu", i);
        moe_status st = moei_mesh_validate(ctx, &c, bad[i].world);
        if (st != MOE_ERR_INVALID_ARG) fail_msg("%s accepted (status %d)", label, (int)st);
        if (!strstr(moe_last_error(), bad[i].field))
            fail_msg("%s: message '%s' lacks '%s'", label, moe_last_error(), bad[i].field);
        if (!strstr(moe_ctx_last_error(ctx), bad[i].field))
            fail_msg("%s: ctx message '%s' lacks '%s'", label, moe_ctx_last_error(ctx), bad[i].field);
    }
    moe_mesh_config c = mk(2, 2, 1, 1, 1);
    c.sequence_parallel = 2;
    ASSERT_FAILS_CTX(ctx, moei_mesh_validate(ctx, &c, 4), MOE_ERR_INVALID_ARG, "sequence_parallel");
    c = mk(2, 2, 1, 1, 1);
    c.comm_backend = 7;
    ASSERT_FAILS_CTX(ctx, moei_mesh_validate(ctx, &c, 4), MOE_ERR_INVALID_ARG, "comm_backend");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_init),
        cmocka_unit_test_setup_teardown(test_create_invalid_fields, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_create_mpi_unsupported, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_world_one_queries, setup_ctx, teardown_ctx),
        cmocka_unit_test(test_mesh_coords),
        cmocka_unit_test(test_mesh_coords_known_layout),
        cmocka_unit_test_setup_teardown(test_mesh_validate, setup_ctx, teardown_ctx),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* moe_model_generate against oracles built on moe_model_forward: greedy tokens are the argmax of the
 * full forward over prompt + tokens so far; beam search equals an exhaustive search when the beams
 * cover every prefix, and a reference beam search (Hugging Face's rules, logits from full forwards,
 * no cache) everywhere; sampling repeats per seed and degenerates to greedy for top_k = 1 or a tiny
 * top_p; stops, limits and every bad argument. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <cmocka.h>

#include "gen/gen_util.h"
#include "nn/generate.h"

static void gen_config(moe_generate_config *g)
{
    assert_int_equal(moe_generate_config_init(g, sizeof *g), MOE_OK);
}

static void open_tiny(gu_model *g, uint64_t seed, void (*tweak)(moe_model_config *))
{
    moe_model_config c;
    tu_tiny_config(&c);
    c.max_seq_len = 24;
    if (tweak) tweak(&c);
    moe_ctx_config cc;
    assert_int_equal(moe_ctx_config_init(&cc, sizeof cc), MOE_OK);
    cc.seed = seed;
    memset(g, 0, sizeof *g);
    g->cfg = c;
    assert_int_equal(moe_ctx_create(&cc, &g->ctx), MOE_OK);
    assert_int_equal(moe_mesh_create(g->ctx, NULL, &g->mesh), MOE_OK);
    assert_int_equal(moe_model_create(g->ctx, g->mesh, &c, &g->model), MOE_OK);
}

static void test_config_defaults(void **state)
{
    (void)state;
    moe_generate_config g;
    memset(&g, 0x5a, sizeof g);
    gen_config(&g);
    assert_int_equal(g.struct_size, sizeof g);
    assert_int_equal(g.max_new_tokens, 64);
    assert_true(g.temperature == 0.0f);
    assert_int_equal(g.top_k, 0);
    assert_true(g.top_p == 1.0f);
    assert_int_equal(g.beam_width, 1);
    assert_true(g.length_penalty == 1.0f);
    assert_int_equal(g.stop_token, -1);
    assert_true(g.seed == 0);
    /* an older, shorter struct: only its bytes are written */
    unsigned char buf[sizeof g + 8];
    memset(buf, 0x77, sizeof buf);
    assert_int_equal(moe_generate_config_init((moe_generate_config *)(void *)buf, 12), MOE_OK);
    assert_int_equal(buf[12], 0x77);
    assert_int_equal(moe_generate_config_init(NULL, sizeof g), MOE_ERR_INVALID_ARG);
    assert_int_equal(moe_generate_config_init(&g, 2), MOE_ERR_INVALID_ARG);
}

/* Greedy: deterministic, and each token is the argmax of the full forward over what precedes it. */
static void test_greedy_is_argmax_of_forward(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 3; seed++) {
        gu_model g;
        open_tiny(&g, seed, NULL);
        const int32_t V = g.cfg.vocab_size;
        moe_generate_config gc;
        gen_config(&gc);
        gc.max_new_tokens = 12;
        int32_t prompt[5], out[12], out2[12], n = -1, n2 = -1;
        tu_tokens(seed, V, 5, prompt, NULL);
        assert_int_equal(moe_model_generate(g.model, &gc, prompt, 5, out, 12, &n), MOE_OK);
        assert_int_equal(n, 12);
        assert_int_equal(moe_model_generate(g.model, &gc, prompt, 5, out2, 12, &n2), MOE_OK);
        assert_int_equal(n2, 12);
        assert_memory_equal(out, out2, sizeof out);
        int32_t seq[24];
        float lg[24 * 13];
        memcpy(seq, prompt, sizeof prompt);
        memcpy(seq + 5, out, sizeof out);
        for (int32_t i = 0; i < 12; i++) {
            assert_int_equal(gu_forward(&g, seq, 5 + i, lg), 0);
            const float *row = lg + (size_t)(5 + i - 1) * V;
            int32_t am = gu_argmax(row, V);
            if (am != out[i]) {
                /* only an fp32 near-tie may differ */
                assert_true(fabs((double)row[am] - (double)row[out[i]]) <= 1e-5 * fabs((double)row[am]) + 1e-6);
            }
        }
        gu_close(&g);
    }
}

/* Sum of log-probabilities of every length-L continuation, enumerated. */
static void exhaustive_best(gu_model *g, const int32_t *prompt, int32_t plen, int32_t L, int32_t *best,
                            double *best_lp)
{
    const int32_t V = g->cfg.vocab_size;
    int32_t total = 1;
    for (int32_t i = 0; i < L; i++) total *= V;
    *best_lp = -INFINITY;
    int32_t cur[8];
    for (int32_t code = 0; code < total; code++) {
        for (int32_t i = 0, x = code; i < L; i++, x /= V) cur[L - 1 - i] = x % V;
        double lp = gu_sequence_logprob(g, prompt, plen, cur, L);
        if (lp > *best_lp) {
            *best_lp = lp;
            memcpy(best, cur, (size_t)L * sizeof(int32_t));
        }
    }
}

static void small_vocab(moe_model_config *c) { c->vocab_size = 5; }
static void tiny_vocab(moe_model_config *c) { c->vocab_size = 3; }

/* With width >= V^(L-1) every prefix survives, so beam search must find the best continuation. */
static void test_beam_exhaustive(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 3; seed++) {
        gu_model g;
        open_tiny(&g, seed, small_vocab);
        const int32_t L = 3;
        int32_t prompt[4], out[3], best[3], n = -1;
        tu_tokens(seed + 10, 5, 4, prompt, NULL);
        double best_lp;
        exhaustive_best(&g, prompt, 4, L, best, &best_lp);
        moe_generate_config gc;
        gen_config(&gc);
        gc.max_new_tokens = L;
        gc.beam_width = 25;
        gc.length_penalty = 0.0f;
        assert_int_equal(moe_model_generate(g.model, &gc, prompt, 4, out, L, &n), MOE_OK);
        assert_int_equal(n, L);
        double lp = gu_sequence_logprob(&g, prompt, 4, out, L);
        assert_true(lp >= best_lp - 1e-5);
        gu_close(&g);
    }
}

/* The beam search code itself at width 1 (the public API routes width 1 to the greedy loop). */
static void test_beam_width_one_is_greedy(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 4; seed++) {
        gu_model g;
        open_tiny(&g, seed, seed % 2 ? small_vocab : NULL);
        const int32_t V = g.cfg.vocab_size;
        int32_t prompt[3], a[16], b[16], na = -1, nb = -1;
        tu_tokens(seed, V, 3, prompt, NULL);
        moe_generate_config gc;
        gen_config(&gc);
        gc.max_new_tokens = 16;
        gc.stop_token = seed >= 3 ? 1 : -1;
        gc.length_penalty = (float)seed * 0.5f;
        assert_int_equal(moe_model_generate(g.model, &gc, prompt, 3, a, 16, &na), MOE_OK);
        assert_int_equal(moei_generate_beam(g.model, &gc, prompt, 3, 16, b, &nb), MOE_OK);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, (size_t)na * sizeof(int32_t));
        gu_close(&g);
    }
}

/* ---- a reference beam search on full forwards (no cache), after Hugging Face's BeamSearchScorer ---- */

typedef struct ref_cand {
    double score;
    int32_t beam, token;
} ref_cand;

static int ref_cand_cmp(const void *pa, const void *pb)
{
    const ref_cand *a = pa, *b = pb;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    if (a->beam != b->beam) return a->beam < b->beam ? -1 : 1;
    return a->token < b->token ? -1 : a->token > b->token;
}

#define RMAX 32
typedef struct ref_hyp {
    int32_t tok[RMAX], len;
    double score;
} ref_hyp;

static void ref_add(ref_hyp *fin, int32_t *nfin, int32_t W, const int32_t *tok, int32_t len, double sum, double lp)
{
    double score = sum / pow((double)len, lp);
    int32_t slot = *nfin;
    if (*nfin == W) {
        slot = 0;
        for (int32_t i = 1; i < W; i++)
            if (fin[i].score < fin[slot].score) slot = i;
        if (!(score > fin[slot].score)) return;
    } else {
        (*nfin)++;
    }
    memcpy(fin[slot].tok, tok, (size_t)len * sizeof(int32_t));
    fin[slot].len = len;
    fin[slot].score = score;
}

static int32_t ref_beam(gu_model *g, const int32_t *prompt, int32_t plen, int32_t W, int32_t need, int32_t stop,
                        double lp, int32_t *out)
{
    const int32_t V = g->cfg.vocab_size;
    ref_hyp live[RMAX], next[RMAX], fin[RMAX];
    double sum[RMAX], nsum[RMAX];
    int32_t nlive = 1, nfin = 0, done = 0;
    live[0].len = 0;
    sum[0] = 0.0;
    ref_cand *cand = malloc((size_t)RMAX * V * sizeof(ref_cand));
    float *lg = malloc((size_t)(plen + need) * V * sizeof(float));
    int32_t seq[64];
    for (int32_t t = 0; t < need && !done; t++) {
        int32_t nc = 0;
        for (int32_t b = 0; b < nlive; b++) {
            memcpy(seq, prompt, (size_t)plen * sizeof(int32_t));
            memcpy(seq + plen, live[b].tok, (size_t)t * sizeof(int32_t));
            assert_int_equal(gu_forward(g, seq, plen + t, lg), 0);
            const float *row = lg + (size_t)(plen + t - 1) * V;
            for (int32_t v = 0; v < V; v++) {
                ref_cand c = {sum[b] + gu_logprob(row, V, v), b, v};
                cand[nc++] = c;
            }
        }
        qsort(cand, (size_t)nc, sizeof *cand, ref_cand_cmp);
        if (nc > 2 * W) nc = 2 * W;
        int32_t nn = 0;
        for (int32_t r = 0; r < nc && nn < W; r++) {
            ref_hyp h = live[cand[r].beam];
            h.tok[t] = cand[r].token;
            h.len = t + 1;
            if (cand[r].token == stop) {
                if (r < W) ref_add(fin, &nfin, W, h.tok, t + 1, cand[r].score, lp);
                continue;
            }
            next[nn] = h;
            nsum[nn] = cand[r].score;
            nn++;
        }
        memcpy(live, next, sizeof(ref_hyp) * (size_t)nn);
        memcpy(sum, nsum, sizeof(double) * (size_t)nn);
        nlive = nn;
        if (nfin == W) {
            double worst = INFINITY;
            for (int32_t i = 0; i < nfin; i++) worst = fin[i].score < worst ? fin[i].score : worst;
            if (worst >= cand[0].score / pow((double)(t + 1), lp)) done = 1;
        }
        if (nlive == 0) done = 1;
    }
    if (!done)
        for (int32_t b = 0; b < nlive; b++) ref_add(fin, &nfin, W, live[b].tok, live[b].len, sum[b], lp);
    int32_t best = 0;
    for (int32_t i = 1; i < nfin; i++)
        if (fin[i].score > fin[best].score) best = i;
    memcpy(out, fin[best].tok, (size_t)fin[best].len * sizeof(int32_t));
    free(cand);
    free(lg);
    return fin[best].len;
}

static void capacity(moe_model_config *c) { c->moe_capacity_factor = 0.25f; }

static void check_beam_case(uint64_t seed, int32_t width, int32_t stop, float penalty, int small, int cap,
                            int *stopped)
{
    gu_model g, twin;
    open_tiny(&g, seed, cap ? capacity : small == 2 ? tiny_vocab : small ? small_vocab : NULL);
    /* A capacity model decodes each beam alone, like its dropless twin (same weights) runs forward;
     * a one-token prompt keeps the prefill from dropping too. */
    if (cap) open_tiny(&twin, seed, NULL);
    const int32_t V = g.cfg.vocab_size;
    int32_t prompt[4], out[12], ref[12], n = -1;
    const int32_t plen = cap ? 1 : 4;
    tu_tokens(seed + 100, V, plen, prompt, NULL);
    moe_generate_config gc;
    gen_config(&gc);
    gc.max_new_tokens = 10;
    gc.beam_width = width;
    gc.stop_token = stop;
    gc.length_penalty = penalty;
    assert_int_equal(moe_model_generate(g.model, &gc, prompt, plen, out, 12, &n), MOE_OK);
    int32_t rn = ref_beam(cap ? &twin : &g, prompt, plen, width, 10, stop, penalty, ref);
    if (n != rn || memcmp(out, ref, (size_t)n * sizeof(int32_t)) != 0) {
        print_error("seed %d width %d stop %d penalty %g: library %d tokens, reference %d tokens\n", (int)seed,
                    (int)width, (int)stop, (double)penalty, (int)n, (int)rn);
        fail();
    }
    if (n > 0 && out[n - 1] == stop) (*stopped)++;
    if (cap) gu_close(&twin);
    gu_close(&g);
}

static void test_beam_matches_reference(void **state)
{
    (void)state;
    const struct {
        uint64_t seed;
        int32_t width, stop;
        float penalty;
        int small, cap;
    } cases[] = {{1, 3, -1, 1.0f, 0, 0}, {2, 3, 2, 1.0f, 1, 0}, {3, 4, 0, 0.0f, 1, 0}, {4, 2, 3, 2.0f, 1, 0},
                 {5, 5, 1, -0.5f, 1, 0}, {6, 3, 4, 1.0f, 0, 0}, {7, 6, 2, 1.0f, 1, 0}, {8, 3, 5, 1.0f, 0, 1},
                 {9, 4, -1, 0.5f, 0, 1}};
    int stopped = 0;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        check_beam_case(cases[k].seed, cases[k].width, cases[k].stop, cases[k].penalty, cases[k].small, cases[k].cap,
                        &stopped);
    /* a sweep over small vocabularies, where stop tokens compete with live beams at every rank */
    for (uint64_t seed = 20; seed < 44; seed++)
        check_beam_case(seed, 2 + (int32_t)(seed % 3), (int32_t)(seed % 5), 0.5f * (float)(seed % 4), 1, 0, &stopped);
    for (uint64_t seed = 50; seed < 74; seed++)
        check_beam_case(seed, 1 + (int32_t)(seed % 4), (int32_t)(seed % 3), 0.5f * (float)(seed % 5) - 0.5f, 2, 0,
                        &stopped);
    assert_true(stopped >= 5); /* the stop-token path was exercised */
}

/* Beam width 3 finds a continuation at least as likely as greedy's (same length, no penalty). */
static void test_beam_beats_greedy(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 4; seed++) {
        gu_model g;
        open_tiny(&g, seed, NULL);
        const int32_t V = g.cfg.vocab_size;
        int32_t prompt[4], greedy[8], beam[8], ng = -1, nb = -1;
        tu_tokens(seed * 7, V, 4, prompt, NULL);
        moe_generate_config gc;
        gen_config(&gc);
        gc.max_new_tokens = 8;
        gc.length_penalty = 0.0f;
        assert_int_equal(moe_model_generate(g.model, &gc, prompt, 4, greedy, 8, &ng), MOE_OK);
        gc.beam_width = 3;
        assert_int_equal(moe_model_generate(g.model, &gc, prompt, 4, beam, 8, &nb), MOE_OK);
        assert_int_equal(ng, 8);
        assert_int_equal(nb, 8);
        double lg = gu_sequence_logprob(&g, prompt, 4, greedy, 8), lb = gu_sequence_logprob(&g, prompt, 4, beam, 8);
        if (!(lb >= lg - 1e-6)) {
            print_error("seed %d: beam log-probability %.9g < greedy %.9g\n", (int)seed, lb, lg);
            fail();
        }
        gu_close(&g);
    }
}

static void test_sampling(void **state)
{
    (void)state;
    gu_model g;
    open_tiny(&g, 9, NULL);
    const int32_t V = g.cfg.vocab_size;
    int32_t prompt[3], greedy[16], a[16], b[16], other[16], n = -1, na = -1, nb = -1, no = -1;
    tu_tokens(3, V, 3, prompt, NULL);
    moe_generate_config gc;
    gen_config(&gc);
    gc.max_new_tokens = 16;
    assert_int_equal(moe_model_generate(g.model, &gc, prompt, 3, greedy, 16, &n), MOE_OK);
    /* a seed repeats exactly; another seed gives another run */
    gc.temperature = 1.5f;
    gc.seed = 42;
    assert_int_equal(moe_model_generate(g.model, &gc, prompt, 3, a, 16, &na), MOE_OK);
    assert_int_equal(moe_model_generate(g.model, &gc, prompt, 3, b, 16, &nb), MOE_OK);
    assert_int_equal(na, 16);
    assert_int_equal(nb, 16);
    assert_memory_equal(a, b, sizeof a);
    gc.seed = 43;
    assert_int_equal(moe_model_generate(g.model, &gc, prompt, 3, other, 16, &no), MOE_OK);
    assert_true(memcmp(a, other, sizeof a) != 0);
    assert_true(memcmp(a, greedy, sizeof a) != 0);
    /* top_k = 1 and a tiny top_p are greedy, whatever the temperature and seed */
    gc.top_k = 1;
    assert_int_equal(moe_model_generate(g.model, &gc, prompt, 3, a, 16, &na), MOE_OK);
    assert_memory_equal(a, greedy, sizeof a);
    gc.top_k = 0;
    gc.top_p = 1e-6f;
    gc.temperature = 3.0f;
    assert_int_equal(moe_model_generate(g.model, &gc, prompt, 3, a, 16, &na), MOE_OK);
    assert_memory_equal(a, greedy, sizeof a);
    /* top_k = 2 with a hot temperature: every token is one of the two most likely at its step */
    gc.top_p = 1.0f;
    gc.top_k = 2;
    gc.temperature = 5.0f;
    assert_int_equal(moe_model_generate(g.model, &gc, prompt, 3, a, 16, &na), MOE_OK);
    int32_t seq[24];
    float lg[24 * 13];
    memcpy(seq, prompt, sizeof prompt);
    memcpy(seq + 3, a, sizeof a);
    assert_int_equal(gu_forward(&g, seq, 3 + 16, lg), 0);
    int second_choices = 0;
    for (int32_t i = 0; i < 16; i++) {
        const float *row = lg + (size_t)(3 + i - 1) * V;
        int32_t rank = 0;
        for (int32_t v = 0; v < V; v++) rank += row[v] > row[a[i]] || (row[v] == row[a[i]] && v < a[i]);
        assert_true(rank <= 1);
        second_choices += rank == 1;
    }
    assert_true(second_choices > 0); /* hot sampling does leave the argmax */
    gu_close(&g);
}

static void test_stops_and_limits(void **state)
{
    (void)state;
    gu_model g;
    open_tiny(&g, 5, NULL);
    const int32_t V = g.cfg.vocab_size, S = g.cfg.max_seq_len;
    int32_t prompt[24], out[32], ref[32], n = -1, rn = -1;
    tu_tokens(8, V, 24, prompt, NULL);
    moe_generate_config gc;
    gen_config(&gc);
    gc.max_new_tokens = 10;
    assert_int_equal(moe_model_generate(g.model, &gc, prompt, 4, ref, 32, &rn), MOE_OK);
    assert_int_equal(rn, 10);
    /* stop at the 4th greedy token: it is output, nothing after it */
    gc.stop_token = ref[3];
    int32_t first = 0;
    while (ref[first] != gc.stop_token) first++;
    assert_int_equal(moe_model_generate(g.model, &gc, prompt, 4, out, 32, &n), MOE_OK);
    assert_int_equal(n, first + 1);
    assert_memory_equal(out, ref, (size_t)n * sizeof(int32_t));
    /* max_new_tokens */
    gc.stop_token = -1;
    gc.max_new_tokens = 3;
    assert_int_equal(moe_model_generate(g.model, &gc, prompt, 4, out, 3, &n), MOE_OK);
    assert_int_equal(n, 3);
    assert_memory_equal(out, ref, 3 * sizeof(int32_t));
    gc.max_new_tokens = 0;
    n = -1;
    assert_int_equal(moe_model_generate(g.model, &gc, prompt, 4, out, 0, &n), MOE_OK);
    assert_int_equal(n, 0);
    /* max_seq_len: prompt + output never exceed it, for greedy, sampling and beams */
    gc.max_new_tokens = 100;
    for (int32_t mode = 0; mode < 3; mode++) {
        gc.beam_width = mode == 2 ? 3 : 1;
        gc.temperature = mode == 1 ? 1.0f : 0.0f;
        assert_int_equal(moe_model_generate(g.model, &gc, prompt, S - 5, out, 5, &n), MOE_OK);
        assert_int_equal(n, 5);
        assert_int_equal(moe_model_generate(g.model, &gc, prompt, S, out, 0, &n), MOE_OK);
        assert_int_equal(n, 0);
    }
    gc.beam_width = 1;
    gc.temperature = 0.0f;
    /* out_capacity too small: an error, out untouched */
    gc.max_new_tokens = 6;
    for (int i = 0; i < 32; i++) out[i] = -7;
    n = -9;
    assert_int_equal(moe_model_generate(g.model, &gc, prompt, 4, out, 5, &n), MOE_ERR_INVALID_ARG);
    assert_non_null(strstr(moe_last_error(), "out_capacity"));
    assert_int_equal(out[0], -7);
    assert_int_equal(n, -9);
    /* near max_seq_len only the room left is needed */
    assert_int_equal(moe_model_generate(g.model, &gc, prompt, S - 2, out, 2, &n), MOE_OK);
    assert_int_equal(n, 2);
    gu_close(&g);
}

static void one_token_vocab(moe_model_config *c)
{
    c->vocab_size = 1;
    c->max_seq_len = 6;
}

/* A one-token vocabulary: every candidate is the stop token, no beam stays alive. */
static void test_one_token_vocabulary(void **state)
{
    (void)state;
    gu_model g;
    open_tiny(&g, 3, one_token_vocab);
    int32_t prompt[2] = {0, 0}, out[8], n = -1;
    moe_generate_config gc;
    gen_config(&gc);
    for (int32_t w = 1; w <= 3; w++) {
        gc.beam_width = w;
        gc.stop_token = 0;
        assert_int_equal(moe_model_generate(g.model, &gc, prompt, 2, out, 8, &n), MOE_OK);
        assert_int_equal(n, 1);
        assert_int_equal(out[0], 0);
        gc.stop_token = -1;
        assert_int_equal(moe_model_generate(g.model, &gc, prompt, 2, out, 8, &n), MOE_OK);
        assert_int_equal(n, 4);
    }
    gu_close(&g);
}

static void expect_error(moe_status got, const char *needle)
{
    assert_int_equal(got, MOE_ERR_INVALID_ARG);
    if (!strstr(moe_last_error(), needle)) {
        print_error("message '%s' does not name '%s'\n", moe_last_error(), needle);
        fail();
    }
}

static void test_bad_arguments(void **state)
{
    (void)state;
    gu_model g;
    open_tiny(&g, 1, NULL);
    int32_t prompt[4] = {1, 2, 3, 4}, out[8], n = -1;
    moe_generate_config gc, bad;
    gen_config(&gc);
    gc.max_new_tokens = 8;
    expect_error(moe_model_generate(NULL, &gc, prompt, 4, out, 8, &n), "model");
    expect_error(moe_model_generate(g.model, NULL, prompt, 4, out, 8, &n), "cfg");
    expect_error(moe_model_generate(g.model, &gc, NULL, 4, out, 8, &n), "prompt");
    expect_error(moe_model_generate(g.model, &gc, prompt, 4, NULL, 8, &n), "out_tokens");
    expect_error(moe_model_generate(g.model, &gc, prompt, 4, out, 8, NULL), "out_len");
    expect_error(moe_model_generate(g.model, &gc, prompt, 0, out, 8, &n), "prompt_len");
    expect_error(moe_model_generate(g.model, &gc, prompt, -2, out, 8, &n), "prompt_len");
    expect_error(moe_model_generate(g.model, &gc, prompt, g.cfg.max_seq_len + 1, out, 8, &n), "prompt_len");
    int32_t bad_prompt[4] = {1, 2, 13, 4};
    expect_error(moe_model_generate(g.model, &gc, bad_prompt, 4, out, 8, &n), "prompt[2]");
    bad_prompt[2] = 0;
    bad_prompt[3] = -1;
    expect_error(moe_model_generate(g.model, &gc, bad_prompt, 4, out, 8, &n), "prompt[3]");

    bad = gc;
    bad.temperature = -0.5f;
    expect_error(moe_model_generate(g.model, &bad, prompt, 4, out, 8, &n), "temperature");
    bad = gc;
    bad.temperature = NAN;
    expect_error(moe_model_generate(g.model, &bad, prompt, 4, out, 8, &n), "temperature");
    bad = gc;
    bad.top_p = 0.0f;
    expect_error(moe_model_generate(g.model, &bad, prompt, 4, out, 8, &n), "top_p");
    bad.top_p = 1.5f;
    expect_error(moe_model_generate(g.model, &bad, prompt, 4, out, 8, &n), "top_p");
    bad.top_p = NAN;
    expect_error(moe_model_generate(g.model, &bad, prompt, 4, out, 8, &n), "top_p");
    bad = gc;
    bad.beam_width = 0;
    expect_error(moe_model_generate(g.model, &bad, prompt, 4, out, 8, &n), "beam_width");
    bad = gc;
    bad.top_k = -1;
    expect_error(moe_model_generate(g.model, &bad, prompt, 4, out, 8, &n), "top_k");
    bad = gc;
    bad.max_new_tokens = -1;
    expect_error(moe_model_generate(g.model, &bad, prompt, 4, out, 8, &n), "max_new_tokens");
    bad = gc;
    bad.stop_token = 13;
    expect_error(moe_model_generate(g.model, &bad, prompt, 4, out, 8, &n), "stop_token");
    bad.stop_token = -2;
    expect_error(moe_model_generate(g.model, &bad, prompt, 4, out, 8, &n), "stop_token");
    bad = gc;
    bad.length_penalty = INFINITY;
    expect_error(moe_model_generate(g.model, &bad, prompt, 4, out, 8, &n), "length_penalty");
    bad = gc;
    bad.struct_size = 0;
    expect_error(moe_model_generate(g.model, &bad, prompt, 4, out, 8, &n), "struct_size");
    assert_int_equal(n, -1);
    /* the ctx carries the message too */
    assert_non_null(strstr(moe_ctx_last_error(g.ctx), "struct_size"));
    gu_close(&g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_defaults),
        cmocka_unit_test(test_greedy_is_argmax_of_forward),
        cmocka_unit_test(test_beam_exhaustive),
        cmocka_unit_test(test_beam_width_one_is_greedy),
        cmocka_unit_test(test_beam_matches_reference),
        cmocka_unit_test(test_beam_beats_greedy),
        cmocka_unit_test(test_sampling),
        cmocka_unit_test(test_stops_and_limits),
        cmocka_unit_test(test_one_token_vocabulary),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* moe_model_generate: argument and config checks, the greedy/sampling loop and beam search, both on
 * the KV-cached decoder. Beam search follows Hugging Face's BeamSearchScorer (early_stopping =
 * false): per step the 2 x width best (beam, token) candidates in order, a stop token among the first
 * `width` of them finishes a hypothesis, the others become the next beams until `width` are found. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/ctx.h"
#include "core/error.h"
#include "nn/generate.h"
#include "nn/model.h"

/* Beam widths beyond this are refused: the candidate lists grow with width^2. */
#define MOEI_MAX_BEAM_WIDTH 4096

static void generate_defaults(moe_generate_config *c)
{
    memset(c, 0, sizeof *c);
    c->struct_size = sizeof *c;
    c->max_new_tokens = 64;
    c->temperature = 0.0f;
    c->top_k = 0;
    c->top_p = 1.0f;
    c->beam_width = 1;
    c->length_penalty = 1.0f;
    c->stop_token = -1;
    c->seed = 0;
}

MOE_API moe_status moe_generate_config_init(moe_generate_config *cfg, uint32_t struct_size)
{
    moe_generate_config d;
    generate_defaults(&d);
    return moei_config_init(cfg, struct_size, &d, sizeof d, "moe_generate_config_init");
}

#define CHECK_FIELD(cond, ...)                                                                          \
    do {                                                                                                \
        if (!(cond)) return moei_fail(ctx, MOE_ERR_INVALID_ARG, __VA_ARGS__);                           \
    } while (0)

static moe_status load_config(moe_ctx *ctx, const moe_generate_config *user, int32_t vocab, moe_generate_config *c,
                              const char *fn)
{
    generate_defaults(c);
    moe_status st = moei_config_read(c, sizeof *c, user, "moe_generate_config", fn);
    if (st != MOE_OK) return moei_fail_msg(ctx, st, moe_last_error());
    const char *p = "moe_generate_config";
    CHECK_FIELD(c->max_new_tokens >= 0, "%s: %s.max_new_tokens = %d (must be >= 0)", fn, p, (int)c->max_new_tokens);
    CHECK_FIELD(isfinite(c->temperature) && c->temperature >= 0.0f,
                "%s: %s.temperature = %g (must be finite and >= 0; 0 = greedy)", fn, p, (double)c->temperature);
    CHECK_FIELD(c->top_k >= 0, "%s: %s.top_k = %d (must be >= 0; 0 = off)", fn, p, (int)c->top_k);
    CHECK_FIELD(c->top_p > 0.0f && c->top_p <= 1.0f, "%s: %s.top_p = %g (must be in (0, 1]; 1 = off)", fn, p,
                (double)c->top_p);
    CHECK_FIELD(c->beam_width >= 1 && c->beam_width <= MOEI_MAX_BEAM_WIDTH,
                "%s: %s.beam_width = %d (must be in 1..%d)", fn, p, (int)c->beam_width, MOEI_MAX_BEAM_WIDTH);
    CHECK_FIELD(isfinite(c->length_penalty), "%s: %s.length_penalty = %g (must be finite)", fn, p,
                (double)c->length_penalty);
    CHECK_FIELD(c->stop_token == -1 || (c->stop_token >= 0 && c->stop_token < vocab),
                "%s: %s.stop_token = %d (must be -1 or in [0, vocab_size = %d))", fn, p, (int)c->stop_token,
                (int)vocab);
    return MOE_OK;
}

/* ---- greedy and sampling ---------------------------------------------------------------------- */

moe_status moei_generate_sample(moe_model *m, const moe_generate_config *c, const int32_t *prompt, int32_t prompt_len,
                                int32_t need, int32_t *gen, int32_t *count)
{
    moe_ctx *ctx = m->ctx;
    const int32_t V = m->cfg.vocab_size;
    moei_decoder d;
    moe_status st = moei_decoder_init(&d, m, prompt_len + need, 1, 0);
    if (st != MOE_OK) return st;
    size_t ws_bytes = moei_sample_workspace_size(V);
    float *logits = malloc((size_t)V * sizeof(float));
    void *ws = malloc(ws_bytes);
    if (!logits || !ws) st = moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "moe_model_generate: out of host memory");
    if (st == MOE_OK) st = moei_decoder_forward(&d, prompt, 1, prompt_len, logits);
    int32_t n = 0;
    for (int32_t s = 0; st == MOE_OK && s < need; s++) {
        int32_t tok = 0;
        st = moei_sample(ctx, logits, V, c->temperature, c->top_k, c->top_p, moei_sample_uniform(c->seed, (uint64_t)s),
                         ws, ws_bytes, &tok);
        if (st != MOE_OK) break;
        gen[n++] = tok;
        if (tok == c->stop_token) break;
        if (s + 1 < need) st = moei_decoder_forward(&d, &tok, 1, 1, logits); /* the last token is never fed */
    }
    free(logits);
    free(ws);
    moei_decoder_release(&d);
    if (st == MOE_OK) *count = n;
    return st;
}

/* ---- beam search ------------------------------------------------------------------------------ */

typedef struct beam_cand {
    double score; /* sum of log-probabilities of the extended beam */
    int32_t beam, token;
} beam_cand;

/* Higher score first; then the lower beam, then the lower token: a fixed, total order. */
static int beam_cand_cmp(const void *pa, const void *pb)
{
    const beam_cand *a = pa, *b = pb;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    if (a->beam != b->beam) return a->beam < b->beam ? -1 : 1;
    return (a->token > b->token) - (a->token < b->token);
}

typedef struct beam_state {
    int32_t width, need, V, K;   /* K = candidates kept per beam = min(2 width, V) */
    float *logits;               /* [width, V] */
    int32_t *tok, *next_tok;     /* [width, need] tokens of the live beams */
    double *sum, *next_sum;      /* [width] */
    int32_t *parent, *feed;      /* [width] */
    beam_cand *cand;             /* [width * K] */
    int32_t *fin_tok, *fin_len;  /* [width, need], [width]: finished hypotheses */
    double *fin_score;           /* [width] length-normalised */
    int32_t fin_count;
} beam_state;

static void beam_free(beam_state *b)
{
    void *p[] = {b->logits, b->tok, b->next_tok, b->sum, b->next_sum, b->parent, b->feed, b->cand,
                 b->fin_tok, b->fin_len, b->fin_score};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) free(p[i]);
}

static int beam_alloc(beam_state *b, int32_t width, int32_t need, int32_t V)
{
    memset(b, 0, sizeof *b);
    b->width = width;
    b->need = need;
    b->V = V;
    b->K = 2 * width < V ? 2 * width : V;
    const size_t W = (size_t)width, T = (size_t)need;
    b->logits = malloc(W * (size_t)V * sizeof(float));
    b->tok = malloc(W * T * sizeof(int32_t));
    b->next_tok = malloc(W * T * sizeof(int32_t));
    b->sum = malloc(W * sizeof(double));
    b->next_sum = malloc(W * sizeof(double));
    b->parent = malloc(W * sizeof(int32_t));
    b->feed = malloc(W * sizeof(int32_t));
    b->cand = malloc(W * (size_t)b->K * sizeof(beam_cand));
    b->fin_tok = malloc(W * T * sizeof(int32_t));
    b->fin_len = malloc(W * sizeof(int32_t));
    b->fin_score = malloc(W * sizeof(double));
    return b->logits && b->tok && b->next_tok && b->sum && b->next_sum && b->parent && b->feed && b->cand &&
           b->fin_tok && b->fin_len && b->fin_score;
}

/* Keep a hypothesis if the finished list has room or it beats the worst one (which it replaces). */
static void beam_finish(beam_state *b, const int32_t *prefix, int32_t len, int32_t last, double sum, double penalty)
{
    const double score = sum / pow((double)len, penalty);
    int32_t slot = b->fin_count;
    if (b->fin_count == b->width) {
        slot = 0;
        for (int32_t i = 1; i < b->fin_count; i++)
            if (b->fin_score[i] < b->fin_score[slot]) slot = i;
        if (!(score > b->fin_score[slot])) return;
    } else {
        b->fin_count++;
    }
    int32_t *dst = b->fin_tok + (size_t)slot * b->need;
    memcpy(dst, prefix, (size_t)(len - 1) * sizeof(int32_t));
    dst[len - 1] = last;
    b->fin_len[slot] = len;
    b->fin_score[slot] = score;
}

static double worst_finished(const beam_state *b)
{
    double w = INFINITY;
    for (int32_t i = 0; i < b->fin_count; i++) w = b->fin_score[i] < w ? b->fin_score[i] : w;
    return w;
}

/* Fill b->cand with the K best tokens of each of the `live` beams, then sort them all. */
static moe_status beam_candidates(moe_ctx *ctx, beam_state *b, int32_t live, int32_t *ncand)
{
    const int32_t V = b->V, K = b->K;
    int32_t n = 0;
    for (int32_t bm = 0; bm < live; bm++) {
        const float *lg = b->logits + (size_t)bm * V;
        float mx = lg[0];
        for (int32_t i = 0; i < V; i++) {
            if (!isfinite(lg[i]))
                return moei_fail(ctx, MOE_ERR_NUMERIC, "moe_model_generate: logit %d of beam %d is not finite (%g)",
                                 (int)i, (int)bm, (double)lg[i]);
            mx = lg[i] > mx ? lg[i] : mx;
        }
        double se = 0.0;
        for (int32_t i = 0; i < V; i++) se += exp((double)lg[i] - (double)mx);
        const double lse = (double)mx + log(se);
        /* Insertion into a sorted list of K: K = 2 x width is small next to V. */
        beam_cand *top = b->cand + n;
        int32_t have = 0;
        for (int32_t i = 0; i < V; i++) {
            beam_cand cnd = {b->sum[bm] + ((double)lg[i] - lse), bm, i};
            if (have == K && beam_cand_cmp(&cnd, &top[K - 1]) >= 0) continue;
            int32_t j = have < K ? have++ : K - 1;
            while (j > 0 && beam_cand_cmp(&cnd, &top[j - 1]) < 0) {
                top[j] = top[j - 1];
                j--;
            }
            top[j] = cnd;
        }
        n += have;
    }
    qsort(b->cand, (size_t)n, sizeof *b->cand, beam_cand_cmp);
    *ncand = n;
    return MOE_OK;
}

moe_status moei_generate_beam(moe_model *m, const moe_generate_config *c, const int32_t *prompt, int32_t prompt_len,
                              int32_t need, int32_t *gen, int32_t *count)
{
    moe_ctx *ctx = m->ctx;
    const int32_t W = c->beam_width, V = m->cfg.vocab_size;
    const double penalty = c->length_penalty;
    beam_state b;
    moei_decoder d;
    if (!beam_alloc(&b, W, need, V)) {
        beam_free(&b);
        return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "moe_model_generate: out of host memory for %d beams", (int)W);
    }
    moe_status st = moei_decoder_init(&d, m, prompt_len + need, W, 1);
    if (st != MOE_OK) {
        beam_free(&b);
        return st;
    }
    st = moei_decoder_forward(&d, prompt, 1, prompt_len, b.logits);
    int32_t live = 1, done = 0;
    b.sum[0] = 0.0;
    for (int32_t t = 0; st == MOE_OK && t < need && !done; t++) {
        int32_t ncand = 0, next = 0;
        st = beam_candidates(ctx, &b, live, &ncand);
        if (st != MOE_OK) break;
        for (int32_t r = 0; r < ncand && next < W; r++) {
            const beam_cand *cd = &b.cand[r];
            const int32_t *prefix = b.tok + (size_t)cd->beam * need;
            if (cd->token == c->stop_token) {
                if (r < W) beam_finish(&b, prefix, t + 1, cd->token, cd->score, penalty);
                continue;
            }
            int32_t *dst = b.next_tok + (size_t)next * need;
            memcpy(dst, prefix, (size_t)t * sizeof(int32_t));
            dst[t] = cd->token;
            b.next_sum[next] = cd->score;
            b.parent[next] = cd->beam;
            b.feed[next] = cd->token;
            next++;
        }
        /* Swap in the new beams. */
        int32_t *ti = b.tok;
        b.tok = b.next_tok;
        b.next_tok = ti;
        double *ts = b.sum;
        b.sum = b.next_sum;
        b.next_sum = ts;
        live = next;
        /* HF's heuristic: the best candidate score at this length cannot beat the worst finished one. */
        if (b.fin_count == W && ncand > 0 && worst_finished(&b) >= b.cand[0].score / pow((double)(t + 1), penalty))
            done = 1;
        if (live == 0) done = 1;
        if (done || t + 1 == need) break;
        st = moei_decoder_reorder(&d, b.parent, live);
        if (st == MOE_OK) st = moei_decoder_forward(&d, b.feed, live, 1, b.logits);
    }
    if (st == MOE_OK && !done)
        for (int32_t i = 0; i < live; i++) {
            const int32_t *tk = b.tok + (size_t)i * need;
            int32_t len = need; /* the loop only ends undone after the last step */
            beam_finish(&b, tk, len, tk[len - 1], b.sum[i], penalty);
        }
    if (st == MOE_OK) {
        int32_t best = -1;
        for (int32_t i = 0; i < b.fin_count; i++)
            if (best < 0 || b.fin_score[i] > b.fin_score[best]) best = i;
        int32_t n = best < 0 ? 0 : b.fin_len[best];
        if (n > 0) memcpy(gen, b.fin_tok + (size_t)best * need, (size_t)n * sizeof(int32_t));
        *count = n;
    }
    moei_decoder_release(&d);
    beam_free(&b);
    return st;
}

/* ---- the public entry point ------------------------------------------------------------------- */

MOE_API moe_status moe_model_generate(moe_model *model, const moe_generate_config *cfg, const int32_t *prompt,
                                      int32_t prompt_len, int32_t *out_tokens, int32_t out_capacity,
                                      int32_t *out_len)
{
    static const char *fn = "moe_model_generate";
    MOEI_CHECK_NOT_NULL(NULL, model, fn);
    moe_ctx *ctx = model->ctx;
    MOEI_CHECK_NOT_NULL(ctx, cfg, fn);
    MOEI_CHECK_NOT_NULL(ctx, prompt, fn);
    MOEI_CHECK_NOT_NULL(ctx, out_tokens, fn);
    MOEI_CHECK_NOT_NULL(ctx, out_len, fn);
    const moe_model_config *mc = &model->cfg;
    moe_generate_config c;
    moe_status st = load_config(ctx, cfg, mc->vocab_size, &c, fn);
    if (st != MOE_OK) return st;
    if (prompt_len < 1 || prompt_len > mc->max_seq_len)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: prompt_len = %d (must be 1..max_seq_len = %d)", fn,
                         (int)prompt_len, (int)mc->max_seq_len);
    for (int32_t i = 0; i < prompt_len; i++)
        if (prompt[i] < 0 || prompt[i] >= mc->vocab_size)
            return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: prompt[%d] = %d is outside [0, vocab_size = %d)", fn,
                             (int)i, (int)prompt[i], (int)mc->vocab_size);
    const int32_t room = mc->max_seq_len - prompt_len;
    const int32_t need = c.max_new_tokens < room ? c.max_new_tokens : room;
    if (out_capacity < need)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                         "%s: out_capacity = %d but up to %d tokens may be generated (max_new_tokens = %d, room left "
                         "in max_seq_len = %d)",
                         fn, (int)out_capacity, (int)need, (int)c.max_new_tokens, (int)room);
    if (need == 0) {
        *out_len = 0;
        return MOE_OK;
    }
    if (!moei_ctx_ops(ctx)) return MOE_ERR_UNSUPPORTED;
    int32_t *gen = malloc((size_t)need * sizeof(int32_t));
    if (!gen) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    int32_t n = 0;
    int saved = moei_threads_enter(ctx);
    if (c.beam_width == 1)
        st = moei_generate_sample(model, &c, prompt, prompt_len, need, gen, &n);
    else
        st = moei_generate_beam(model, &c, prompt, prompt_len, need, gen, &n);
    moei_threads_leave(saved);
    if (st == MOE_OK) {
        memcpy(out_tokens, gen, (size_t)n * sizeof(int32_t));
        *out_len = n;
    }
    free(gen);
    return st;
}

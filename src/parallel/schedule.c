/* Pipeline schedules: each rank's compute order (GPipe, 1F1B, interleaved 1F1B), with the
 * sends/receives inserted around it, the layer partition, and a validator that runs every rank's
 * list together under post-and-continue sends and blocking receives. Lists are pure functions of
 * their arguments; only the validator allocates. */
#include "parallel/schedule.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"

#define MAX_STAGES 65536
#define MAX_MICROBATCHES (1 << 24)
#define MAX_CHUNKS 1024
#define MAX_WORK ((int64_t)1 << 26) /* microbatches * chunks: keeps every index an int32 */

const char *moei_pp_op_name(int32_t op)
{
    switch (op) {
    case MOEI_PP_FORWARD: return "FORWARD";
    case MOEI_PP_BACKWARD: return "BACKWARD";
    case MOEI_PP_SEND_ACT: return "SEND_ACT";
    case MOEI_PP_RECV_ACT: return "RECV_ACT";
    case MOEI_PP_SEND_GRAD: return "SEND_GRAD";
    case MOEI_PP_RECV_GRAD: return "RECV_GRAD";
    default: return "?";
    }
}

static moe_status check_shape(moe_ctx *ctx, const char *fn, int32_t kind, int32_t stages, int32_t microbatches,
                              int32_t chunks)
{
    if (kind < MOEI_PP_GPIPE || kind > MOEI_PP_INTERLEAVED)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: kind %d is not a pipeline schedule", fn, (int)kind);
    if (stages < 1 || stages > MAX_STAGES)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: stages = %d (must be 1..%d)", fn, (int)stages, MAX_STAGES);
    if (microbatches < 1 || microbatches > MAX_MICROBATCHES)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: microbatches = %d (must be 1..%d)", fn, (int)microbatches,
                         MAX_MICROBATCHES);
    if (chunks < 1 || chunks > MAX_CHUNKS)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: chunks = %d (must be 1..%d)", fn, (int)chunks, MAX_CHUNKS);
    if (chunks > 1 && kind != MOEI_PP_INTERLEAVED)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: chunks = %d needs the interleaved schedule", fn, (int)chunks);
    if (chunks > 1 && microbatches % stages != 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                         "%s: microbatches = %d must be a multiple of stages = %d for the interleaved schedule", fn,
                         (int)microbatches, (int)stages);
    if ((int64_t)microbatches * chunks > MAX_WORK)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: microbatches * chunks = %lld exceeds %lld", fn,
                         (long long)microbatches * chunks, (long long)MAX_WORK);
    return MOE_OK;
}

/* ---- compute order ----------------------------------------------------------------------------- */

/* Forwards this rank runs before its first backward. */
static int64_t warmup_count(int32_t kind, int32_t p, int32_t m, int32_t v, int32_t r)
{
    int64_t total = (int64_t)m * v;
    int64_t w;
    if (kind == MOEI_PP_GPIPE) return total;
    if (v == 1) w = p - r - 1; /* 1F1B: enough forwards to fill the stages after this one */
    else w = (int64_t)(p - r - 1) * 2 + (int64_t)(v - 1) * p; /* Megatron's interleaved warm-up */
    return w < total ? w : total;
}

/* The k-th forward (or backward) of a rank as (microbatch, chunk). Interleaved: groups of p
 * micro-batches go through chunk 0, then chunk 1, ...; backwards walk the chunks in reverse. */
static void work_item(int32_t p, int32_t v, int64_t k, int backward, int32_t *mb, int32_t *chunk)
{
    int64_t c = (k / p) % v;
    *chunk = (int32_t)(backward ? v - 1 - c : c);
    *mb = (int32_t)((k / ((int64_t)p * v)) * p + k % p);
}

typedef struct emitter {
    moei_pp_action *out;
    int64_t capacity;
    int64_t n;
} emitter;

static void emit(emitter *e, int32_t op, int32_t mb, int32_t chunk, int32_t peer)
{
    if (e->out && e->n < e->capacity) {
        moei_pp_action *a = &e->out[e->n];
        a->op = op;
        a->microbatch = mb;
        a->chunk = chunk;
        a->peer = peer;
    }
    e->n++;
}

/* One compute step with the communication it needs: the input arrives just before it is used,
 * and the output leaves as soon as it exists. Neighbouring virtual stages on one rank hand over
 * in memory. */
static void emit_compute(emitter *e, int32_t p, int32_t v, int32_t r, int backward, int32_t mb, int32_t chunk)
{
    int64_t vs = (int64_t)chunk * p + r, last = (int64_t)p * v - 1;
    int32_t prev = (int32_t)((vs - 1 + p) % p), next = (int32_t)((vs + 1) % p);
    int has_prev = vs > 0 && prev != r, has_next = vs < last && next != r;
    if (!backward) {
        if (has_prev) emit(e, MOEI_PP_RECV_ACT, mb, chunk, prev);
        emit(e, MOEI_PP_FORWARD, mb, chunk, -1);
        if (has_next) emit(e, MOEI_PP_SEND_ACT, mb, chunk, next);
    } else {
        if (has_next) emit(e, MOEI_PP_RECV_GRAD, mb, chunk, next);
        emit(e, MOEI_PP_BACKWARD, mb, chunk, -1);
        if (has_prev) emit(e, MOEI_PP_SEND_GRAD, mb, chunk, prev);
    }
}

moe_status moei_pp_schedule(moe_ctx *ctx, int32_t kind, int32_t stages, int32_t microbatches, int32_t chunks,
                            int32_t rank, moei_pp_action *actions, int64_t capacity, int64_t *count)
{
    static const char *fn = "moei_pp_schedule";
    MOEI_CHECK_NOT_NULL(ctx, count, fn);
    moe_status st = check_shape(ctx, fn, kind, stages, microbatches, chunks);
    if (st != MOE_OK) return st;
    if (rank < 0 || rank >= stages)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: rank %d is not a stage of %d", fn, (int)rank, (int)stages);
    if (actions && capacity < 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: capacity %lld is negative", fn, (long long)capacity);
    const int32_t p = stages, m = microbatches, v = chunks, r = rank;
    const int64_t total = (int64_t)m * v, warm = warmup_count(kind, p, m, v, r);
    emitter e = {actions, actions ? capacity : 0, 0};
    int32_t mb, ch;
    for (int64_t k = 0; k < warm; k++) { /* warm-up forwards */
        work_item(p, v, k, 0, &mb, &ch);
        emit_compute(&e, p, v, r, 0, mb, ch);
    }
    for (int64_t k = 0; k < total - warm; k++) { /* steady state: one forward, one backward */
        work_item(p, v, warm + k, 0, &mb, &ch);
        emit_compute(&e, p, v, r, 0, mb, ch);
        work_item(p, v, k, 1, &mb, &ch);
        emit_compute(&e, p, v, r, 1, mb, ch);
    }
    for (int64_t k = total - warm; k < total; k++) { /* cool-down backwards */
        work_item(p, v, k, 1, &mb, &ch);
        emit_compute(&e, p, v, r, 1, mb, ch);
    }
    if (actions && e.n > capacity)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: capacity %lld is below the list length %lld", fn,
                         (long long)capacity, (long long)e.n);
    *count = e.n;
    return MOE_OK;
}

/* ---- layer partition --------------------------------------------------------------------------- */

moe_status moei_pp_partition(moe_ctx *ctx, int32_t num_layers, int32_t num_stages, const int32_t *counts,
                             int32_t *first)
{
    static const char *fn = "moei_pp_partition";
    MOEI_CHECK_NOT_NULL(ctx, first, fn);
    if (num_layers < 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: num_layers = %d is negative", fn, (int)num_layers);
    if (num_stages < 1 || num_stages > MAX_STAGES * MAX_CHUNKS / 16)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: num_stages = %d (must be 1..%d)", fn, (int)num_stages,
                         MAX_STAGES * MAX_CHUNKS / 16);
    if (!counts) {
        if (num_layers < num_stages)
            return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                             "%s: num_layers = %d is fewer than num_stages = %d (an even split gives every stage a "
                             "layer; pass explicit counts to leave stages empty)",
                             fn, (int)num_layers, (int)num_stages);
        int32_t base = num_layers / num_stages, extra = num_layers % num_stages;
        first[0] = 0;
        for (int32_t s = 0; s < num_stages; s++) first[s + 1] = first[s] + base + (s < extra ? 1 : 0);
        return MOE_OK;
    }
    int64_t sum = 0;
    for (int32_t s = 0; s < num_stages; s++) {
        if (counts[s] < 0)
            return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: counts[%d] = %d is negative", fn, (int)s, (int)counts[s]);
        sum += counts[s];
    }
    if (sum != num_layers)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: counts sum to %lld but num_layers = %d", fn, (long long)sum,
                         (int)num_layers);
    first[0] = 0;
    for (int32_t s = 0; s < num_stages; s++) first[s + 1] = first[s] + counts[s];
    return MOE_OK;
}

/* ---- validator --------------------------------------------------------------------------------- */

enum { F_FWD = 1, F_BWD = 2, F_ACT_IN = 4, F_GRAD_IN = 8, F_ACT_OUT = 16, F_GRAD_OUT = 32 };

typedef struct item {
    int32_t mb, vs; /* the micro-batch and the producer's virtual stage */
    int64_t time;   /* when it was sent */
} item;

typedef struct fifo {
    item *q;
    int64_t head, tail;
} fifo;

typedef struct sim {
    moe_ctx *ctx;
    int32_t p, m, v;
    uint8_t *flags; /* [rank][mb][chunk] */
    fifo *act, *grad; /* act[r]: r -> r+1; grad[r]: r -> r-1 */
    int64_t *pc, *clock;
    int32_t *inflight, *pending;
} sim;

static uint8_t *flag_at(const sim *s, int32_t r, int32_t mb, int32_t c)
{
    return &s->flags[((size_t)r * (size_t)s->m + (size_t)mb) * (size_t)s->v + (size_t)c];
}

static moe_status bad(const sim *s, int32_t r, const moei_pp_action *a, const char *rule)
{
    return moei_fail(s->ctx, MOE_ERR_INVALID_ARG, "moei_pp_validate: rank %d action %lld (%s mb %d chunk %d peer %d): %s",
                     (int)r, (long long)s->pc[r], moei_pp_op_name(a->op), (int)a->microbatch, (int)a->chunk,
                     (int)a->peer, rule);
}

/* Execute one action of rank r if it can run: 1 = ran, 0 = blocked on a receive, <0 = invalid. */
static int step(sim *s, int32_t r, const moei_pp_action *a, int64_t fwd_cost, int64_t bwd_cost, moe_status *err)
{
    const int32_t p = s->p, v = s->v;
    if (a->op < MOEI_PP_FORWARD || a->op > MOEI_PP_RECV_GRAD) return (*err = bad(s, r, a, "unknown op")), -1;
    if (a->microbatch < 0 || a->microbatch >= s->m || a->chunk < 0 || a->chunk >= v)
        return (*err = bad(s, r, a, "micro-batch or chunk out of range")), -1;
    const int64_t vs = (int64_t)a->chunk * p + r, last = (int64_t)p * v - 1;
    const int32_t prev = (int32_t)((vs - 1 + p) % p), next = (int32_t)((vs + 1) % p);
    uint8_t *f = flag_at(s, r, a->microbatch, a->chunk);
    int is_compute = a->op == MOEI_PP_FORWARD || a->op == MOEI_PP_BACKWARD;
    if (is_compute && a->peer != -1) return (*err = bad(s, r, a, "compute with a peer")), -1;
    switch (a->op) {
    case MOEI_PP_FORWARD:
        if (*f & F_FWD) return (*err = bad(s, r, a, "forward runs twice")), -1;
        if (vs > 0) {
            int ok = prev == r ? (*flag_at(s, r, a->microbatch, a->chunk - 1) & F_FWD) != 0 : (*f & F_ACT_IN) != 0;
            if (!ok) return (*err = bad(s, r, a, "its input activation has not arrived")), -1;
        }
        *f |= F_FWD;
        s->clock[r] += fwd_cost;
        if (++s->inflight[r] > s->inflight[p + r]) s->inflight[p + r] = s->inflight[r];
        return 1;
    case MOEI_PP_BACKWARD:
        if (!(*f & F_FWD)) return (*err = bad(s, r, a, "backward before its forward")), -1;
        if (*f & F_BWD) return (*err = bad(s, r, a, "backward runs twice")), -1;
        if (vs < last) {
            int ok = next == r ? (*flag_at(s, r, a->microbatch, a->chunk + 1) & F_BWD) != 0 : (*f & F_GRAD_IN) != 0;
            if (!ok) return (*err = bad(s, r, a, "its output gradient has not arrived")), -1;
        }
        *f |= F_BWD;
        s->clock[r] += bwd_cost;
        s->inflight[r]--;
        return 1;
    case MOEI_PP_SEND_ACT:
    case MOEI_PP_SEND_GRAD: {
        int act = a->op == MOEI_PP_SEND_ACT;
        int32_t want = act ? next : prev;
        if (act ? vs == last : vs == 0) return (*err = bad(s, r, a, "no stage consumes this")), -1;
        if (a->peer != want || want == r) return (*err = bad(s, r, a, "peer is not the consuming neighbour")), -1;
        if (!(*f & (act ? F_FWD : F_BWD))) return (*err = bad(s, r, a, "sends data not yet computed")), -1;
        if (*f & (act ? F_ACT_OUT : F_GRAD_OUT)) return (*err = bad(s, r, a, "sent twice")), -1;
        *f |= act ? F_ACT_OUT : F_GRAD_OUT;
        fifo *q = act ? &s->act[r] : &s->grad[r];
        q->q[q->tail++] = (item){a->microbatch, (int32_t)vs, s->clock[r]};
        if (++s->pending[r] > s->pending[p + r]) s->pending[p + r] = s->pending[r];
        return 1;
    }
    default: { /* receives */
        int act = a->op == MOEI_PP_RECV_ACT;
        int32_t want = act ? prev : next;
        if (act ? vs == 0 : vs == last) return (*err = bad(s, r, a, "no stage produces this")), -1;
        if (a->peer != want || want == r) return (*err = bad(s, r, a, "peer is not the producing neighbour")), -1;
        if (*f & (act ? F_ACT_IN : F_GRAD_IN)) return (*err = bad(s, r, a, "received twice")), -1;
        fifo *q = act ? &s->act[a->peer] : &s->grad[a->peer];
        if (q->head == q->tail) return 0; /* blocked: not sent yet */
        item it = q->q[q->head];
        int64_t want_vs = act ? vs - 1 : vs + 1;
        if (it.mb != a->microbatch || it.vs != want_vs)
            return (*err = bad(s, r, a, "the channel delivers another item first (sends and receives out of order)")),
                   -1;
        q->head++;
        s->pending[a->peer]--;
        *f |= act ? F_ACT_IN : F_GRAD_IN;
        if (it.time > s->clock[r]) s->clock[r] = it.time;
        return 1;
    }
    }
}

moe_status moei_pp_validate(moe_ctx *ctx, int32_t stages, int32_t microbatches, int32_t chunks,
                            const moei_pp_action *const *lists, const int64_t *counts, int64_t fwd_cost,
                            int64_t bwd_cost, int32_t *peak_per_rank, moei_pp_report *report)
{
    static const char *fn = "moei_pp_validate";
    MOEI_CHECK_NOT_NULL(ctx, lists, fn);
    MOEI_CHECK_NOT_NULL(ctx, counts, fn);
    MOEI_CHECK_NOT_NULL(ctx, report, fn);
    moe_status st = check_shape(ctx, fn, chunks > 1 ? MOEI_PP_INTERLEAVED : MOEI_PP_1F1B, stages, microbatches, chunks);
    if (st != MOE_OK) return st;
    if (fwd_cost < 0 || bwd_cost < 0 || fwd_cost > ((int64_t)1 << 20) || bwd_cost > ((int64_t)1 << 20))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: costs %lld/%lld must be 0..2^20", fn, (long long)fwd_cost,
                         (long long)bwd_cost);
    const int32_t p = stages;
    const int64_t work = (int64_t)microbatches * chunks;
    if ((int64_t)p * work > ((int64_t)1 << 28))
        return moei_fail(ctx, MOE_ERR_UNSUPPORTED, "%s: stages * microbatches * chunks = %lld is too large to simulate",
                         fn, (long long)p * work);
    for (int32_t r = 0; r < p; r++)
        if (counts[r] < 0 || (counts[r] > 0 && !lists[r]))
            return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: list of rank %d is missing or has a negative length", fn,
                             (int)r);
    sim s = {ctx, p, microbatches, chunks, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    s.flags = calloc((size_t)(p * work), 1);
    s.act = calloc(2 * (size_t)p, sizeof *s.act);
    s.grad = s.act ? s.act + p : NULL;
    item *store = malloc(2 * (size_t)(p * work) * sizeof *store);
    s.pc = calloc(2 * (size_t)p, sizeof *s.pc);
    s.clock = s.pc ? s.pc + p : NULL;
    s.inflight = calloc(4 * (size_t)p, sizeof *s.inflight); /* current, peak; then pending sends, peak */
    s.pending = s.inflight ? s.inflight + 2 * p : NULL;
    if (!s.flags || !s.act || !store || !s.pc || !s.inflight) {
        st = moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        goto done;
    }
    for (int32_t r = 0; r < 2 * p; r++) s.act[r].q = store + (size_t)r * (size_t)work;
    /* Sweep the ranks until none can move. Each rank's clock depends only on its own list and the
     * send times of what it receives, so the sweep order does not change the result. A channel
     * never holds more than `work` items: each is sent at most once (checked in step). */
    for (int progress = 1; progress && st == MOE_OK;) {
        progress = 0;
        for (int32_t r = 0; r < p && st == MOE_OK; r++)
            while (s.pc[r] < counts[r]) {
                int rc = step(&s, r, &lists[r][s.pc[r]], fwd_cost, bwd_cost, &st);
                if (rc < 0) break;
                if (rc == 0) break;
                s.pc[r]++;
                progress = 1;
            }
    }
    if (st != MOE_OK) goto done;
    for (int32_t r = 0; r < p; r++)
        if (s.pc[r] < counts[r]) {
            st = bad(&s, r, &lists[r][s.pc[r]], "deadlock: waits for an item that is never sent");
            goto done;
        }
    for (int32_t r = 0; r < p; r++)
        for (int32_t mb = 0; mb < microbatches; mb++)
            for (int32_t c = 0; c < chunks; c++) {
                uint8_t f = *flag_at(&s, r, mb, c);
                if ((f & (F_FWD | F_BWD)) != (F_FWD | F_BWD)) {
                    st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: rank %d never runs the %s of mb %d chunk %d", fn,
                                   (int)r, (f & F_FWD) ? "backward" : "forward", (int)mb, (int)c);
                    goto done;
                }
            }
    for (int32_t q = 0; q < 2 * p; q++)
        if (s.act[q].head != s.act[q].tail) {
            item it = s.act[q].q[s.act[q].head];
            st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: rank %d sends the %s of mb %d (virtual stage %d) but no one "
                           "receives it", fn, (int)(q % p), q < p ? "activation" : "gradient", (int)it.mb, (int)it.vs);
            goto done;
        }
    moei_pp_report rep;
    memset(&rep, 0, sizeof rep);
    for (int32_t r = 0; r < p; r++) {
        if (s.clock[r] > rep.makespan) rep.makespan = s.clock[r];
        if (s.inflight[p + r] > rep.peak_inflight) rep.peak_inflight = s.inflight[p + r];
        if (s.pending[p + r] > rep.max_pending_sends) rep.max_pending_sends = s.pending[p + r];
        if (peak_per_rank) peak_per_rank[r] = s.inflight[p + r];
    }
    rep.busy = (int64_t)p * work * (fwd_cost + bwd_cost);
    rep.bubble = rep.makespan > 0 ? 1.0 - (double)rep.busy / ((double)p * (double)rep.makespan) : 0.0;
    *report = rep;
done:
    free(s.flags);
    free(s.act);
    free(store);
    free(s.pc);
    free(s.inflight);
    return st;
}

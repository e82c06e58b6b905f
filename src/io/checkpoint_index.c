/* index.json of a checkpoint: strict parsing (every key known, typed, bounded and present exactly
 * once; names restricted to a safe alphabet; slices tiling each tensor exactly) and writing.
 * Integers are written as plain decimal text and read back exactly up to 2^53; floats are written
 * as the shortest text that reads back as the same float, so configs round-trip bit for bit. */
#include "io/checkpoint_index.h"

#include <cjson/cJSON.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "moe/version.h"

const char *const moei_ckpt_mesh_keys[MOEI_CKPT_MESH_COUNT] = {"world", "dp", "tp", "pp", "ep", "etp"};

/* ---- config field tables ---------------------------------------------------------------------- */

#define MF(field, kind) {#field, offsetof(moe_model_config, field), kind}
static const moei_ckpt_field model_fields[] = {
    MF(vocab_size, MOEI_CKPT_I32),
    MF(max_seq_len, MOEI_CKPT_I32),
    MF(d_model, MOEI_CKPT_I32),
    MF(num_layers, MOEI_CKPT_I32),
    MF(num_heads, MOEI_CKPT_I32),
    MF(num_kv_heads, MOEI_CKPT_I32),
    MF(head_dim, MOEI_CKPT_I32),
    MF(position, MOEI_CKPT_I32),
    MF(rope_theta, MOEI_CKPT_F32),
    MF(norm, MOEI_CKPT_I32),
    MF(norm_eps, MOEI_CKPT_F32),
    MF(tie_embeddings, MOEI_CKPT_U32),
    MF(init_std, MOEI_CKPT_F32),
    MF(ffn_hidden, MOEI_CKPT_I32),
    MF(ffn_activation, MOEI_CKPT_I32),
    MF(moe_num_experts, MOEI_CKPT_I32),
    MF(moe_top_k, MOEI_CKPT_I32),
    MF(moe_expert_hidden, MOEI_CKPT_I32),
    MF(moe_activation, MOEI_CKPT_I32),
    MF(moe_layer_freq, MOEI_CKPT_I32),
    MF(moe_first_dense, MOEI_CKPT_I32),
    MF(moe_shared_expert_hidden, MOEI_CKPT_I32),
    MF(moe_router, MOEI_CKPT_I32),
    MF(moe_score_function, MOEI_CKPT_I32),
    MF(moe_renormalize, MOEI_CKPT_U32),
    MF(moe_capacity_factor, MOEI_CKPT_F32),
    MF(moe_jitter, MOEI_CKPT_F32),
    MF(moe_aux_loss_coef, MOEI_CKPT_F32),
    MF(moe_z_loss_coef, MOEI_CKPT_F32),
    MF(moe_bias_update_rate, MOEI_CKPT_F32),
};
#undef MF

/* "type" is stored once, as a word, beside the config. */
#define OF(field, kind) {#field, offsetof(moe_optimizer_config, field), kind}
static const moei_ckpt_field optimizer_fields[] = {
    OF(lr, MOEI_CKPT_F32),
    OF(min_lr, MOEI_CKPT_F32),
    OF(warmup_steps, MOEI_CKPT_I64),
    OF(decay_steps, MOEI_CKPT_I64),
    OF(decay, MOEI_CKPT_I32),
    OF(beta1, MOEI_CKPT_F32),
    OF(beta2, MOEI_CKPT_F32),
    OF(eps, MOEI_CKPT_F32),
    OF(weight_decay, MOEI_CKPT_F32),
    OF(momentum, MOEI_CKPT_F32),
    OF(nesterov, MOEI_CKPT_U32),
    OF(clip_grad_norm, MOEI_CKPT_F32),
    OF(decay_norms_and_biases, MOEI_CKPT_U32),
    OF(decay_embeddings, MOEI_CKPT_U32),
};
#undef OF

const moei_ckpt_field *moei_ckpt_model_fields(size_t *count)
{
    *count = sizeof model_fields / sizeof model_fields[0];
    return model_fields;
}

const moei_ckpt_field *moei_ckpt_optimizer_fields(size_t *count)
{
    *count = sizeof optimizer_fields / sizeof optimizer_fields[0];
    return optimizer_fields;
}

size_t moei_ckpt_kind_size(int32_t kind) { return kind == MOEI_CKPT_I64 ? 8 : 4; }

void moei_ckpt_format_float(float v, char *buf, size_t cap)
{
    /* The shortest of %.6g..%.9g that reads back as v (%.9g always does for a float). */
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, cap, "%.*g", prec, (double)v);
        for (char *p = buf; *p; p++)
            if (*p == ',') *p = '.'; /* a locale with a decimal comma */
        if ((float)strtod(buf, NULL) == v) return;
    }
}

void moei_ckpt_field_format(const moei_ckpt_field *f, const void *base, char *buf, size_t cap)
{
    const char *p = (const char *)base + f->offset;
    switch (f->kind) {
    case MOEI_CKPT_I32: {
        int32_t v;
        memcpy(&v, p, sizeof v);
        snprintf(buf, cap, "%d", (int)v);
        break;
    }
    case MOEI_CKPT_U32: {
        uint32_t v;
        memcpy(&v, p, sizeof v);
        snprintf(buf, cap, "%u", (unsigned)v);
        break;
    }
    case MOEI_CKPT_F32: {
        float v;
        memcpy(&v, p, sizeof v);
        if (isfinite(v))
            moei_ckpt_format_float(v, buf, cap);
        else
            snprintf(buf, cap, "%s", isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf"));
        break;
    }
    default: {
        int64_t v;
        memcpy(&v, p, sizeof v);
        snprintf(buf, cap, "%lld", (long long)v);
        break;
    }
    }
}

/* ---- names ------------------------------------------------------------------------------------ */

int moei_ckpt_valid_name(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        unsigned char c = (unsigned char)s[n];
        if (n >= MOEI_CKPT_NAME_MAX) return 0;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
              c == '-'))
            return 0;
    }
    return n > 0;
}

int moei_ckpt_valid_file(const char *s)
{
    static const char ext[] = ".safetensors";
    size_t n = strlen(s), e = sizeof ext - 1;
    return moei_ckpt_valid_name(s) && s[0] != '.' && n > e && strcmp(s + n - e, ext) == 0;
}

/* Valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
static int utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        unsigned cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i < len) return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += len;
    }
    return 1;
}

int moei_ckpt_valid_text(const char *s)
{
    size_t n = strlen(s);
    return n <= MOEI_CKPT_USER_MAX && utf8_valid((const unsigned char *)s, n);
}

/* ---- parsing ---------------------------------------------------------------------------------- */

typedef struct parser {
    moe_ctx *ctx;
    const char *origin;
} parser;

#define PFAIL(P, ...) moei_fail((P)->ctx, MOE_ERR_FORMAT, __VA_ARGS__)

/* Every key of `obj` is one of `keys` and appears once; every key of `keys` is present. */
static moe_status check_keys(const parser *P, const cJSON *obj, const char *const *keys, size_t nkeys, const char *where)
{
    if (!cJSON_IsObject(obj)) return PFAIL(P, "%.200s: %s is not a JSON object", P->origin, where);
    uint64_t seen = 0; /* nkeys <= 64 */
    for (const cJSON *c = obj->child; c; c = c->next) {
        size_t k = 0;
        while (k < nkeys && strcmp(c->string, keys[k]) != 0) k++;
        if (k == nkeys) return PFAIL(P, "%.200s: %s has an unknown key \"%.64s\"", P->origin, where, c->string);
        if (seen & (1ull << k)) return PFAIL(P, "%.200s: %s has the key \"%s\" twice", P->origin, where, keys[k]);
        seen |= 1ull << k;
    }
    for (size_t k = 0; k < nkeys; k++)
        if (!(seen & (1ull << k))) return PFAIL(P, "%.200s: %s lacks the key \"%s\"", P->origin, where, keys[k]);
    return MOE_OK;
}

/* An integral JSON number in [lo, hi] (both within +-2^53). */
static moe_status get_int(const parser *P, const cJSON *v, double lo, double hi, int64_t *out, const char *where,
                          const char *key)
{
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble != floor(v->valuedouble) ||
        v->valuedouble < lo || v->valuedouble > hi)
        return PFAIL(P, "%.200s: %s\"%s\" must be an integer in [%.0f, %.0f]", P->origin, where, key, lo, hi);
    *out = (int64_t)v->valuedouble;
    return MOE_OK;
}

static moe_status parse_fields(const parser *P, const cJSON *obj, const moei_ckpt_field *fields, size_t n,
                               const char *const *extra, size_t nextra, void *base, const char *where)
{
    const char *keys[64] = {NULL};
    if (n + nextra > 64) return moei_fail(P->ctx, MOE_ERR_INVALID_ARG, "parse_fields: more than 64 keys");
    for (size_t i = 0; i < n; i++) keys[i] = fields[i].name;
    for (size_t i = 0; i < nextra; i++) keys[n + i] = extra[i];
    moe_status st = check_keys(P, obj, keys, n + nextra, where);
    if (st != MOE_OK) return st;
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s.", where);
    for (size_t i = 0; i < n; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, fields[i].name);
        char *dst = (char *)base + fields[i].offset;
        int64_t iv = 0;
        switch (fields[i].kind) {
        case MOEI_CKPT_I32:
            st = get_int(P, v, -2147483648.0, 2147483647.0, &iv, prefix, fields[i].name);
            if (st == MOE_OK) {
                int32_t x = (int32_t)iv;
                memcpy(dst, &x, sizeof x);
            }
            break;
        case MOEI_CKPT_U32:
            st = get_int(P, v, 0.0, 4294967295.0, &iv, prefix, fields[i].name);
            if (st == MOE_OK) {
                uint32_t x = (uint32_t)iv;
                memcpy(dst, &x, sizeof x);
            }
            break;
        case MOEI_CKPT_I64:
            st = get_int(P, v, -MOEI_CKPT_INT_MAX, MOEI_CKPT_INT_MAX, &iv, prefix, fields[i].name);
            if (st == MOE_OK) memcpy(dst, &iv, sizeof iv);
            break;
        default:
            if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || fabs(v->valuedouble) > FLT_MAX)
                return PFAIL(P, "%.200s: %s\"%s\" must be a finite float", P->origin, prefix, fields[i].name);
            {
                float x = (float)v->valuedouble;
                memcpy(dst, &x, sizeof x);
            }
            break;
        }
        if (st != MOE_OK) return st;
    }
    return MOE_OK;
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const moei_ckpt_tensor *)a)->name, ((const moei_ckpt_tensor *)b)->name);
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* Slices must tile [0, shape) exactly: each inside, pairwise disjoint (non-empty ones), volumes
 * summing to numel. */
static moe_status check_tiling(const parser *P, const moei_ckpt_tensor *t)
{
    int64_t sum = 0;
    for (int32_t s = 0; s < t->nshards; s++) {
        const moei_ckpt_shard *a = &t->shards[s];
        int64_t vol = 1;
        for (int32_t d = 0; d < t->ndim; d++) vol *= a->end[d] - a->start[d]; /* each <= numel: no overflow */
        if (vol > t->numel - sum)
            return PFAIL(P, "%.200s: tensor \"%s\": its slices hold more elements than its shape", P->origin, t->name);
        sum += vol;
        if (vol == 0) continue;
        for (int32_t r = 0; r < s; r++) {
            const moei_ckpt_shard *b = &t->shards[r];
            int overlap = 1;
            for (int32_t d = 0; overlap && d < t->ndim; d++)
                overlap = a->start[d] < b->end[d] && b->start[d] < a->end[d] && b->start[d] < b->end[d];
            if (overlap)
                return PFAIL(P, "%.200s: tensor \"%s\": slices %d and %d overlap", P->origin, t->name, (int)r, (int)s);
        }
    }
    if (sum != t->numel)
        return PFAIL(P, "%.200s: tensor \"%s\": its slices cover %lld of its %lld elements", P->origin, t->name,
                     (long long)sum, (long long)t->numel);
    return MOE_OK;
}

static moe_status parse_shard(const parser *P, const cJSON *obj, moei_ckpt_tensor *t, int32_t si)
{
    static const char *const keys[] = {"file", "tensor", "slice", "xxh64"};
    char where[MOEI_CKPT_NAME_MAX + 64];
    snprintf(where, sizeof where, "tensors.\"%s\".shards[%d]", t->name, (int)si);
    moe_status st = check_keys(P, obj, keys, 4, where);
    if (st != MOE_OK) return st;
    moei_ckpt_shard *s = &t->shards[si];
    const cJSON *file = cJSON_GetObjectItemCaseSensitive(obj, "file");
    const cJSON *tensor = cJSON_GetObjectItemCaseSensitive(obj, "tensor");
    const cJSON *slice = cJSON_GetObjectItemCaseSensitive(obj, "slice");
    const cJSON *hash = cJSON_GetObjectItemCaseSensitive(obj, "xxh64");
    if (!cJSON_IsString(file) || !moei_ckpt_valid_file(file->valuestring))
        return PFAIL(P, "%.200s: %s.file must be a file name of [A-Za-z0-9_.-] ending in .safetensors", P->origin, where);
    if (!cJSON_IsString(tensor) || !moei_ckpt_valid_name(tensor->valuestring))
        return PFAIL(P, "%.200s: %s.tensor must be a name of 1..%d characters [A-Za-z0-9_.-]", P->origin, where,
                     MOEI_CKPT_NAME_MAX);
    if (!cJSON_IsString(hash) || strlen(hash->valuestring) != 16)
        return PFAIL(P, "%.200s: %s.xxh64 must be 16 lowercase hex digits", P->origin, where);
    uint64_t h = 0;
    for (int i = 0; i < 16; i++) {
        char c = hash->valuestring[i];
        unsigned v;
        if (c >= '0' && c <= '9') v = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v = (unsigned)(c - 'a' + 10);
        else return PFAIL(P, "%.200s: %s.xxh64 must be 16 lowercase hex digits", P->origin, where);
        h = (h << 4) | v;
    }
    s->xxh64 = h;
    if (!cJSON_IsArray(slice) || cJSON_GetArraySize(slice) != t->ndim)
        return PFAIL(P, "%.200s: %s.slice must be an array of %d [start, end] pairs", P->origin, where, (int)t->ndim);
    int32_t d = 0;
    for (const cJSON *pair = slice->child; pair; pair = pair->next, d++) {
        if (!cJSON_IsArray(pair) || cJSON_GetArraySize(pair) != 2)
            return PFAIL(P, "%.200s: %s.slice[%d] must be a [start, end] pair", P->origin, where, (int)d);
        char key[32];
        snprintf(key, sizeof key, "slice[%d]", (int)d);
        char w2[sizeof where + 2];
        snprintf(w2, sizeof w2, "%s.", where);
        int64_t a = 0, b = 0;
        st = get_int(P, pair->child, 0.0, (double)t->shape[d], &a, w2, key);
        if (st == MOE_OK) st = get_int(P, pair->child->next, (double)a, (double)t->shape[d], &b, w2, key);
        if (st != MOE_OK) return st;
        s->start[d] = a;
        s->end[d] = b;
    }
    s->file = dup_str(file->valuestring);
    s->tensor = dup_str(tensor->valuestring);
    if (!s->file || !s->tensor) return moei_fail(P->ctx, MOE_ERR_OUT_OF_MEMORY, "out of host memory parsing %.200s", P->origin);
    return MOE_OK;
}

static moe_status parse_tensor(const parser *P, const cJSON *obj, moei_ckpt_tensor *t)
{
    static const char *const keys[] = {"dtype", "shape", "shards"};
    if (!moei_ckpt_valid_name(obj->string))
        return PFAIL(P, "%.200s: tensors: \"%.64s\" is not a name of 1..%d characters [A-Za-z0-9_.-]", P->origin,
                     obj->string, MOEI_CKPT_NAME_MAX);
    t->name = dup_str(obj->string);
    if (!t->name) return moei_fail(P->ctx, MOE_ERR_OUT_OF_MEMORY, "out of host memory parsing %.200s", P->origin);
    char where[MOEI_CKPT_NAME_MAX + 32];
    snprintf(where, sizeof where, "tensors.\"%s\"", t->name);
    moe_status st = check_keys(P, obj, keys, 3, where);
    if (st != MOE_OK) return st;
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(obj, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(obj, "shape");
    const cJSON *shards = cJSON_GetObjectItemCaseSensitive(obj, "shards");
    if (!cJSON_IsString(dtype)) return PFAIL(P, "%.200s: %s.dtype is not a string", P->origin, where);
    if (strcmp(dtype->valuestring, "F32") != 0)
        return PFAIL(P, "%.200s: %s.dtype \"%.16s\" is not supported (format version 1 stores F32)", P->origin, where,
                     dtype->valuestring);
    t->dtype = MOE_DTYPE_F32;
    if (!cJSON_IsArray(shape) || cJSON_GetArraySize(shape) > MOE_TENSOR_MAX_DIMS)
        return PFAIL(P, "%.200s: %s.shape must be an array of at most %d sizes", P->origin, where, MOE_TENSOR_MAX_DIMS);
    t->ndim = 0;
    t->numel = 1;
    char w2[sizeof where + 2];
    snprintf(w2, sizeof w2, "%s.", where);
    for (const cJSON *v = shape->child; v; v = v->next) {
        int64_t n = 0;
        char key[16];
        snprintf(key, sizeof key, "shape[%d]", (int)t->ndim);
        st = get_int(P, v, 0.0, MOEI_CKPT_INT_MAX, &n, w2, key);
        if (st != MOE_OK) return st;
        /* bytes (numel * 4) must fit in int64 */
        if (n != 0 && t->numel > (INT64_MAX / 8) / n)
            return PFAIL(P, "%.200s: %s.shape has more elements than a file can hold", P->origin, where);
        t->numel *= n;
        t->shape[t->ndim++] = n;
    }
    int nsh = cJSON_IsArray(shards) ? cJSON_GetArraySize(shards) : 0;
    if (nsh < 1 || nsh > MOEI_CKPT_MAX_SHARDS)
        return PFAIL(P, "%.200s: %s.shards must be an array of 1..%d slices", P->origin, where, MOEI_CKPT_MAX_SHARDS);
    t->shards = calloc((size_t)nsh, sizeof *t->shards);
    if (!t->shards) return moei_fail(P->ctx, MOE_ERR_OUT_OF_MEMORY, "out of host memory parsing %.200s", P->origin);
    t->nshards = nsh;
    int32_t i = 0;
    for (const cJSON *s = shards->child; s; s = s->next, i++) {
        st = parse_shard(P, s, t, i);
        if (st != MOE_OK) return st;
    }
    return check_tiling(P, t);
}

static moe_status parse_version(const parser *P, const cJSON *v, moei_ckpt_index *ix)
{
    int32_t part[3] = {0, 0, 0};
    const char *s = cJSON_IsString(v) ? v->valuestring : NULL;
    int ok = s != NULL;
    for (int i = 0; ok && i < 3; i++) {
        int digits = 0;
        int64_t x = 0;
        while (*s >= '0' && *s <= '9' && digits < 9) {
            x = x * 10 + (*s++ - '0');
            digits++;
        }
        part[i] = (int32_t)x;
        ok = digits > 0 && (i == 2 ? *s == '\0' : *s++ == '.');
    }
    if (!ok) return PFAIL(P, "%.200s: \"library_version\" must be \"MAJOR.MINOR.PATCH\"", P->origin);
    ix->lib_major = part[0];
    ix->lib_minor = part[1];
    ix->lib_patch = part[2];
    if (ix->lib_major != MOE_VERSION_MAJOR)
        return moei_fail(P->ctx, MOE_ERR_UNSUPPORTED,
                         "%.200s: written by libmoe %d.%d.%d; this library (%d.%d.%d) reads major version %d only",
                         P->origin, (int)part[0], (int)part[1], (int)part[2], MOE_VERSION_MAJOR, MOE_VERSION_MINOR,
                         MOE_VERSION_PATCH, MOE_VERSION_MAJOR);
    return MOE_OK;
}

static moe_status parse_root(const parser *P, const cJSON *root, moei_ckpt_index *ix)
{
    static const char *const keys[] = {"format",  "format_version", "library_version", "step",    "data_position", "rng",
                                       "config",  "optimizer",      "mesh",            "tensors", "user"};
    if (!cJSON_IsObject(root)) return PFAIL(P, "%.200s: not a JSON object", P->origin);
    /* The format and its version first: a newer format is reported as such, whatever else changed. */
    const cJSON *format = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!cJSON_IsString(format) || strcmp(format->valuestring, MOEI_CKPT_FORMAT) != 0)
        return PFAIL(P, "%.200s: \"format\" is not \"" MOEI_CKPT_FORMAT "\"", P->origin);
    int64_t iv = 0;
    moe_status st = get_int(P, cJSON_GetObjectItemCaseSensitive(root, "format_version"), 1.0, 2147483647.0, &iv, "",
                            "format_version");
    if (st != MOE_OK) return st;
    if (iv > MOEI_CKPT_FORMAT_VERSION)
        return moei_fail(P->ctx, MOE_ERR_UNSUPPORTED, "%.200s: format_version %lld is newer than this library reads (%d)",
                         P->origin, (long long)iv, MOEI_CKPT_FORMAT_VERSION);
    ix->format_version = (int32_t)iv;
    st = check_keys(P, root, keys, sizeof keys / sizeof keys[0], "the index");
    if (st == MOE_OK) st = parse_version(P, cJSON_GetObjectItemCaseSensitive(root, "library_version"), ix);
    if (st == MOE_OK)
        st = get_int(P, cJSON_GetObjectItemCaseSensitive(root, "step"), 0.0, MOEI_CKPT_INT_MAX, &ix->step, "", "step");
    if (st == MOE_OK)
        st = get_int(P, cJSON_GetObjectItemCaseSensitive(root, "data_position"), -MOEI_CKPT_INT_MAX, MOEI_CKPT_INT_MAX,
                     &ix->data_position, "", "data_position");
    if (st != MOE_OK) return st;

    /* rng: {"seed": "<decimal uint64>", "step": n} (a seed may exceed 2^53, so it is text) */
    static const char *const rng_keys[] = {"seed", "step"};
    const cJSON *rng = cJSON_GetObjectItemCaseSensitive(root, "rng");
    st = check_keys(P, rng, rng_keys, 2, "rng");
    if (st != MOE_OK) return st;
    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(rng, "seed");
    const char *sd = cJSON_IsString(seed) ? seed->valuestring : "";
    size_t sl = strlen(sd);
    int ok = sl >= 1 && sl <= 20 && (sl == 1 || sd[0] != '0');
    uint64_t sv = 0;
    for (size_t i = 0; ok && i < sl; i++) {
        unsigned dg = (unsigned)(sd[i] - '0');
        ok = sd[i] >= '0' && sd[i] <= '9' && sv <= (UINT64_MAX - dg) / 10;
        sv = sv * 10 + dg;
    }
    if (!ok) return PFAIL(P, "%.200s: rng.\"seed\" must be a decimal string of an unsigned 64-bit integer", P->origin);
    ix->rng_seed = sv;
    st = get_int(P, cJSON_GetObjectItemCaseSensitive(rng, "step"), 0.0, MOEI_CKPT_INT_MAX, &iv, "rng.", "step");
    if (st != MOE_OK) return st;
    ix->rng_step = (uint64_t)iv;

    size_t nf = 0;
    const moei_ckpt_field *mf = moei_ckpt_model_fields(&nf);
    moe_model_config_init(&ix->config, sizeof ix->config);
    st = parse_fields(P, cJSON_GetObjectItemCaseSensitive(root, "config"), mf, nf, NULL, 0, &ix->config, "config");
    if (st != MOE_OK) return st;

    const cJSON *opt = cJSON_GetObjectItemCaseSensitive(root, "optimizer");
    if (!cJSON_IsNull(opt)) {
        static const char *const okeys[] = {"type", "step", "skipped_total", "config"};
        st = check_keys(P, opt, okeys, 4, "optimizer");
        if (st != MOE_OK) return st;
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(opt, "type");
        if (cJSON_IsString(type) && strcmp(type->valuestring, "adamw") == 0) ix->opt_type = MOE_OPTIMIZER_ADAMW;
        else if (cJSON_IsString(type) && strcmp(type->valuestring, "sgd") == 0) ix->opt_type = MOE_OPTIMIZER_SGD;
        else return PFAIL(P, "%.200s: optimizer.\"type\" must be \"adamw\" or \"sgd\"", P->origin);
        st = get_int(P, cJSON_GetObjectItemCaseSensitive(opt, "step"), 0.0, MOEI_CKPT_INT_MAX, &ix->opt_step,
                     "optimizer.", "step");
        if (st == MOE_OK)
            st = get_int(P, cJSON_GetObjectItemCaseSensitive(opt, "skipped_total"), 0.0, MOEI_CKPT_INT_MAX,
                         &ix->opt_skipped, "optimizer.", "skipped_total");
        if (st != MOE_OK) return st;
        moe_optimizer_config_init(&ix->opt_config, sizeof ix->opt_config);
        const moei_ckpt_field *of = moei_ckpt_optimizer_fields(&nf);
        st = parse_fields(P, cJSON_GetObjectItemCaseSensitive(opt, "config"), of, nf, NULL, 0, &ix->opt_config,
                          "optimizer.config");
        if (st != MOE_OK) return st;
        ix->opt_config.type = ix->opt_type;
        ix->has_optimizer = 1;
    }

    const cJSON *mesh = cJSON_GetObjectItemCaseSensitive(root, "mesh");
    st = check_keys(P, mesh, moei_ckpt_mesh_keys, MOEI_CKPT_MESH_COUNT, "mesh");
    for (int i = 0; st == MOE_OK && i < MOEI_CKPT_MESH_COUNT; i++) {
        st = get_int(P, cJSON_GetObjectItemCaseSensitive(mesh, moei_ckpt_mesh_keys[i]), 1.0, 2147483647.0, &iv, "mesh.",
                     moei_ckpt_mesh_keys[i]);
        ix->mesh[i] = (int32_t)iv;
    }
    if (st != MOE_OK) return st;

    const cJSON *user = cJSON_GetObjectItemCaseSensitive(root, "user");
    if (!cJSON_IsNull(user)) {
        if (!cJSON_IsString(user)) return PFAIL(P, "%.200s: \"user\" must be a string or null", P->origin);
        size_t n = strlen(user->valuestring);
        if (n > MOEI_CKPT_USER_MAX || !utf8_valid((const unsigned char *)user->valuestring, n))
            return PFAIL(P, "%.200s: \"user\" must be UTF-8 text of at most %u bytes", P->origin, MOEI_CKPT_USER_MAX);
        ix->user = dup_str(user->valuestring);
        if (!ix->user) return moei_fail(P->ctx, MOE_ERR_OUT_OF_MEMORY, "out of host memory parsing %.200s", P->origin);
    }

    const cJSON *tensors = cJSON_GetObjectItemCaseSensitive(root, "tensors");
    if (!cJSON_IsObject(tensors)) return PFAIL(P, "%.200s: \"tensors\" is not a JSON object", P->origin);
    int nt = cJSON_GetArraySize(tensors);
    if (nt > MOEI_CKPT_MAX_TENSORS) return PFAIL(P, "%.200s: more than %d tensors", P->origin, MOEI_CKPT_MAX_TENSORS);
    if (nt > 0) {
        ix->tensors = calloc((size_t)nt, sizeof *ix->tensors);
        if (!ix->tensors) return moei_fail(P->ctx, MOE_ERR_OUT_OF_MEMORY, "out of host memory parsing %.200s", P->origin);
    }
    for (const cJSON *t = tensors->child; t; t = t->next) {
        st = parse_tensor(P, t, &ix->tensors[ix->ntensors++]);
        if (st != MOE_OK) return st;
    }
    if (ix->ntensors > 1) /* qsort wants a valid array even for 0 elements */
        qsort(ix->tensors, (size_t)ix->ntensors, sizeof *ix->tensors, cmp_tensor_name);
    for (int64_t i = 1; i < ix->ntensors; i++)
        if (strcmp(ix->tensors[i - 1].name, ix->tensors[i].name) == 0)
            return PFAIL(P, "%.200s: tensors: \"%s\" appears twice", P->origin, ix->tensors[i].name);
    return MOE_OK;
}

void moei_ckpt_index_free(moei_ckpt_index *ix)
{
    if (!ix) return;
    for (int64_t i = 0; i < ix->ntensors; i++) {
        moei_ckpt_tensor *t = &ix->tensors[i];
        for (int32_t s = 0; s < t->nshards; s++) {
            free(t->shards[s].file);
            free(t->shards[s].tensor);
        }
        free(t->shards);
        free(t->name);
    }
    free(ix->tensors);
    free(ix->user);
    free(ix);
}

moe_status moei_ckpt_index_parse(moe_ctx *ctx, const char *text, size_t len, const char *origin, moei_ckpt_index **out)
{
    parser P = {ctx, origin ? origin : "(memory)"};
    if (!text && len > 0) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "moei_ckpt_index_parse: text is NULL");
    if (len > MOEI_CKPT_INDEX_MAX)
        return PFAIL(&P, "%.200s: larger than %llu bytes", P.origin, (unsigned long long)MOEI_CKPT_INDEX_MAX);
    if (len > 0 && memchr(text, '\0', len)) return PFAIL(&P, "%.200s: contains a NUL byte", P.origin);
    /* A NUL-terminated copy lets cJSON refuse anything after the JSON value. */
    char *copy = malloc(len + 1);
    if (!copy) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "out of host memory parsing %.200s", P.origin);
    if (len > 0) memcpy(copy, text, len);
    copy[len] = '\0';
    cJSON *root = len > 0 ? cJSON_ParseWithLengthOpts(copy, len + 1, NULL, 1) : NULL;
    free(copy);
    if (!root) return PFAIL(&P, "%.200s: not valid JSON (truncated, malformed or followed by other text)", P.origin);
    moei_ckpt_index *ix = calloc(1, sizeof *ix);
    if (!ix) {
        cJSON_Delete(root);
        return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "out of host memory parsing %.200s", P.origin);
    }
    moe_status st = parse_root(&P, root, ix);
    cJSON_Delete(root);
    if (st != MOE_OK) {
        moei_ckpt_index_free(ix);
        return st;
    }
    *out = ix;
    return MOE_OK;
}

const moei_ckpt_tensor *moei_ckpt_index_find(const moei_ckpt_index *ix, const char *name)
{
    int64_t lo = 0, hi = ix->ntensors;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(ix->tensors[mid].name, name);
        if (c == 0) return &ix->tensors[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* ---- writing ---------------------------------------------------------------------------------- */

static cJSON *raw_int(int64_t v)
{
    char b[32];
    snprintf(b, sizeof b, "%lld", (long long)v);
    return cJSON_CreateRaw(b);
}

/* Add an item, keeping track of allocation failures in *ok. */
static void add(cJSON *obj, const char *key, cJSON *item, int *ok)
{
    if (!item || !cJSON_AddItemToObject(obj, key, item)) {
        cJSON_Delete(item);
        *ok = 0;
    }
}

static void push(cJSON *arr, cJSON *item, int *ok)
{
    if (!item || !cJSON_AddItemToArray(arr, item)) {
        cJSON_Delete(item);
        *ok = 0;
    }
}

static cJSON *fields_json(const moei_ckpt_field *fields, size_t n, const void *base, int *ok)
{
    cJSON *obj = cJSON_CreateObject();
    if (!obj) {
        *ok = 0;
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        char b[48];
        moei_ckpt_field_format(&fields[i], base, b, sizeof b);
        add(obj, fields[i].name, cJSON_CreateRaw(b), ok);
    }
    return obj;
}

/* Whether the parser will read every field back: finite floats, 64-bit integers within 2^53. */
static int fields_writable(const moei_ckpt_field *fields, size_t n, const void *base)
{
    for (size_t i = 0; i < n; i++) {
        const char *p = (const char *)base + fields[i].offset;
        if (fields[i].kind == MOEI_CKPT_F32) {
            float v;
            memcpy(&v, p, sizeof v);
            if (!isfinite(v)) return 0;
        } else if (fields[i].kind == MOEI_CKPT_I64) {
            int64_t v;
            memcpy(&v, p, sizeof v);
            if (v < -((int64_t)1 << 53) || v > ((int64_t)1 << 53)) return 0;
        }
    }
    return 1;
}

moe_status moei_ckpt_index_write(moe_ctx *ctx, const moei_ckpt_index *ix, char **out, size_t *len)
{
    static const char *fn = "moei_ckpt_index_write";
    size_t nmf = 0, nof = 0;
    const moei_ckpt_field *mf = moei_ckpt_model_fields(&nmf), *of = moei_ckpt_optimizer_fields(&nof);
    const int64_t limit = (int64_t)1 << 53;
    if (ix->step < 0 || ix->step > limit || ix->data_position < -limit || ix->data_position > limit ||
        ix->rng_step > (uint64_t)limit || ix->opt_step < 0 || ix->opt_step > limit || ix->opt_skipped < 0 ||
        ix->opt_skipped > limit)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: a step, counter or data_position is outside [-2^53, 2^53]", fn);
    if (!fields_writable(mf, nmf, &ix->config) || (ix->has_optimizer && !fields_writable(of, nof, &ix->opt_config)))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: a config field is not finite or beyond 2^53", fn);
    if (ix->user && (strlen(ix->user) > MOEI_CKPT_USER_MAX ||
                     !utf8_valid((const unsigned char *)ix->user, strlen(ix->user))))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: the trainer text is not UTF-8 of at most %u bytes", fn,
                         MOEI_CKPT_USER_MAX);
    int ok = 1;
    cJSON *root = cJSON_CreateObject();
    if (!root) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    add(root, "format", cJSON_CreateString(MOEI_CKPT_FORMAT), &ok);
    add(root, "format_version", raw_int(MOEI_CKPT_FORMAT_VERSION), &ok);
    add(root, "library_version", cJSON_CreateString(moe_version(NULL, NULL, NULL)), &ok);
    add(root, "step", raw_int(ix->step), &ok);
    add(root, "data_position", raw_int(ix->data_position), &ok);
    cJSON *rng = cJSON_CreateObject();
    if (rng) {
        char b[32];
        snprintf(b, sizeof b, "%llu", (unsigned long long)ix->rng_seed);
        add(rng, "seed", cJSON_CreateString(b), &ok);
        add(rng, "step", raw_int((int64_t)ix->rng_step), &ok);
    }
    add(root, "rng", rng, &ok);
    add(root, "config", fields_json(mf, nmf, &ix->config, &ok), &ok);
    if (ix->has_optimizer) {
        cJSON *o = cJSON_CreateObject();
        if (o) {
            add(o, "type", cJSON_CreateString(ix->opt_type == MOE_OPTIMIZER_SGD ? "sgd" : "adamw"), &ok);
            add(o, "step", raw_int(ix->opt_step), &ok);
            add(o, "skipped_total", raw_int(ix->opt_skipped), &ok);
            add(o, "config", fields_json(of, nof, &ix->opt_config, &ok), &ok);
        }
        add(root, "optimizer", o, &ok);
    } else {
        add(root, "optimizer", cJSON_CreateNull(), &ok);
    }
    cJSON *mesh = cJSON_CreateObject();
    for (int i = 0; mesh && i < MOEI_CKPT_MESH_COUNT; i++) add(mesh, moei_ckpt_mesh_keys[i], raw_int(ix->mesh[i]), &ok);
    add(root, "mesh", mesh, &ok);
    cJSON *tensors = cJSON_CreateObject();
    for (int64_t i = 0; tensors && ok && i < ix->ntensors; i++) {
        const moei_ckpt_tensor *t = &ix->tensors[i];
        cJSON *te = cJSON_CreateObject(), *shape = cJSON_CreateArray(), *shards = cJSON_CreateArray();
        if (te) add(te, "dtype", cJSON_CreateString("F32"), &ok);
        for (int32_t d = 0; shape && d < t->ndim; d++) push(shape, raw_int(t->shape[d]), &ok);
        if (te) add(te, "shape", shape, &ok);
        else cJSON_Delete(shape);
        for (int32_t s = 0; shards && s < t->nshards; s++) {
            const moei_ckpt_shard *sh = &t->shards[s];
            cJSON *se = cJSON_CreateObject(), *slice = cJSON_CreateArray();
            if (se) {
                add(se, "file", cJSON_CreateString(sh->file), &ok);
                add(se, "tensor", cJSON_CreateString(sh->tensor), &ok);
            }
            for (int32_t d = 0; slice && d < t->ndim; d++) {
                cJSON *pair = cJSON_CreateArray();
                if (pair) {
                    push(pair, raw_int(sh->start[d]), &ok);
                    push(pair, raw_int(sh->end[d]), &ok);
                }
                push(slice, pair, &ok);
            }
            if (se) {
                add(se, "slice", slice, &ok);
                char h[20];
                snprintf(h, sizeof h, "%016llx", (unsigned long long)sh->xxh64);
                add(se, "xxh64", cJSON_CreateString(h), &ok);
            } else {
                cJSON_Delete(slice);
            }
            push(shards, se, &ok);
        }
        if (te) add(te, "shards", shards, &ok);
        else cJSON_Delete(shards);
        add(tensors, t->name, te, &ok);
    }
    add(root, "tensors", tensors, &ok);
    add(root, "user", ix->user ? cJSON_CreateString(ix->user) : cJSON_CreateNull(), &ok);
    char *text = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    *out = text;
    *len = strlen(text);
    return MOE_OK;
}

/* ---- slice geometry --------------------------------------------------------------------------- */

/* The window [a, b) of the sub-box of dimensions d.. whose outer indices are fixed at prefix[0..d)
 * and whose first element has index `base` in the whole box: a partial head (recursing one
 * dimension in), a run of whole index blocks of dimension d, then a partial tail. */
static void window_rec(int32_t ndim, const int64_t *shape, int32_t d, int64_t *prefix, int64_t a, int64_t b,
                       int64_t base, moei_ckpt_box *out, int32_t *n)
{
    if (a >= b) return;
    int64_t inner = 1;
    for (int32_t k = d + 1; k < ndim; k++) inner *= shape[k];
    moei_ckpt_box *bx;
    if (d == ndim - 1 || inner == 0) {
        bx = &out[(*n)++];
        for (int32_t k = 0; k < d; k++) {
            bx->start[k] = prefix[k];
            bx->end[k] = prefix[k] + 1;
        }
        bx->start[d] = a;
        bx->end[d] = b;
        for (int32_t k = d + 1; k < ndim; k++) {
            bx->start[k] = 0;
            bx->end[k] = shape[k];
        }
        bx->first = base + a;
        return;
    }
    int64_t i = a / inner;
    if (a % inner != 0) {
        int64_t hb = b < (i + 1) * inner ? b : (i + 1) * inner;
        prefix[d] = i;
        window_rec(ndim, shape, d + 1, prefix, a - i * inner, hb - i * inner, base + i * inner, out, n);
        a = hb;
        i++;
    }
    int64_t j = b / inner;
    if (a < b && j > i) {
        bx = &out[(*n)++];
        for (int32_t k = 0; k < d; k++) {
            bx->start[k] = prefix[k];
            bx->end[k] = prefix[k] + 1;
        }
        bx->start[d] = i;
        bx->end[d] = j;
        for (int32_t k = d + 1; k < ndim; k++) {
            bx->start[k] = 0;
            bx->end[k] = shape[k];
        }
        bx->first = base + i * inner;
        a = j * inner;
    }
    if (a < b) {
        prefix[d] = j;
        window_rec(ndim, shape, d + 1, prefix, 0, b - j * inner, base + j * inner, out, n);
    }
}

int32_t moei_ckpt_window_boxes(int32_t ndim, const int64_t *shape, int64_t first, int64_t count, moei_ckpt_box *out)
{
    if (count <= 0) return 0;
    int32_t n = 0;
    if (ndim == 0) {
        out[0].first = 0;
        return 1;
    }
    int64_t prefix[MOE_TENSOR_MAX_DIMS] = {0};
    window_rec(ndim, shape, 0, prefix, first, first + count, 0, out, &n);
    return n;
}

int64_t moei_ckpt_copy_window(int32_t ndim, const int64_t *dst_start, const int64_t *dst_shape, int64_t first,
                              int64_t count, float *dst, const int64_t *src_start, const int64_t *src_end,
                              const void *src)
{
    if (count <= 0) return 0;
    if (ndim == 0) {
        if (dst) memcpy(dst, src, sizeof(float));
        return 1;
    }
    int64_t lo[MOE_TENSOR_MAX_DIMS] = {0}, hi[MOE_TENSOR_MAX_DIMS] = {0}, dstride[MOE_TENSOR_MAX_DIMS],
            sstride[MOE_TENSOR_MAX_DIMS];
    if (ndim > MOE_TENSOR_MAX_DIMS) return 0;
    for (int32_t d = 0; d < ndim; d++) {
        int64_t de = dst_start[d] + dst_shape[d];
        lo[d] = dst_start[d] > src_start[d] ? dst_start[d] : src_start[d];
        hi[d] = de < src_end[d] ? de : src_end[d];
        if (lo[d] >= hi[d]) return 0;
    }
    dstride[ndim - 1] = sstride[ndim - 1] = 1;
    for (int32_t d = ndim - 2; d >= 0; d--) {
        dstride[d] = dstride[d + 1] * dst_shape[d + 1];
        sstride[d] = sstride[d + 1] * (src_end[d + 1] - src_start[d + 1]);
    }
    const int32_t last = ndim - 1;
    const int64_t len = hi[last] - lo[last], end = first + count;
    int64_t idx[MOE_TENSOR_MAX_DIMS];
    for (int32_t d = 0; d < ndim; d++) idx[d] = lo[d];
    int64_t got = 0;
    const unsigned char *s = src;
    for (;;) {
        /* one row of the intersection: dimension `last` runs over [lo, hi) */
        int64_t df = 0, sf = 0;
        for (int32_t d = 0; d < ndim; d++) {
            df += (idx[d] - dst_start[d]) * dstride[d];
            sf += (idx[d] - src_start[d]) * sstride[d];
        }
        if (df >= end) break; /* rows come in increasing order of df */
        int64_t a = df > first ? df : first, b = df + len < end ? df + len : end;
        if (a < b) {
            if (dst) memcpy(dst + (a - first), s + (size_t)(sf + (a - df)) * sizeof(float), (size_t)(b - a) * sizeof(float));
            got += b - a;
        }
        int32_t d = last - 1;
        for (; d >= 0; d--) {
            if (++idx[d] < hi[d]) break;
            idx[d] = lo[d];
        }
        if (d < 0) break;
    }
    return got;
}

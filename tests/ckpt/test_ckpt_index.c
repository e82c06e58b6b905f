/* The checkpoint index parser and writer, from memory: a written index parses back to the same
 * values; every malformed variant (wrong types, ranges, names, versions, duplicate or unknown keys,
 * slices that overlap, miss elements or leave the shape) is refused with MOE_ERR_FORMAT (or
 * MOE_ERR_UNSUPPORTED for newer versions) and a message naming the key; the config field tables
 * cover the public config structs; floats are written as the shortest text that reads back exactly.
 * Slice geometry against brute force: every window of a box cut into at most 2n - 1 contiguous
 * boxes that cover it exactly, and copies from any slice into any window element by element. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <float.h>
#include <math.h>

#include "ckpt_util.h"
#include "io/checkpoint_index.h"

/* ---- a base index: two tensors, one of them in a 2 x 2 grid of slices over two files ----------- */

static moei_ckpt_shard g_sh_a[1], g_sh_b[4];
static moei_ckpt_tensor g_t[2];

static void base_index(moei_ckpt_index *ix)
{
    memset(ix, 0, sizeof *ix);
    ix->step = 42;
    ix->data_position = -7;
    ix->rng_seed = 18446744073709551615ull; /* above 2^53: stored as text */
    ix->rng_step = 99;
    moe_model_config_init(&ix->config, sizeof ix->config);
    ix->config.norm_eps = 1e-5f;
    ix->config.moe_jitter = 0.01f;
    ix->has_optimizer = 1;
    ix->opt_type = MOE_OPTIMIZER_ADAMW;
    ix->opt_step = 41;
    ix->opt_skipped = 1;
    moe_optimizer_config_init(&ix->opt_config, sizeof ix->opt_config);
    ix->opt_config.warmup_steps = 123456789012ll;
    for (int i = 0; i < MOEI_CKPT_MESH_COUNT; i++) ix->mesh[i] = 1;
    ix->user = (char *)"{\"lr\": 0.1, \"note\": \"caf\xc3\xa9\\n\"}";

    memset(g_sh_a, 0, sizeof g_sh_a);
    memset(g_sh_b, 0, sizeof g_sh_b);
    g_sh_a[0].file = (char *)"shard-00000-of-00002.safetensors";
    g_sh_a[0].tensor = (char *)"embed.weight";
    g_sh_a[0].end[0] = 5;
    g_sh_a[0].end[1] = 3;
    g_sh_a[0].xxh64 = 0x0123456789abcdefull;
    /* [4, 6] as rows {0..2, 2..4} x cols {0..4, 4..6} */
    for (int r = 0; r < 2; r++)
        for (int c = 0; c < 2; c++) {
            moei_ckpt_shard *s = &g_sh_b[r * 2 + c];
            s->file = (char *)(c ? "shard-00001-of-00002.safetensors" : "shard-00000-of-00002.safetensors");
            s->tensor = (char *)(r ? "w.r1" : "w.r0");
            s->start[0] = r * 2;
            s->end[0] = r * 2 + 2;
            s->start[1] = c * 4;
            s->end[1] = c ? 6 : 4;
            s->xxh64 = 0xfedcba9876543210ull + (uint64_t)(r * 2 + c);
        }
    memset(g_t, 0, sizeof g_t);
    g_t[0].name = (char *)"layers.0.attn.wq";
    g_t[0].dtype = MOE_DTYPE_F32;
    g_t[0].ndim = 2;
    g_t[0].shape[0] = 4;
    g_t[0].shape[1] = 6;
    g_t[0].numel = 24;
    g_t[0].nshards = 4;
    g_t[0].shards = g_sh_b;
    g_t[1].name = (char *)"embed.weight";
    g_t[1].dtype = MOE_DTYPE_F32;
    g_t[1].ndim = 2;
    g_t[1].shape[0] = 5;
    g_t[1].shape[1] = 3;
    g_t[1].numel = 15;
    g_t[1].nshards = 1;
    g_t[1].shards = g_sh_a;
    ix->ntensors = 2;
    ix->tensors = g_t;
}

static char *base_text(void)
{
    moei_ckpt_index ix;
    base_index(&ix);
    char *text = NULL;
    size_t len = 0;
    CK_ASSERT_OK(moei_ckpt_index_write(NULL, &ix, &text, &len));
    assert_int_equal(len, strlen(text));
    return text;
}

static moe_status parse_text(const char *text, moei_ckpt_index **out)
{
    return moei_ckpt_index_parse(NULL, text, strlen(text), "index.json", out);
}

static void test_round_trip(void **state)
{
    (void)state;
    char *text = base_text();
    /* What the writer promised, read by cJSON rather than by our parser. */
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "format")->valuestring, "libmoe-checkpoint");
    assert_int_equal((int)cJSON_GetObjectItem(j, "format_version")->valuedouble, 1);
    assert_string_equal(cJSON_GetObjectItem(j, "library_version")->valuestring, moe_version(NULL, NULL, NULL));
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "rng"), "seed")->valuestring, "18446744073709551615");
    cJSON *wq = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "tensors"), "layers.0.attn.wq");
    assert_string_equal(cJSON_GetObjectItem(wq, "dtype")->valuestring, "F32");
    cJSON *sh = cJSON_GetArrayItem(cJSON_GetObjectItem(wq, "shards"), 3);
    assert_string_equal(cJSON_GetObjectItem(sh, "xxh64")->valuestring, "fedcba9876543213");
    assert_int_equal((int)cJSON_GetArrayItem(cJSON_GetArrayItem(cJSON_GetObjectItem(sh, "slice"), 1), 0)->valuedouble, 4);
    /* Floats appear as their shortest exact text. */
    cJSON *cfg = cJSON_GetObjectItem(j, "config");
    assert_true(strstr(text, "\"norm_eps\":\t1e-05") != NULL || strstr(text, "\"norm_eps\": 1e-05") != NULL);
    assert_true((float)cJSON_GetObjectItem(cfg, "moe_jitter")->valuedouble == 0.01f);
    cJSON_Delete(j);

    moei_ckpt_index *ix = NULL;
    CK_ASSERT_OK(parse_text(text, &ix));
    moei_ckpt_index ref;
    base_index(&ref);
    assert_int_equal(ix->format_version, 1);
    assert_int_equal(ix->lib_major, MOE_VERSION_MAJOR);
    assert_int_equal(ix->step, 42);
    assert_int_equal(ix->data_position, -7);
    assert_true(ix->rng_seed == ref.rng_seed);
    assert_int_equal(ix->rng_step, 99);
    assert_memory_equal(&ix->config, &ref.config, sizeof ref.config);
    assert_true(ix->has_optimizer);
    assert_int_equal(ix->opt_type, MOE_OPTIMIZER_ADAMW);
    assert_int_equal(ix->opt_step, 41);
    assert_int_equal(ix->opt_skipped, 1);
    assert_memory_equal(&ix->opt_config, &ref.opt_config, sizeof ref.opt_config);
    assert_string_equal(ix->user, ref.user);
    assert_int_equal(ix->ntensors, 2);
    /* sorted by name */
    assert_string_equal(ix->tensors[0].name, "embed.weight");
    const moei_ckpt_tensor *t = moei_ckpt_index_find(ix, "layers.0.attn.wq");
    assert_non_null(t);
    assert_null(moei_ckpt_index_find(ix, "layers.0.attn.wk"));
    assert_int_equal(t->nshards, 4);
    assert_int_equal(t->numel, 24);
    for (int s = 0; s < 4; s++) {
        assert_string_equal(t->shards[s].file, g_sh_b[s].file);
        assert_string_equal(t->shards[s].tensor, g_sh_b[s].tensor);
        assert_true(t->shards[s].xxh64 == g_sh_b[s].xxh64);
        for (int d = 0; d < 2; d++) {
            assert_int_equal(t->shards[s].start[d], g_sh_b[s].start[d]);
            assert_int_equal(t->shards[s].end[d], g_sh_b[s].end[d]);
        }
    }
    moei_ckpt_index_free(ix);

    /* Without optimizer and trainer text: both null. */
    base_index(&ref);
    ref.has_optimizer = 0;
    ref.user = NULL;
    char *t2 = NULL;
    size_t l2 = 0;
    CK_ASSERT_OK(moei_ckpt_index_write(NULL, &ref, &t2, &l2));
    CK_ASSERT_OK(parse_text(t2, &ix));
    assert_false(ix->has_optimizer);
    assert_null(ix->user);
    moei_ckpt_index_free(ix);
    free(t2);
    free(text);
}

/* ---- malformed variants -------------------------------------------------------------------------- */

typedef void (*mutate_fn)(cJSON *root);

static cJSON *tensors_of(cJSON *r) { return cJSON_GetObjectItem(r, "tensors"); }
static cJSON *wq_of(cJSON *r) { return cJSON_GetObjectItem(tensors_of(r), "layers.0.attn.wq"); }
static cJSON *shard_of(cJSON *r, int i) { return cJSON_GetArrayItem(cJSON_GetObjectItem(wq_of(r), "shards"), i); }
static void set(cJSON *obj, const char *key, cJSON *v) { cJSON_ReplaceItemInObject(obj, key, v); }

static void m_format(cJSON *r) { set(r, "format", cJSON_CreateString("other")); }
static void m_version2(cJSON *r) { set(r, "format_version", cJSON_CreateNumber(2)); }
static void m_version0(cJSON *r) { set(r, "format_version", cJSON_CreateNumber(0)); }
static void m_version_str(cJSON *r) { set(r, "format_version", cJSON_CreateString("1")); }
static void m_libmajor(cJSON *r) { set(r, "library_version", cJSON_CreateString("7.0.0")); }
static void m_libbad(cJSON *r) { set(r, "library_version", cJSON_CreateString("0.1")); }
static void m_no_step(cJSON *r) { cJSON_DeleteItemFromObject(r, "step"); }
static void m_step_neg(cJSON *r) { set(r, "step", cJSON_CreateNumber(-1)); }
static void m_step_frac(cJSON *r) { set(r, "step", cJSON_CreateNumber(1.5)); }
static void m_step_huge(cJSON *r) { set(r, "step", cJSON_CreateNumber(1e18)); }
static void m_unknown_top(cJSON *r) { cJSON_AddNumberToObject(r, "extra", 1); }
static void m_dup_top(cJSON *r) { cJSON_AddItemToObject(r, "step", cJSON_CreateNumber(3)); }
static void m_seed_num(cJSON *r) { set(cJSON_GetObjectItem(r, "rng"), "seed", cJSON_CreateNumber(5)); }
static void m_seed_over(cJSON *r) { set(cJSON_GetObjectItem(r, "rng"), "seed", cJSON_CreateString("18446744073709551616")); }
static void m_seed_zero(cJSON *r) { set(cJSON_GetObjectItem(r, "rng"), "seed", cJSON_CreateString("01")); }
static void m_rng_missing(cJSON *r) { cJSON_DeleteItemFromObject(cJSON_GetObjectItem(r, "rng"), "step"); }
static void m_cfg_missing(cJSON *r) { cJSON_DeleteItemFromObject(cJSON_GetObjectItem(r, "config"), "d_model"); }
static void m_cfg_type(cJSON *r) { set(cJSON_GetObjectItem(r, "config"), "d_model", cJSON_CreateString("8")); }
static void m_cfg_range(cJSON *r) { set(cJSON_GetObjectItem(r, "config"), "num_layers", cJSON_CreateNumber(3e9)); }
static void m_cfg_float(cJSON *r) { set(cJSON_GetObjectItem(r, "config"), "norm_eps", cJSON_CreateNumber(1e39)); }
static void m_cfg_u32(cJSON *r) { set(cJSON_GetObjectItem(r, "config"), "tie_embeddings", cJSON_CreateNumber(-1)); }
static void m_cfg_unknown(cJSON *r) { cJSON_AddNumberToObject(cJSON_GetObjectItem(r, "config"), "d_modle", 8); }
static void m_cfg_array(cJSON *r) { set(r, "config", cJSON_CreateArray()); }
static void m_opt_type(cJSON *r) { set(cJSON_GetObjectItem(r, "optimizer"), "type", cJSON_CreateString("adam")); }
static void m_opt_lr(cJSON *r)
{
    cJSON_DeleteItemFromObject(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "optimizer"), "config"), "lr");
}
static void m_opt_str(cJSON *r) { set(r, "optimizer", cJSON_CreateString("adamw")); }
static void m_mesh_zero(cJSON *r) { set(cJSON_GetObjectItem(r, "mesh"), "dp", cJSON_CreateNumber(0)); }
static void m_user_num(cJSON *r) { set(r, "user", cJSON_CreateNumber(5)); }
static void m_tensors_arr(cJSON *r) { set(r, "tensors", cJSON_CreateArray()); }
static void m_name_slash(cJSON *r)
{
    cJSON *t = cJSON_DetachItemFromObject(tensors_of(r), "embed.weight");
    cJSON_AddItemToObject(tensors_of(r), "../embed", t);
}
static void m_name_dup(cJSON *r)
{
    cJSON *t = cJSON_Duplicate(cJSON_GetObjectItem(tensors_of(r), "embed.weight"), 1);
    cJSON_AddItemToObject(tensors_of(r), "embed.weight", t);
}
static void m_dtype(cJSON *r) { set(wq_of(r), "dtype", cJSON_CreateString("BF16")); }
static void m_shape_many(cJSON *r)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < 9; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(1));
    set(wq_of(r), "shape", a);
}
static void m_shape_neg(cJSON *r) { cJSON_ReplaceItemInArray(cJSON_GetObjectItem(wq_of(r), "shape"), 0, cJSON_CreateNumber(-4)); }
static void m_shape_overflow(cJSON *r)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < 4; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(4e15));
    set(wq_of(r), "shape", a);
}
static void m_shards_empty(cJSON *r) { set(wq_of(r), "shards", cJSON_CreateArray()); }
static void m_file_dots(cJSON *r) { set(shard_of(r, 0), "file", cJSON_CreateString("../x.safetensors")); }
static void m_file_hidden(cJSON *r) { set(shard_of(r, 0), "file", cJSON_CreateString(".x.safetensors")); }
static void m_file_ext(cJSON *r) { set(shard_of(r, 0), "file", cJSON_CreateString("x.bin")); }
static void m_ftensor(cJSON *r) { set(shard_of(r, 0), "tensor", cJSON_CreateString("a b")); }
static void m_hash_short(cJSON *r) { set(shard_of(r, 0), "xxh64", cJSON_CreateString("0123456789abcde")); }
static void m_hash_upper(cJSON *r) { set(shard_of(r, 0), "xxh64", cJSON_CreateString("0123456789ABCDEF")); }
static void m_slice_count(cJSON *r) { cJSON_DeleteItemFromArray(cJSON_GetObjectItem(shard_of(r, 0), "slice"), 1); }
static void m_slice_out(cJSON *r)
{
    cJSON *pair = cJSON_GetArrayItem(cJSON_GetObjectItem(shard_of(r, 3), "slice"), 1);
    cJSON_ReplaceItemInArray(pair, 1, cJSON_CreateNumber(7));
}
static void m_slice_rev(cJSON *r)
{
    cJSON *pair = cJSON_GetArrayItem(cJSON_GetObjectItem(shard_of(r, 0), "slice"), 0);
    cJSON_ReplaceItemInArray(pair, 0, cJSON_CreateNumber(3));
}
static void m_overlap(cJSON *r)
{
    /* shard 1 (rows 0..2, cols 4..6) becomes cols 3..5: overlaps shard 0, leaves col 5 of rows 0..2 */
    cJSON *pair = cJSON_GetArrayItem(cJSON_GetObjectItem(shard_of(r, 1), "slice"), 1);
    cJSON_ReplaceItemInArray(pair, 0, cJSON_CreateNumber(3));
    cJSON_ReplaceItemInArray(pair, 1, cJSON_CreateNumber(5));
}
static void m_gap(cJSON *r) { cJSON_DeleteItemFromArray(cJSON_GetObjectItem(wq_of(r), "shards"), 2); }
static void m_dup_shard(cJSON *r)
{
    cJSON *sh = cJSON_GetObjectItem(wq_of(r), "shards");
    cJSON_ReplaceItemInArray(sh, 1, cJSON_Duplicate(cJSON_GetArrayItem(sh, 0), 1));
}
static void m_shard_key(cJSON *r) { cJSON_AddStringToObject(shard_of(r, 0), "offset", "0"); }

typedef struct bad_case {
    const char *what;
    mutate_fn fn;
    moe_status code;
    const char *needle;
} bad_case;

static const bad_case bad_cases[] = {
    {"format", m_format, MOE_ERR_FORMAT, "\"format\""},
    {"format_version 2", m_version2, MOE_ERR_UNSUPPORTED, "format_version 2"},
    {"format_version 0", m_version0, MOE_ERR_FORMAT, "format_version"},
    {"format_version text", m_version_str, MOE_ERR_FORMAT, "format_version"},
    {"library major", m_libmajor, MOE_ERR_UNSUPPORTED, "7.0.0"},
    {"library_version form", m_libbad, MOE_ERR_FORMAT, "library_version"},
    {"no step", m_no_step, MOE_ERR_FORMAT, "\"step\""},
    {"step < 0", m_step_neg, MOE_ERR_FORMAT, "\"step\""},
    {"step fraction", m_step_frac, MOE_ERR_FORMAT, "\"step\""},
    {"step > 2^53", m_step_huge, MOE_ERR_FORMAT, "\"step\""},
    {"unknown key", m_unknown_top, MOE_ERR_FORMAT, "unknown key \"extra\""},
    {"duplicate key", m_dup_top, MOE_ERR_FORMAT, "\"step\" twice"},
    {"seed number", m_seed_num, MOE_ERR_FORMAT, "seed"},
    {"seed overflow", m_seed_over, MOE_ERR_FORMAT, "seed"},
    {"seed leading zero", m_seed_zero, MOE_ERR_FORMAT, "seed"},
    {"rng.step missing", m_rng_missing, MOE_ERR_FORMAT, "\"step\""},
    {"config field missing", m_cfg_missing, MOE_ERR_FORMAT, "\"d_model\""},
    {"config field type", m_cfg_type, MOE_ERR_FORMAT, "config.\"d_model\""},
    {"config int range", m_cfg_range, MOE_ERR_FORMAT, "config.\"num_layers\""},
    {"config float range", m_cfg_float, MOE_ERR_FORMAT, "config.\"norm_eps\""},
    {"config u32 range", m_cfg_u32, MOE_ERR_FORMAT, "config.\"tie_embeddings\""},
    {"config unknown", m_cfg_unknown, MOE_ERR_FORMAT, "\"d_modle\""},
    {"config array", m_cfg_array, MOE_ERR_FORMAT, "config is not a JSON object"},
    {"optimizer type", m_opt_type, MOE_ERR_FORMAT, "optimizer.\"type\""},
    {"optimizer lr", m_opt_lr, MOE_ERR_FORMAT, "\"lr\""},
    {"optimizer string", m_opt_str, MOE_ERR_FORMAT, "optimizer is not a JSON object"},
    {"mesh dp 0", m_mesh_zero, MOE_ERR_FORMAT, "mesh.\"dp\""},
    {"user number", m_user_num, MOE_ERR_FORMAT, "\"user\""},
    {"tensors array", m_tensors_arr, MOE_ERR_FORMAT, "\"tensors\""},
    {"tensor name", m_name_slash, MOE_ERR_FORMAT, "\"../embed\""},
    {"tensor twice", m_name_dup, MOE_ERR_FORMAT, "\"embed.weight\" appears twice"},
    {"dtype", m_dtype, MOE_ERR_FORMAT, "\"layers.0.attn.wq\".dtype"},
    {"ndim 9", m_shape_many, MOE_ERR_FORMAT, "\"layers.0.attn.wq\".shape"},
    {"negative size", m_shape_neg, MOE_ERR_FORMAT, "shape[0]"},
    {"size overflow", m_shape_overflow, MOE_ERR_FORMAT, "more elements"},
    {"no shards", m_shards_empty, MOE_ERR_FORMAT, "\"layers.0.attn.wq\".shards"},
    {"file ..", m_file_dots, MOE_ERR_FORMAT, "shards[0].file"},
    {"file hidden", m_file_hidden, MOE_ERR_FORMAT, "shards[0].file"},
    {"file extension", m_file_ext, MOE_ERR_FORMAT, "shards[0].file"},
    {"file tensor name", m_ftensor, MOE_ERR_FORMAT, "shards[0].tensor"},
    {"hash short", m_hash_short, MOE_ERR_FORMAT, "shards[0].xxh64"},
    {"hash upper", m_hash_upper, MOE_ERR_FORMAT, "shards[0].xxh64"},
    {"slice rank", m_slice_count, MOE_ERR_FORMAT, "shards[0].slice"},
    {"slice outside", m_slice_out, MOE_ERR_FORMAT, "shards[3].\"slice[1]\""},
    {"slice reversed", m_slice_rev, MOE_ERR_FORMAT, "shards[0].\"slice[0]\""},
    {"slices overlap", m_overlap, MOE_ERR_FORMAT, "overlap"},
    {"slices leave a gap", m_gap, MOE_ERR_FORMAT, "cover 16 of its 24"},
    {"same slice twice", m_dup_shard, MOE_ERR_FORMAT, "\"layers.0.attn.wq\""},
    {"shard unknown key", m_shard_key, MOE_ERR_FORMAT, "unknown key \"offset\""},
};

static void test_malformed(void **state)
{
    (void)state;
    char *text = base_text();
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        cJSON *root = cJSON_Parse(text);
        assert_non_null(root);
        bad_cases[i].fn(root);
        char *bad = cJSON_PrintUnformatted(root);
        cJSON_Delete(root);
        moei_ckpt_index *ix = (moei_ckpt_index *)(uintptr_t)0x1; /* must stay untouched */
        moe_status st = parse_text(bad, &ix);
        if (st != bad_cases[i].code || !strstr(moe_last_error(), bad_cases[i].needle))
            fail_msg("case '%s': status %s, message '%s' (expected %s with '%s')", bad_cases[i].what,
                     moe_status_string(st), moe_last_error(), moe_status_string(bad_cases[i].code),
                     bad_cases[i].needle);
        assert_true(ix == (moei_ckpt_index *)(uintptr_t)0x1);
        free(bad);
    }
    free(text);
}

/* Not JSON, cut short anywhere, or not an object: a format error, never a crash. */
static void test_truncated_and_garbage(void **state)
{
    (void)state;
    char *text = base_text();
    size_t len = strlen(text);
    moei_ckpt_index *ix = NULL;
    for (size_t cut = 0; cut < len - 1; cut++) {
        /* an exact-size heap copy: ASan sees any read past the cut */
        char *part = malloc(cut ? cut : 1);
        memcpy(part, text, cut);
        moe_status st = moei_ckpt_index_parse(NULL, part, cut, "index.json", &ix);
        if (st != MOE_ERR_FORMAT) fail_msg("cut at %zu: %s (%s)", cut, moe_status_string(st), moe_last_error());
        assert_true(strlen(moe_last_error()) > 0);
        free(part);
    }
    CK_ASSERT_FAILS(parse_text("[1, 2]", &ix), MOE_ERR_FORMAT, "not a JSON object");
    CK_ASSERT_FAILS(parse_text("{\"format\": \"libmoe-checkpoint\"}", &ix), MOE_ERR_FORMAT, "format_version");
    CK_ASSERT_FAILS(parse_text("\xff\xfe", &ix), MOE_ERR_FORMAT, "not valid JSON");
    /* a whole index that parses, then trailing garbage */
    size_t n2 = len + 4;
    char *trail = malloc(n2);
    memcpy(trail, text, len);
    memcpy(trail + len, " }}x", 4);
    CK_ASSERT_FAILS(moei_ckpt_index_parse(NULL, trail, n2, "index.json", &ix), MOE_ERR_FORMAT, "index.json");
    free(trail);
    CK_ASSERT_FAILS(moei_ckpt_index_parse(NULL, text, MOEI_CKPT_INDEX_MAX + 1, "big.json", &ix), MOE_ERR_FORMAT,
                    "larger than");
    free(text);
}

/* Invalid UTF-8 trainer text is refused on writing and on reading. */
static void test_user_text(void **state)
{
    (void)state;
    moei_ckpt_index ix;
    base_index(&ix);
    ix.user = (char *)"bad \xc3\x28";
    char *text = NULL;
    size_t len = 0;
    CK_ASSERT_FAILS(moei_ckpt_index_write(NULL, &ix, &text, &len), MOE_ERR_INVALID_ARG, "UTF-8");
    ix.user = (char *)"ok";
    CK_ASSERT_OK(moei_ckpt_index_write(NULL, &ix, &text, &len));
    char *p = strstr(text, "\"ok\"");
    assert_non_null(p);
    /* an overlong encoding of '/' written raw into the file */
    char *bad = malloc(len + 8);
    size_t pre = (size_t)(p - text) + 1;
    memcpy(bad, text, pre);
    memcpy(bad + pre, "\xc0\xaf", 2);
    memcpy(bad + pre + 2, p + 3, len - pre - 2 + 1);
    moei_ckpt_index *out = NULL;
    CK_ASSERT_FAILS(parse_text(bad, &out), MOE_ERR_FORMAT, "\"user\"");
    free(bad);
    free(text);
}

/* The field tables name every field of the public config structs: sorted by offset, each field
 * starts where the previous one ends (up to alignment), and the last one ends the struct. */
static void check_table(const moei_ckpt_field *f, size_t n, size_t first_offset, size_t struct_size)
{
    size_t order[64];
    for (size_t i = 0; i < n; i++) order[i] = i;
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && f[order[j - 1]].offset > f[order[j]].offset; j--) {
            size_t t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    size_t end = first_offset;
    for (size_t i = 0; i < n; i++) {
        const moei_ckpt_field *x = &f[order[i]];
        size_t sz = moei_ckpt_kind_size(x->kind);
        size_t aligned = (end + sz - 1) / sz * sz;
        if (x->offset != aligned) fail_msg("field '%s' at %zu, expected %zu: a field is missing", x->name, x->offset, aligned);
        end = x->offset + sz;
    }
    assert_int_equal((end + 7) / 8 * 8, (struct_size + 7) / 8 * 8);
    assert_true(end <= struct_size && struct_size - end < 8);
}

static void test_field_tables(void **state)
{
    (void)state;
    size_t n = 0;
    const moei_ckpt_field *mf = moei_ckpt_model_fields(&n);
    /* The pipeline split (pipeline_virtual_stages, pipeline_layers) is a layout choice like the
     * mesh, not part of the model: a checkpoint loads whatever the split, so it is not recorded. */
    check_table(mf, n, sizeof(uint32_t), offsetof(moe_model_config, pipeline_virtual_stages));
    const moei_ckpt_field *of = moei_ckpt_optimizer_fields(&n);
    /* struct_size and type (stored as a word) come first; zero_stage, the last field, is a layout
     * choice (moments are stored per tensor whatever the stage), so it is not recorded */
    assert_int_equal(offsetof(moe_optimizer_config, type), sizeof(uint32_t));
    assert_int_equal(offsetof(moe_optimizer_config, zero_stage) + sizeof(uint32_t) + 4, sizeof(moe_optimizer_config));
    check_table(of, n, 2 * sizeof(uint32_t), offsetof(moe_optimizer_config, zero_stage));
}

static void test_format_float(void **state)
{
    (void)state;
    const float v[] = {0.02f, 1e-5f, 10000.0f, 0.1f, 1.0f / 3.0f, FLT_MAX, FLT_MIN, 1e-45f, -2.5e-3f, 0.0f, -0.0f,
                       16777217.0f, 123456.789f};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        char b[48], ref[48];
        moei_ckpt_format_float(v[i], b, sizeof b);
        float back = (float)strtod(b, NULL);
        assert_memory_equal(&back, &v[i], sizeof back);
        snprintf(ref, sizeof ref, "%.9g", (double)v[i]);
        assert_true(strlen(b) <= strlen(ref));
    }
    char b[48];
    moei_ckpt_format_float(0.02f, b, sizeof b);
    assert_string_equal(b, "0.02");
    moei_ckpt_format_float(1e-5f, b, sizeof b);
    assert_string_equal(b, "1e-05");
}

static void test_names(void **state)
{
    (void)state;
    assert_true(moei_ckpt_valid_name("layers.0.moe.experts.w1"));
    assert_true(moei_ckpt_valid_name("optim.m.embed.weight"));
    assert_false(moei_ckpt_valid_name(""));
    assert_false(moei_ckpt_valid_name("a/b"));
    assert_false(moei_ckpt_valid_name("a b"));
    assert_false(moei_ckpt_valid_name("caf\xc3\xa9"));
    char longname[300];
    memset(longname, 'a', sizeof longname);
    longname[255] = '\0';
    assert_true(moei_ckpt_valid_name(longname));
    longname[255] = 'a';
    longname[256] = '\0';
    assert_false(moei_ckpt_valid_name(longname));
    assert_true(moei_ckpt_valid_file("shard-00000-of-00001.safetensors"));
    assert_false(moei_ckpt_valid_file(".safetensors"));
    assert_false(moei_ckpt_valid_file("..safetensors"));
    assert_false(moei_ckpt_valid_file("x.safetensors.tmp"));
}

/* ---- slice geometry ---------------------------------------------------------------------------- */

/* Row-major index in a box of `shape` of the coordinates c. */
static int64_t flat_of(int32_t ndim, const int64_t *shape, const int64_t *c)
{
    int64_t f = 0;
    for (int32_t d = 0; d < ndim; d++) f = f * shape[d] + c[d];
    return f;
}

/* The coordinates of row-major index f in a box of `shape`. */
static void coords_of(int32_t ndim, const int64_t *shape, int64_t f, int64_t *c)
{
    for (int32_t d = ndim - 1; d >= 0; d--) {
        c[d] = shape[d] ? f % shape[d] : 0;
        f = shape[d] ? f / shape[d] : 0;
    }
}

static void test_window_boxes(void **state)
{
    (void)state;
    static const int64_t shapes[][4] = {{7}, {3, 5}, {2, 3, 4}, {1, 1, 6}, {4, 1, 3}, {2, 2, 2, 3}, {5, 1}};
    static const int32_t ndims[] = {1, 2, 3, 3, 3, 4, 2};
    for (size_t si = 0; si < sizeof ndims / sizeof ndims[0]; si++) {
        const int32_t nd = ndims[si];
        const int64_t *shape = shapes[si];
        int64_t numel = 1;
        for (int32_t d = 0; d < nd; d++) numel *= shape[d];
        for (int64_t first = 0; first <= numel; first++)
            for (int64_t count = 0; first + count <= numel; count++) {
                moei_ckpt_box b[MOEI_CKPT_WINDOW_BOXES];
                int32_t n = moei_ckpt_window_boxes(nd, shape, first, count, b);
                if (count == 0) {
                    assert_int_equal(n, 0);
                    continue;
                }
                assert_true(n >= 1 && n <= 2 * nd - 1);
                int64_t next = first; /* the boxes, in order, walk the window element by element */
                for (int32_t k = 0; k < n; k++) {
                    assert_int_equal(b[k].first, next);
                    int64_t ext[4], vol = 1, c[4];
                    for (int32_t d = 0; d < nd; d++) {
                        assert_true(0 <= b[k].start[d] && b[k].start[d] < b[k].end[d] && b[k].end[d] <= shape[d]);
                        ext[d] = b[k].end[d] - b[k].start[d];
                        vol *= ext[d];
                    }
                    for (int64_t j = 0; j < vol; j++) {
                        coords_of(nd, ext, j, c);
                        for (int32_t d = 0; d < nd; d++) c[d] += b[k].start[d];
                        if (flat_of(nd, shape, c) != next)
                            fail_msg("shape %zu window [%lld, +%lld): box %d element %lld is %lld, want %lld", si,
                                     (long long)first, (long long)count, (int)k, (long long)j,
                                     (long long)flat_of(nd, shape, c), (long long)next);
                        next++;
                    }
                }
                assert_int_equal(next, first + count);
            }
    }
    moei_ckpt_box b[MOEI_CKPT_WINDOW_BOXES];
    assert_int_equal(moei_ckpt_window_boxes(0, NULL, 0, 1, b), 1); /* a scalar */
    assert_int_equal(b[0].first, 0);
}

static uint64_t g_rng = 88172645463325252ull;
static int64_t rnd(int64_t n)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return n > 0 ? (int64_t)(g_rng % (uint64_t)n) : 0;
}

/* A random non-empty box [start, end) inside `full`. */
static void random_box(int32_t nd, const int64_t *full, int64_t *start, int64_t *end)
{
    for (int32_t d = 0; d < nd; d++) {
        int64_t a = rnd(full[d]), b = rnd(full[d]);
        if (a > b) {
            int64_t t = a;
            a = b;
            b = t;
        }
        start[d] = a;
        end[d] = b + 1;
    }
}

static void test_copy_window(void **state)
{
    (void)state;
    enum { CAP = 512 };
    float src[CAP], dst[CAP], want[CAP];
    for (int trial = 0; trial < 3000; trial++) {
        const int32_t nd = 1 + (int32_t)rnd(4);
        int64_t full[4], ds[4], de[4], dshape[4], ss[4], se[4];
        for (int32_t d = 0; d < nd; d++) full[d] = 1 + rnd(nd > 2 ? 4 : 7);
        random_box(nd, full, ds, de);
        random_box(nd, full, ss, se);
        int64_t dn = 1, sn = 1, sshape[4];
        for (int32_t d = 0; d < nd; d++) {
            dshape[d] = de[d] - ds[d];
            sshape[d] = se[d] - ss[d];
            dn *= dshape[d];
            sn *= sshape[d];
        }
        const int64_t first = rnd(dn + 1), count = rnd(dn - first + 1);
        for (int64_t j = 0; j < sn; j++) src[j] = (float)(j + 1);
        for (int64_t j = 0; j < CAP; j++) dst[j] = want[j] = -1.0f;
        /* brute force: each window element, at its logical coordinates, from the slice if inside */
        int64_t inside = 0;
        for (int64_t f = first; f < first + count; f++) {
            int64_t c[4], sc[4];
            coords_of(nd, dshape, f, c);
            int in = 1;
            for (int32_t d = 0; d < nd; d++) {
                int64_t x = ds[d] + c[d];
                in &= x >= ss[d] && x < se[d];
                sc[d] = x - ss[d];
            }
            if (in) {
                want[f - first] = src[flat_of(nd, sshape, sc)];
                inside++;
            }
        }
        int64_t q = moei_ckpt_copy_window(nd, ds, dshape, first, count, NULL, ss, se, NULL);
        int64_t got = moei_ckpt_copy_window(nd, ds, dshape, first, count, dst, ss, se, src);
        assert_int_equal(q, inside);
        assert_int_equal(got, inside);
        if (memcmp(dst, want, sizeof dst) != 0) fail_msg("trial %d: the copy differs from element-wise placement", trial);
    }
    /* a scalar */
    float one = 5.0f, out = 0.0f;
    assert_int_equal(moei_ckpt_copy_window(0, NULL, NULL, 0, 1, &out, NULL, NULL, &one), 1);
    assert_true(out == 5.0f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_truncated_and_garbage),
        cmocka_unit_test(test_user_text),
        cmocka_unit_test(test_field_tables),
        cmocka_unit_test(test_format_float),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_window_boxes),
        cmocka_unit_test(test_copy_window),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Checkpoints: save/load round trips (parameters, AdamW and SGD state, MoE bias states, RNG step,
 * step, data position, trainer text) checked bit for bit and against the files read independently
 * (safetensors reader + xxHash64 + cJSON); resume bit-exactness (k steps, save, a fresh process
 * state, load, n - k steps == n steps straight, losses and weights), with controls showing the
 * RNG step and the bias state matter; slices spread over several files; corrupt, truncated and
 * oversized files; config and optimizer mismatches; keep_last rotation; stale leftovers; bad
 * arguments. Every failing load must leave the model unchanged. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <xxhash.h>

#include "ckpt_util.h"
#include "io/safetensors.h"

static moe_optimizer_config adamw_config(void)
{
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    oc.lr = 3e-2f;
    oc.min_lr = 1e-3f;
    oc.warmup_steps = 2;
    oc.decay = MOE_LR_COSINE;
    oc.decay_steps = 6;
    oc.clip_grad_norm = 0.5f;
    return oc;
}

/* A model whose state is all in use: router jitter (keyed by the RNG step) and aux-loss-free
 * balancing (the bias state). */
static moe_model_config full_config(void)
{
    moe_model_config c;
    ck_tiny_config(&c);
    c.moe_jitter = 0.2f;
    c.moe_bias_update_rate = 0.05f;
    return c;
}

static void info_for(moe_checkpoint_info *info, int64_t step, int32_t keep, const char *user)
{
    CK_ASSERT_OK(moe_checkpoint_info_init(info, sizeof *info));
    info->step = step;
    info->data_position = step >= 0 && step < 1000000 ? step * 1000 + 7 : 0;
    info->keep_last = keep;
    info->user_json = user;
}

static void save(ck_run *r, const char *root, int64_t step, int32_t keep)
{
    moe_checkpoint_info info;
    info_for(&info, step, keep, NULL);
    CK_ASSERT_OK(moe_checkpoint_save(r->model, r->opt, root, &info));
}

static void test_info_init(void **state)
{
    (void)state;
    moe_checkpoint_info info;
    memset(&info, 0xab, sizeof info);
    CK_ASSERT_OK(moe_checkpoint_info_init(&info, sizeof info));
    assert_int_equal(info.struct_size, sizeof info);
    assert_int_equal(info.step, 0);
    assert_int_equal(info.data_position, 0);
    assert_int_equal(info.keep_last, 0);
    assert_null(info.user_json);
    assert_int_equal(info.rng_seed, 0);
    CK_ASSERT_FAILS(moe_checkpoint_info_init(&info, 2), MOE_ERR_INVALID_ARG, "struct_size");
    CK_ASSERT_FAILS(moe_checkpoint_info_init(NULL, sizeof info), MOE_ERR_INVALID_ARG, "cfg");
    /* an older caller's shorter struct: nothing written past it */
    unsigned char buf[sizeof info + 8];
    memset(buf, 0x5a, sizeof buf);
    CK_ASSERT_OK(moe_checkpoint_info_init((moe_checkpoint_info *)(void *)buf, (uint32_t)offsetof(moe_checkpoint_info, rng_seed)));
    for (size_t i = offsetof(moe_checkpoint_info, rng_seed); i < sizeof buf; i++) assert_int_equal(buf[i], 0x5a);
}

/* The files, read without the checkpoint loader: latest, the index (cJSON) and the shard
 * (safetensors reader), each tensor equal to the model's values with the xxHash64 the index gives. */
static void check_files(ck_run *r, const char *root, int64_t step, const char *user)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/latest", root);
    char *latest = ck_read_file(path, NULL);
    char expect[64];
    snprintf(expect, sizeof expect, "step-%lld\n", (long long)step);
    assert_non_null(latest);
    assert_string_equal(latest, expect);
    free(latest);
    snprintf(path, sizeof path, "%s/step-%lld/index.json", root, (long long)step);
    char *text = ck_read_file(path, NULL);
    assert_non_null(text);
    cJSON *j = cJSON_Parse(text);
    free(text);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "format")->valuestring, "libmoe-checkpoint");
    assert_int_equal((int64_t)cJSON_GetObjectItem(j, "step")->valuedouble, step);
    assert_int_equal((int64_t)cJSON_GetObjectItem(j, "data_position")->valuedouble, step * 1000 + 7);
    cJSON *u = cJSON_GetObjectItem(j, "user");
    if (user) assert_string_equal(u->valuestring, user);
    else assert_true(cJSON_IsNull(u));
    cJSON *cfg = cJSON_GetObjectItem(j, "config");
    assert_int_equal((int)cJSON_GetObjectItem(cfg, "d_model")->valuedouble, r->model->cfg.d_model);
    assert_true((float)cJSON_GetObjectItem(cfg, "moe_jitter")->valuedouble == r->model->cfg.moe_jitter);
    cJSON *o = cJSON_GetObjectItem(j, "optimizer");
    assert_string_equal(cJSON_GetObjectItem(o, "type")->valuestring, "adamw");
    assert_int_equal((int64_t)cJSON_GetObjectItem(o, "step")->valuedouble, r->opt->step);
    assert_int_equal((uint64_t)cJSON_GetObjectItem(cJSON_GetObjectItem(j, "rng"), "step")->valuedouble,
                     r->model->rng_step);

    snprintf(path, sizeof path, "%s/step-%lld/shard-00000-of-00001.safetensors", root, (long long)step);
    moei_st_file *f = NULL;
    CK_ASSERT_OK(moei_st_open(r->ctx, path, &f));
    cJSON *tensors = cJSON_GetObjectItem(j, "tensors");
    int32_t count = 0;
    CK_ASSERT_OK(moe_model_param_count(r->model, &count));
    /* params + m + v + one bias state per MoE layer */
    assert_int_equal(cJSON_GetArraySize(tensors), 3 * count + r->model->cfg.num_layers);
    assert_int_equal(moei_st_count(f), 3 * count + r->model->cfg.num_layers);
    for (cJSON *t = tensors->child; t; t = t->next) {
        cJSON *sh = cJSON_GetArrayItem(cJSON_GetObjectItem(t, "shards"), 0);
        assert_string_equal(cJSON_GetObjectItem(sh, "file")->valuestring, "shard-00000-of-00001.safetensors");
        const moei_st_tensor *st = moei_st_find(f, cJSON_GetObjectItem(sh, "tensor")->valuestring);
        assert_non_null(st);
        char hex[20];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)XXH64(st->data, (size_t)st->nbytes, 0));
        assert_string_equal(cJSON_GetObjectItem(sh, "xxh64")->valuestring, hex);
    }
    for (int32_t i = 0; i < count; i++) {
        char name[128];
        int32_t nd = 0;
        int64_t shape[8];
        CK_ASSERT_OK(moe_model_param_info(r->model, i, name, sizeof name, &nd, shape));
        int64_t n = 1;
        for (int32_t d = 0; d < nd; d++) n *= shape[d];
        float *want = malloc((size_t)n * sizeof(float));
        CK_ASSERT_OK(moe_model_param_read(r->model, name, 0, want, n));
        const moei_st_tensor *st = moei_st_find(f, name);
        assert_non_null(st);
        assert_int_equal(st->nbytes, (uint64_t)n * sizeof(float));
        assert_memory_equal(st->data, want, (size_t)st->nbytes);
        cJSON *shape_j = cJSON_GetObjectItem(cJSON_GetObjectItem(tensors, name), "shape");
        assert_int_equal(cJSON_GetArraySize(shape_j), nd);
        for (int32_t d = 0; d < nd; d++) assert_int_equal((int64_t)cJSON_GetArrayItem(shape_j, d)->valuedouble, shape[d]);
        char mname[160];
        snprintf(mname, sizeof mname, "optim.v.%s", name);
        const moei_st_tensor *vt = moei_st_find(f, mname);
        assert_non_null(vt);
        int64_t off = r->model->params.entries[i].offset;
        assert_memory_equal(vt->data, r->opt->v + off, (size_t)vt->nbytes);
        free(want);
    }
    const moei_st_tensor *bt = moei_st_find(f, "state.layers.1.moe.expert_bias");
    assert_non_null(bt);
    assert_memory_equal(bt->data, r->model->blocks[1].moe.bias, 4 * sizeof(float));
    moei_st_close(f);
    cJSON_Delete(j);
}

static void test_round_trip(void **state)
{
    (void)state;
    char root[512];
    ck_make_temp(root, sizeof root, "ckpt");
    moe_model_config c = full_config();
    moe_optimizer_config oc = adamw_config();
    ck_run a, b;
    ck_run_create(&a, &c, &oc, 77);
    for (int s = 1; s <= 3; s++) ck_train_step(&a, s);
    ck_state sa;
    ck_snapshot(a.model, a.opt, &sa);
    int nonzero = 0;
    for (int e = 0; e < 4; e++) nonzero |= a.model->blocks[0].moe.bias[e] != 0.0f;
    assert_true(nonzero); /* the state under test is not trivially zero */
    assert_true(a.model->rng_step > 0);

    const char *user = "{\"flags\": [\"--lr\", \"0.03\"], \"note\": \"quote \\\" tab\\t caf\xc3\xa9 \xe2\x82\xac\"}\n";
    moe_checkpoint_info info;
    info_for(&info, 3, 0, user);
    char rootslash[600];
    snprintf(rootslash, sizeof rootslash, "%s/run//", root); /* created, trailing slashes ignored */
    CK_ASSERT_OK(moe_checkpoint_save(a.model, a.opt, rootslash, &info));
    snprintf(rootslash, sizeof rootslash, "%s/run", root);
    check_files(&a, rootslash, 3, user);
    ck_state after;
    ck_snapshot(a.model, a.opt, &after);
    assert_true(ck_state_equal(&sa, &after)); /* saving changes nothing */
    ck_state_free(&after);

    /* read_config and read_info, before any model exists */
    moe_model_config rc;
    moe_model_config_init(&rc, sizeof rc);
    rc.d_model = 999;
    CK_ASSERT_OK(moe_checkpoint_read_config(rootslash, &rc));
    assert_memory_equal(&rc, &a.model->cfg, sizeof rc);
    moe_checkpoint_info ri;
    moe_checkpoint_info_init(&ri, sizeof ri);
    uint32_t need = 0;
    CK_ASSERT_OK(moe_checkpoint_read_info(rootslash, &ri, NULL, 0, &need));
    assert_int_equal(need, strlen(user) + 1);
    assert_int_equal(ri.step, 3);
    assert_int_equal(ri.data_position, 3007);
    assert_int_equal(ri.rng_seed, 77);
    char small[8];
    CK_ASSERT_FAILS(moe_checkpoint_read_info(rootslash, NULL, small, sizeof small, &need), MOE_ERR_INVALID_ARG,
                    "user_json_capacity");
    char *ubuf = malloc(need);
    CK_ASSERT_OK(moe_checkpoint_read_info(rootslash, NULL, ubuf, need, NULL));
    assert_string_equal(ubuf, user);

    /* A fresh run (another init) loads it back bit for bit, through latest or the step directory. */
    ck_run_create(&b, &c, &oc, 77);
    ck_train_step(&b, 100);
    ck_state sb;
    ck_snapshot(b.model, b.opt, &sb);
    assert_false(ck_state_equal(&sa, &sb));
    ck_state_free(&sb);
    moe_checkpoint_info out;
    moe_checkpoint_info_init(&out, sizeof out);
    memset(ubuf, 'x', need);
    CK_ASSERT_OK(moe_checkpoint_load(b.model, b.opt, rootslash, &out, ubuf, need));
    ck_snapshot(b.model, b.opt, &sb);
    assert_true(ck_state_equal(&sa, &sb));
    ck_state_free(&sb);
    assert_int_equal(out.step, 3);
    assert_int_equal(out.data_position, 3007);
    assert_int_equal(out.rng_seed, 77);
    assert_int_equal(out.keep_last, 0);
    assert_null(out.user_json);
    assert_string_equal(ubuf, user);
    free(ubuf);

    char stepdir[600];
    snprintf(stepdir, sizeof stepdir, "%s/run/step-3/", root);
    ck_train_step(&b, 101);
    CK_ASSERT_OK(moe_checkpoint_load(b.model, b.opt, stepdir, NULL, NULL, 0));
    ck_snapshot(b.model, b.opt, &sb);
    assert_true(ck_state_equal(&sa, &sb));
    ck_state_free(&sb);

    /* The model alone: parameters, bias and RNG step; the optimizer is not touched. */
    ck_run m;
    ck_run_create(&m, &c, &oc, 77);
    ck_state before_opt;
    ck_snapshot(m.model, m.opt, &before_opt);
    CK_ASSERT_OK(moe_checkpoint_load(m.model, NULL, rootslash, NULL, NULL, 0));
    ck_state sm;
    ck_snapshot(m.model, NULL, &sm);
    ck_state sa_model = sa;
    sa_model.m = sa_model.v = NULL;
    assert_true(ck_state_equal(&sa_model, &sm));
    assert_memory_equal(m.opt->m, before_opt.m, (size_t)before_opt.total * 4);
    assert_int_equal(m.opt->step, 0);
    ck_state_free(&sm);
    ck_state_free(&before_opt);
    ck_run_destroy(&m);

    /* Saved without optimizer: loads into a model alone; with an optimizer it is refused. */
    char root2[600];
    snprintf(root2, sizeof root2, "%s/noopt", root);
    info_for(&info, 5, 0, NULL);
    CK_ASSERT_OK(moe_checkpoint_save(a.model, NULL, root2, &info));
    ck_snapshot(b.model, b.opt, &sb);
    CK_ASSERT_FAILS(moe_checkpoint_load(b.model, b.opt, root2, NULL, NULL, 0), MOE_ERR_INVALID_ARG,
                    "no optimizer state");
    ck_state sb2;
    ck_snapshot(b.model, b.opt, &sb2);
    assert_true(ck_state_equal(&sb, &sb2));
    ck_state_free(&sb2);
    ck_state_free(&sb);
    CK_ASSERT_OK(moe_checkpoint_load(b.model, NULL, root2, NULL, NULL, 0));

    ck_state_free(&sa);
    ck_run_destroy(&a);
    ck_run_destroy(&b);
    ck_rmrf(root);
}

/* ---- resume ------------------------------------------------------------------------------------ */

/* n steps straight == k steps, save, everything destroyed, a fresh ctx/model/optimizer rebuilt from
 * the checkpoint alone (config, seed), load, n - k steps: every loss and the final state bitwise. */
static void resume_case(const moe_optimizer_config *oc, int n, int k, int controls)
{
    moe_model_config c = full_config();
    char root[512];
    ck_make_temp(root, sizeof root, "resume");
    double straight[16];
    ck_run s;
    ck_run_create(&s, &c, oc, 5);
    for (int i = 1; i <= n; i++) straight[i] = ck_train_step(&s, i);
    ck_state final_s;
    ck_snapshot(s.model, s.opt, &final_s);
    ck_run_destroy(&s);

    ck_run a;
    ck_run_create(&a, &c, oc, 5);
    for (int i = 1; i <= k; i++) {
        double l = ck_train_step(&a, i);
        assert_memory_equal(&l, &straight[i], sizeof l); /* the run itself repeats */
    }
    save(&a, root, k, 0);
    ck_run_destroy(&a);

    moe_model_config rc;
    moe_model_config_init(&rc, sizeof rc);
    CK_ASSERT_OK(moe_checkpoint_read_config(root, &rc));
    moe_checkpoint_info ri;
    moe_checkpoint_info_init(&ri, sizeof ri);
    CK_ASSERT_OK(moe_checkpoint_read_info(root, &ri, NULL, 0, NULL));
    assert_int_equal(ri.rng_seed, 5);
    ck_run b;
    ck_run_create(&b, &rc, oc, ri.rng_seed);
    moe_checkpoint_info info;
    moe_checkpoint_info_init(&info, sizeof info);
    CK_ASSERT_OK(moe_checkpoint_load(b.model, b.opt, root, &info, NULL, 0));
    assert_int_equal(info.step, k);
    for (int i = k + 1; i <= n; i++) {
        double l = ck_train_step(&b, i);
        if (memcmp(&l, &straight[i], sizeof l) != 0)
            fail_msg("step %d: resumed loss %.17g, straight %.17g", i, l, straight[i]);
    }
    ck_state final_b;
    ck_snapshot(b.model, b.opt, &final_b);
    assert_true(ck_state_equal(&final_s, &final_b));
    ck_state_free(&final_b);
    ck_run_destroy(&b);

    if (controls) {
        /* The optimizer step (which keys router jitter inside moe_train_step, together with the
         * micro-batch index) and the bias state are what make this exact: dropping either changes
         * the run. */
        for (int which = 0; which < 2; which++) {
            ck_run x;
            ck_run_create(&x, &rc, oc, ri.rng_seed);
            CK_ASSERT_OK(moe_checkpoint_load(x.model, x.opt, root, NULL, NULL, 0));
            if (which == 0) {
                x.opt->step = 0;
            } else {
                for (int32_t l = 0; l < rc.num_layers; l++) memset(x.model->blocks[l].moe.bias, 0, 4 * sizeof(float));
            }
            int differs = 0;
            for (int i = k + 1; i <= n; i++) {
                double l = ck_train_step(&x, i);
                differs |= memcmp(&l, &straight[i], sizeof l) != 0;
            }
            ck_state fx;
            ck_snapshot(x.model, x.opt, &fx);
            differs |= memcmp(fx.params, final_s.params, (size_t)fx.total * 4) != 0;
            if (!differs) fail_msg("control %d: the run did not change without its %s", which, which ? "bias" : "optimizer step");
            ck_state_free(&fx);
            ck_run_destroy(&x);
        }
    }
    ck_state_free(&final_s);
    ck_rmrf(root);
}

static void test_resume_adamw(void **state)
{
    (void)state;
    moe_optimizer_config oc = adamw_config();
    resume_case(&oc, 7, 3, 1);
}

static void test_resume_sgd(void **state)
{
    (void)state;
    moe_optimizer_config oc = adamw_config();
    oc.type = MOE_OPTIMIZER_SGD;
    oc.momentum = 0.8f;
    oc.nesterov = 1;
    resume_case(&oc, 5, 2, 0);
    resume_case(&oc, 5, 0, 0); /* resume from step 0 */
}

/* ---- a tensor spread over several files --------------------------------------------------------- */

static cJSON *read_index_json(const char *root, int64_t step, char *path, size_t cap)
{
    snprintf(path, cap, "%s/step-%lld/index.json", root, (long long)step);
    char *text = ck_read_file(path, NULL);
    assert_non_null(text);
    cJSON *j = cJSON_Parse(text);
    free(text);
    assert_non_null(j);
    return j;
}

static void write_index_json(cJSON *j, const char *path)
{
    char *text = cJSON_Print(j);
    ck_write_file(path, text, strlen(text));
    free(text);
}

static cJSON *slice_json(int r0, int r1, int c0, int c1)
{
    cJSON *s = cJSON_CreateArray(), *a = cJSON_CreateArray(), *b = cJSON_CreateArray();
    cJSON_AddItemToArray(a, cJSON_CreateNumber(r0));
    cJSON_AddItemToArray(a, cJSON_CreateNumber(r1));
    cJSON_AddItemToArray(b, cJSON_CreateNumber(c0));
    cJSON_AddItemToArray(b, cJSON_CreateNumber(c1));
    cJSON_AddItemToArray(s, a);
    cJSON_AddItemToArray(s, b);
    return s;
}

static void test_multi_slice_load(void **state)
{
    (void)state;
    char root[512], path[4096];
    ck_make_temp(root, sizeof root, "slices");
    moe_model_config c = full_config();
    ck_run a;
    ck_run_create(&a, &c, NULL, 9);
    save(&a, root, 1, 0);
    /* layers.0.attn.wq is [8, 8]: rows 0..3 whole; rows 3..8 split at column 5, over two files */
    float v[64];
    CK_ASSERT_OK(moe_model_param_read(a.model, "layers.0.attn.wq", 0, v, 64));
    float pa[3 * 8], pb[5 * 5], pc[5 * 3];
    for (int r = 0; r < 8; r++)
        for (int col = 0; col < 8; col++) {
            if (r < 3) pa[r * 8 + col] = v[r * 8 + col];
            else if (col < 5) pb[(r - 3) * 5 + col] = v[r * 8 + col];
            else pc[(r - 3) * 3 + col - 5] = v[r * 8 + col];
        }
    const int64_t sa[2] = {3, 8}, sb[2] = {5, 5}, sc[2] = {5, 3};
    moei_st_writer *w = NULL;
    CK_ASSERT_OK(moei_st_writer_create(a.ctx, &w));
    CK_ASSERT_OK(moei_st_writer_add(w, "A", MOE_DTYPE_F32, 2, sa, pa, sizeof pa));
    CK_ASSERT_OK(moei_st_writer_add(w, "C", MOE_DTYPE_F32, 2, sc, pc, sizeof pc));
    snprintf(path, sizeof path, "%s/step-1/extra-a.safetensors", root);
    CK_ASSERT_OK(moei_st_writer_write(w, path));
    moei_st_writer_destroy(w);
    CK_ASSERT_OK(moei_st_writer_create(a.ctx, &w));
    CK_ASSERT_OK(moei_st_writer_add(w, "B", MOE_DTYPE_F32, 2, sb, pb, sizeof pb));
    snprintf(path, sizeof path, "%s/step-1/extra-b.safetensors", root);
    CK_ASSERT_OK(moei_st_writer_write(w, path));
    moei_st_writer_destroy(w);

    cJSON *j = read_index_json(root, 1, path, sizeof path);
    cJSON *t = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "tensors"), "layers.0.attn.wq");
    cJSON *shards = cJSON_CreateArray();
    const struct {
        const char *file, *tensor;
        int r0, r1, c0, c1;
        const float *data;
        size_t bytes;
    } parts[3] = {{"extra-a.safetensors", "A", 0, 3, 0, 8, pa, sizeof pa},
                  {"extra-b.safetensors", "B", 3, 8, 0, 5, pb, sizeof pb},
                  {"extra-a.safetensors", "C", 3, 8, 5, 8, pc, sizeof pc}};
    for (int i = 0; i < 3; i++) {
        cJSON *s = cJSON_CreateObject();
        cJSON_AddStringToObject(s, "file", parts[i].file);
        cJSON_AddStringToObject(s, "tensor", parts[i].tensor);
        cJSON_AddItemToObject(s, "slice", slice_json(parts[i].r0, parts[i].r1, parts[i].c0, parts[i].c1));
        char hex[20];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)XXH64(parts[i].data, parts[i].bytes, 0));
        cJSON_AddStringToObject(s, "xxh64", hex);
        cJSON_AddItemToArray(shards, s);
    }
    cJSON_ReplaceItemInObject(t, "shards", shards);
    write_index_json(j, path);

    ck_state want;
    ck_snapshot(a.model, NULL, &want);
    ck_run b;
    ck_run_create(&b, &c, NULL, 10);
    CK_ASSERT_OK(moe_checkpoint_load(b.model, NULL, root, NULL, NULL, 0));
    ck_state got;
    ck_snapshot(b.model, NULL, &got);
    assert_true(ck_state_equal(&want, &got));
    ck_state_free(&got);

    /* B's bytes named for C's slice: the shapes differ, refused. */
    cJSON *s2 = cJSON_GetArrayItem(shards, 2);
    cJSON_ReplaceItemInObject(s2, "file", cJSON_CreateString("extra-b.safetensors"));
    cJSON_ReplaceItemInObject(s2, "tensor", cJSON_CreateString("B"));
    write_index_json(j, path);
    ck_run_destroy(&b);
    ck_run_create(&b, &c, NULL, 10);
    ck_state before;
    ck_snapshot(b.model, NULL, &before);
    CK_ASSERT_FAILS(moe_checkpoint_load(b.model, NULL, root, NULL, NULL, 0), MOE_ERR_FORMAT, "'layers.0.attn.wq'",
                    "slice's shape");
    ck_snapshot(b.model, NULL, &got);
    assert_true(ck_state_equal(&before, &got));
    ck_state_free(&got);
    ck_state_free(&before);
    cJSON_Delete(j);
    ck_state_free(&want);
    ck_run_destroy(&a);
    ck_run_destroy(&b);
    ck_rmrf(root);
}

/* ---- damaged files ------------------------------------------------------------------------------ */

typedef struct damaged {
    char root[512];
    char shard[4096], index[4096];
    ck_run src, dst;
    ck_state dst_before;
} damaged;

static void damaged_setup(damaged *d)
{
    ck_make_temp(d->root, sizeof d->root, "damaged");
    moe_model_config c = full_config();
    moe_optimizer_config oc = adamw_config();
    ck_run_create(&d->src, &c, &oc, 3);
    ck_train_step(&d->src, 1);
    save(&d->src, d->root, 1, 0);
    snprintf(d->shard, sizeof d->shard, "%s/step-1/shard-00000-of-00001.safetensors", d->root);
    snprintf(d->index, sizeof d->index, "%s/step-1/index.json", d->root);
    ck_run_create(&d->dst, &c, &oc, 3);
    ck_snapshot(d->dst.model, d->dst.opt, &d->dst_before);
}

/* The load must fail with one of the given codes and leave the destination unchanged. */
static void expect_refused(damaged *d, moe_status c1, moe_status c2, const char *needle)
{
    moe_status st = moe_checkpoint_load(d->dst.model, d->dst.opt, d->root, NULL, NULL, 0);
    if (st != c1 && st != c2) fail_msg("load returned %s: %s", moe_status_string(st), moe_last_error());
    assert_true(strlen(moe_last_error()) > 0);
    if (needle && !strstr(moe_last_error(), needle)) fail_msg("message '%s' lacks '%s'", moe_last_error(), needle);
    ck_state now;
    ck_snapshot(d->dst.model, d->dst.opt, &now);
    assert_true(ck_state_equal(&d->dst_before, &now));
    ck_state_free(&now);
}

static void damaged_teardown(damaged *d)
{
    ck_state_free(&d->dst_before);
    ck_run_destroy(&d->src);
    ck_run_destroy(&d->dst);
    ck_rmrf(d->root);
}

static void flip_byte(const char *path, long pos)
{
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    unsigned char b;
    assert_int_equal(pread(fd, &b, 1, pos), 1);
    b ^= 0x10;
    assert_int_equal(pwrite(fd, &b, 1, pos), 1);
    close(fd);
}

/* Every tensor (parameters, moments, bias states) cut into up to three boxes along a dimension that
 * changes from tensor to tensor, spread over three shard files: the checkpoint of a mesh this
 * process never ran. It loads into one rank bit for bit, with either ZeRO stage. */
static void test_reshard_all(void **state)
{
    (void)state;
    char root[512], path[4096];
    ck_make_temp(root, sizeof root, "reshard");
    moe_model_config c = full_config();
    moe_optimizer_config oc = adamw_config();
    ck_run a;
    ck_run_create(&a, &c, &oc, 9);
    ck_train_step(&a, 0);
    ck_train_step(&a, 1);
    save(&a, root, 1, 0);
    ck_state want;
    ck_snapshot(a.model, a.opt, &want);

    snprintf(path, sizeof path, "%s/step-1/shard-00000-of-00001.safetensors", root);
    moei_st_file *orig = NULL;
    CK_ASSERT_OK(moei_st_open(a.ctx, path, &orig));
    moei_st_writer *w[3];
    for (int k = 0; k < 3; k++) CK_ASSERT_OK(moei_st_writer_create(a.ctx, &w[k]));
    char index_path[4096];
    cJSON *j = read_index_json(root, 1, index_path, sizeof index_path);
    cJSON *tensors = cJSON_GetObjectItem(j, "tensors");
    float *bufs[4096];
    int nbufs = 0, ti = 0, multi = 0;
    for (cJSON *t = tensors->child; t; t = t->next, ti++) {
        const moei_st_tensor *st = moei_st_find(orig, t->string);
        assert_non_null(st);
        const int32_t nd = st->ndim;
        const int32_t dim = nd ? ti % nd : 0;
        const int64_t len = nd ? st->shape[dim] : 1;
        const int parts = len >= 3 ? 3 : (int)len;
        cJSON *shards = cJSON_CreateArray();
        for (int pi = 0; pi < parts; pi++) {
            /* cuts at len/3 and 2*len/3 (first part possibly longer) */
            int64_t lo = pi * len / parts, hi = (pi + 1) * len / parts;
            int64_t start[8] = {0}, end[8], shape[8], vol = 1;
            for (int32_t d = 0; d < nd; d++) {
                start[d] = d == dim ? lo : 0;
                end[d] = d == dim ? hi : st->shape[d];
                shape[d] = end[d] - start[d];
                vol *= shape[d];
            }
            float *box = malloc((size_t)(vol ? vol : 1) * sizeof(float));
            bufs[nbufs++] = box;
            for (int64_t e = 0; e < vol; e++) { /* element e of the box: its index in the whole tensor */
                int64_t rem = e, f = 0, stride = 1;
                for (int32_t d = nd - 1; d >= 0; d--) {
                    int64_t cd = rem % shape[d];
                    rem /= shape[d];
                    f += (start[d] + cd) * stride;
                    stride *= st->shape[d];
                }
                memcpy(&box[e], (const char *)st->data + f * 4, 4);
            }
            char tname[300];
            snprintf(tname, sizeof tname, "%s.box%d", t->string, pi);
            const int k = (ti + pi) % 3;
            CK_ASSERT_OK(moei_st_writer_add(w[k], tname, MOE_DTYPE_F32, nd, shape, box, (uint64_t)vol * 4));
            cJSON *sh = cJSON_CreateObject(), *slice = cJSON_CreateArray();
            char file[64], hex[20];
            snprintf(file, sizeof file, "shard-%05d-of-00003.safetensors", k);
            cJSON_AddStringToObject(sh, "file", file);
            cJSON_AddStringToObject(sh, "tensor", tname);
            for (int32_t d = 0; d < nd; d++) {
                cJSON *pair = cJSON_CreateArray();
                cJSON_AddItemToArray(pair, cJSON_CreateNumber((double)start[d]));
                cJSON_AddItemToArray(pair, cJSON_CreateNumber((double)end[d]));
                cJSON_AddItemToArray(slice, pair);
            }
            cJSON_AddItemToObject(sh, "slice", slice);
            snprintf(hex, sizeof hex, "%016llx", (unsigned long long)XXH64(box, (size_t)vol * 4, 0));
            cJSON_AddStringToObject(sh, "xxh64", hex);
            cJSON_AddItemToArray(shards, sh);
        }
        multi += parts > 1;
        cJSON_ReplaceItemInObject(t, "shards", shards);
    }
    assert_true(multi > 20);
    for (int k = 0; k < 3; k++) {
        snprintf(path, sizeof path, "%s/step-1/shard-%05d-of-00003.safetensors", root, k);
        CK_ASSERT_OK(moei_st_writer_write(w[k], path));
        moei_st_writer_destroy(w[k]);
    }
    moei_st_close(orig);
    for (int i = 0; i < nbufs; i++) free(bufs[i]);
    snprintf(path, sizeof path, "%s/step-1/shard-00000-of-00001.safetensors", root);
    assert_int_equal(unlink(path), 0);
    write_index_json(j, index_path);
    cJSON_Delete(j);

    for (uint32_t zero = 0; zero <= 1; zero++) {
        moe_optimizer_config o2 = oc;
        o2.zero_stage = zero;
        ck_run b;
        ck_run_create(&b, &c, &o2, 9);
        CK_ASSERT_OK(moe_checkpoint_load(b.model, b.opt, root, NULL, NULL, 0));
        ck_state got;
        ck_snapshot(b.model, b.opt, &got);
        assert_true(ck_state_equal(&got, &want));
        ck_state_free(&got);
        ck_run_destroy(&b);
    }
    ck_state_free(&want);
    ck_run_destroy(&a);
    ck_rmrf(root);
}


static void test_corrupt_tensor_byte(void **state)
{
    (void)state;
    damaged d;
    damaged_setup(&d);
    size_t size = 0;
    char *orig = ck_read_file(d.shard, &size);
    const char *victims[] = {"layers.1.attn.wq", "optim.v.embed.weight", "state.layers.0.moe.expert_bias"};
    for (int i = 0; i < 3; i++) {
        moei_st_file *f = NULL;
        CK_ASSERT_OK(moei_st_open(d.dst.ctx, d.shard, &f));
        const moei_st_tensor *t = moei_st_find(f, victims[i]);
        assert_non_null(t);
        long pos = (long)(size - moei_st_data_size(f) + t->offset + t->nbytes - 1);
        moei_st_close(f);
        flip_byte(d.shard, pos);
        char needle[128];
        snprintf(needle, sizeof needle, "checksum mismatch for tensor '%s'", victims[i]);
        expect_refused(&d, MOE_ERR_FORMAT, MOE_ERR_FORMAT, needle);
        flip_byte(d.shard, pos);
    }
    /* a byte of the shard's header */
    flip_byte(d.shard, 20);
    expect_refused(&d, MOE_ERR_FORMAT, MOE_ERR_FORMAT, NULL);
    ck_write_file(d.shard, orig, size);
    CK_ASSERT_OK(moe_checkpoint_load(d.dst.model, d.dst.opt, d.root, NULL, NULL, 0));
    free(orig);
    damaged_teardown(&d);
}

static void test_corrupt_index_checksum(void **state)
{
    (void)state;
    damaged d;
    damaged_setup(&d);
    char path[4096];
    cJSON *j = read_index_json(d.root, 1, path, sizeof path);
    cJSON *sh = cJSON_GetArrayItem(
        cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "tensors"), "layers.0.moe.router"), "shards"), 0);
    char hex[20];
    snprintf(hex, sizeof hex, "%s", cJSON_GetObjectItem(sh, "xxh64")->valuestring);
    hex[15] = hex[15] == '0' ? '1' : '0';
    cJSON_ReplaceItemInObject(sh, "xxh64", cJSON_CreateString(hex));
    write_index_json(j, path);
    cJSON_Delete(j);
    expect_refused(&d, MOE_ERR_FORMAT, MOE_ERR_FORMAT, "'layers.0.moe.router'");
    damaged_teardown(&d);
}

static void test_truncated_files(void **state)
{
    (void)state;
    damaged d;
    damaged_setup(&d);
    size_t size = 0, isize = 0;
    char *orig = ck_read_file(d.shard, &size);
    char *iorig = ck_read_file(d.index, &isize);
    uint64_t hlen = 0;
    memcpy(&hlen, orig, 8);
    const size_t cuts[] = {0, 4, 8, 9, 8 + (size_t)hlen / 2, 8 + (size_t)hlen, 8 + (size_t)hlen + 1, size / 2,
                           size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        assert_true(cuts[i] < size);
        ck_write_file(d.shard, orig, cuts[i]);
        expect_refused(&d, MOE_ERR_FORMAT, MOE_ERR_IO, NULL);
    }
    ck_write_file(d.shard, orig, size);
    const size_t icuts[] = {0, 1, isize / 3, isize / 2, isize - 3};
    for (size_t i = 0; i < sizeof icuts / sizeof icuts[0]; i++) {
        ck_write_file(d.index, iorig, icuts[i]);
        expect_refused(&d, MOE_ERR_FORMAT, MOE_ERR_FORMAT, "index.json");
    }
    /* valid JSON followed by a NUL and more */
    char *padded = malloc(isize + 4);
    memcpy(padded, iorig, isize);
    memcpy(padded + isize, "\0{}", 3);
    ck_write_file(d.index, padded, isize + 3);
    expect_refused(&d, MOE_ERR_FORMAT, MOE_ERR_FORMAT, "NUL");
    free(padded);
    /* oversized: a sparse 65 MiB index */
    ck_write_file(d.index, iorig, isize);
    assert_int_equal(truncate(d.index, 65ll << 20), 0);
    expect_refused(&d, MOE_ERR_FORMAT, MOE_ERR_FORMAT, "larger than");
    ck_write_file(d.index, iorig, isize);
    /* a shard that is a directory, or missing */
    unlink(d.shard);
    expect_refused(&d, MOE_ERR_IO, MOE_ERR_IO, "shard-00000-of-00001.safetensors");
    ck_write_file(d.shard, orig, size);
    CK_ASSERT_OK(moe_checkpoint_load(d.dst.model, d.dst.opt, d.root, NULL, NULL, 0));
    free(orig);
    free(iorig);
    damaged_teardown(&d);
}

static void test_bad_latest(void **state)
{
    (void)state;
    damaged d;
    damaged_setup(&d);
    char path[4096];
    snprintf(path, sizeof path, "%s/latest", d.root);
    const char *bad[] = {"", "garbage\n", "step-../x\n", "step-01\n", "step-1\n\n", "/etc\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_write_file(path, bad[i], strlen(bad[i]));
        expect_refused(&d, MOE_ERR_FORMAT, MOE_ERR_FORMAT, "latest");
    }
    ck_write_file(path, "step-9\n", 7);
    expect_refused(&d, MOE_ERR_IO, MOE_ERR_IO, "step-9");
    unlink(path);
    expect_refused(&d, MOE_ERR_IO, MOE_ERR_IO, "holds neither");
    ck_write_file(path, "step-1", 6); /* no newline: accepted */
    CK_ASSERT_OK(moe_checkpoint_load(d.dst.model, d.dst.opt, d.root, NULL, NULL, 0));
    damaged_teardown(&d);
}

/* ---- the checkpoint must match the model ---------------------------------------------------------- */

static void edit_and_expect(damaged *d, void (*edit)(cJSON *), moe_status code, const char *needle)
{
    char path[4096];
    size_t isize = 0;
    char *iorig = ck_read_file(d->index, &isize);
    cJSON *j = read_index_json(d->root, 1, path, sizeof path);
    edit(j);
    write_index_json(j, path);
    cJSON_Delete(j);
    expect_refused(d, code, code, needle);
    ck_write_file(d->index, iorig, isize);
    free(iorig);
}

static void e_version(cJSON *j) { cJSON_ReplaceItemInObject(j, "format_version", cJSON_CreateNumber(2)); }
static void e_library(cJSON *j) { cJSON_ReplaceItemInObject(j, "library_version", cJSON_CreateString("1.0.0")); }
static void e_drop(cJSON *j) { cJSON_DeleteItemFromObject(cJSON_GetObjectItem(j, "tensors"), "layers.0.attn.wk"); }
static void e_extra(cJSON *j)
{
    cJSON *t = cJSON_GetObjectItem(j, "tensors");
    cJSON_AddItemToObject(t, "layers.9.attn.wq", cJSON_Duplicate(cJSON_GetObjectItem(t, "layers.0.attn.wq"), 1));
}
static void e_shape(cJSON *j)
{
    cJSON *t = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "tensors"), "layers.0.attn.wq");
    cJSON_ReplaceItemInArray(cJSON_GetObjectItem(t, "shape"), 1, cJSON_CreateNumber(16));
    cJSON *sl = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(t, "shards"), 0), "slice");
    cJSON_ReplaceItemInArray(cJSON_GetArrayItem(sl, 1), 1, cJSON_CreateNumber(16));
}
static void e_ftensor(cJSON *j)
{
    cJSON *t = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "tensors"), "final_norm.weight");
    cJSON_ReplaceItemInObject(cJSON_GetArrayItem(cJSON_GetObjectItem(t, "shards"), 0), "tensor",
                              cJSON_CreateString("nothing.here"));
}
static void e_file(cJSON *j)
{
    cJSON *t = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "tensors"), "final_norm.weight");
    cJSON_ReplaceItemInObject(cJSON_GetArrayItem(cJSON_GetObjectItem(t, "shards"), 0), "file",
                              cJSON_CreateString("shard-00009-of-00010.safetensors"));
}
static void e_world(cJSON *j)
{
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(j, "mesh"), "world", cJSON_CreateNumber(8));
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(j, "mesh"), "ep", cJSON_CreateNumber(4));
}

/* The mesh that wrote a checkpoint is a record only: any mesh loads it. */
static void edit_and_load(damaged *d, void (*edit)(cJSON *))
{
    char path[4096];
    size_t isize = 0;
    char *iorig = ck_read_file(d->index, &isize);
    cJSON *j = read_index_json(d->root, 1, path, sizeof path);
    edit(j);
    write_index_json(j, path);
    cJSON_Delete(j);
    CK_ASSERT_OK(moe_checkpoint_load(d->dst.model, d->dst.opt, d->root, NULL, NULL, 0));
    ck_write_file(d->index, iorig, isize);
    free(iorig);
}

static void test_mismatch(void **state)
{
    (void)state;
    damaged d;
    damaged_setup(&d);
    /* config fields, named with both values */
    moe_model_config c = full_config();
    moe_optimizer_config oc = adamw_config();
    c.moe_aux_loss_coef = 0.07f;
    ck_run x;
    ck_run_create(&x, &c, &oc, 3);
    CK_ASSERT_FAILS(moe_checkpoint_load(x.model, x.opt, d.root, NULL, NULL, 0), MOE_ERR_INVALID_ARG,
                    "'moe_aux_loss_coef' is 0.07 but the checkpoint's is 0.05");
    ck_run_destroy(&x);
    c = full_config();
    c.num_layers = 3;
    ck_run_create(&x, &c, &oc, 3);
    CK_ASSERT_FAILS(moe_checkpoint_load(x.model, x.opt, d.root, NULL, NULL, 0), MOE_ERR_INVALID_ARG, "'num_layers'");
    ck_run_destroy(&x);
    /* optimizer of another type / of another model */
    c = full_config();
    oc.type = MOE_OPTIMIZER_SGD;
    ck_run_create(&x, &c, &oc, 3);
    CK_ASSERT_FAILS(moe_checkpoint_load(x.model, x.opt, d.root, NULL, NULL, 0), MOE_ERR_INVALID_ARG, "sgd", "adamw");
    CK_ASSERT_FAILS(moe_checkpoint_load(d.dst.model, x.opt, d.root, NULL, NULL, 0), MOE_ERR_INVALID_ARG,
                    "another model");
    ck_run_destroy(&x);
    /* edited indexes */
    edit_and_expect(&d, e_version, MOE_ERR_UNSUPPORTED, "format_version 2");
    edit_and_expect(&d, e_library, MOE_ERR_UNSUPPORTED, "1.0.0");
    edit_and_expect(&d, e_drop, MOE_ERR_FORMAT, "no tensor 'layers.0.attn.wk'");
    edit_and_expect(&d, e_extra, MOE_ERR_FORMAT, "'layers.9.attn.wq', which this model does not have");
    edit_and_expect(&d, e_shape, MOE_ERR_FORMAT, "'layers.0.attn.wq' has shape [8,16]");
    edit_and_expect(&d, e_ftensor, MOE_ERR_FORMAT, "no tensor 'nothing.here'");
    edit_and_expect(&d, e_file, MOE_ERR_IO, "shard-00009-of-00010.safetensors");
    edit_and_load(&d, e_world);
    CK_ASSERT_OK(moe_checkpoint_load(d.dst.model, d.dst.opt, d.root, NULL, NULL, 0));
    damaged_teardown(&d);
}

/* ---- rotation ------------------------------------------------------------------------------------ */

static int has(const char *root, const char *name)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", root, name);
    return ck_exists(p);
}

static void test_rotation(void **state)
{
    (void)state;
    char root[512], p[4096];
    ck_make_temp(root, sizeof root, "rotate");
    moe_model_config c = full_config();
    moe_optimizer_config oc = adamw_config();
    ck_run a;
    ck_run_create(&a, &c, &oc, 4);
    /* things that are not checkpoints, never touched */
    snprintf(p, sizeof p, "%s/notes", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/step-abc", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/step-007", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/step-007/index.json", root);
    ck_write_file(p, "{}", 2);
    for (int s = 1; s <= 6; s++) {
        ck_train_step(&a, s);
        save(&a, root, s, 3);
    }
    for (int s = 1; s <= 6; s++) {
        snprintf(p, sizeof p, "step-%d", s);
        assert_int_equal(has(root, p), s >= 4);
    }
    assert_true(has(root, "notes") && has(root, "step-abc") && has(root, "step-007"));
    assert_int_equal(ck_count_entries(root, "step-", 0), 3 + 2);
    ck_state s6;
    ck_snapshot(a.model, a.opt, &s6);
    ck_run b;
    ck_run_create(&b, &c, &oc, 4);
    moe_checkpoint_info info;
    moe_checkpoint_info_init(&info, sizeof info);
    CK_ASSERT_OK(moe_checkpoint_load(b.model, b.opt, root, &info, NULL, 0));
    assert_int_equal(info.step, 6);
    ck_state got;
    ck_snapshot(b.model, b.opt, &got);
    assert_true(ck_state_equal(&s6, &got));
    ck_state_free(&got);

    /* keep_last 0 keeps everything */
    ck_train_step(&a, 7);
    save(&a, root, 7, 0);
    ck_train_step(&a, 8);
    save(&a, root, 8, 0);
    for (int s = 4; s <= 8; s++) {
        snprintf(p, sizeof p, "step-%d", s);
        assert_true(has(root, p));
    }
    /* a rewind: newer checkpoints are not older ones, they stay */
    save(&a, root, 2, 2);
    for (int s = 4; s <= 8; s++) {
        snprintf(p, sizeof p, "step-%d", s);
        assert_true(has(root, p));
    }
    assert_true(has(root, "step-2"));
    CK_ASSERT_OK(moe_checkpoint_load(b.model, b.opt, root, &info, NULL, 0));
    assert_int_equal(info.step, 2);
    /* the same step again, with new content: replaced; keep 2 leaves step-7 and the new step-8 */
    ck_train_step(&a, 9);
    ck_state s9;
    ck_snapshot(a.model, a.opt, &s9);
    save(&a, root, 8, 2);
    assert_int_equal(ck_count_entries(root, "step-", 0), 2 + 2);
    assert_true(has(root, "step-7") && has(root, "step-8"));
    assert_false(has(root, "step-8.old"));
    snprintf(p, sizeof p, "%s/step-8", root);
    CK_ASSERT_OK(moe_checkpoint_load(b.model, b.opt, p, &info, NULL, 0));
    ck_snapshot(b.model, b.opt, &got);
    assert_true(ck_state_equal(&s9, &got));
    ck_state_free(&got);
    ck_state_free(&s9);
    ck_state_free(&s6);
    ck_run_destroy(&a);
    ck_run_destroy(&b);
    ck_rmrf(root);
}

/* Leftovers of interrupted saves are removed (or, for a cut-short replacement, put back); those of
 * a process still running are left alone. */
static void test_stale_cleanup(void **state)
{
    (void)state;
    char root[512], p[4096], q[4096];
    ck_make_temp(root, sizeof root, "stale");
    moe_model_config c = full_config();
    ck_run a;
    ck_run_create(&a, &c, NULL, 4);
    save(&a, root, 1, 0);
    const long dead = 999999999L;
    snprintf(p, sizeof p, "%s/.tmp-step-5-%ld", root, dead);
    mkdir(p, 0755);
    snprintf(q, sizeof q, "%s/index.json", p);
    ck_write_file(q, "{", 1);
    snprintf(p, sizeof p, "%s/.del-step-3-%ld", root, dead);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/latest.tmp-%ld", root, dead);
    ck_write_file(p, "step-5\n", 7);
    snprintf(p, sizeof p, "%s/.tmp-step-7-%ld", root, (long)getpid());
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/.tmp-step-6-%ld", root, (long)getppid()); /* alive: another saver */
    mkdir(p, 0755);
    /* a replacement of step-9 cut short: only the aside copy exists */
    snprintf(p, sizeof p, "%s/step-9.old", root);
    mkdir(p, 0755);
    const char *files[] = {"index.json", "shard-00000-of-00001.safetensors"};
    for (int i = 0; i < 2; i++) {
        size_t n = 0;
        snprintf(q, sizeof q, "%s/step-1/%s", root, files[i]);
        char *b = ck_read_file(q, &n);
        snprintf(q, sizeof q, "%s/step-9.old/%s", root, files[i]);
        ck_write_file(q, b, n);
        free(b);
    }
    /* while it is cut short, a latest naming step-9 loads the aside copy */
    snprintf(q, sizeof q, "%s/latest", root);
    ck_write_file(q, "step-9\n", 7);
    ck_run b;
    ck_run_create(&b, &c, NULL, 4);
    CK_ASSERT_OK(moe_checkpoint_load(b.model, NULL, root, NULL, NULL, 0));

    save(&a, root, 2, 0);
    assert_int_equal(ck_count_entries(root, ".tmp-step-5-", 0), 0);
    assert_int_equal(ck_count_entries(root, ".tmp-step-7-", 0), 0);
    assert_int_equal(ck_count_entries(root, ".del-", 0), 0);
    assert_int_equal(ck_count_entries(root, "latest.tmp", 0), 0);
    assert_int_equal(ck_count_entries(root, ".tmp-step-6-", 0), 1);
    assert_true(has(root, "step-9") && !has(root, "step-9.old"));
    snprintf(p, sizeof p, "%s/step-9", root);
    CK_ASSERT_OK(moe_checkpoint_load(b.model, NULL, p, NULL, NULL, 0));
    ck_run_destroy(&a);
    ck_run_destroy(&b);
    ck_rmrf(root);
}

/* ---- arguments ------------------------------------------------------------------------------------ */

static void test_bad_args(void **state)
{
    (void)state;
    char root[512], p[8192];
    ck_make_temp(root, sizeof root, "args");
    moe_model_config c = full_config();
    moe_optimizer_config oc = adamw_config();
    ck_run a, o;
    ck_run_create(&a, &c, &oc, 4);
    ck_run_create(&o, &c, &oc, 4);
    moe_checkpoint_info info;
    info_for(&info, 1, 0, NULL);
    CK_ASSERT_FAILS(moe_checkpoint_save(NULL, a.opt, root, &info), MOE_ERR_INVALID_ARG, "'model'");
    CK_ASSERT_FAILS(moe_checkpoint_save(a.model, a.opt, NULL, &info), MOE_ERR_INVALID_ARG, "'root_dir'");
    CK_ASSERT_FAILS(moe_checkpoint_save(a.model, a.opt, "", &info), MOE_ERR_INVALID_ARG, "'root_dir'");
    CK_ASSERT_FAILS(moe_checkpoint_save(a.model, a.opt, root, NULL), MOE_ERR_INVALID_ARG, "'info'");
    CK_ASSERT_FAILS(moe_checkpoint_save(a.model, o.opt, root, &info), MOE_ERR_INVALID_ARG, "'opt'");
    info.struct_size = 0;
    CK_ASSERT_FAILS(moe_checkpoint_save(a.model, a.opt, root, &info), MOE_ERR_INVALID_ARG, "struct_size");
    info_for(&info, -1, 0, NULL);
    CK_ASSERT_FAILS(moe_checkpoint_save(a.model, a.opt, root, &info), MOE_ERR_INVALID_ARG, "info->step");
    info_for(&info, (1ll << 53) + 1, 0, NULL);
    CK_ASSERT_FAILS(moe_checkpoint_save(a.model, a.opt, root, &info), MOE_ERR_INVALID_ARG, "info->step");
    info_for(&info, 1, -1, NULL);
    CK_ASSERT_FAILS(moe_checkpoint_save(a.model, a.opt, root, &info), MOE_ERR_INVALID_ARG, "info->keep_last");
    info_for(&info, 1, 0, "bad \xff");
    CK_ASSERT_FAILS(moe_checkpoint_save(a.model, a.opt, root, &info), MOE_ERR_INVALID_ARG, "info->user_json");
    info_for(&info, 1, 0, NULL);
    info.data_position = -(1ll << 60);
    CK_ASSERT_FAILS(moe_checkpoint_save(a.model, a.opt, root, &info), MOE_ERR_INVALID_ARG, "info->data_position");
    memset(p, 'a', 5000);
    p[5000] = '\0';
    info_for(&info, 1, 0, NULL);
    CK_ASSERT_FAILS(moe_checkpoint_save(a.model, a.opt, p, &info), MOE_ERR_INVALID_ARG, "'root_dir'");
    snprintf(p, sizeof p, "%s/file", root);
    ck_write_file(p, "x", 1);
    CK_ASSERT_FAILS(moe_checkpoint_save(a.model, a.opt, p, &info), MOE_ERR_IO, "mkdir", "/file");
    snprintf(p, sizeof p, "%s/no/such/parent", root);
    CK_ASSERT_FAILS(moe_checkpoint_save(a.model, a.opt, p, &info), MOE_ERR_IO, "mkdir");
    assert_int_equal(ck_count_entries(root, "", 0), 1); /* nothing written by the failures */

    /* a valid save with a trainer text, then loads with bad arguments */
    snprintf(p, sizeof p, "%s/run", root);
    info_for(&info, 1, 0, "0123456789");
    CK_ASSERT_OK(moe_checkpoint_save(a.model, a.opt, p, &info));
    ck_state before;
    ck_snapshot(o.model, o.opt, &before);
    char buf[16];
    CK_ASSERT_FAILS(moe_checkpoint_load(NULL, o.opt, p, NULL, NULL, 0), MOE_ERR_INVALID_ARG, "'model'");
    CK_ASSERT_FAILS(moe_checkpoint_load(o.model, o.opt, NULL, NULL, NULL, 0), MOE_ERR_INVALID_ARG, "'dir'");
    CK_ASSERT_FAILS(moe_checkpoint_load(o.model, o.opt, "", NULL, NULL, 0), MOE_ERR_INVALID_ARG, "'dir'");
    CK_ASSERT_FAILS(moe_checkpoint_load(o.model, o.opt, p, NULL, NULL, 4), MOE_ERR_INVALID_ARG, "user_json_out");
    CK_ASSERT_FAILS(moe_checkpoint_load(o.model, o.opt, p, NULL, buf, 10), MOE_ERR_INVALID_ARG,
                    "user_json_capacity = 10", "11 bytes");
    moe_checkpoint_info bad;
    memset(&bad, 0, sizeof bad);
    CK_ASSERT_FAILS(moe_checkpoint_load(o.model, o.opt, p, &bad, NULL, 0), MOE_ERR_INVALID_ARG, "info_out");
    snprintf(buf, sizeof buf, "%s", "x");
    snprintf(p, sizeof p, "%s/missing", root);
    CK_ASSERT_FAILS(moe_checkpoint_load(o.model, o.opt, p, NULL, NULL, 0), MOE_ERR_IO, "holds neither");
    ck_state now;
    ck_snapshot(o.model, o.opt, &now);
    assert_true(ck_state_equal(&before, &now));
    ck_state_free(&now);
    ck_state_free(&before);
    snprintf(p, sizeof p, "%s/run", root);
    CK_ASSERT_OK(moe_checkpoint_load(o.model, o.opt, p, NULL, buf, 11));
    assert_string_equal(buf, "0123456789");
    moe_model_config rc;
    CK_ASSERT_FAILS(moe_checkpoint_read_config(NULL, &rc), MOE_ERR_INVALID_ARG, "'dir'");
    CK_ASSERT_FAILS(moe_checkpoint_read_config(p, NULL), MOE_ERR_INVALID_ARG, "'cfg'");
    rc.struct_size = 0;
    CK_ASSERT_FAILS(moe_checkpoint_read_config(p, &rc), MOE_ERR_INVALID_ARG, "struct_size");
    /* an older caller's shorter config: nothing written past it */
    unsigned char small[offsetof(moe_model_config, d_model) + 8];
    memset(small, 0x5a, sizeof small);
    uint32_t sz = (uint32_t)offsetof(moe_model_config, d_model);
    memcpy(small, &sz, sizeof sz);
    CK_ASSERT_OK(moe_checkpoint_read_config(p, (moe_model_config *)(void *)small));
    int32_t vocab;
    memcpy(&vocab, small + offsetof(moe_model_config, vocab_size), sizeof vocab);
    assert_int_equal(vocab, c.vocab_size);
    for (size_t i = sz; i < sizeof small; i++) assert_int_equal(small[i], 0x5a);
    CK_ASSERT_FAILS(moe_checkpoint_read_info(NULL, NULL, NULL, 0, NULL), MOE_ERR_INVALID_ARG, "'dir'");
    ck_run_destroy(&a);
    ck_run_destroy(&o);
    ck_rmrf(root);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_info_init),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_resume_adamw),
        cmocka_unit_test(test_resume_sgd),
        cmocka_unit_test(test_multi_slice_load),
        cmocka_unit_test(test_reshard_all),
        cmocka_unit_test(test_corrupt_tensor_byte),
        cmocka_unit_test(test_corrupt_index_checksum),
        cmocka_unit_test(test_truncated_files),
        cmocka_unit_test(test_bad_latest),
        cmocka_unit_test(test_mismatch),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_stale_cleanup),
        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* The C ABI as a binding sees it: dlopen the built libmoe (the test does not link it), resolve every
 * function of the generated table, prepare each call with libffi from the table's lowering of its types
 * (the way Julia's ccall lowers a call), lay out every struct from the binding's field types and compare
 * with the header's sizeof/offsetof and the description, then drive real sequences through ffi_call
 * alone: version, config init, ctx, mesh, a tiny model, optimizer, training steps, the error path with
 * its message, and a libffi closure registered as the log callback. */
#define _POSIX_C_SOURCE 200809L

#include <dlfcn.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <ffi.h>

#include "abi_types.h"

static const char *lib_path;
static void *lib;

/* ---- libffi types from the table ---------------------------------------------------------------- */

/* Every ffi_type built here lives until exit; struct types are built once per table entry. */
static ffi_type *struct_types[64];
static void *allocations[1024];
static size_t n_allocations;

static void *keep(size_t n)
{
    void *p = calloc(1, n);
    assert_non_null(p);
    assert_true(n_allocations < sizeof allocations / sizeof allocations[0]);
    allocations[n_allocations++] = p;
    return p;
}

static ffi_type *ffi_of(const abi_type *t);

static ffi_type *struct_type(long index)
{
    assert_true(index >= 0 && (size_t)index < abi_struct_count && index < 64);
    if (struct_types[index])
        return struct_types[index];
    const abi_struct *s = &abi_structs[index];
    ffi_type *st = keep(sizeof *st);
    ffi_type **elements = keep((s->nfields + 1) * sizeof *elements);
    for (size_t i = 0; i < s->nfields; i++)
        elements[i] = ffi_of(&s->fields[i].type);
    st->type = FFI_TYPE_STRUCT;
    st->elements = elements;
    struct_types[index] = st;
    return st;
}

/* The lowering: what a binding (and Julia's ccall) hands libffi for each kind. A fixed array is laid
 * out as a struct of its elements, which has the same size, alignment and element offsets. */
static ffi_type *ffi_of(const abi_type *t)
{
    switch (t->kind) {
    case ABI_VOID: return &ffi_type_void;
    case ABI_SINT8: return &ffi_type_sint8;
    case ABI_UINT8: return &ffi_type_uint8;
    case ABI_SINT16: return &ffi_type_sint16;
    case ABI_UINT16: return &ffi_type_uint16;
    case ABI_SINT32: return &ffi_type_sint32;
    case ABI_UINT32: return &ffi_type_uint32;
    case ABI_SINT64: return &ffi_type_sint64;
    case ABI_UINT64: return &ffi_type_uint64;
    case ABI_SIZE: return sizeof(size_t) == 8 ? &ffi_type_uint64 : &ffi_type_uint32;
    case ABI_FLOAT: return &ffi_type_float;
    case ABI_DOUBLE: return &ffi_type_double;
    case ABI_POINTER: return &ffi_type_pointer;
    case ABI_STRUCT: return struct_type(t->struct_index);
    case ABI_ARRAY: {
        ffi_type *at = keep(sizeof *at);
        ffi_type **elements = keep(((size_t)t->length + 1) * sizeof *elements);
        ffi_type *e = ffi_of(t->element);
        for (long i = 0; i < t->length; i++)
            elements[i] = e;
        at->type = FFI_TYPE_STRUCT;
        at->elements = elements;
        return at;
    }
    }
    fail_msg("unknown abi kind %d (%s)", (int)t->kind, t->c);
    return NULL;
}

/* ---- prepared calls ------------------------------------------------------------------------------- */

typedef struct prepared {
    const abi_function *f;
    void *sym;
    ffi_cif cif;
    ffi_type **args;
} prepared;

static prepared *calls; /* one per abi_functions entry */

static const abi_function *find_function(const abi_function *list, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(list[i].name, name))
            return &list[i];
    return NULL;
}

static void prep(ffi_cif *cif, const abi_function *f, ffi_type ***args_out)
{
    ffi_type **args = keep((f->nparams + 1) * sizeof *args);
    for (size_t j = 0; j < f->nparams; j++) {
        /* the lint keeps structs and arrays out of calls; a table saying otherwise is a bug */
        assert_true(f->params[j].type.kind != ABI_STRUCT && f->params[j].type.kind != ABI_ARRAY);
        args[j] = ffi_of(&f->params[j].type);
    }
    ffi_status st = ffi_prep_cif(cif, FFI_DEFAULT_ABI, (unsigned)f->nparams, ffi_of(&f->ret), args);
    if (st != FFI_OK)
        fail_msg("ffi_prep_cif(%s) failed: %d", f->name, (int)st);
    *args_out = args;
}

static int group_setup(void **state)
{
    (void)state;
    lib = dlopen(lib_path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen(%s): %s\n", lib_path, dlerror());
        return -1;
    }
    calls = keep(abi_function_count * sizeof *calls);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    /* lib stays loaded: the library's OpenMP workers may outlive a dlclose */
    for (size_t i = 0; i < n_allocations; i++)
        free(allocations[i]);
    n_allocations = 0;
    return 0;
}

static prepared *prepared_call(const char *name)
{
    const abi_function *f = find_function(abi_functions, abi_function_count, name);
    if (!f)
        fail_msg("%s is not in the ABI table", name);
    prepared *p = &calls[f - abi_functions];
    if (!p->sym) {
        p->f = f;
        p->sym = dlsym(lib, name);
        if (!p->sym)
            fail_msg("dlsym(%s): %s", name, dlerror());
        prep(&p->cif, f, &p->args);
    }
    return p;
}

/* Calls a function of the table through libffi only. args point at each argument's value. */
static void ffi_invoke(const char *name, void *ret, size_t ret_size, void **args)
{
    prepared *p = prepared_call(name);
    ffi_arg small; /* libffi widens integral returns smaller than a register to ffi_arg */
    ffi_call(&p->cif, FFI_FN(p->sym), ret ? (void *)&small : NULL, args);
    if (!ret)
        return;
    union {
        int32_t i32;
        uint32_t u32;
        unsigned char bytes[sizeof(ffi_arg)];
    } out;
    size_t n;
    switch (p->f->ret.kind) {
    case ABI_SINT32: out.i32 = (int32_t)small; n = sizeof out.i32; break;
    case ABI_UINT32: out.u32 = (uint32_t)small; n = sizeof out.u32; break;
    default: /* pointers, 64-bit integers, doubles: as wide as the return type */
        memcpy(out.bytes, &small, sizeof small);
        n = p->cif.rtype->size < sizeof small ? p->cif.rtype->size : sizeof small;
        break;
    }
    memcpy(ret, out.bytes, n < ret_size ? n : ret_size);
}

static int32_t call_status(const char *name, void **args)
{
    int32_t st = 0;
    ffi_invoke(name, &st, sizeof st, args);
    return st;
}

static const char *call_string(const char *name, void **args)
{
    const char *s = NULL;
    ffi_invoke(name, &s, sizeof s, args);
    return s;
}

/* ---- the table's constants and struct fields, as a binding reads them ------------------------------ */

static int64_t constant(const char *name)
{
    for (size_t i = 0; i < abi_constant_count; i++)
        if (!strcmp(abi_constants[i].name, name))
            return abi_constants[i].desc_value;
    fail_msg("constant %s is not in the table", name);
    return 0;
}

static const abi_struct *find_struct(const char *name)
{
    for (size_t i = 0; i < abi_struct_count; i++)
        if (!strcmp(abi_structs[i].name, name))
            return &abi_structs[i];
    fail_msg("struct %s is not in the table", name);
    return NULL;
}

static const abi_field *field_of(const char *sname, const char *fname)
{
    const abi_struct *s = find_struct(sname);
    for (size_t i = 0; i < s->nfields; i++)
        if (!strcmp(s->fields[i].name, fname))
            return &s->fields[i];
    fail_msg("%s has no field %s", sname, fname);
    return NULL;
}

/* A struct in memory the binding owns, sized and aligned from the table (not from the header). */
typedef struct cstruct {
    _Alignas(16) unsigned char bytes[512];
    const char *name;
} cstruct;

static void cstruct_init(cstruct *c, const char *name)
{
    memset(c, 0, sizeof *c);
    c->name = name;
    assert_true(find_struct(name)->desc_size <= sizeof c->bytes);
}

static void set_num(cstruct *c, const char *field, double v)
{
    const abi_field *f = field_of(c->name, field);
    unsigned char *at = c->bytes + f->desc_offset;
    switch (f->type.kind) {
    case ABI_SINT32: { int32_t x = (int32_t)v; memcpy(at, &x, sizeof x); break; }
    case ABI_UINT32: { uint32_t x = (uint32_t)v; memcpy(at, &x, sizeof x); break; }
    case ABI_SINT64: { int64_t x = (int64_t)v; memcpy(at, &x, sizeof x); break; }
    case ABI_UINT64: { uint64_t x = (uint64_t)v; memcpy(at, &x, sizeof x); break; }
    case ABI_FLOAT: { float x = (float)v; memcpy(at, &x, sizeof x); break; }
    case ABI_DOUBLE: memcpy(at, &v, sizeof v); break;
    default: fail_msg("%s.%s is not a number (%s)", c->name, field, f->type.c);
    }
}

static double get_num(const cstruct *c, const char *field)
{
    const abi_field *f = field_of(c->name, field);
    const unsigned char *at = c->bytes + f->desc_offset;
    switch (f->type.kind) {
    case ABI_SINT32: { int32_t x; memcpy(&x, at, sizeof x); return x; }
    case ABI_UINT32: { uint32_t x; memcpy(&x, at, sizeof x); return x; }
    case ABI_SINT64: { int64_t x; memcpy(&x, at, sizeof x); return (double)x; }
    case ABI_UINT64: { uint64_t x; memcpy(&x, at, sizeof x); return (double)x; }
    case ABI_FLOAT: { float x; memcpy(&x, at, sizeof x); return x; }
    case ABI_DOUBLE: { double x; memcpy(&x, at, sizeof x); return x; }
    default: fail_msg("%s.%s is not a number (%s)", c->name, field, f->type.c);
    }
    return 0;
}

static void set_ptr(cstruct *c, const char *field, const void *p)
{
    const abi_field *f = field_of(c->name, field);
    assert_int_equal(f->type.kind, ABI_POINTER);
    memcpy(c->bytes + f->desc_offset, &p, sizeof p);
}

/* moe_x_config_init(&cfg, size) through libffi, with the size the binding believes in. */
static void config_init(cstruct *c, const char *init, const char *sname)
{
    cstruct_init(c, sname);
    void *p = c->bytes;
    uint32_t size = (uint32_t)find_struct(sname)->desc_size;
    void *args[] = {&p, &size};
    assert_int_equal(call_status(init, args), 0);
    assert_int_equal((uint32_t)get_num(c, "struct_size"), size);
}

/* ---- tests: the table against the library and the header ------------------------------------------- */

static void test_every_function_resolves_and_prepares(void **state)
{
    (void)state;
    assert_true(abi_function_count > 0);
    for (size_t i = 0; i < abi_function_count; i++) {
        prepared *p = prepared_call(abi_functions[i].name);
        assert_non_null(p->sym);
        assert_int_equal(p->cif.nargs, abi_functions[i].nparams);
    }
}

static void test_callbacks_prepare(void **state)
{
    (void)state;
    for (size_t i = 0; i < abi_callback_count; i++) {
        const abi_function *cb = &abi_callbacks[i];
        ffi_cif cif;
        ffi_type **args;
        prep(&cif, cb, &args);
        /* API_STYLE rule 12: user_data comes last, so bindings can pass their own state */
        assert_true(cb->nparams >= 1);
        assert_int_equal(cb->params[cb->nparams - 1].type.kind, ABI_POINTER);
        assert_string_equal(cb->params[cb->nparams - 1].name, "user_data");
    }
}

static void test_struct_layouts(void **state)
{
    (void)state;
    assert_true(abi_struct_count > 0);
    for (size_t i = 0; i < abi_struct_count; i++) {
        const abi_struct *s = &abi_structs[i];
        ffi_type *t = struct_type((long)i);
        size_t offsets[256];
        assert_true(s->nfields <= 256);
        /* lays the struct out from the binding's field types, as Julia lays out its isbits mirror */
        assert_int_equal(ffi_get_struct_offsets(FFI_DEFAULT_ABI, t, offsets), FFI_OK);
        if (t->size != s->c_size || s->desc_size != s->c_size)
            fail_msg("%s: binding %zu bytes, description %zu, header %zu", s->name, t->size, s->desc_size,
                     s->c_size);
        if (t->alignment != s->c_align || s->desc_align != s->c_align)
            fail_msg("%s: binding align %u, description %zu, header %zu", s->name, (unsigned)t->alignment,
                     s->desc_align, s->c_align);
        for (size_t j = 0; j < s->nfields; j++) {
            const abi_field *f = &s->fields[j];
            if (offsets[j] != f->c_offset || f->desc_offset != f->c_offset)
                fail_msg("%s.%s: binding offset %zu, description %zu, header %zu", s->name, f->name, offsets[j],
                         f->desc_offset, f->c_offset);
        }
    }
}

static void test_constants_match_header(void **state)
{
    (void)state;
    for (size_t i = 0; i < abi_constant_count; i++)
        if (abi_constants[i].desc_value != abi_constants[i].c_value)
            fail_msg("%s: description %lld, header %lld", abi_constants[i].name,
                     (long long)abi_constants[i].desc_value, (long long)abi_constants[i].c_value);
}

static void test_every_handle_has_destroy(void **state)
{
    (void)state;
    assert_true(abi_handle_count > 0);
    for (size_t i = 0; i < abi_handle_count; i++) {
        const abi_handle *h = &abi_handles[i];
        if (!h->destroy)
            fail_msg("handle %s has no destroy function: a binding could not free it", h->name);
        const abi_function *d = find_function(abi_functions, abi_function_count, h->destroy);
        assert_non_null(d);
        assert_int_equal(d->ret.kind, ABI_VOID);
        assert_int_equal(d->nparams, 1);
        assert_int_equal(d->params[0].type.kind, ABI_POINTER);
        /* destroy(NULL) is a no-op: finalizers of never-created handles call it */
        void *null = NULL;
        void *args[] = {&null};
        ffi_invoke(h->destroy, NULL, 0, args);
    }
}

/* ---- tests: real sequences through ffi_call ---------------------------------------------------------- */

static void test_version(void **state)
{
    (void)state;
    int32_t major = -1, minor = -1, patch = -1;
    int32_t *pm = &major, *pn = &minor, *pp = &patch;
    void *args[] = {&pm, &pn, &pp};
    const char *v = call_string("moe_version", args);
    assert_non_null(v);
    assert_string_equal(v, abi_library_version);
    assert_int_equal(major, constant("MOE_VERSION_MAJOR"));
    assert_int_equal(minor, constant("MOE_VERSION_MINOR"));
    assert_int_equal(patch, constant("MOE_VERSION_PATCH"));
    int32_t st = (int32_t)constant("MOE_ERR_INVALID_ARG");
    void *sargs[] = {&st};
    assert_string_equal(call_string("moe_status_string", sargs), "MOE_ERR_INVALID_ARG");
}

typedef struct env {
    void *ctx, *mesh;
} env;

static void env_open(env *e, const cstruct *ctx_cfg)
{
    e->ctx = e->mesh = NULL;
    const void *cfg = ctx_cfg ? ctx_cfg->bytes : NULL;
    void **out = &e->ctx;
    void *args[] = {&cfg, &out};
    assert_int_equal(call_status("moe_ctx_create", args), 0);
    assert_non_null(e->ctx);
    const void *no_cfg = NULL;
    void **mout = &e->mesh;
    void *margs[] = {&e->ctx, &no_cfg, &mout};
    assert_int_equal(call_status("moe_mesh_create", margs), 0);
    assert_non_null(e->mesh);
}

static void env_close(env *e)
{
    void *margs[] = {&e->mesh};
    ffi_invoke("moe_mesh_destroy", NULL, 0, margs);
    void *cargs[] = {&e->ctx};
    ffi_invoke("moe_ctx_destroy", NULL, 0, cargs);
}

static void tiny_model_config(cstruct *c)
{
    config_init(c, "moe_model_config_init", "moe_model_config");
    set_num(c, "vocab_size", 13);
    set_num(c, "max_seq_len", 16);
    set_num(c, "d_model", 8);
    set_num(c, "num_layers", 2);
    set_num(c, "num_heads", 2);
    set_num(c, "num_kv_heads", 1);
    set_num(c, "head_dim", 4);
    set_num(c, "ffn_hidden", 12);
    set_num(c, "moe_num_experts", 4);
    set_num(c, "moe_top_k", 2);
    set_num(c, "moe_expert_hidden", 6);
    set_num(c, "init_std", 0.05);
}

static void test_training_sequence(void **state)
{
    (void)state;
    cstruct cc;
    config_init(&cc, "moe_ctx_config_init", "moe_ctx_config");
    assert_int_equal((int64_t)get_num(&cc, "seed"), 1234); /* the documented default */
    set_num(&cc, "seed", 7);
    set_num(&cc, "num_threads", 1);
    env e;
    env_open(&e, &cc);

    cstruct mc;
    tiny_model_config(&mc);
    void *model = NULL, **mout = &model;
    const void *mcfg = mc.bytes;
    void *cargs[] = {&e.ctx, &e.mesh, &mcfg, &mout};
    assert_int_equal(call_status("moe_model_create", cargs), 0);

    int64_t total = 0, *ptotal = &total, *pactive = NULL;
    void *nargs[] = {&model, &ptotal, &pactive};
    assert_int_equal(call_status("moe_model_num_params", nargs), 0);
    assert_true(total > 0);

    cstruct oc;
    config_init(&oc, "moe_optimizer_config_init", "moe_optimizer_config");
    set_num(&oc, "lr", 1e-2);
    void *opt = NULL, **oout = &opt;
    const void *ocfg = oc.bytes;
    void *oargs[] = {&model, &ocfg, &oout};
    assert_int_equal(call_status("moe_optimizer_create", oargs), 0);

    enum { MBS = 4, SEQ = 8 };
    int32_t tok[MBS * SEQ], tgt[MBS * SEQ];
    for (int i = 0; i < MBS * SEQ; i++) {
        tok[i] = (i * 5 + i / SEQ) % 13;
        tgt[i] = (tok[i] + 1) % 13; /* a pattern the model can learn */
    }
    cstruct batch;
    config_init(&batch, "moe_batch_init", "moe_batch");
    set_ptr(&batch, "tokens", tok);
    set_ptr(&batch, "targets", tgt);
    set_num(&batch, "micro_batch_size", MBS);
    set_num(&batch, "seq_len", SEQ);
    set_num(&batch, "num_micro_batches", 1);
    cstruct stats;
    cstruct_init(&stats, "moe_step_stats");
    set_num(&stats, "struct_size", (double)find_struct("moe_step_stats")->desc_size);

    double first = 0, last = 0;
    const void *pb = batch.bytes;
    void *ps = stats.bytes;
    void *sargs[] = {&model, &opt, &pb, &ps};
    for (int step = 0; step < 25; step++) {
        assert_int_equal(call_status("moe_train_step", sargs), 0);
        assert_int_equal((int64_t)get_num(&stats, "step"), step + 1);
        assert_int_equal((int64_t)get_num(&stats, "tokens"), MBS * SEQ);
        assert_int_equal((int64_t)get_num(&stats, "skipped"), 0);
        double loss = get_num(&stats, "loss");
        assert_true(isfinite(loss));
        if (step == 0)
            first = loss;
        last = loss;
    }
    assert_true(fabs(first - log(13.0)) < 0.5); /* a fresh model is close to uniform */
    assert_true(last < 0.6 * first);

    /* the logits of the trained model predict the pattern's next token */
    float logits[SEQ * 13];
    float *pl = logits;
    int32_t one = 1, seq = SEQ;
    uint64_t cap = SEQ * 13;
    const int32_t *pt = tok;
    void *fargs[] = {&model, &pt, &one, &seq, &pl, &cap};
    assert_int_equal(call_status("moe_model_forward", fargs), 0);
    int right = 0;
    for (int i = 0; i < SEQ; i++) {
        int best = 0;
        for (int v = 1; v < 13; v++)
            if (logits[i * 13 + v] > logits[i * 13 + best])
                best = v;
        right += best == tgt[i];
    }
    assert_true(right >= SEQ / 2);

    void *dargs[] = {&opt};
    ffi_invoke("moe_optimizer_destroy", NULL, 0, dargs);
    void *dmargs[] = {&model};
    ffi_invoke("moe_model_destroy", NULL, 0, dmargs);
    env_close(&e);
}

static void test_error_path_with_message(void **state)
{
    (void)state;
    cstruct mc;
    tiny_model_config(&mc);
    set_num(&mc, "d_model", 0);
    const void *cfg = mc.bytes;
    void *vargs[] = {&cfg};
    assert_int_equal(call_status("moe_model_config_validate", vargs), constant("MOE_ERR_INVALID_ARG"));
    const char *msg = call_string("moe_last_error", NULL);
    assert_non_null(msg);
    if (!strstr(msg, "d_model"))
        fail_msg("message '%s' does not name d_model", msg);

    env e;
    env_open(&e, NULL);
    void *model = NULL, **mout = &model;
    void *cargs[] = {&e.ctx, &e.mesh, &cfg, &mout};
    assert_int_equal(call_status("moe_model_create", cargs), constant("MOE_ERR_INVALID_ARG"));
    assert_null(model); /* failure leaves the out-parameter untouched */
    void *largs[] = {&e.ctx};
    const char *ctx_msg = call_string("moe_ctx_last_error", largs);
    if (!strstr(ctx_msg, "d_model"))
        fail_msg("ctx message '%s' does not name d_model", ctx_msg);
    env_close(&e);
}

/* The log callback: a libffi closure, as a binding makes one for its own function. */
typedef struct log_seen {
    int calls;
    int32_t level;
    char message[512];
    void *user_data;
} log_seen;

static void log_closure(ffi_cif *cif, void *ret, void **args, void *data)
{
    (void)cif;
    (void)ret;
    log_seen *seen = data;
    seen->calls++;
    seen->level = *(int32_t *)args[0];
    snprintf(seen->message, sizeof seen->message, "%s", *(const char **)args[1]);
    seen->user_data = *(void **)args[2];
}

static void test_log_callback_closure(void **state)
{
    (void)state;
    const abi_function *cb = find_function(abi_callbacks, abi_callback_count, "moe_log_fn");
    assert_non_null(cb);
    ffi_cif cif;
    ffi_type **args;
    prep(&cif, cb, &args);
    void *code = NULL;
    ffi_closure *closure = ffi_closure_alloc(sizeof(ffi_closure), &code);
    assert_non_null(closure);
    log_seen seen = {0};
    assert_int_equal(ffi_prep_closure_loc(closure, &cif, log_closure, &seen, code), FFI_OK);

    cstruct cc;
    config_init(&cc, "moe_ctx_config_init", "moe_ctx_config");
    set_ptr(&cc, "log_fn", code);
    set_ptr(&cc, "log_user_data", &seen);
    set_num(&cc, "log_level", (double)constant("MOE_LOG_DEBUG"));
    env e;
    env_open(&e, &cc);
    seen.calls = 0;

    cstruct mc;
    tiny_model_config(&mc);
    set_num(&mc, "num_kv_heads", 5); /* more kv heads than the 2 query heads */
    const void *cfg = mc.bytes;
    void *model = NULL, **mout = &model;
    void *cargs[] = {&e.ctx, &e.mesh, &cfg, &mout};
    assert_int_equal(call_status("moe_model_create", cargs), constant("MOE_ERR_INVALID_ARG"));
    assert_true(seen.calls >= 1);
    assert_int_equal(seen.level, constant("MOE_LOG_ERROR"));
    assert_ptr_equal(seen.user_data, &seen);
    void *largs[] = {&e.ctx};
    const char *ctx_msg = call_string("moe_ctx_last_error", largs);
    if (!strstr(seen.message, "num_kv_heads") || !strstr(ctx_msg, "num_kv_heads"))
        fail_msg("logged '%s', ctx error '%s': neither should miss num_kv_heads", seen.message, ctx_msg);
    env_close(&e);
    ffi_closure_free(closure);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PATH_TO_LIBMOE_SO\n", argv[0]);
        return 2;
    }
    lib_path = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_function_resolves_and_prepares),
        cmocka_unit_test(test_callbacks_prepare),
        cmocka_unit_test(test_struct_layouts),
        cmocka_unit_test(test_constants_match_header),
        cmocka_unit_test(test_every_handle_has_destroy),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_training_sequence),
        cmocka_unit_test(test_error_path_with_message),
        cmocka_unit_test(test_log_callback_closure),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

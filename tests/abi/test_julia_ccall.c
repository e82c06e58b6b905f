/* The Julia binding, checked without Julia: parses every @ccall, struct, alias and constant of the
 * generated bindings/julia/src/LibMoe.jl and compares each type with the ABI table (the same type map
 * wrote both), lowering each Julia type by this file's own rules (as ccall lowers it) so a wrong entry
 * in the type map shows up as a libffi-kind mismatch; then checks the hand-written package: every
 * handle has a mutable wrapper that registers a finalizer, closes through Base.close and calls its
 * destroy, and every public function is used by the package (called, or handed on as a function,
 * e.g. a config's init). Wrapper convention the parser relies on: a wrapper's `mutable struct` starts
 * at column 0 and ends at the next line that is exactly "end". */
#define _POSIX_C_SOURCE 200809L

#include <ctype.h>
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "abi_types.h"

static const char *julia_dir;
static char *libmoe_jl; /* the generated module's text */
static char *wrappers;  /* every other .jl file of src, concatenated, comment lines removed */

/* ---- text helpers ------------------------------------------------------------------------------------ */

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, len = 0;
    char *p = malloc(cap);
    size_t n;
    while (p && (n = fread(p + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 2) {
            char *q = realloc(p, cap * 2);
            if (!q) {
                free(p);
                p = NULL;
                break;
            }
            p = q;
            cap *= 2;
        }
    }
    fclose(f);
    if (p)
        p[len] = '\0';
    return p;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

/* Drops a trailing "# comment" (LibMoe.jl's declarations hold no '#' inside strings). */
static void strip_comment(char *line)
{
    char *h = strchr(line, '#');
    if (h)
        *h = '\0';
}

/* ---- what LibMoe.jl declares ------------------------------------------------------------------------ */

typedef struct decl {
    char name[128];
    char rhs[256];
} decl;

static decl aliases[256]; /* const NAME = TYPE */
static size_t n_aliases;
static decl constants[512]; /* const NAME = [T(]VALUE[)] */
static size_t n_constants;
static char handles[64][128];
static size_t n_handles;

typedef struct jl_field {
    char name[128];
    char type[256];
} jl_field;

typedef struct jl_struct {
    char name[128];
    jl_field fields[128];
    size_t nfields;
} jl_struct;

static jl_struct structs[64];
static size_t n_structs;

typedef struct jl_ccall {
    char lib[64];
    char name[128];
    char params[32][2][256]; /* name, type */
    size_t nparams;
    char ret[256];
    int seen;
} jl_ccall;

static jl_ccall ccalls[256];
static size_t n_ccalls;

static int is_type_name(const char *s)
{
    /* a bare Julia type (Int32, Ptr{Cvoid}, ...) as opposed to a value or an expression */
    return isupper((unsigned char)s[0]) && !strchr(s, '(');
}

/* Splits "a::T, b::Ptr{X}" at the commas outside braces. */
static size_t split_args(char *s, char *out[32])
{
    size_t n = 0;
    int depth = 0;
    char *start = s;
    if (!*trim(s))
        return 0;
    for (char *p = s;; p++) {
        if (*p == '{' || *p == '(')
            depth++;
        else if (*p == '}' || *p == ')')
            depth--;
        if ((*p == ',' && depth == 0) || !*p) {
            int end = !*p;
            *p = '\0';
            assert_true(n < 32);
            out[n++] = trim(start);
            if (end)
                break;
            start = p + 1;
        }
    }
    return n;
}

static void parse_ccall(char *line)
{
    char *s = strstr(line, "@ccall ") + strlen("@ccall ");
    jl_ccall *c = &ccalls[n_ccalls++];
    assert_true(n_ccalls <= sizeof ccalls / sizeof ccalls[0]);
    char *dot = strchr(s, '.'), *open = strchr(s, '(');
    if (!dot || !open || dot > open)
        fail_msg("cannot parse @ccall line: %s", line);
    snprintf(c->lib, sizeof c->lib, "%.*s", (int)(dot - s), s);
    snprintf(c->name, sizeof c->name, "%.*s", (int)(open - dot - 1), dot + 1);
    int depth = 0;
    char *close = NULL;
    for (char *p = open; *p; p++) {
        if (*p == '(')
            depth++;
        else if (*p == ')' && --depth == 0) {
            close = p;
            break;
        }
    }
    if (!close || strncmp(close, ")::", 3))
        fail_msg("@ccall %s: no ')::Ret'", c->name);
    char ret[256];
    snprintf(ret, sizeof ret, "%s", close + 3);
    snprintf(c->ret, sizeof c->ret, "%s", trim(ret));
    *close = '\0';
    char *args[32];
    size_t n = split_args(open + 1, args);
    for (size_t i = 0; i < n; i++) {
        char *sep = strstr(args[i], "::");
        if (!sep)
            fail_msg("@ccall %s: argument '%s' has no ::Type", c->name, args[i]);
        *sep = '\0';
        snprintf(c->params[i][0], sizeof c->params[i][0], "%s", trim(args[i]));
        snprintf(c->params[i][1], sizeof c->params[i][1], "%s", trim(sep + 2));
    }
    c->nparams = n;
}

static void parse_libmoe(void)
{
    char *text = strdup(libmoe_jl);
    assert_non_null(text);
    jl_struct *open_struct = NULL;
    int in_doc = 0; /* docstrings open and close with a line of three quotes */
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (!strcmp(line, "\"\"\"")) {
            in_doc = !in_doc;
            continue;
        }
        if (in_doc)
            continue;
        const char *lead = line;
        while (*lead == ' ')
            lead++;
        if (!strncmp(lead, "@ccall ", 7)) {
            parse_ccall(line);
            continue;
        }
        strip_comment(line);
        char *t = trim(line);
        if (open_struct) {
            if (!strcmp(t, "end")) {
                open_struct = NULL;
                continue;
            }
            char *sep = strstr(t, "::");
            if (!sep)
                fail_msg("struct %s: cannot parse field '%s'", open_struct->name, t);
            *sep = '\0';
            jl_field *f = &open_struct->fields[open_struct->nfields++];
            assert_true(open_struct->nfields <= 128);
            snprintf(f->name, sizeof f->name, "%s", trim(t));
            snprintf(f->type, sizeof f->type, "%s", trim(sep + 2));
            continue;
        }
        char name[128];
        if (sscanf(t, "mutable struct %127s end", name) == 1 && strstr(t, " end")) {
            assert_true(n_handles < 64);
            snprintf(handles[n_handles++], sizeof handles[0], "%s", name);
        } else if (!strncmp(t, "struct ", 7)) {
            assert_true(n_structs < 64);
            open_struct = &structs[n_structs++];
            snprintf(open_struct->name, sizeof open_struct->name, "%s", trim(t + 7));
        } else if (!strncmp(t, "const ", 6) && strchr(t, '=')) {
            char *eq = strchr(t, '=');
            *eq = '\0';
            char *lhs = trim(t + 6), *rhs = trim(eq + 1);
            decl *d;
            if (!strcmp(rhs, "let"))
                continue; /* the library path */
            if (is_type_name(rhs)) {
                assert_true(n_aliases < 256);
                d = &aliases[n_aliases++];
            } else {
                assert_true(n_constants < 512);
                d = &constants[n_constants++];
            }
            snprintf(d->name, sizeof d->name, "%s", lhs);
            snprintf(d->rhs, sizeof d->rhs, "%s", rhs);
        }
    }
    free(text);
}

/* ---- lowering Julia types, as ccall does ----------------------------------------------------------- */

static int is_struct(const char *name)
{
    for (size_t i = 0; i < n_structs; i++)
        if (!strcmp(structs[i].name, name))
            return 1;
    return 0;
}

static int is_handle(const char *name)
{
    for (size_t i = 0; i < n_handles; i++)
        if (!strcmp(handles[i], name))
            return 1;
    return 0;
}

static const char *alias_of(const char *name)
{
    for (size_t i = 0; i < n_aliases; i++)
        if (!strcmp(aliases[i].name, name))
            return aliases[i].rhs;
    return NULL;
}

/* Returns the abi_kind of a Julia type, or -1 when Julia would not know the type. */
static int lower(const char *t, int behind_pointer)
{
    static const struct {
        const char *jl;
        abi_kind kind;
    } prims[] = {
        {"Int8", ABI_SINT8},   {"UInt8", ABI_UINT8},     {"Int16", ABI_SINT16},   {"UInt16", ABI_UINT16},
        {"Int32", ABI_SINT32}, {"UInt32", ABI_UINT32},   {"Int64", ABI_SINT64},   {"UInt64", ABI_UINT64},
        {"Cint", ABI_SINT32},  {"Cuint", ABI_UINT32},    {"Csize_t", ABI_SIZE},   {"Float32", ABI_FLOAT},
        {"Float64", ABI_DOUBLE}, {"Cfloat", ABI_FLOAT},  {"Cdouble", ABI_DOUBLE}, {"Cvoid", ABI_VOID},
        {"Cstring", ABI_POINTER},
    };
    for (size_t i = 0; i < sizeof prims / sizeof prims[0]; i++)
        if (!strcmp(t, prims[i].jl))
            return (int)prims[i].kind;
    size_t n = strlen(t);
    if (!strncmp(t, "Ptr{", 4) && n > 5 && t[n - 1] == '}') {
        char inner[256];
        snprintf(inner, sizeof inner, "%.*s", (int)(n - 5), t + 4);
        return lower(inner, 1) >= 0 ? ABI_POINTER : -1;
    }
    if (!strncmp(t, "NTuple{", 7) && n > 8 && t[n - 1] == '}') {
        char inner[256];
        snprintf(inner, sizeof inner, "%.*s", (int)(n - 8), t + 7);
        char *comma = strchr(inner, ',');
        if (!comma || atoi(inner) <= 0)
            return -1;
        return lower(trim(comma + 1), 0) >= 0 ? ABI_ARRAY : -1;
    }
    const char *a = alias_of(t);
    if (a)
        return lower(a, behind_pointer);
    if (is_struct(t))
        return ABI_STRUCT;
    if (is_handle(t))
        return behind_pointer ? 0 : -1; /* an opaque type exists only behind Ptr */
    return -1;
}

static void check_type(const char *what, const char *jl, const abi_type *want)
{
    if (strcmp(jl, want->julia))
        fail_msg("%s: LibMoe.jl has %s, the table (type map) %s for C %s", what, jl, want->julia, want->c);
    int k = lower(jl, 0);
    if (k != (int)want->kind)
        fail_msg("%s: Julia lowers %s to kind %d, libffi is given kind %d for C %s", what, jl, k,
                 (int)want->kind, want->c);
}

static int name_matches(const char *jl, const char *c)
{
    /* a Julia keyword gets a trailing underscore */
    size_t n = strlen(c);
    return !strcmp(jl, c) || (!strncmp(jl, c, n) && !strcmp(jl + n, "_"));
}

/* ---- setup ---------------------------------------------------------------------------------------- */

static int setup(void **state)
{
    (void)state;
    char path[4096];
    snprintf(path, sizeof path, "%s/src/LibMoe.jl", julia_dir);
    libmoe_jl = slurp(path);
    if (!libmoe_jl) {
        fprintf(stderr, "cannot read %s\n", path);
        return -1;
    }
    snprintf(path, sizeof path, "%s/src", julia_dir);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    size_t len = 0, cap = 1;
    wrappers = calloc(1, 1);
    char *names[64];
    size_t n_names = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t n = strlen(e->d_name);
        if (n > 3 && !strcmp(e->d_name + n - 3, ".jl") && strcmp(e->d_name, "LibMoe.jl") && n_names < 64)
            names[n_names++] = strdup(e->d_name);
    }
    closedir(d);
    for (size_t i = 0; i < n_names; i++) {
        snprintf(path, sizeof path, "%s/src/%s", julia_dir, names[i]);
        char *t = slurp(path);
        free(names[i]);
        if (!t)
            return -1;
        /* drop comment lines so a mention in a comment does not count as a call */
        for (char *line = strtok(t, "\n"); line; line = strtok(NULL, "\n")) {
            char *s = line;
            while (*s == ' ')
                s++;
            if (*s == '#')
                continue;
            size_t n = strlen(line);
            if (len + n + 2 > cap) {
                while (len + n + 2 > cap)
                    cap *= 2;
                wrappers = realloc(wrappers, cap);
                if (!wrappers)
                    return -1;
            }
            memcpy(wrappers + len, line, n);
            len += n;
            wrappers[len++] = '\n';
            wrappers[len] = '\0';
        }
        free(t);
    }
    parse_libmoe();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    free(libmoe_jl);
    free(wrappers);
    return 0;
}

/* ---- tests ---------------------------------------------------------------------------------------- */

static void test_every_function_has_one_matching_ccall(void **state)
{
    (void)state;
    assert_true(n_ccalls > 0);
    for (size_t i = 0; i < abi_function_count; i++) {
        const abi_function *f = &abi_functions[i];
        jl_ccall *c = NULL;
        for (size_t j = 0; j < n_ccalls; j++)
            if (!strcmp(ccalls[j].name, f->name)) {
                if (c)
                    fail_msg("%s has two @ccall lines", f->name);
                c = &ccalls[j];
            }
        if (!c)
            fail_msg("%s has no @ccall in LibMoe.jl", f->name);
        c->seen = 1;
        char what[300];
        snprintf(what, sizeof what, "%s return", f->name);
        check_type(what, c->ret, &f->ret);
        if (c->nparams != f->nparams)
            fail_msg("%s: @ccall passes %zu arguments, C takes %zu", f->name, c->nparams, f->nparams);
        for (size_t p = 0; p < f->nparams; p++) {
            if (!name_matches(c->params[p][0], f->params[p].name))
                fail_msg("%s: argument %zu is %s, C calls it %s", f->name, p, c->params[p][0], f->params[p].name);
            snprintf(what, sizeof what, "%s(%s)", f->name, f->params[p].name);
            check_type(what, c->params[p][1], &f->params[p].type);
        }
    }
    for (size_t j = 0; j < n_ccalls; j++) {
        if (!ccalls[j].seen)
            fail_msg("@ccall of %s, which the API does not have", ccalls[j].name);
        if (strcmp(ccalls[j].lib, "libmoe"))
            fail_msg("@ccall of %s goes to %s, not libmoe", ccalls[j].name, ccalls[j].lib);
    }
}

static void test_structs_match_table(void **state)
{
    (void)state;
    assert_int_equal(n_structs, abi_struct_count);
    for (size_t i = 0; i < abi_struct_count; i++) {
        const abi_struct *s = &abi_structs[i];
        const jl_struct *j = &structs[i]; /* same order: a nested struct is defined before its use */
        assert_string_equal(j->name, s->name);
        if (j->nfields != s->nfields)
            fail_msg("%s: Julia has %zu fields, C %zu", s->name, j->nfields, s->nfields);
        for (size_t f = 0; f < s->nfields; f++) {
            if (!name_matches(j->fields[f].name, s->fields[f].name))
                fail_msg("%s: field %zu is %s in Julia, %s in C", s->name, f, j->fields[f].name, s->fields[f].name);
            char what[300];
            snprintf(what, sizeof what, "%s.%s", s->name, s->fields[f].name);
            check_type(what, j->fields[f].type, &s->fields[f].type);
        }
    }
}

static void test_constants_and_handles(void **state)
{
    (void)state;
    for (size_t i = 0; i < abi_constant_count; i++) {
        const decl *d = NULL;
        for (size_t j = 0; j < n_constants; j++)
            if (!strcmp(constants[j].name, abi_constants[i].name))
                d = &constants[j];
        if (!d)
            fail_msg("LibMoe.jl lacks the constant %s", abi_constants[i].name);
        const char *v = strchr(d->rhs, '(') ? strchr(d->rhs, '(') + 1 : d->rhs; /* Int32(5) or 5 */
        if (strtoll(v, NULL, 10) != abi_constants[i].c_value)
            fail_msg("%s = %s in LibMoe.jl, %lld in the header", d->name, d->rhs, (long long)abi_constants[i].c_value);
    }
    for (size_t i = 0; i < abi_handle_count; i++)
        if (!is_handle(abi_handles[i].name))
            fail_msg("LibMoe.jl lacks the opaque type %s", abi_handles[i].name);
}

/* The body of the top-level `mutable struct` that holds a Ptr{LibMoe.<handle>}, or NULL. */
static char *wrapper_of(const char *handle, char *name, size_t name_cap)
{
    char field[256];
    snprintf(field, sizeof field, "::Ptr{LibMoe.%s}", handle);
    for (char *p = strstr(wrappers, "mutable struct "); p; p = strstr(p + 1, "mutable struct ")) {
        if (p != wrappers && p[-1] != '\n')
            continue;
        char *end = strstr(p, "\nend\n");
        if (!end)
            return NULL;
        size_t n = (size_t)(end - p);
        char *body = malloc(n + 1);
        assert_non_null(body);
        memcpy(body, p, n);
        body[n] = '\0';
        if (strstr(body, field)) {
            sscanf(p, "mutable struct %127[A-Za-z0-9_]", name);
            (void)name_cap;
            return body;
        }
        free(body);
    }
    return NULL;
}

static void test_every_handle_has_a_wrapper_with_finalizer(void **state)
{
    (void)state;
    for (size_t i = 0; i < abi_handle_count; i++) {
        const abi_handle *h = &abi_handles[i];
        char name[128] = "";
        char *body = wrapper_of(h->name, name, sizeof name);
        if (!body)
            fail_msg("no mutable struct in bindings/julia/src holds a Ptr{LibMoe.%s}", h->name);
        if (!strstr(body, "finalizer("))
            fail_msg("%s (wrapper of %s) registers no finalizer", name, h->name);
        free(body);
        assert_non_null(h->destroy);
        char call[256];
        snprintf(call, sizeof call, "LibMoe.%s(", h->destroy);
        if (!strstr(wrappers, call))
            fail_msg("the package never calls %s, so %s is never freed", h->destroy, name);
        /* idempotent close: the wrapper defines Base.close for its type */
        char close_def[256];
        snprintf(close_def, sizeof close_def, "Base.close(x::%s)", name);
        if (!strstr(wrappers, close_def))
            fail_msg("no %s", close_def);
    }
}

/* Whether text names LibMoe.<name> as a whole identifier (called, or passed as a function). */
static int mentions(const char *text, const char *name)
{
    char token[256];
    snprintf(token, sizeof token, "LibMoe.%s", name);
    size_t n = strlen(token);
    for (const char *p = strstr(text, token); p; p = strstr(p + 1, token)) {
        char next = p[n];
        if (!isalnum((unsigned char)next) && next != '_')
            return 1;
    }
    return 0;
}

static void test_every_function_is_reachable(void **state)
{
    (void)state;
    if (!strstr(wrappers, "include(\"LibMoe.jl\")"))
        fail_msg("the package does not include LibMoe.jl");
    for (size_t i = 0; i < abi_function_count; i++)
        if (!mentions(wrappers, abi_functions[i].name))
            fail_msg("%s is not used by the Julia package", abi_functions[i].name);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s BINDINGS_JULIA_DIR\n", argv[0]);
        return 2;
    }
    julia_dir = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_function_has_one_matching_ccall),
        cmocka_unit_test(test_structs_match_table),
        cmocka_unit_test(test_constants_and_handles),
        cmocka_unit_test(test_every_handle_has_a_wrapper_with_finalizer),
        cmocka_unit_test(test_every_function_is_reachable),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

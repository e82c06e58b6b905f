/* The API lint: checks a description made by apidesc_extract() against API_STYLE.md and prints one
 * "file:line: rule: message" per violation. It reads only the description, so what it passes is
 * exactly what binding generators will see. Rules are listed in docs/api-description.md. */
#include "apidesc.h"

#include <stdarg.h>
#include <string.h>

typedef struct linter {
    FILE *out;
    int count;
    const cJSON *functions;
} linter;

enum where { AT_PARAM, AT_RETURN, AT_FIELD, AT_POINTEE };

static const cJSON *get(const cJSON *o, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

static const char *str(const cJSON *o, const char *key)
{
    const cJSON *v = get(o, key);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static int is(const cJSON *o, const char *key, const char *value)
{
    return strcmp(str(o, key), value) == 0;
}

static int starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static void report(linter *l, const cJSON *at, const char *rule, const char *fmt, ...)
{
    const cJSON *line = get(at, "_line");
    fprintf(l->out, "%s:%d: %s: ", str(at, "_file"), cJSON_IsNumber(line) ? line->valueint : 0, rule);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(l->out, fmt, ap);
    va_end(ap);
    fputc('\n', l->out);
    l->count++;
}

static void need_doc(linter *l, const cJSON *e, const char *what)
{
    if (!cJSON_IsObject(get(e, "doc")))
        report(l, e, "doc", "%s %s has no Doxygen comment", what, str(e, "name"));
}

static void need_prefix(linter *l, const cJSON *e, const char *what, const char *prefix)
{
    if (!starts_with(str(e, "name"), prefix))
        report(l, e, "prefix", "%s '%s' does not start with %s", what, str(e, "name"), prefix);
}

/* NULL when t may appear at w; else what is wrong with it. *rule names the rule it breaks. */
static const char *type_problem(const cJSON *t, enum where w, const char **rule)
{
    static const char *const anywhere[] = {"int32", "uint32", "int64", "uint64", "size",
                                           "float", "double", "enum",  "callback"};
    static const char *const behind_pointer[] = {"void",  "char",   "int8",   "uint8",
                                                 "int16", "uint16", "handle", "struct"};
    const char *k = str(t, "kind");
    *rule = "type";
    for (size_t i = 0; i < sizeof anywhere / sizeof anywhere[0]; i++)
        if (strcmp(k, anywhere[i]) == 0)
            return NULL;
    if (strcmp(k, "union") == 0) {
        *rule = "union";
        return "a union";
    }
    if (strcmp(k, "pointer") == 0)
        return type_problem(get(t, "pointee"), AT_POINTEE, rule);
    if (w == AT_POINTEE)
        for (size_t i = 0; i < sizeof behind_pointer / sizeof behind_pointer[0]; i++)
            if (strcmp(k, behind_pointer[i]) == 0)
                return NULL;
    if (strcmp(k, "void") == 0)
        return w == AT_RETURN ? NULL : "void";
    if (strcmp(k, "struct") == 0)
        return w == AT_FIELD ? NULL : "a struct by value";
    if (strcmp(k, "array") == 0)
        return w == AT_FIELD ? type_problem(get(t, "element"), AT_FIELD, rule) : "an array";
    if (strcmp(k, "handle") == 0)
        return "an opaque struct by value";
    if (strcmp(k, "char") == 0)
        return "char by value (strings are const char *)";
    if (strcmp(k, "int8") == 0 || strcmp(k, "uint8") == 0 || strcmp(k, "int16") == 0 || strcmp(k, "uint16") == 0)
        return "an 8- or 16-bit integer by value";
    return str(t, "c"); /* "unsupported": bool, long, int, short, unions spelled directly, ... */
}

static void check_type(linter *l, const cJSON *at, const cJSON *t, enum where w, const char *what)
{
    const char *rule, *why = type_problem(t, w, &rule);
    if (why)
        report(l, at, rule, "%s has type '%s': %s is not binding-safe", what, str(t, "c"), why);
}

/* Return and parameters of a function or callback. */
static void check_signature(linter *l, const cJSON *e)
{
    char what[512];
    const cJSON *p;
    snprintf(what, sizeof what, "the return of %s", str(e, "name"));
    check_type(l, e, get(e, "return"), AT_RETURN, what);
    int i = 0;
    cJSON_ArrayForEach(p, get(e, "params"))
    {
        i++;
        snprintf(what, sizeof what, "parameter %d '%s' of %s", i, str(p, "name"), str(e, "name"));
        if (!*str(p, "name"))
            report(l, e, "doc", "parameter %d of %s has no name", i, str(e, "name"));
        check_type(l, e, get(p, "type"), AT_PARAM, what);
    }
    if (cJSON_IsTrue(get(e, "_variadic")))
        report(l, e, "varargs", "%s is variadic", str(e, "name"));
    if (cJSON_IsTrue(get(e, "_noproto")))
        report(l, e, "varargs", "%s has no prototype; write (void) for no parameters", str(e, "name"));
}

static const cJSON *find_function(const linter *l, const char *name)
{
    const cJSON *f;
    cJSON_ArrayForEach(f, l->functions)
    {
        if (is(f, "name", name))
            return f;
    }
    return NULL;
}

static const cJSON *param_type(const cJSON *fn, int i)
{
    return get(cJSON_GetArrayItem(get(fn, "params"), i), "type");
}

static int is_uint32(const cJSON *t)
{
    return is(t, "kind", "uint32") && !get(t, "alias");
}

/* moe_x_create needs `void moe_x_destroy(moe_x *)`. */
static void check_create(linter *l, const cJSON *fn)
{
    const char *name = str(fn, "name");
    if (!ends_with(name, "_create"))
        return;
    char destroy[512];
    snprintf(destroy, sizeof destroy, "%.*s_destroy", (int)(strlen(name) - strlen("_create")), name);
    const cJSON *d = find_function(l, destroy);
    const cJSON *p = param_type(d, 0);
    if (!d)
        report(l, fn, "create_destroy", "%s has no matching %s", name, destroy);
    else if (!is(get(d, "return"), "kind", "void") || cJSON_GetArraySize(get(d, "params")) != 1 ||
             !is(p, "kind", "pointer") || !is(get(p, "pointee"), "kind", "handle"))
        report(l, d, "create_destroy", "%s must be 'void %s(<handle> *)'", destroy, destroy);
}

/* A *_config struct: `uint32_t struct_size` first, and `moe_status <name>_init(<name> *, uint32_t)`. */
static void check_config(linter *l, const cJSON *s)
{
    const char *name = str(s, "name");
    if (!ends_with(name, "_config"))
        return;
    const cJSON *first = cJSON_GetArrayItem(get(s, "fields"), 0);
    if (!is(first, "name", "struct_size") || !is_uint32(get(first, "type")))
        report(l, s, "config", "the first field of %s must be 'uint32_t struct_size'", name);
    char init[512];
    snprintf(init, sizeof init, "%s_init", name);
    const cJSON *fn = find_function(l, init);
    const cJSON *cfg = param_type(fn, 0);
    if (!fn)
        report(l, s, "config", "%s has no %s(%s *cfg, uint32_t struct_size)", name, init, name);
    else if (!is(get(fn, "return"), "alias", "moe_status") || cJSON_GetArraySize(get(fn, "params")) != 2 ||
             !is(cfg, "kind", "pointer") || cJSON_IsTrue(get(cfg, "const_pointee")) ||
             !is(get(cfg, "pointee"), "name", name) || !is_uint32(param_type(fn, 1)))
        report(l, fn, "config", "%s must be 'moe_status %s(%s *cfg, uint32_t struct_size)'", init, init, name);
}

static void check_enum(linter *l, const cJSON *e)
{
    const cJSON *c;
    int force32 = 0;
    cJSON_ArrayForEach(c, get(e, "constants"))
    {
        need_doc(l, c, "enum constant");
        need_prefix(l, c, "enum constant", "MOE_");
        if (!cJSON_IsTrue(get(c, "_explicit")))
            report(l, c, "enum_value", "%s has no explicit value", str(c, "name"));
        force32 |= ends_with(str(c, "name"), "_FORCE32") && get(c, "value")->valuedouble == 0x7FFFFFFF;
    }
    if (!force32)
        report(l, e, "enum_force32", "%s has no *_FORCE32 = 0x7FFFFFFF member", str(e, "name"));
}

static void check_struct(linter *l, const cJSON *s)
{
    const cJSON *f;
    char what[512];
    cJSON_ArrayForEach(f, get(s, "fields"))
    {
        snprintf(what, sizeof what, "field %s.%s", str(s, "name"), str(f, "name"));
        if (!cJSON_IsObject(get(f, "doc")))
            report(l, f, "doc", "%s has no Doxygen comment", what);
        if (cJSON_IsTrue(get(f, "_bitfield")))
            report(l, f, "bitfield", "%s is a bitfield", what);
        check_type(l, f, get(f, "type"), AT_FIELD, what);
    }
    check_config(l, s);
}

/* Callbacks take `void *user_data` last, so every language can route the call to its closure. */
static void check_callback(linter *l, const cJSON *cb)
{
    check_signature(l, cb);
    int n = cJSON_GetArraySize(get(cb, "params"));
    const cJSON *last = cJSON_GetArrayItem(get(cb, "params"), n - 1);
    const cJSON *t = get(last, "type");
    if (!n || !is(last, "name", "user_data") || !is(t, "kind", "pointer") || cJSON_IsTrue(get(t, "const_pointee")) ||
        !is(get(t, "pointee"), "kind", "void"))
        report(l, cb, "callback", "%s must take 'void *user_data' last", str(cb, "name"));
}

int apidesc_lint(const cJSON *desc, FILE *out)
{
    linter l = {out, 0, get(desc, "functions")};
    const cJSON *e;
    cJSON_ArrayForEach(e, get(desc, "_macros")) need_prefix(&l, e, "macro", "MOE_");
    cJSON_ArrayForEach(e, get(desc, "_unions")) report(&l, e, "union", "union %s is not binding-safe", str(e, "name"));
    cJSON_ArrayForEach(e, get(desc, "constants")) need_doc(&l, e, "constant");
    cJSON_ArrayForEach(e, get(desc, "aliases"))
    {
        need_doc(&l, e, "typedef");
        need_prefix(&l, e, "typedef", "moe_");
        check_type(&l, e, get(e, "type"), AT_PARAM, str(e, "name"));
    }
    cJSON_ArrayForEach(e, get(desc, "handles"))
    {
        need_doc(&l, e, "handle");
        need_prefix(&l, e, "handle", "moe_");
    }
    cJSON_ArrayForEach(e, get(desc, "enums"))
    {
        need_doc(&l, e, "enum");
        need_prefix(&l, e, "enum", "moe_");
        check_enum(&l, e);
    }
    cJSON_ArrayForEach(e, get(desc, "structs"))
    {
        need_doc(&l, e, "struct");
        need_prefix(&l, e, "struct", "moe_");
        check_struct(&l, e);
    }
    cJSON_ArrayForEach(e, get(desc, "callbacks"))
    {
        need_doc(&l, e, "callback");
        need_prefix(&l, e, "callback", "moe_");
        check_callback(&l, e);
    }
    cJSON_ArrayForEach(e, l.functions)
    {
        need_doc(&l, e, "function");
        need_prefix(&l, e, "function", "moe_");
        if (!cJSON_IsTrue(get(e, "_exported")))
            report(&l, e, "export", "%s is not declared with MOE_API", str(e, "name"));
        check_signature(&l, e);
        check_create(&l, e);
    }
    return l.count;
}

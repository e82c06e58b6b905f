/* bindgen: reads the API description (moe_api.json, written by apidesc from the public headers) and
 * writes the Rust raw FFI module, the Go constants and struct mirrors (with their layout test), the
 * Julia @ccall module and the ABI test's table. With --check it writes nothing and fails on any byte
 * of difference from the committed files. Exit: 0 ok (or up to date), 1 out of date, 2 cannot run. */
#define _POSIX_C_SOURCE 200809L /* mkdir */

#include "bindgen.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- buffer ------------------------------------------------------------------------------------- */

static void oom(void)
{
    fprintf(stderr, "bindgen: out of memory\n");
    exit(2);
}

void bg_putn(bg_buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            oom();
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void bg_put(bg_buf *b, const char *s)
{
    bg_putn(b, s, strlen(s));
}

void bg_printf(bg_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        oom();
    char *tmp = malloc((size_t)n + 1);
    if (!tmp)
        oom();
    va_start(ap, fmt);
    vsnprintf(tmp, (size_t)n + 1, fmt, ap);
    va_end(ap);
    bg_putn(b, tmp, (size_t)n);
    free(tmp);
}

void bg_free(bg_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

void bg_put_oneline(bg_buf *b, const char *text)
{
    for (const char *p = text; *p; p++) {
        if (*p == '\n' || *p == '\r')
            bg_put(b, " ");
        else if (*p == '*' && p[1] == '/')
            bg_put(b, "* "); /* never close a C comment early */
        else
            bg_putn(b, p, 1);
    }
}

void bg_put_doc(bg_buf *b, const char *indent, const char *marker, const char *text)
{
    while (*text) {
        const char *e = strchr(text, '\n');
        size_t n = e ? (size_t)(e - text) : strlen(text);
        while (n && (text[n - 1] == ' ' || text[n - 1] == '\t' || text[n - 1] == '\r'))
            n--;
        bg_put(b, indent);
        bg_put(b, marker);
        if (n) {
            bg_put(b, " ");
            bg_putn(b, text, n);
        }
        bg_put(b, "\n");
        if (!e)
            break;
        text = e + 1;
    }
}

void bg_doc_prose(bg_buf *b, const cJSON *entity)
{
    const char *text = bg_str(bg_get(entity, "doc"), "text");
    while (*text) {
        const char *e = strchr(text, '\n');
        size_t n = e ? (size_t)(e - text) : strlen(text);
        while (n && (*text == ' ' || *text == '\t'))
            text++, n--;
        if (n >= 7 && !strncmp(text, "@brief ", 7)) {
            text += 7, n -= 7;
        } else if (n >= 7 && !strncmp(text, "@param ", 7)) {
            text += 7, n -= 7;
            size_t w = 0;
            while (w < n && text[w] != ' ')
                w++;
            bg_put(b, "- ");
            bg_putn(b, text, w);
            bg_put(b, ":");
            text += w, n -= w;
        } else if (n >= 8 && !strncmp(text, "@return ", 8)) {
            text += 8, n -= 8;
            bg_put(b, "Returns: ");
        }
        bg_putn(b, text, n);
        if (!e)
            break;
        bg_put(b, "\n");
        text = e + 1;
    }
}

/* ---- description access ------------------------------------------------------------------------- */

const cJSON *bg_get(const cJSON *obj, const char *key)
{
    return obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

const char *bg_str(const cJSON *obj, const char *key)
{
    const cJSON *v = bg_get(obj, key);
    return cJSON_IsString(v) ? v->valuestring : "";
}

long long bg_int(const cJSON *obj, const char *key)
{
    const cJSON *v = bg_get(obj, key);
    return cJSON_IsNumber(v) ? (long long)v->valuedouble : 0;
}

const char *bg_brief(const cJSON *entity)
{
    return bg_str(bg_get(entity, "doc"), "brief");
}

const cJSON *bg_find(const cJSON *desc, const char *section, const char *name)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, bg_get(desc, section))
    {
        if (!strcmp(bg_str(e, "name"), name))
            return e;
    }
    return NULL;
}

/* ---- validation: everything the emitters take for granted ---------------------------------------- */

static int bad(const char *where, const char *what)
{
    fprintf(stderr, "bindgen: %s: %s\n", where, what);
    return -1;
}

static int valid_type(const cJSON *desc, const cJSON *t, const char *where, int allow_void)
{
    static const char *const scalars[] = {"int8",  "int16",  "int32",  "int64", "uint8",  "uint16",
                                          "uint32", "uint64", "size",  "float", "double", NULL};
    if (!cJSON_IsObject(t))
        return bad(where, "missing type object");
    const char *k = bg_str(t, "kind");
    const char *alias = bg_str(t, "alias");
    if (*alias && !bg_find(desc, "aliases", alias))
        return bad(where, "type names an alias the description does not define");
    for (int i = 0; scalars[i]; i++)
        if (!strcmp(k, scalars[i]))
            return 0;
    if (!strcmp(k, "void"))
        return allow_void ? 0 : bad(where, "void outside a return type or pointee");
    if (!strcmp(k, "char"))
        return allow_void ? 0 : bad(where, "char by value");
    if (!strcmp(k, "handle"))
        return allow_void && bg_find(desc, "handles", bg_str(t, "name")) ? 0 : bad(where, "bad handle type");
    if (!strcmp(k, "enum"))
        return bg_find(desc, "enums", bg_str(t, "name")) ? 0 : bad(where, "unknown enum");
    if (!strcmp(k, "struct"))
        return bg_find(desc, "structs", bg_str(t, "name")) ? 0 : bad(where, "unknown struct");
    if (!strcmp(k, "callback"))
        return bg_find(desc, "callbacks", bg_str(t, "name")) ? 0 : bad(where, "unknown callback");
    if (!strcmp(k, "pointer"))
        return valid_type(desc, bg_get(t, "pointee"), where, 1); /* void, char, handles behind pointers */
    if (!strcmp(k, "array"))
        return bg_int(t, "length") > 0 ? valid_type(desc, bg_get(t, "element"), where, 0)
                                       : bad(where, "array without a positive length");
    return bad(where, "type kind outside the binding-safe set (run apidesc --lint)");
}

static int valid_signature(const cJSON *desc, const cJSON *f)
{
    const char *name = bg_str(f, "name");
    if (!*name)
        return bad("functions/callbacks", "entry without a name");
    if (valid_type(desc, bg_get(f, "return"), name, 1))
        return -1;
    if (!strcmp(bg_str(bg_get(f, "return"), "kind"), "char"))
        return bad(name, "char returned by value");
    const cJSON *p;
    if (!cJSON_IsArray(bg_get(f, "params")))
        return bad(name, "no params array");
    cJSON_ArrayForEach(p, bg_get(f, "params"))
    {
        if (!*bg_str(p, "name"))
            return bad(name, "unnamed parameter");
        if (valid_type(desc, bg_get(p, "type"), name, 0))
            return -1;
    }
    return 0;
}

int bg_validate(const cJSON *desc)
{
    static const char *const sections[] = {"constants", "aliases", "handles", "enums",
                                           "structs",   "callbacks", "functions", NULL};
    if (!cJSON_IsObject(desc) || !*bg_str(bg_get(desc, "library"), "header"))
        return bad("description", "no library.header");
    for (int i = 0; sections[i]; i++)
        if (!cJSON_IsArray(bg_get(desc, sections[i])))
            return bad("description", sections[i]);
    const cJSON *e;
    cJSON_ArrayForEach(e, bg_get(desc, "structs"))
    {
        const cJSON *f;
        if (bg_int(e, "size") <= 0 || bg_int(e, "align") <= 0)
            return bad(bg_str(e, "name"), "struct without size/align");
        cJSON_ArrayForEach(f, bg_get(e, "fields"))
        {
            if (!*bg_str(f, "name") || !cJSON_IsNumber(bg_get(f, "offset")) || bg_int(f, "offset") < 0)
                return bad(bg_str(e, "name"), "field without a name or offset");
            if (valid_type(desc, bg_get(f, "type"), bg_str(e, "name"), 0))
                return -1;
        }
    }
    cJSON_ArrayForEach(e, bg_get(desc, "enums"))
    {
        if (bg_int(e, "size") != 4)
            return bad(bg_str(e, "name"), "enum not 4 bytes");
    }
    cJSON_ArrayForEach(e, bg_get(desc, "aliases"))
    {
        if (valid_type(desc, bg_get(e, "type"), bg_str(e, "name"), 0))
            return -1;
        if (strcmp(bg_str(bg_get(e, "type"), "kind"), "pointer") == 0)
            return bad(bg_str(e, "name"), "pointer aliases are not mapped");
    }
    cJSON_ArrayForEach(e, bg_get(desc, "callbacks"))
    {
        if (valid_signature(desc, e))
            return -1;
    }
    cJSON_ArrayForEach(e, bg_get(desc, "functions"))
    {
        if (valid_signature(desc, e))
            return -1;
    }
    return 0;
}

/* ---- files -------------------------------------------------------------------------------------- */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    bg_buf b = {0};
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        bg_putn(&b, chunk, n);
    int err = ferror(f);
    fclose(f);
    if (err) {
        bg_free(&b);
        return NULL;
    }
    if (!b.p)
        bg_put(&b, "");
    *len = b.len;
    return b.p;
}

/* Creates the directories leading to path (best effort; fopen reports what really failed). */
static void make_parents(const char *path)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp)
        return;
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            mkdir(tmp, 0777);
            *p = '/';
        }
}

/* Writes text unless the file already holds it byte for byte (keeps timestamps for make). */
static int write_if_changed(const char *path, const bg_buf *text)
{
    size_t len = 0;
    char *old = read_file(path, &len);
    int same = old && len == text->len && memcmp(old, text->p, len) == 0;
    free(old);
    if (same)
        return 0;
    make_parents(path);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(text->p, 1, text->len, f) != text->len || fclose(f) != 0) {
        fprintf(stderr, "bindgen: cannot write %s\n", path);
        return -1;
    }
    return 0;
}

/* Compares text with the file; on a difference prints the first differing line of each. */
static int check_same(const char *path, const bg_buf *text)
{
    size_t len = 0;
    char *old = read_file(path, &len);
    if (!old) {
        fprintf(stderr, "bindgen: %s is missing\n", path);
        return 1;
    }
    int same = len == text->len && memcmp(old, text->p, len) == 0;
    if (!same) {
        size_t i = 0, line = 1, start = 0;
        while (i < len && i < text->len && old[i] == text->p[i]) {
            if (old[i] == '\n')
                line++, start = i + 1;
            i++;
        }
        const char *a = old + start, *b = text->p + start;
        int na = (int)strcspn(a, "\n"), nb = (int)strcspn(b, "\n");
        fprintf(stderr,
                "bindgen: %s differs from what the description generates, first at line %zu:\n"
                "  committed: %.*s\n  generated: %.*s\n",
                path, line, na > 200 ? 200 : na, a, nb > 200 ? 200 : nb, b);
    }
    free(old);
    return !same;
}

typedef struct output {
    const char *path; /* relative to the repository root */
    void (*emit)(bg_buf *out, const cJSON *desc);
} output;

static const output outputs[] = {
    {"bindings/rust/moe-sys/src/bindings.rs", bg_emit_rust},
    {"bindings/go/moe/zz_generated.go", bg_emit_go},
    {"bindings/go/moe/zz_generated_test.go", bg_emit_go_test},
    {"bindings/julia/src/LibMoe.jl", bg_emit_julia},
    {"tests/abi/abi_table.c", bg_emit_abi},
};

static void usage(void)
{
    fprintf(stderr,
            "usage: bindgen [--check] [--desc FILE] [--out DIR] ROOT\n"
            "  Generates the bindings of ROOT (the repository) from FILE (default\n"
            "  ROOT/bindings/gen/moe_api.json) into DIR (default ROOT). --check compares with the\n"
            "  files under ROOT instead and exits 1 when any differs.\n");
}

int main(int argc, char **argv)
{
    const char *root = NULL, *desc_path = NULL, *out_dir = NULL;
    int check = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--check"))
            check = 1;
        else if (!strcmp(argv[i], "--desc") && i + 1 < argc)
            desc_path = argv[++i];
        else if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out_dir = argv[++i];
        else if (argv[i][0] != '-' && !root)
            root = argv[i];
        else {
            usage();
            return 2;
        }
    }
    if (!root) {
        usage();
        return 2;
    }
    char path[4096];
    if (!desc_path) {
        snprintf(path, sizeof path, "%s/bindings/gen/moe_api.json", root);
        desc_path = path;
    }
    size_t len = 0;
    char *text = read_file(desc_path, &len);
    if (!text) {
        fprintf(stderr, "bindgen: cannot read %s\n", desc_path);
        return 2;
    }
    cJSON *desc = cJSON_ParseWithLength(text, len);
    free(text);
    if (!desc) {
        fprintf(stderr, "bindgen: %s is not valid JSON\n", desc_path);
        return 2;
    }
    if (bg_validate(desc)) {
        cJSON_Delete(desc);
        return 2;
    }
    int rc = 0;
    for (size_t i = 0; i < sizeof outputs / sizeof outputs[0]; i++) {
        bg_buf out = {0};
        outputs[i].emit(&out, desc);
        char file[4096];
        snprintf(file, sizeof file, "%s/%s", check || !out_dir ? root : out_dir, outputs[i].path);
        if (check) {
            if (check_same(file, &out))
                rc = 1;
        } else if (write_if_changed(file, &out)) {
            rc = 2;
        }
        bg_free(&out);
    }
    if (check && rc)
        fprintf(stderr, "bindgen: generated bindings are out of date: run cmake --build <build-dir> --target "
                        "bindings and commit the result\n");
    cJSON_Delete(desc);
    return rc;
}

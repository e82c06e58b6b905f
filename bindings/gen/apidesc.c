/* apidesc: parses the public umbrella header with libclang and writes the machine-readable API
 * description, or with --lint checks the headers against API_STYLE.md. The output is a function of
 * the headers alone (declaration order, 2-space indent, paths relative to the include directory, no
 * timestamps), so a committed copy can be diffed. Exit: 0 ok, 1 lint violations, 2 cannot run. */
#include "apidesc.h"

#include <stdlib.h>
#include <string.h>

static void usage(void)
{
    fprintf(stderr, "usage: apidesc [--lint] [--header moe/moe.h] [--output FILE] INCLUDE_DIR\n"
                    "  Describes (or with --lint, checks) the header and everything it includes from\n"
                    "  INCLUDE_DIR; the description goes to FILE or standard output.\n");
}

typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf;

static void put(sbuf *b, const char *s)
{
    size_t n = strlen(s);
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            fprintf(stderr, "apidesc: out of memory\n");
            exit(2);
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n + 1);
    b->len += n;
}

static void put_scalar(sbuf *b, const cJSON *v)
{
    char *s = cJSON_PrintUnformatted(v); /* cJSON does the escaping and number formatting */
    if (!s) {
        fprintf(stderr, "apidesc: out of memory\n");
        exit(2);
    }
    put(b, s);
    cJSON_free(s);
}

/* cJSON_Print indents with tabs and puts a tab after ':'; the committed format is 2 spaces. */
static void print_value(sbuf *b, const cJSON *v, int depth)
{
    if (!cJSON_IsObject(v) && !cJSON_IsArray(v)) {
        put_scalar(b, v);
        return;
    }
    int obj = cJSON_IsObject(v);
    if (!v->child) {
        put(b, obj ? "{}" : "[]");
        return;
    }
    put(b, obj ? "{\n" : "[\n");
    for (const cJSON *c = v->child; c; c = c->next) {
        for (int i = 0; i <= depth; i++)
            put(b, "  ");
        if (obj) {
            cJSON *key = cJSON_CreateString(c->string);
            put_scalar(b, key);
            cJSON_Delete(key);
            put(b, ": ");
        }
        print_value(b, c, depth + 1);
        put(b, c->next ? ",\n" : "\n");
    }
    for (int i = 0; i < depth; i++)
        put(b, "  ");
    put(b, obj ? "}" : "]");
}

/* Drops the lint-only facts (keys starting with '_'): they hold machine paths and line numbers. */
static void strip_private(cJSON *node)
{
    cJSON *c = node->child;
    while (c) {
        cJSON *next = c->next;
        if (c->string && c->string[0] == '_')
            cJSON_Delete(cJSON_DetachItemViaPointer(node, c));
        else
            strip_private(c);
        c = next;
    }
}

/* Writes text to path unless the file already holds exactly it (keeps its timestamp for make). */
static int write_if_changed(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "rb");
    if (f) {
        char *old = malloc(len + 1);
        size_t n = old ? fread(old, 1, len + 1, f) : 0;
        int same = old && n == len && memcmp(old, text, len) == 0;
        free(old);
        fclose(f);
        if (same)
            return 0;
    }
    f = fopen(path, "wb");
    if (!f || fwrite(text, 1, len, f) != len || fclose(f) != 0) {
        fprintf(stderr, "apidesc: cannot write %s\n", path);
        return -1;
    }
    return 0;
}

static CXTranslationUnit parse(CXIndex index, const char *dir, const char *header)
{
    char path[4096], inc[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, header) >= (int)sizeof path ||
        snprintf(inc, sizeof inc, "-I%s", dir) >= (int)sizeof inc) {
        fprintf(stderr, "apidesc: path too long: %s\n", dir);
        return NULL;
    }
    const char *args[] = {"-x", "c", "-std=c11", inc};
    CXTranslationUnit tu = NULL;
    enum CXErrorCode err = clang_parseTranslationUnit2(
        index, path, args, (int)(sizeof args / sizeof args[0]), NULL, 0,
        CXTranslationUnit_DetailedPreprocessingRecord | CXTranslationUnit_SkipFunctionBodies, &tu);
    if (err != CXError_Success || !tu) {
        fprintf(stderr, "apidesc: libclang cannot parse %s (error %d)\n", path, (int)err);
        return NULL;
    }
    int errors = 0;
    for (unsigned i = 0; i < clang_getNumDiagnostics(tu); i++) {
        CXDiagnostic d = clang_getDiagnostic(tu, i);
        CXString s = clang_formatDiagnostic(d, clang_defaultDiagnosticDisplayOptions());
        fprintf(stderr, "%s\n", clang_getCString(s));
        errors += clang_getDiagnosticSeverity(d) >= CXDiagnostic_Error;
        clang_disposeString(s);
        clang_disposeDiagnostic(d);
    }
    if (errors) { /* a description of a header that does not compile would be a guess */
        fprintf(stderr, "apidesc: %s does not compile\n", path);
        clang_disposeTranslationUnit(tu);
        return NULL;
    }
    return tu;
}

int main(int argc, char **argv)
{
    const char *header = "moe/moe.h", *output = NULL, *dir = NULL;
    int lint = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--lint") == 0) {
            lint = 1;
        } else if (strcmp(argv[i], "--header") == 0 && i + 1 < argc) {
            header = argv[++i];
        } else if (strcmp(argv[i], "--output") == 0 && i + 1 < argc) {
            output = argv[++i];
        } else if (argv[i][0] != '-' && !dir) {
            dir = argv[i];
        } else {
            usage();
            return 2;
        }
    }
    if (!dir) {
        usage();
        return 2;
    }
    char dir_buf[4096]; /* without trailing slashes, so messages say include/moe/x.h */
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/')
        len--;
    snprintf(dir_buf, sizeof dir_buf, "%.*s", (int)len, dir);
    dir = dir_buf;

    CXIndex index = clang_createIndex(0, 0);
    CXTranslationUnit tu = parse(index, dir, header);
    cJSON *desc = tu ? apidesc_extract(tu, dir) : NULL;
    int rc = desc ? 0 : 2;
    if (desc && lint) {
        int n = apidesc_lint(desc, stdout);
        if (n) {
            fprintf(stderr, "apidesc: %d violation%s of API_STYLE.md\n", n, n == 1 ? "" : "s");
            rc = 1;
        }
    } else if (desc) {
        if (cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(desc, "library"),
                                                          "version"))) {
            fprintf(stderr, "apidesc: no MOE_VERSION_MAJOR/MINOR/PATCH macros in %s\n", header);
            rc = 2;
        } else {
            strip_private(desc);
            sbuf b = {0};
            print_value(&b, desc, 0);
            put(&b, "\n");
            if (output)
                rc = write_if_changed(output, b.p, b.len) ? 2 : 0;
            else
                rc = fwrite(b.p, 1, b.len, stdout) == b.len && fflush(stdout) == 0 ? 0 : 2;
            free(b.p);
        }
    }
    cJSON_Delete(desc);
    if (tu)
        clang_disposeTranslationUnit(tu);
    clang_disposeIndex(index);
    return rc;
}

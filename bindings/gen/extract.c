/* Describes every public declaration (one spelled in a file under the include directory) of a parsed
 * translation unit as cJSON, in declaration order; system headers and predefined macros are ignored.
 * Types become structured objects (docs/api-description.md) so binding generators never parse C. */
#define _XOPEN_SOURCE 700 /* realpath */

#include "apidesc.h"

#include <ctype.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

typedef struct extractor {
    CXTranslationUnit tu;
    const char *dir_arg;    /* the include directory as given, to build paths for lint messages */
    char dir[PATH_MAX + 1]; /* its real path with a trailing '/' */
    size_t dir_len;
    CXFile last_file; /* one-entry cache of the public-path lookup: most cursors share a file */
    int last_public;
    char last_rel[PATH_MAX];
    cJSON *root;
} extractor;

typedef struct cursor_list {
    CXCursor *v;
    size_t n, cap;
    int oom;
} cursor_list;

/* Path of file relative to the include directory, or NULL when it lies outside. */
static const char *relative_path(extractor *x, CXFile file)
{
    if (!file)
        return NULL;
    if (x->last_file && clang_File_isEqual(file, x->last_file))
        return x->last_public ? x->last_rel : NULL;
    x->last_file = file;
    x->last_public = 0;
    CXString name = clang_getFileName(file);
    char real[PATH_MAX];
    const char *s = clang_getCString(name);
    if (s && realpath(s, real) && strncmp(real, x->dir, x->dir_len) == 0) {
        snprintf(x->last_rel, sizeof x->last_rel, "%s", real + x->dir_len);
        x->last_public = 1;
    }
    clang_disposeString(name);
    return x->last_public ? x->last_rel : NULL;
}

/* Where a cursor is written (a macro-made declaration counts where the macro is used). */
static const char *public_path(extractor *x, CXCursor c, unsigned *line)
{
    CXFile file;
    unsigned l = 0;
    clang_getExpansionLocation(clang_getCursorLocation(c), &file, &l, NULL, NULL);
    if (line)
        *line = l;
    return relative_path(x, file);
}

static char *cx_strdup(CXString s)
{
    const char *c = clang_getCString(s);
    char *d = strdup(c ? c : "");
    clang_disposeString(s);
    if (!d) {
        fprintf(stderr, "apidesc: out of memory\n");
        exit(2);
    }
    return d;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "apidesc: out of memory\n");
        exit(2);
    }
    return p;
}

/* ---- doc comments ------------------------------------------------------------------------------ */

static int starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* The comment's text without its markers: per line, the opener ("/ **", "/ **<", "///", ...), a
 * leading '*' and one space after either are dropped, and the closer; blank lines at either end go,
 * runs of blank lines inside become one. Relative indentation of continuation lines is kept. */
static char *clean_comment(const char *raw)
{
    static const char *const openers[] = {"/**<", "/*!<", "///<", "//!<", "/**", "/*!", "///", "//!"};
    char *out = xmalloc(strlen(raw) + 1), *o = out;
    int blanks = 0;
    for (const char *p = raw; *p;) {
        const char *eol = strchr(p, '\n');
        const char *s = p, *e = eol ? eol : p + strlen(p);
        p = eol ? eol + 1 : e;
        while (s < e && isspace((unsigned char)*s))
            s++;
        int marker = 0;
        for (size_t i = 0; i < sizeof openers / sizeof openers[0] && !marker; i++)
            if ((size_t)(e - s) >= strlen(openers[i]) && starts_with(s, openers[i])) {
                s += strlen(openers[i]);
                marker = 1;
            }
        if (!marker && s < e && *s == '*' && !(s + 1 < e && s[1] == '/')) {
            s++;
            marker = 1;
        }
        if (marker && s < e && *s == ' ')
            s++;
        while (e > s && isspace((unsigned char)e[-1]))
            e--;
        if (e - s >= 2 && e[-2] == '*' && e[-1] == '/')
            e -= 2;
        while (e > s && isspace((unsigned char)e[-1]))
            e--;
        if (e == s) {
            blanks += o != out;
            continue;
        }
        if (o != out)
            *o++ = '\n';
        if (blanks)
            *o++ = '\n';
        blanks = 0;
        memcpy(o, s, (size_t)(e - s));
        o += e - s;
    }
    *o = '\0';
    return out;
}

/* The first paragraph of a cleaned comment, without a leading @brief, on one line: what clang's brief
 * text gives for declarations, for the macros clang attaches no comment to. */
static char *brief_of(const char *text)
{
    if (starts_with(text, "@brief") || starts_with(text, "\\brief"))
        text += 6;
    while (*text == ' ')
        text++;
    char *out = xmalloc(strlen(text) + 1), *o = out;
    for (const char *p = text; *p; p++) {
        if (*p == '\n') {
            const char *q = p + 1;
            while (*q == ' ')
                q++;
            if (*q == '\n' || *q == '@' || *q == '\\' || *q == '\0')
                break;
            *o++ = ' ';
            p = q - 1;
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return out;
}

/* {"brief", "text"} of a raw comment, or JSON null when there is none. */
static cJSON *doc_json(const char *raw, const char *brief)
{
    if (!raw || !*raw)
        return cJSON_CreateNull();
    char *text = clean_comment(raw);
    char *own_brief = brief ? NULL : brief_of(text);
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "brief", brief ? brief : own_brief);
    cJSON_AddStringToObject(d, "text", text);
    free(text);
    free(own_brief);
    return d;
}

static int has_comment(CXCursor c)
{
    CXString raw = clang_Cursor_getRawCommentText(c);
    int has = clang_getCString(raw) && *clang_getCString(raw);
    clang_disposeString(raw);
    return has;
}

/* The doc comment of c, or of alt (a typedef naming c) when c has none. */
static cJSON *doc_of(CXCursor c, CXCursor alt)
{
    if (!has_comment(c) && !clang_Cursor_isNull(alt))
        c = alt;
    char *raw = cx_strdup(clang_Cursor_getRawCommentText(c));
    char *brief = cx_strdup(clang_Cursor_getBriefCommentText(c));
    cJSON *d = doc_json(raw, brief);
    free(raw);
    free(brief);
    return d;
}

/* clang attaches no comment to macros: take the block comment ending just above the #define, or a
 * trailing / **< on its line, straight from the file. */
static cJSON *macro_doc(extractor *x, CXCursor c)
{
    CXSourceRange r = clang_getCursorExtent(c);
    CXFile file;
    unsigned start, end;
    clang_getSpellingLocation(clang_getRangeStart(r), &file, NULL, NULL, &start);
    clang_getSpellingLocation(clang_getRangeEnd(r), NULL, NULL, NULL, &end);
    size_t size = 0;
    const char *buf = file ? clang_getFileContents(x->tu, file, &size) : NULL;
    if (!buf || start > size || end > size)
        return cJSON_CreateNull();
    const char *raw = NULL, *raw_end = NULL;
    const char *t = buf + end;
    while (t < buf + size && (*t == ' ' || *t == '\t'))
        t++;
    if (buf + size - t >= 4 && (starts_with(t, "/**<") || starts_with(t, "///<"))) {
        raw = t;
        for (raw_end = t + 3; raw_end < buf + size && *raw_end != '\n'; raw_end++)
            if (raw_end[-1] == '*' && raw_end[0] == '/') {
                raw_end++;
                break;
            }
    } else {
        const char *p = buf + start;
        while (p > buf && p[-1] != '\n') /* back to the '#' line's start */
            p--;
        while (p > buf && isspace((unsigned char)p[-1]))
            p--;
        if (p - buf >= 2 && p[-2] == '*' && p[-1] == '/') {
            raw_end = p;
            for (const char *q = p - 2; q > buf; q--)
                if (q[-1] == '/' && q[0] == '*') {
                    const char *b = q - 1; /* a doc block alone on its lines, not another's trailing one */
                    while (b > buf && (b[-1] == ' ' || b[-1] == '\t'))
                        b--;
                    if ((q[1] == '*' || q[1] == '!') && q[2] != '<' && q[2] != '/' && (b == buf || b[-1] == '\n'))
                        raw = q - 1;
                    break;
                }
        }
    }
    if (!raw)
        return cJSON_CreateNull();
    char *copy = xmalloc((size_t)(raw_end - raw) + 1);
    memcpy(copy, raw, (size_t)(raw_end - raw));
    copy[raw_end - raw] = '\0';
    cJSON *d = doc_json(copy, NULL);
    free(copy);
    return d;
}

/* ---- types ------------------------------------------------------------------------------------- */

static void describe(extractor *x, cJSON *o, CXType t);

static CXType strip_elaborated(CXType t)
{
    return t.kind == CXType_Elaborated ? clang_Type_getNamedType(t) : t;
}

static cJSON *type_json(extractor *x, CXType t)
{
    cJSON *o = cJSON_CreateObject();
    char *c = cx_strdup(clang_getTypeSpelling(t));
    cJSON_AddStringToObject(o, "c", c);
    free(c);
    describe(x, o, t);
    return o;
}

/* Outside the binding-safe set: keep the C spelling so the lint can name it. */
static void unsupported(cJSON *o, CXType t)
{
    cJSON_AddStringToObject(o, "kind", "unsupported");
    if (!cJSON_HasObjectItem(o, "c")) {
        char *c = cx_strdup(clang_getTypeSpelling(t));
        cJSON_AddStringToObject(o, "c", c);
        free(c);
    }
}

static void describe_record(cJSON *o, CXCursor decl, const char *name)
{
    const char *kind = "struct";
    if (clang_getCursorKind(decl) == CXCursor_UnionDecl)
        kind = "union";
    else if (clang_Cursor_isNull(clang_getCursorDefinition(decl)))
        kind = "handle";
    cJSON_AddStringToObject(o, "kind", kind);
    cJSON_AddStringToObject(o, "name", name);
}

static int is_function_pointer(CXType t)
{
    if (t.kind != CXType_Pointer)
        return 0;
    enum CXTypeKind k = clang_getCanonicalType(clang_getPointeeType(t)).kind;
    return k == CXType_FunctionProto || k == CXType_FunctionNoProto;
}

static void describe_typedef(extractor *x, cJSON *o, CXType t)
{
    static const char *const fixed[][2] = {
        {"int8_t", "int8"},   {"int16_t", "int16"},   {"int32_t", "int32"},   {"int64_t", "int64"},
        {"uint8_t", "uint8"}, {"uint16_t", "uint16"}, {"uint32_t", "uint32"}, {"uint64_t", "uint64"},
        {"size_t", "size"},
    };
    char *name = cx_strdup(clang_getTypedefName(t));
    CXCursor decl = clang_getTypeDeclaration(t);
    CXType under = strip_elaborated(clang_getTypedefDeclUnderlyingType(decl));
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (strcmp(name, fixed[i][0]) == 0) {
            cJSON_AddStringToObject(o, "kind", fixed[i][1]);
            free(name);
            return;
        }
    if (!public_path(x, decl, NULL)) { /* a system typedef such as ssize_t: judge what it names */
        describe(x, o, under);
    } else if (under.kind == CXType_Record) {
        describe_record(o, clang_getTypeDeclaration(under), name);
    } else if (under.kind == CXType_Enum) {
        cJSON_AddStringToObject(o, "kind", "enum");
        cJSON_AddStringToObject(o, "name", name);
    } else if (is_function_pointer(under)) {
        cJSON_AddStringToObject(o, "kind", "callback");
        cJSON_AddStringToObject(o, "name", name);
    } else {
        describe(x, o, under);
        if (!cJSON_HasObjectItem(o, "alias"))
            cJSON_AddStringToObject(o, "alias", name);
    }
    free(name);
}

static void describe(extractor *x, cJSON *o, CXType t)
{
    static const struct {
        enum CXTypeKind kind;
        const char *name;
    } scalars[] = {{CXType_Void, "void"},     {CXType_Float, "float"}, {CXType_Double, "double"},
                   {CXType_Char_S, "char"}, {CXType_Char_U, "char"}};
    switch (t.kind) {
    case CXType_Elaborated:
        describe(x, o, clang_Type_getNamedType(t));
        return;
    case CXType_Typedef:
        describe_typedef(x, o, t);
        return;
    case CXType_Pointer: {
        CXType p = clang_getPointeeType(t);
        cJSON_AddStringToObject(o, "kind", "pointer");
        cJSON_AddBoolToObject(o, "const_pointee", clang_isConstQualifiedType(p));
        cJSON *pointee = cJSON_AddObjectToObject(o, "pointee");
        if (clang_getCanonicalType(p).kind == CXType_FunctionProto ||
            clang_getCanonicalType(p).kind == CXType_FunctionNoProto)
            unsupported(pointee, t); /* a raw function pointer: callbacks must be typedefs */
        else
            describe(x, pointee, p);
        return;
    }
    case CXType_Record:
    case CXType_Enum: {
        CXCursor decl = clang_getTypeDeclaration(t);
        char *name = cx_strdup(clang_getCursorSpelling(decl));
        if (t.kind == CXType_Enum) {
            cJSON_AddStringToObject(o, "kind", "enum");
            cJSON_AddStringToObject(o, "name", name);
        } else {
            describe_record(o, decl, name);
        }
        free(name);
        return;
    }
    case CXType_ConstantArray:
        cJSON_AddStringToObject(o, "kind", "array");
        cJSON_AddNumberToObject(o, "length", (double)clang_getArraySize(t));
        describe(x, cJSON_AddObjectToObject(o, "element"), clang_getArrayElementType(t));
        return;
    default:
        for (size_t i = 0; i < sizeof scalars / sizeof scalars[0]; i++)
            if (t.kind == scalars[i].kind) {
                cJSON_AddStringToObject(o, "kind", scalars[i].name);
                return;
            }
        unsupported(o, t);
        return;
    }
}

/* ---- declarations ------------------------------------------------------------------------------ */

/* {"name", "header"} plus the private file and line of at, for lint messages. */
static cJSON *item(extractor *x, const char *name, CXCursor at, int with_header)
{
    unsigned line;
    const char *rel = public_path(x, at, &line);
    char path[2 * PATH_MAX + 2];
    snprintf(path, sizeof path, "%s/%s", x->dir_arg, rel ? rel : "");
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "name", name);
    if (with_header)
        cJSON_AddStringToObject(e, "header", rel ? rel : "");
    cJSON_AddStringToObject(e, "_file", path);
    cJSON_AddNumberToObject(e, "_line", line);
    return e;
}

/* A new item at the end of a section of the description. */
static cJSON *entity(extractor *x, const char *section, const char *name, CXCursor at)
{
    cJSON *e = item(x, name, at, section[0] != '_');
    cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(x->root, section), e);
    return e;
}

static enum CXChildVisitResult count_children(CXCursor c, CXCursor parent, CXClientData data)
{
    (void)c;
    (void)parent;
    ++*(unsigned *)data;
    return CXChildVisit_Break;
}

static int is_unsigned_kind(enum CXTypeKind k)
{
    return k == CXType_UInt || k == CXType_ULong || k == CXType_ULongLong || k == CXType_UShort ||
           k == CXType_UChar || k == CXType_Char_U || k == CXType_Bool;
}

typedef struct member_walk {
    extractor *x;
    cJSON *list;
    int is_unsigned;
} member_walk;

static enum CXChildVisitResult member(CXCursor c, CXCursor parent, CXClientData data)
{
    member_walk *w = data;
    (void)parent;
    enum CXCursorKind k = clang_getCursorKind(c);
    if (k == CXCursor_UnionDecl) {
        char *name = cx_strdup(clang_getCursorSpelling(c));
        entity(w->x, "_unions", name, c);
        free(name);
        return CXChildVisit_Continue;
    }
    if (k != CXCursor_EnumConstantDecl && k != CXCursor_FieldDecl)
        return CXChildVisit_Continue;
    char *name = cx_strdup(clang_getCursorSpelling(c));
    cJSON *m = item(w->x, name, c, 0);
    if (k == CXCursor_EnumConstantDecl) {
        unsigned children = 0;
        clang_visitChildren(c, count_children, &children);
        cJSON_AddNumberToObject(m, "value", w->is_unsigned ? (double)clang_getEnumConstantDeclUnsignedValue(c)
                                                           : (double)clang_getEnumConstantDeclValue(c));
        cJSON_AddBoolToObject(m, "_explicit", children > 0);
    } else {
        cJSON_AddItemToObject(m, "type", type_json(w->x, clang_getCursorType(c)));
        long long bits = clang_Cursor_getOffsetOfField(c);
        cJSON_AddNumberToObject(m, "offset", bits >= 0 ? (double)(bits / 8) : -1);
        cJSON_AddBoolToObject(m, "_bitfield", clang_Cursor_isBitField(c));
    }
    cJSON_AddItemToObject(m, "doc", doc_of(c, clang_getNullCursor()));
    cJSON_AddItemToArray(w->list, m);
    free(name);
    return CXChildVisit_Continue;
}

/* A struct or enum definition; td is the typedef that names it (or a null cursor). */
static void add_record(extractor *x, CXCursor c, CXCursor td, const char *name)
{
    CXType t = clang_getCursorType(c);
    int is_enum = clang_getCursorKind(c) == CXCursor_EnumDecl;
    cJSON *e = entity(x, is_enum ? "enums" : "structs", name, c);
    cJSON_AddItemToObject(e, "doc", doc_of(c, td));
    cJSON_AddNumberToObject(e, "size", (double)clang_Type_getSizeOf(t));
    member_walk w = {x, NULL, 0};
    if (is_enum) {
        enum CXTypeKind k = clang_getEnumDeclIntegerType(c).kind;
        long long size = clang_Type_getSizeOf(t);
        w.is_unsigned = is_unsigned_kind(k);
        char under[16];
        snprintf(under, sizeof under, "%sint%lld", w.is_unsigned ? "u" : "", size * 8);
        cJSON_AddStringToObject(e, "underlying", under);
        w.list = cJSON_AddArrayToObject(e, "constants");
    } else {
        cJSON_AddNumberToObject(e, "align", (double)clang_Type_getAlignOf(t));
        w.list = cJSON_AddArrayToObject(e, "fields");
    }
    clang_visitChildren(c, member, &w);
}

static enum CXChildVisitResult parm_name(CXCursor c, CXCursor parent, CXClientData data)
{
    (void)parent;
    if (clang_getCursorKind(c) == CXCursor_ParmDecl) {
        char *name = cx_strdup(clang_getCursorSpelling(c));
        cJSON_AddItemToArray(data, cJSON_CreateString(name));
        free(name);
    }
    return CXChildVisit_Continue;
}

static enum CXChildVisitResult find_export(CXCursor c, CXCursor parent, CXClientData data)
{
    (void)parent;
    if (clang_getCursorKind(c) == CXCursor_VisibilityAttr) {
        char *v = cx_strdup(clang_getCursorSpelling(c));
        *(int *)data |= strcmp(v, "default") == 0;
        free(v);
    }
    return CXChildVisit_Continue;
}

/* Return and parameters of a function type; names come from the ParmDecl children of decl. */
static void add_signature(extractor *x, cJSON *e, CXCursor decl, CXType fn)
{
    cJSON *names = cJSON_CreateArray();
    clang_visitChildren(decl, parm_name, names);
    cJSON_AddItemToObject(e, "return", type_json(x, clang_getResultType(fn)));
    cJSON *params = cJSON_AddArrayToObject(e, "params");
    int n = clang_getNumArgTypes(fn);
    for (int i = 0; i < n; i++) {
        cJSON *p = cJSON_CreateObject();
        cJSON *name = cJSON_GetArrayItem(names, i);
        cJSON_AddStringToObject(p, "name", cJSON_IsString(name) ? name->valuestring : "");
        cJSON_AddItemToObject(p, "type", type_json(x, clang_getArgType(fn, (unsigned)i)));
        cJSON_AddItemToArray(params, p);
    }
    cJSON_Delete(names);
    enum CXTypeKind k = clang_getCanonicalType(fn).kind; /* fn may be sugared, e.g. in parentheses */
    cJSON_AddBoolToObject(e, "_variadic", k == CXType_FunctionProto && clang_isFunctionTypeVariadic(fn));
    cJSON_AddBoolToObject(e, "_noproto", k == CXType_FunctionNoProto);
}

static void add_function(extractor *x, CXCursor c)
{
    char *name = cx_strdup(clang_getCursorSpelling(c));
    cJSON *e = NULL;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(x->root, "functions"))
        if (strcmp(cJSON_GetObjectItemCaseSensitive(e, "name")->valuestring, name) == 0)
            break; /* declared again: the first declaration describes it */
    if (!e) {
        e = entity(x, "functions", name, c);
        cJSON_AddItemToObject(e, "doc", doc_of(c, clang_getNullCursor()));
        add_signature(x, e, c, clang_getCursorType(c));
        int exported = 0;
        clang_visitChildren(c, find_export, &exported);
        cJSON_AddBoolToObject(e, "_exported", exported);
    }
    free(name);
}

static int is_own_tag(CXCursor record, const char *name)
{
    char *tag = cx_strdup(clang_getCursorSpelling(record));
    int same = strcmp(tag, name) == 0;
    free(tag);
    return same;
}

static void add_typedef(extractor *x, CXCursor c)
{
    char *name = cx_strdup(clang_getCursorSpelling(c));
    CXType under = strip_elaborated(clang_getTypedefDeclUnderlyingType(c));
    CXCursor decl = clang_getTypeDeclaration(under);
    cJSON *e;
    if (under.kind == CXType_Record && clang_getCursorKind(decl) == CXCursor_UnionDecl) {
        entity(x, "_unions", name, c);
    } else if (under.kind == CXType_Record && clang_Cursor_isNull(clang_getCursorDefinition(decl))) {
        e = entity(x, "handles", name, c);
        cJSON_AddItemToObject(e, "doc", doc_of(c, clang_getNullCursor()));
    } else if (under.kind == CXType_Record && is_own_tag(decl, name)) {
        /* `typedef struct moe_x moe_x;` before `struct moe_x {...}`: the definition describes it */
    } else if (is_function_pointer(under)) {
        e = entity(x, "callbacks", name, c);
        cJSON_AddItemToObject(e, "doc", doc_of(c, clang_getNullCursor()));
        add_signature(x, e, c, clang_getPointeeType(under)); /* as written: int32_t, not int */
    } else {
        e = entity(x, "aliases", name, c);
        cJSON_AddItemToObject(e, "doc", doc_of(c, clang_getNullCursor()));
        cJSON_AddItemToObject(e, "type", type_json(x, under));
    }
    free(name);
}

/* An object-like macro whose body is one integer literal, optionally negated and parenthesised. */
static int macro_integer(extractor *x, CXCursor c, double *value)
{
    CXToken *tokens;
    unsigned n;
    clang_tokenize(x->tu, clang_getCursorExtent(c), &tokens, &n);
    unsigned nb = n > 1 ? n - 1 : 0, lo = 0, hi = nb; /* the body is tokens[1..n), the name first */
    int neg = 0, ok = 0;
    char *b[4] = {NULL, NULL, NULL, NULL};
    if (nb >= 1 && nb <= 4) {
        for (unsigned k = 0; k < nb; k++)
            b[k] = cx_strdup(clang_getTokenSpelling(x->tu, tokens[k + 1]));
        if (nb >= 3 && strcmp(b[0], "(") == 0 && strcmp(b[nb - 1], ")") == 0) {
            lo = 1;
            hi = nb - 1;
        }
        if (hi - lo == 2 && strcmp(b[lo], "-") == 0) {
            neg = 1;
            lo++;
        }
        if (hi - lo == 1 && clang_getTokenKind(tokens[lo + 1]) == CXToken_Literal &&
            isdigit((unsigned char)b[lo][0])) {
            char *end;
            unsigned long long v = strtoull(b[lo], &end, 0);
            while (*end == 'u' || *end == 'U' || *end == 'l' || *end == 'L')
                end++;
            ok = *end == '\0';
            *value = neg ? -(double)v : (double)v;
        }
    }
    for (unsigned k = 0; k < 4; k++)
        free(b[k]);
    clang_disposeTokens(x->tu, tokens, n);
    return ok;
}

static void add_macro(extractor *x, CXCursor c)
{
    char *name = cx_strdup(clang_getCursorSpelling(c));
    entity(x, "_macros", name, c);
    double value;
    if (starts_with(name, "MOE_") && !clang_Cursor_isMacroFunctionLike(c) && macro_integer(x, c, &value)) {
        cJSON *e = entity(x, "constants", name, c);
        cJSON_AddItemToObject(e, "doc", macro_doc(x, c));
        cJSON_AddNumberToObject(e, "value", value);
    }
    free(name);
}

static enum CXChildVisitResult collect(CXCursor c, CXCursor parent, CXClientData data)
{
    cursor_list *l = data;
    (void)parent;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        CXCursor *v = realloc(l->v, cap * sizeof *v);
        if (!v) {
            l->oom = 1;
            return CXChildVisit_Break;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = c;
    return CXChildVisit_Continue;
}

/* The typedef right after a definition that names it: `typedef struct moe_x {...} moe_x;`. */
static int names(CXCursor td, CXCursor def)
{
    if (clang_getCursorKind(td) != CXCursor_TypedefDecl)
        return 0;
    CXCursor d = clang_getTypeDeclaration(strip_elaborated(clang_getTypedefDeclUnderlyingType(td)));
    return clang_equalCursors(clang_getCanonicalCursor(d), clang_getCanonicalCursor(def));
}

static void add_version(extractor *x)
{
    static const char *const parts[] = {"MOE_VERSION_MAJOR", "MOE_VERSION_MINOR", "MOE_VERSION_PATCH"};
    double v[3];
    for (int i = 0; i < 3; i++) {
        const cJSON *e = NULL;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(x->root, "constants"))
            if (strcmp(cJSON_GetObjectItemCaseSensitive(e, "name")->valuestring, parts[i]) == 0)
                break;
        if (!e)
            return; /* no version: the library entry says null */
        v[i] = cJSON_GetObjectItemCaseSensitive(e, "value")->valuedouble;
    }
    char s[64];
    snprintf(s, sizeof s, "%.0f.%.0f.%.0f", v[0], v[1], v[2]);
    cJSON_ReplaceItemInObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(x->root, "library"), "version",
                                           cJSON_CreateString(s));
}

cJSON *apidesc_extract(CXTranslationUnit tu, const char *include_dir)
{
    static const char *const sections[] = {"constants", "aliases", "handles",  "enums",   "structs",
                                           "callbacks", "functions", "_macros", "_unions"};
    extractor x = {.tu = tu, .dir_arg = include_dir};
    if (!realpath(include_dir, x.dir) || strlen(x.dir) + 1 >= sizeof x.dir) {
        fprintf(stderr, "apidesc: cannot resolve include directory %s\n", include_dir);
        return NULL;
    }
    strcat(x.dir, "/");
    x.dir_len = strlen(x.dir);

    x.root = cJSON_CreateObject();
    cJSON *lib = cJSON_AddObjectToObject(x.root, "library");
    cJSON_AddStringToObject(lib, "name", "moe");
    cJSON_AddNullToObject(lib, "version");
    CXString main_name = clang_getTranslationUnitSpelling(tu);
    CXFile main_file = clang_getFile(tu, clang_getCString(main_name));
    clang_disposeString(main_name);
    const char *main_rel = relative_path(&x, main_file);
    cJSON_AddStringToObject(lib, "header", main_rel ? main_rel : "");
    for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++)
        cJSON_AddArrayToObject(x.root, sections[i]);

    cursor_list l = {0};
    clang_visitChildren(clang_getTranslationUnitCursor(tu), collect, &l);
    if (l.oom) {
        fprintf(stderr, "apidesc: out of memory\n");
        free(l.v);
        cJSON_Delete(x.root);
        return NULL;
    }
    for (size_t i = 0; i < l.n; i++) {
        CXCursor c = l.v[i];
        enum CXCursorKind k = clang_getCursorKind(c);
        if (!public_path(&x, c, NULL))
            continue;
        if (k == CXCursor_MacroDefinition && !clang_Cursor_isMacroBuiltin(c)) {
            add_macro(&x, c);
        } else if (k == CXCursor_FunctionDecl) {
            add_function(&x, c);
        } else if (k == CXCursor_TypedefDecl) {
            add_typedef(&x, c);
        } else if (k == CXCursor_StructDecl || k == CXCursor_UnionDecl || k == CXCursor_EnumDecl) {
            if (!clang_isCursorDefinition(c))
                continue; /* a forward declaration: its typedef makes it a handle */
            CXCursor td = i + 1 < l.n && names(l.v[i + 1], c) ? l.v[i + 1] : clang_getNullCursor();
            char *name = cx_strdup(clang_getCursorSpelling(clang_Cursor_isNull(td) ? c : td));
            if (k == CXCursor_UnionDecl)
                entity(&x, "_unions", name, c);
            else
                add_record(&x, c, td, name);
            free(name);
            i += !clang_Cursor_isNull(td); /* the typedef is described with its definition */
        }
    }
    free(l.v);
    add_version(&x);
    return x.root;
}

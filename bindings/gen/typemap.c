/* The type maps: how each kind of the API description is spelled in C, Rust, Go, Julia and lowered
 * for libffi. They live together so a new kind is added to every language at once, and the Julia
 * spelling and the libffi lowering that the ABI test compares come from the same row. Names of the
 * generated code (CamelCase, keywords) live here too. */
#include "bindgen.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One row per scalar kind. char appears only behind pointers (const char * is a string). */
typedef struct scalar_row {
    const char *kind;
    const char *c;
    const char *rust;
    const char *go;
    const char *julia;
    const char *abi;
} scalar_row;

static const scalar_row scalars[] = {
    /* kind      C           Rust      Go         Julia       libffi lowering */
    {"void", "void", "c_void", "", "Cvoid", "ABI_VOID"},
    {"int8", "int8_t", "i8", "int8", "Int8", "ABI_SINT8"},
    {"int16", "int16_t", "i16", "int16", "Int16", "ABI_SINT16"},
    {"int32", "int32_t", "i32", "int32", "Int32", "ABI_SINT32"},
    {"int64", "int64_t", "i64", "int64", "Int64", "ABI_SINT64"},
    {"uint8", "uint8_t", "u8", "uint8", "UInt8", "ABI_UINT8"},
    {"uint16", "uint16_t", "u16", "uint16", "UInt16", "ABI_UINT16"},
    {"uint32", "uint32_t", "u32", "uint32", "UInt32", "ABI_UINT32"},
    {"uint64", "uint64_t", "u64", "uint64", "UInt64", "ABI_UINT64"},
    {"size", "size_t", "usize", "uintptr", "Csize_t", "ABI_SIZE"},
    {"float", "float", "f32", "float32", "Float32", "ABI_FLOAT"},
    {"double", "double", "f64", "float64", "Float64", "ABI_DOUBLE"},
    {"char", "char", "c_char", "byte", "UInt8", "ABI_SINT8"},
};

/* Enums travel as 4-byte integers (docs/api-description.md): every binding spells them int32. */
static const scalar_row enum_row = {"enum", "", "i32", "int32", "Int32", "ABI_SINT32"};

static const scalar_row *scalar(const char *kind)
{
    for (size_t i = 0; i < sizeof scalars / sizeof scalars[0]; i++)
        if (strcmp(scalars[i].kind, kind) == 0)
            return &scalars[i];
    return NULL;
}

static int is_named_kind(const char *k)
{
    return !strcmp(k, "handle") || !strcmp(k, "enum") || !strcmp(k, "struct") || !strcmp(k, "callback");
}

/* ---- C ------------------------------------------------------------------------------------------ */

void bg_c_type(bg_buf *b, const cJSON *t)
{
    const char *k = bg_str(t, "kind"), *alias = bg_str(t, "alias");
    if (*alias) {
        bg_put(b, alias);
    } else if (is_named_kind(k)) {
        bg_put(b, bg_str(t, "name"));
    } else if (!strcmp(k, "pointer")) {
        /* "T const *" reads right for every pointee, pointers to pointers included */
        bg_c_type(b, bg_get(t, "pointee"));
        bg_put(b, cJSON_IsTrue(bg_get(t, "const_pointee")) ? " const *" : " *");
    } else if (!strcmp(k, "array")) {
        bg_c_type(b, bg_get(t, "element"));
        bg_printf(b, "[%lld]", bg_int(t, "length"));
    } else {
        bg_put(b, scalar(k)->c);
    }
}

/* ---- Rust (moe-sys) ------------------------------------------------------------------------------ */

void bg_rust_type(bg_buf *b, const cJSON *t, bg_pos pos)
{
    const char *k = bg_str(t, "kind"), *alias = bg_str(t, "alias");
    if (*alias) {
        bg_put(b, alias);
    } else if (is_named_kind(k)) {
        bg_put(b, bg_str(t, "name")); /* enums are `pub type moe_x = i32;`, callbacks Option<fn> */
    } else if (!strcmp(k, "pointer")) {
        bg_put(b, cJSON_IsTrue(bg_get(t, "const_pointee")) ? "*const " : "*mut ");
        bg_rust_type(b, bg_get(t, "pointee"), BG_FIELD);
    } else if (!strcmp(k, "array")) {
        bg_put(b, "[");
        bg_rust_type(b, bg_get(t, "element"), BG_FIELD);
        bg_printf(b, "; %lld]", bg_int(t, "length"));
    } else if (!strcmp(k, "void") && pos == BG_RETURN) {
        bg_put(b, "()");
    } else {
        bg_put(b, scalar(k)->rust);
    }
}

/* ---- Go (struct mirrors only: Go calls the real header through cgo) ------------------------------ */

int bg_go_field_hidden(const cJSON *field)
{
    const char *k = bg_str(bg_get(field, "type"), "kind");
    /* struct_size is set by the wrappers; a Go pointer may not be stored where C reads it, so
     * pointer and callback fields are uintptr slots only the package fills (with C memory). */
    return !strcmp(bg_str(field, "name"), "struct_size") || !strcmp(k, "pointer") || !strcmp(k, "callback");
}

void bg_go_type(bg_buf *b, const cJSON *desc, const cJSON *t, const cJSON *field)
{
    const char *k = bg_str(t, "kind");
    const cJSON *hint = field ? bg_field_enum_hint(desc, field) : NULL;
    if (hint) {
        bg_camel(b, bg_str(hint, "name"), 1, 1);
    } else if (!strcmp(k, "enum") || !strcmp(k, "struct")) {
        bg_camel(b, bg_str(t, "name"), 1, 1);
    } else if (!strcmp(k, "pointer") || !strcmp(k, "callback")) {
        bg_put(b, "uintptr");
    } else if (!strcmp(k, "array")) {
        bg_printf(b, "[%lld]", bg_int(t, "length"));
        bg_go_type(b, desc, bg_get(t, "element"), NULL);
    } else {
        bg_put(b, scalar(k)->go);
    }
}

/* ---- Julia --------------------------------------------------------------------------------------- */

void bg_julia_type(bg_buf *b, const cJSON *t, bg_pos pos)
{
    const char *k = bg_str(t, "kind"), *alias = bg_str(t, "alias");
    (void)pos; /* one spelling fits calls and fields: Cstring is a pointer-sized bits type */
    if (*alias) {
        bg_put(b, alias);
    } else if (is_named_kind(k)) {
        bg_put(b, bg_str(t, "name"));
    } else if (!strcmp(k, "pointer")) {
        const cJSON *p = bg_get(t, "pointee");
        if (!strcmp(bg_str(p, "kind"), "char") && cJSON_IsTrue(bg_get(t, "const_pointee"))) {
            bg_put(b, "Cstring"); /* a UTF-8 string in, or a borrowed one out */
        } else {
            bg_put(b, "Ptr{");
            bg_julia_type(b, p, BG_FIELD);
            bg_put(b, "}");
        }
    } else if (!strcmp(k, "array")) {
        bg_printf(b, "NTuple{%lld, ", bg_int(t, "length"));
        bg_julia_type(b, bg_get(t, "element"), BG_FIELD);
        bg_put(b, "}");
    } else {
        bg_put(b, scalar(k)->julia);
    }
}

/* ---- the ABI table (libffi lowering, as Julia's ccall lowers each Julia type) -------------------- */

static long struct_index(const cJSON *desc, const char *name)
{
    long i = 0;
    const cJSON *s;
    cJSON_ArrayForEach(s, bg_get(desc, "structs"))
    {
        if (!strcmp(bg_str(s, "name"), name))
            return i;
        i++;
    }
    return -1;
}

static void put_c_string(bg_buf *b, const char *s)
{
    bg_put(b, "\"");
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            bg_printf(b, "\\%c", *s);
        else
            bg_printf(b, "%c", *s);
    }
    bg_put(b, "\"");
}

void bg_abi_type(bg_buf *b, const cJSON *desc, const cJSON *t, bg_pos pos)
{
    const char *k = bg_str(t, "kind");
    const char *code;
    long index = -1, length = 0;
    if (!strcmp(k, "pointer") || !strcmp(k, "callback") || !strcmp(k, "handle"))
        code = "ABI_POINTER";
    else if (!strcmp(k, "enum"))
        code = enum_row.abi;
    else if (!strcmp(k, "struct"))
        code = "ABI_STRUCT", index = struct_index(desc, bg_str(t, "name"));
    else if (!strcmp(k, "array"))
        code = "ABI_ARRAY", length = (long)bg_int(t, "length");
    else
        code = scalar(k)->abi;
    bg_buf jl = {0}, c = {0};
    bg_julia_type(&jl, t, pos);
    bg_c_type(&c, t);
    bg_printf(b, "{%s, ", code);
    put_c_string(b, jl.p);
    bg_put(b, ", ");
    put_c_string(b, c.p);
    bg_printf(b, ", %ld, %ld, ", index, length);
    if (!strcmp(k, "array")) {
        bg_put(b, "&(const abi_type)");
        bg_abi_type(b, desc, bg_get(t, "element"), BG_FIELD);
    } else {
        bg_put(b, "NULL");
    }
    bg_put(b, "}");
    bg_free(&jl);
    bg_free(&c);
}

/* ---- names --------------------------------------------------------------------------------------- */

/* Go initialisms (Effective Go: "ServeHTTP", not "ServeHttp") and the spellings users know. */
static const char *const initialisms[][2] = {
    {"lr", "LR"},     {"id", "ID"},     {"dp", "DP"},         {"tp", "TP"},         {"pp", "PP"},
    {"ep", "EP"},     {"etp", "ETP"},   {"edp", "EDP"},       {"cpu", "CPU"},       {"cuda", "CUDA"},
    {"io", "IO"},     {"ok", "OK"},     {"hf", "HF"},         {"bf16", "BF16"},     {"f16", "F16"},
    {"f32", "F32"},   {"i32", "I32"},   {"i64", "I64"},       {"u8", "U8"},         {"mlp", "MLP"},
    {"sgd", "SGD"},   {"adamw", "AdamW"}, {"gelu", "GELU"},   {"swiglu", "SwiGLU"}, {"rope", "RoPE"},
    {"rmsnorm", "RMSNorm"}, {"layernorm", "LayerNorm"}, {"alibi", "ALiBi"}, {"mpi", "MPI"},
    {"json", "JSON"}, {"rng", "RNG"},     {"kv", "KV"},
};

void bg_camel(bg_buf *b, const char *name, int exported, int drop_prefix)
{
    if (drop_prefix && (!strncmp(name, "moe_", 4) || !strncmp(name, "MOE_", 4)))
        name += 4;
    int first = 1;
    while (*name) {
        const char *e = strchr(name, '_');
        size_t n = e ? (size_t)(e - name) : strlen(name);
        char word[64];
        if (n >= sizeof word)
            n = sizeof word - 1;
        for (size_t i = 0; i < n; i++)
            word[i] = (char)tolower((unsigned char)name[i]);
        word[n] = '\0';
        if (n) {
            const char *spelled = NULL;
            for (size_t i = 0; i < sizeof initialisms / sizeof initialisms[0]; i++)
                if (!strcmp(initialisms[i][0], word))
                    spelled = initialisms[i][1];
            if (first && !exported) {
                bg_put(b, word); /* unexported: the first word all lower case */
            } else if (spelled) {
                bg_put(b, spelled);
            } else {
                word[0] = (char)toupper((unsigned char)word[0]);
                bg_put(b, word);
            }
            first = 0;
        }
        name += n + (e ? 1 : 0);
        if (!e)
            break;
    }
}

static int in_list(const char *s, const char *const *list)
{
    for (; *list; list++)
        if (!strcmp(*list, s))
            return 1;
    return 0;
}

int bg_is_rust_keyword(const char *s)
{
    static const char *const kw[] = {"as", "break", "const", "continue", "crate", "else", "enum", "extern",
                                     "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod",
                                     "move", "mut", "pub", "ref", "return", "self", "Self", "static", "struct",
                                     "super", "trait", "true", "type", "unsafe", "use", "where", "while",
                                     "async", "await", "dyn", "abstract", "become", "box", "do", "final",
                                     "macro", "override", "priv", "typeof", "unsized", "virtual", "yield",
                                     "try", NULL};
    return in_list(s, kw);
}

int bg_is_go_keyword(const char *s)
{
    static const char *const kw[] = {"break", "case", "chan", "const", "continue", "default", "defer", "else",
                                     "fallthrough", "for", "func", "go", "goto", "if", "import", "interface",
                                     "map", "package", "range", "return", "select", "struct", "switch", "type",
                                     "var", NULL};
    return in_list(s, kw);
}

int bg_is_julia_keyword(const char *s)
{
    static const char *const kw[] = {"baremodule", "begin", "break", "catch", "const", "continue", "do",
                                     "else", "elseif", "end", "export", "false", "finally", "for", "function",
                                     "global", "if", "import", "let", "local", "macro", "module", "quote",
                                     "return", "struct", "true", "try", "using", "while", "outer", NULL};
    return in_list(s, kw);
}

const cJSON *bg_field_enum_hint(const cJSON *desc, const cJSON *field)
{
    const cJSON *t = bg_get(field, "type");
    if (strcmp(bg_str(t, "kind"), "int32") || *bg_str(t, "alias"))
        return NULL;
    /* The header's convention for an enum stored as int32_t: the doc opens "A ::moe_x." */
    const char *brief = bg_brief(field);
    if (strncmp(brief, "A ::", 4))
        return NULL;
    char name[128];
    size_t n = 0;
    for (const char *p = brief + 4; (isalnum((unsigned char)*p) || *p == '_') && n + 1 < sizeof name; p++)
        name[n++] = *p;
    name[n] = '\0';
    return bg_find(desc, "enums", name);
}

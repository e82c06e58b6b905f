/* The bindings generator, in rooms: bindgen.c reads the API description and writes or checks the
 * outputs, typemap.c holds the one type map per language (Rust, Go, Julia, C and the libffi/ABI view),
 * emit_*.c write one output each. Every emitter is a pure function of the description: entries in
 * description order, no timestamps, '\n' line ends, so committed outputs can be diffed byte for byte. */
#ifndef MOE_BINDGEN_H
#define MOE_BINDGEN_H

#include <stddef.h>

#include <cjson/cJSON.h>

/* ---- growing text buffer (aborts the program on out of memory: a generator, not the library) ---- */

typedef struct bg_buf {
    char *p;
    size_t len, cap;
} bg_buf;

void bg_put(bg_buf *b, const char *s);
void bg_putn(bg_buf *b, const char *s, size_t n);
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
void bg_printf(bg_buf *b, const char *fmt, ...);
void bg_free(bg_buf *b);

/* ---- description access (the input was validated by bg_validate, so lookups cannot fail) ------- */

const cJSON *bg_get(const cJSON *obj, const char *key); /* NULL when absent */
const char *bg_str(const cJSON *obj, const char *key);  /* "" when absent or not a string */
long long bg_int(const cJSON *obj, const char *key);
const char *bg_brief(const cJSON *entity);              /* the doc's brief, "" when none */
/* The description's entries of one section whose name is name, or NULL. */
const cJSON *bg_find(const cJSON *desc, const char *section, const char *name);
/* Checks every type object and entry the emitters rely on; prints the first problem and returns -1. */
int bg_validate(const cJSON *desc);

/* ---- names -------------------------------------------------------------------------------------- */

/* snake_case or UPPER_CASE words to CamelCase, with the initialisms of the Go map (lr -> LR).
 * drop_prefix drops a leading moe_/MOE_ (type and constant names, not fields); exported = 0
 * lower-cases the first word. */
void bg_camel(bg_buf *b, const char *name, int exported, int drop_prefix);
int bg_is_rust_keyword(const char *s);
int bg_is_go_keyword(const char *s);
int bg_is_julia_keyword(const char *s);
/* For an enum-typed field stored as int32_t: the enum its doc names ("A ::moe_dtype."), or NULL. */
const cJSON *bg_field_enum_hint(const cJSON *desc, const cJSON *field);

/* ---- the type maps ------------------------------------------------------------------------------ */

/* Where a type appears: the Julia map differs for strings (Cstring in calls, a plain pointer in
 * struct fields), the Go map only covers struct fields. */
typedef enum bg_pos { BG_PARAM, BG_RETURN, BG_FIELD } bg_pos;

void bg_c_type(bg_buf *b, const cJSON *type);                 /* C spelling, for prototype checks */
void bg_rust_type(bg_buf *b, const cJSON *type, bg_pos pos);  /* moe-sys raw types */
void bg_go_type(bg_buf *b, const cJSON *desc, const cJSON *type, const cJSON *field); /* mirrors */
void bg_julia_type(bg_buf *b, const cJSON *type, bg_pos pos); /* @ccall and struct fields */
/* The ABI table's initializer of a type (struct abi_type in tests/abi/abi_types.h): the lowering
 * libffi uses, plus the Julia spelling from bg_julia_type for the @ccall check. */
void bg_abi_type(bg_buf *b, const cJSON *desc, const cJSON *type, bg_pos pos);
/* Whether a Go mirror keeps the field unexported (pointers and callbacks, struct_size). */
int bg_go_field_hidden(const cJSON *field);

/* ---- emitters: each appends one whole file to out ----------------------------------------------- */

void bg_emit_rust(bg_buf *out, const cJSON *desc);
void bg_emit_go(bg_buf *out, const cJSON *desc);
void bg_emit_go_test(bg_buf *out, const cJSON *desc);
void bg_emit_julia(bg_buf *out, const cJSON *desc);
void bg_emit_abi(bg_buf *out, const cJSON *desc);

/* Text as a block of line comments: each line becomes indent + marker + " " + line (blank lines keep
 * the marker alone, trailing blanks are dropped). */
void bg_put_doc(bg_buf *b, const char *indent, const char *marker, const char *text);
/* An entity's doc as prose for other languages' comments: "@brief " dropped, "@param x text" as
 * "- x: text", "@return text" as "Returns: text", leading blanks of lines removed. */
void bg_doc_prose(bg_buf *b, const cJSON *entity);
/* Comment text on one line: newlines become spaces, and "*" "/" can't close a C comment. */
void bg_put_oneline(bg_buf *b, const char *text);

#endif /* MOE_BINDGEN_H */

/* The ABI table's types: what bindings/gen/bindgen writes into abi_table.c from the API description
 * (each type as libffi lowers it, beside the Julia spelling the generator gave it and its C spelling),
 * and what the header says (offsetof, sizeof, macro values) next to what the description recorded.
 * The libffi test and the Julia @ccall test both read it; neither links libmoe. */
#ifndef MOE_TESTS_ABI_TYPES_H
#define MOE_TESTS_ABI_TYPES_H

#include <stddef.h>
#include <stdint.h>

/* How a binding passes a type through libffi (Julia's ccall lowers the same way). */
typedef enum abi_kind {
    ABI_VOID,
    ABI_SINT8,
    ABI_UINT8,
    ABI_SINT16,
    ABI_UINT16,
    ABI_SINT32,
    ABI_UINT32,
    ABI_SINT64,
    ABI_UINT64,
    ABI_SIZE, /* size_t: Csize_t */
    ABI_FLOAT,
    ABI_DOUBLE,
    ABI_POINTER, /* pointers, handles behind pointers, strings, callbacks */
    ABI_STRUCT,  /* by value: struct fields only (the lint forbids structs by value in calls) */
    ABI_ARRAY    /* fixed arrays: struct fields only */
} abi_kind;

typedef struct abi_type {
    abi_kind kind;
    const char *julia;             /* the spelling in LibMoe.jl */
    const char *c;                 /* the C spelling, for messages */
    long struct_index;             /* ABI_STRUCT: index in abi_structs, else -1 */
    long length;                   /* ABI_ARRAY: element count */
    const struct abi_type *element; /* ABI_ARRAY: element type */
} abi_type;

typedef struct abi_param {
    const char *name;
    abi_type type;
} abi_param;

typedef struct abi_function {
    const char *name;
    abi_type ret;
    size_t nparams;
    const abi_param *params; /* NULL when nparams is 0 */
} abi_function;

typedef struct abi_field {
    const char *name;
    abi_type type;
    size_t desc_offset; /* from the description */
    size_t c_offset;    /* offsetof() on the header */
} abi_field;

typedef struct abi_struct {
    const char *name;
    size_t desc_size, desc_align; /* from the description */
    size_t c_size, c_align;       /* sizeof/_Alignof on the header */
    size_t nfields;
    const abi_field *fields;
} abi_struct;

typedef struct abi_handle {
    const char *name;
    const char *destroy; /* its destroy function, or NULL */
} abi_handle;

typedef struct abi_constant {
    const char *name;
    int64_t desc_value; /* from the description */
    int64_t c_value;    /* the header's macro or enum constant */
} abi_constant;

extern const char abi_library_name[];
extern const char abi_library_version[];
extern const abi_function abi_functions[];
extern const size_t abi_function_count;
extern const abi_function abi_callbacks[];
extern const size_t abi_callback_count;
extern const abi_struct abi_structs[];
extern const size_t abi_struct_count;
extern const abi_handle abi_handles[];
extern const size_t abi_handle_count;
extern const abi_constant abi_constants[];
extern const size_t abi_constant_count;

#endif /* MOE_TESTS_ABI_TYPES_H */

/**
 * @file bad_api.h
 * @brief Fixture: an API that breaks each rule of the lint; it compiles, so only the lint can object.
 *
 * Each line the lint must report carries a marker comment naming the rules it breaks there (a
 * plain comment, so it documents nothing). The lint must report those and nothing else.
 */
#ifndef MOE_BAD_API_H
#define MOE_BAD_API_H

#include <stddef.h>
#include <stdint.h>

/** @brief Export macro, as in moe/common.h. */
#define MOE_API __attribute__((visibility("default")))

/** @brief Status of every fallible call. */
typedef int32_t moe_status;

/** @brief An opaque handle. */
typedef struct moe_widget moe_widget;

/** @brief A macro without the prefix. */
#define BAD_LIMIT 4 /* expect: prefix */

#define MOE_BAD_UNDOCUMENTED 7 /* expect: doc */

MOE_API moe_status moe_widget_undocumented(moe_widget *widget); /* expect: doc */

/** @brief A parameter without a name. */
MOE_API moe_status moe_widget_unnamed(moe_widget *); /* expect: doc */

/** @brief A function without the prefix. */
MOE_API moe_status widget_reset(moe_widget *widget); /* expect: prefix */

/** @brief A function not exported with MOE_API. */
moe_status moe_widget_hidden(moe_widget *widget); /* expect: export */

/** @brief Plain long, bool and int across the ABI, and a struct by value. */
MOE_API long moe_widget_types(_Bool flag, int count, unsigned long size, char letter); /* expect: type */

/** @brief Pointers to long and a raw function pointer instead of a callback typedef. */
MOE_API moe_status moe_widget_pointers(long *values, void (*done)(void *user_data)); /* expect: type */

/** @brief A typedef of a type that is not binding-safe. */
typedef unsigned short moe_bad_short; /* expect: type */

/** @brief A declaration without a prototype. */
MOE_API moe_status moe_widget_old(); /* expect: varargs */

/** @brief A union is not binding-safe. */
typedef union moe_bad_number { /* expect: union */
    int32_t i; /**< As an integer. */
    float f;   /**< As a float. */
} moe_bad_number;

/** @brief A bitfield and an undocumented field. */
typedef struct moe_bad_bits {
    uint32_t ready : 1; /**< A one-bit flag. */ /* expect: bitfield */
    uint32_t count;     /* expect: doc */
} moe_bad_bits;

/** @brief A struct passed by value. */
MOE_API moe_status moe_widget_bits(moe_bad_bits bits); /* expect: type */

/** @brief A variadic function. */
MOE_API moe_status moe_widget_printf(moe_widget *widget, const char *format, ...); /* expect: varargs */

/** @brief An implicit value and no _FORCE32 member. */
typedef enum moe_bad_color { /* expect: enum_force32 */
    MOE_BAD_RED = 0, /**< Red. */
    MOE_BAD_GREEN    /**< Green, value implicit. */ /* expect: enum_value */
} moe_bad_color;

/**
 * @brief A create without a destroy.
 * @param out Receives the widget.
 * @return 0.
 */
MOE_API moe_status moe_widget_create(moe_widget **out); /* expect: create_destroy */

/** @brief A config without struct_size first and without an init function. */
typedef struct moe_bad_config { /* expect: config config */
    int32_t threads; /**< Threads. */
} moe_bad_config;

/**
 * @brief A callback without user_data last.
 * @param value A value.
 */
typedef void (*moe_bad_fn)(int32_t value); /* expect: callback */

#endif /* MOE_BAD_API_H */

/**
 * @file good_api.h
 * @brief Fixture: a small API that follows every rule and uses every type kind of the description.
 *
 * The lint must pass it, and its description must equal good_api.json, whose layout numbers were
 * checked against offsetof/sizeof from the C compiler (LP64 Linux).
 */
#ifndef MOE_GOOD_API_H
#define MOE_GOOD_API_H

#include <stddef.h>
#include <stdint.h>

/** @brief Export macro, as in moe/common.h. */
#define MOE_API __attribute__((visibility("default")))

/** @brief Major version. */
#define MOE_VERSION_MAJOR 2
/** @brief Minor version. */
#define MOE_VERSION_MINOR 10
/** @brief Patch version. */
#define MOE_VERSION_PATCH 3

/**
 * @brief Most things per batch.
 *
 * A second paragraph that is not part of the brief.
 */
#define MOE_GOOD_MAX_THINGS 16
#define MOE_GOOD_NEGATIVE (-3)  /**< A parenthesised negative constant. */
#define MOE_GOOD_MASK 0xFFu     /**< A hexadecimal constant with a suffix. */
/** @brief Not a constant: function-like. */
#define MOE_GOOD_SQUARE(x) ((x) * (x))
/** @brief Not a constant: not an integer. */
#define MOE_GOOD_SCALE 0.5

/** @brief Status of every fallible call. */
typedef int32_t moe_status;

/** @brief An opaque thing. */
typedef struct moe_thing moe_thing;

/** @brief A mode with a negative value: the compiler makes it signed. */
typedef enum moe_good_mode {
    MOE_GOOD_MODE_NONE = -1, /**< No mode. */
    MOE_GOOD_MODE_FAST = 0,  /**< Fast. */
    MOE_GOOD_MODE_SLOW = 1 << 4, /**< Slow; an expression as value. */
    MOE_GOOD_MODE_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum. */
} moe_good_mode;

/** @brief Non-negative flags: the compiler makes them unsigned. */
typedef enum moe_good_flag {
    MOE_GOOD_FLAG_A = 1, /**< A. */
    MOE_GOOD_FLAG_B = 2, /**< B. */
    MOE_GOOD_FLAG_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum. */
} moe_good_flag;

/**
 * @brief Visitor callback.
 * @param index Position.
 * @param name Borrowed name.
 * @param user_data Caller's pointer.
 * @return 0 to continue.
 */
typedef int32_t (*moe_good_visit_fn)(uint64_t index, const char *name, void *user_data);

/** @brief A struct defined apart from its typedef; its padding shows in the offsets. */
typedef struct moe_pair moe_pair;

/** @brief Two values of different alignment. */
struct moe_pair {
    float first;     /**< At 0. */
    uint64_t second; /**< At 8, after 4 bytes of padding. */
};

/** @brief Options for moe_thing_create(). */
typedef struct moe_thing_config {
    uint32_t struct_size;   /**< sizeof(moe_thing_config) as compiled by the caller. */
    moe_good_mode mode;     /**< An enum by value. */
    double scale;           /**< A double. */
    int64_t shape[4];       /**< A fixed array. */
    moe_pair pair;          /**< A nested struct by value. */
    moe_good_visit_fn visit; /**< A callback. */
    void *user_data;        /**< Passed to visit. */
    const char *name;       /**< A borrowed string. */
    size_t count;           /**< A size. */
    moe_status last;        /**< An alias of int32_t. */
} moe_thing_config;

/**
 * @brief Fill a config with defaults.
 * @param cfg The config.
 * @param struct_size sizeof(moe_thing_config).
 * @return 0.
 */
MOE_API moe_status moe_thing_config_init(moe_thing_config *cfg, uint32_t struct_size);

/**
 * @brief Create a thing.
 * @param cfg Options.
 * @param out Receives the thing.
 * @return 0.
 */
MOE_API moe_status moe_thing_create(const moe_thing_config *cfg, moe_thing **out);

/**
 * @brief Destroy a thing.
 * @param thing The thing; NULL is a no-op.
 */
MOE_API void moe_thing_destroy(moe_thing *thing);

/** @brief Declared twice: described once. */
MOE_API void moe_thing_destroy(moe_thing *thing);

/**
 * @brief Small integers behind pointers.
 * @param thing The thing.
 * @param bytes Out bytes.
 * @param halves In halves.
 * @param small In signed bytes.
 * @param words In unsigned halves.
 * @return The new scale.
 */
MOE_API double moe_thing_small(struct moe_thing *thing, uint8_t *bytes, const int16_t *halves, const int8_t *small,
                               uint16_t *words);

/**
 * @brief Enum, float and callback parameters.
 * @param mode A mode.
 * @param factor A factor.
 * @param visit A callback.
 * @param user_data Passed to visit.
 * @return A float.
 */
MOE_API float moe_thing_modes(moe_good_mode mode, float factor, moe_good_visit_fn visit, void *user_data);

/**
 * @brief Strings out and pointers to pointers.
 * @param names Receives borrowed names.
 * @param pair Receives a pair.
 * @return A borrowed string, never NULL.
 */
MOE_API const char *moe_thing_names(const char **names, const moe_pair *pair);

#endif /* MOE_GOOD_API_H */

/* safetensors reader and writer (format and API in io/safetensors.h).
 * Reader invariant: a handle is returned only after every header field has been checked against the
 * bytes actually present, so no later access can leave the buffer. Writer invariant: `path` only ever
 * holds a complete file, because bytes reach it by rename of a fully written and synced temp file. */
#include "io/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "core/half.h"
#include "io/fsio.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this reader assumes a little-endian host"
#endif

/* JSON numbers arrive as doubles: integers above 2^53 cannot be told apart, so they are refused. */
#define ST_MAX_JSON_INT 9007199254740992.0

/* ------------------------------------------------------------------------------------------------
 * dtypes
 * ---------------------------------------------------------------------------------------------- */

typedef struct st_dtype_info {
    const char *name;
    int32_t dtype;
    uint32_t size;
} st_dtype_info;

static const st_dtype_info st_dtypes[] = {
    {"F32", MOE_DTYPE_F32, 4},
    {"BF16", MOE_DTYPE_BF16, 2},
    {"F16", MOE_DTYPE_F16, 2},
    {"I32", MOE_DTYPE_I32, 4},
    {"I64", MOE_DTYPE_I64, 8},
    {"U8", MOE_DTYPE_U8, 1},
    /* Valid safetensors dtypes without a moe_dtype: listed, never converted. */
    {"F64", MOEI_ST_DTYPE_OTHER, 8},
    {"U64", MOEI_ST_DTYPE_OTHER, 8},
    {"U32", MOEI_ST_DTYPE_OTHER, 4},
    {"I16", MOEI_ST_DTYPE_OTHER, 2},
    {"U16", MOEI_ST_DTYPE_OTHER, 2},
    {"I8", MOEI_ST_DTYPE_OTHER, 1},
    {"BOOL", MOEI_ST_DTYPE_OTHER, 1},
    {"F8_E4M3", MOEI_ST_DTYPE_OTHER, 1},
    {"F8_E5M2", MOEI_ST_DTYPE_OTHER, 1},
    {"F8_E8M0", MOEI_ST_DTYPE_OTHER, 1},
};
#define ST_NDTYPES (sizeof st_dtypes / sizeof st_dtypes[0])

static const st_dtype_info *st_dtype_by_name(const char *s)
{
    for (size_t i = 0; i < ST_NDTYPES; i++)
        if (strcmp(st_dtypes[i].name, s) == 0) return &st_dtypes[i];
    return NULL;
}

static const st_dtype_info *st_dtype_by_code(int32_t dtype)
{
    if (dtype < 0) return NULL;
    for (size_t i = 0; i < ST_NDTYPES; i++)
        if (st_dtypes[i].dtype == dtype) return &st_dtypes[i];
    return NULL;
}

const char *moei_st_dtype_name(int32_t dtype)
{
    const st_dtype_info *d = st_dtype_by_code(dtype);
    return d ? d->name : NULL;
}

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF). Returns the offset of the first bad
 * byte, or n when all is valid. With `json_text`, raw control bytes other than tab/LF/CR count as
 * bad too: JSON allows them nowhere, and cJSON would otherwise let them through inside strings. */
static size_t utf8_check(const unsigned char *s, size_t n, int json_text)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            if (json_text && c < 0x20 && c != '\t' && c != '\n' && c != '\r') return i;
            i++;
            continue;
        }
        size_t len;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else
            return i;
        if (n - i < len) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k < len; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
        i += len;
    }
    return n;
}

/* ------------------------------------------------------------------------------------------------
 * reader
 * ---------------------------------------------------------------------------------------------- */

typedef struct st_meta {
    const char *key;
    const char *value;
} st_meta;

struct moei_st_file {
    char *origin;              /* path or "(memory)" */
    const unsigned char *base; /* the whole file */
    uint64_t size;
    void *map; /* mmap'ed region (size bytes), or NULL */
    void *owned; /* read() copy, or NULL */
    uint64_t data_start, data_size;
    cJSON *root; /* kept: tensor names and metadata strings point into it */
    int64_t count;
    moei_st_tensor *tensors; /* data order */
    int64_t *by_name;        /* indices into tensors, names ascending */
    int64_t *shapes;         /* pool for every tensor's shape */
    int64_t meta_count;
    st_meta *meta; /* keys ascending */
};

static moe_status st_format(moe_ctx *ctx, const moei_st_file *f, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static moe_status st_format(moe_ctx *ctx, const moei_st_file *f, const char *fmt, ...)
{
    char body[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    return moei_fail(ctx, MOE_ERR_FORMAT, "safetensors %.200s: %s", f->origin, body);
}

/* Read a JSON number that must be a non-negative integer <= 2^53. Returns NULL when it is, else
 * what is wrong with it. */
static const char *json_index(const cJSON *it, uint64_t *v)
{
    if (!cJSON_IsNumber(it)) return "is not a number";
    double d = it->valuedouble;
    if (d < 0) return "is negative";
    if (!(d <= ST_MAX_JSON_INT)) return "is too large (above 2^53)";
    if (d != floor(d)) return "is not an integer";
    *v = (uint64_t)d;
    return NULL;
}

static int cmp_tensor_offset(const void *a, const void *b)
{
    const moei_st_tensor *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* qsort has no context argument; the name index sorts pointers to tensors instead. */
static int cmp_tensor_ptr_name(const void *a, const void *b)
{
    const moei_st_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

static int cmp_meta(const void *a, const void *b)
{
    const st_meta *x = a, *y = b;
    return strcmp(x->key, y->key);
}

/* Check one tensor entry and fill *t (shape into `shape`, which has room for its array). */
static moe_status st_parse_entry(moe_ctx *ctx, const moei_st_file *f, const cJSON *entry, moei_st_tensor *t,
                                 int64_t *shape)
{
    const char *name = entry->string;
    if (!cJSON_IsObject(entry))
        return st_format(ctx, f, "tensor '%.200s': entry is not a JSON object", name);
    const cJSON *jd = NULL, *js = NULL, *jo = NULL;
    for (const cJSON *c = entry->child; c; c = c->next) {
        const cJSON **slot = NULL;
        if (strcmp(c->string, "dtype") == 0) slot = &jd;
        else if (strcmp(c->string, "shape") == 0) slot = &js;
        else if (strcmp(c->string, "data_offsets") == 0) slot = &jo;
        else continue; /* unknown fields are ignored, as the reference implementation does */
        if (*slot) return st_format(ctx, f, "tensor '%.200s': field '%s' appears twice", name, c->string);
        *slot = c;
    }
    if (!jd) return st_format(ctx, f, "tensor '%.200s': field 'dtype' is missing", name);
    if (!js) return st_format(ctx, f, "tensor '%.200s': field 'shape' is missing", name);
    if (!jo) return st_format(ctx, f, "tensor '%.200s': field 'data_offsets' is missing", name);

    if (!cJSON_IsString(jd)) return st_format(ctx, f, "tensor '%.200s': field 'dtype' is not a string", name);
    const st_dtype_info *di = st_dtype_by_name(jd->valuestring);
    if (!di) return st_format(ctx, f, "tensor '%.200s': unknown dtype '%.40s'", name, jd->valuestring);

    if (!cJSON_IsArray(js)) return st_format(ctx, f, "tensor '%.200s': field 'shape' is not an array", name);
    int32_t ndim = 0;
    uint64_t numel = 1;
    int zero = 0, overflow = 0;
    for (const cJSON *c = js->child; c; c = c->next, ndim++) {
        uint64_t v = 0;
        const char *bad = json_index(c, &v);
        if (bad) return st_format(ctx, f, "tensor '%.200s': shape[%d] %s", name, (int)ndim, bad);
        shape[ndim] = (int64_t)v;
        /* numel must fit in int64; a zero size anywhere makes the tensor empty whatever the rest. */
        if (v == 0) zero = 1;
        else if (!overflow && numel > (uint64_t)INT64_MAX / v) overflow = 1;
        else if (!overflow) numel *= v;
    }
    if (zero) numel = 0;
    else if (overflow) return st_format(ctx, f, "tensor '%.200s': shape element count overflows 64 bits", name);

    if (!cJSON_IsArray(jo)) return st_format(ctx, f, "tensor '%.200s': field 'data_offsets' is not an array", name);
    if (cJSON_GetArraySize(jo) != 2)
        return st_format(ctx, f, "tensor '%.200s': field 'data_offsets' must have 2 entries, has %d", name,
                         cJSON_GetArraySize(jo));
    uint64_t begin = 0, end = 0;
    const char *bad = json_index(jo->child, &begin);
    if (bad) return st_format(ctx, f, "tensor '%.200s': data_offsets[0] %s", name, bad);
    bad = json_index(jo->child->next, &end);
    if (bad) return st_format(ctx, f, "tensor '%.200s': data_offsets[1] %s", name, bad);
    if (end < begin)
        return st_format(ctx, f, "tensor '%.200s': data_offsets [%llu, %llu] end before they begin", name,
                         (unsigned long long)begin, (unsigned long long)end);
    if (end > f->data_size)
        return st_format(ctx, f, "tensor '%.200s': data_offsets [%llu, %llu] reach past the %llu-byte data region",
                         name, (unsigned long long)begin, (unsigned long long)end,
                         (unsigned long long)f->data_size);
    if (numel > UINT64_MAX / di->size || numel * di->size != end - begin)
        return st_format(ctx, f,
                         "tensor '%.200s': data_offsets [%llu, %llu] hold %llu bytes but dtype %s with %llu "
                         "elements needs %s%llu",
                         name, (unsigned long long)begin, (unsigned long long)end,
                         (unsigned long long)(end - begin), di->name, (unsigned long long)numel,
                         numel > UINT64_MAX / di->size ? "more than " : "",
                         numel > UINT64_MAX / di->size ? (unsigned long long)UINT64_MAX
                                                       : (unsigned long long)(numel * di->size));

    t->name = name;
    t->dtype_name = di->name;
    t->dtype = di->dtype;
    t->ndim = ndim;
    t->shape = ndim ? shape : NULL;
    t->numel = (int64_t)numel;
    t->elem_size = di->size;
    t->offset = begin;
    t->nbytes = end - begin;
    t->data = t->nbytes ? f->base + f->data_start + begin : NULL;
    return MOE_OK;
}

static moe_status st_parse_metadata(moe_ctx *ctx, moei_st_file *f, const cJSON *m)
{
    if (!cJSON_IsObject(m)) return st_format(ctx, f, "'__metadata__' is not a JSON object");
    int64_t n = cJSON_GetArraySize(m);
    if (n == 0) return MOE_OK;
    f->meta = calloc((size_t)n, sizeof *f->meta);
    if (!f->meta) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "safetensors %.200s: out of memory", f->origin);
    for (const cJSON *c = m->child; c; c = c->next) {
        if (!cJSON_IsString(c))
            return st_format(ctx, f, "'__metadata__' value of key '%.200s' is not a string", c->string);
        f->meta[f->meta_count].key = c->string;
        f->meta[f->meta_count].value = c->valuestring;
        f->meta_count++;
    }
    qsort(f->meta, (size_t)f->meta_count, sizeof *f->meta, cmp_meta);
    for (int64_t i = 1; i < f->meta_count; i++)
        if (strcmp(f->meta[i - 1].key, f->meta[i].key) == 0)
            return st_format(ctx, f, "'__metadata__' key '%.200s' appears twice", f->meta[i].key);
    return MOE_OK;
}

/* Validate f->base[0 .. f->size) and build the tensor table. */
static moe_status st_parse(moe_ctx *ctx, moei_st_file *f)
{
    if (f->size < 8)
        return st_format(ctx, f, "%llu bytes is shorter than the 8-byte header length field",
                         (unsigned long long)f->size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | f->base[i];
    if (hlen > MOEI_ST_MAX_HEADER)
        return st_format(ctx, f, "header length %llu exceeds the %llu-byte limit", (unsigned long long)hlen,
                         (unsigned long long)MOEI_ST_MAX_HEADER);
    if (hlen > f->size - 8)
        return st_format(ctx, f, "header length %llu exceeds the %llu bytes that follow the length field",
                         (unsigned long long)hlen, (unsigned long long)(f->size - 8));
    f->data_start = 8 + hlen;
    f->data_size = f->size - f->data_start;
    const unsigned char *h = f->base + 8;
    if (hlen < 2 || h[0] != '{') return st_format(ctx, f, "header is not a JSON object (does not start with '{')");
    size_t bad = utf8_check(h, (size_t)hlen, 1);
    if (bad != hlen)
        return st_format(ctx, f, "header has an invalid byte 0x%02x at offset %llu (not UTF-8 JSON text)",
                         (unsigned)h[bad], (unsigned long long)bad);

    /* cJSON wants a NUL-terminated string; parsing a private copy also keeps it off the mapping. */
    char *text = malloc((size_t)hlen + 1);
    if (!text) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "safetensors %.200s: out of memory for the header", f->origin);
    memcpy(text, h, (size_t)hlen);
    text[hlen] = '\0';
    const char *end = NULL;
    f->root = cJSON_ParseWithOpts(text, &end, 0);
    if (!f->root) {
        size_t at = end && end >= text && end <= text + hlen ? (size_t)(end - text) : 0;
        free(text);
        return st_format(ctx, f, "header is not valid JSON (error near byte %llu)", (unsigned long long)at);
    }
    size_t rest = (size_t)(end - text);
    free(text);
    while (rest < hlen && (h[rest] == ' ' || h[rest] == '\t' || h[rest] == '\n' || h[rest] == '\r')) rest++;
    if (rest != hlen)
        return st_format(ctx, f, "header has bytes after its JSON object (at byte %llu)", (unsigned long long)rest);
    if (!cJSON_IsObject(f->root)) return st_format(ctx, f, "header is not a JSON object");

    /* Count tensors and shape entries, and check the metadata. */
    int64_t n = 0, ndims = 0;
    const cJSON *meta = NULL;
    for (const cJSON *c = f->root->child; c; c = c->next) {
        if (strcmp(c->string, "__metadata__") == 0) {
            if (meta) return st_format(ctx, f, "'__metadata__' appears twice");
            meta = c;
            continue;
        }
        n++;
        if (cJSON_IsObject(c)) {
            const cJSON *s = cJSON_GetObjectItemCaseSensitive(c, "shape");
            if (cJSON_IsArray(s)) ndims += cJSON_GetArraySize(s);
        }
    }
    if (meta) {
        moe_status st = st_parse_metadata(ctx, f, meta);
        if (st != MOE_OK) return st;
    }
    if (n == 0) {
        if (f->data_size != 0)
            return st_format(ctx, f, "no tensors, but %llu bytes follow the header", (unsigned long long)f->data_size);
        return MOE_OK;
    }
    f->tensors = calloc((size_t)n, sizeof *f->tensors);
    f->by_name = calloc((size_t)n, sizeof *f->by_name);
    f->shapes = calloc((size_t)(ndims ? ndims : 1), sizeof *f->shapes); /* never NULL: offsets are taken */
    if (!f->tensors || !f->by_name || !f->shapes)
        return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "safetensors %.200s: out of memory for %lld tensors", f->origin,
                         (long long)n);
    int64_t used = 0;
    for (const cJSON *c = f->root->child; c; c = c->next) {
        if (c == meta) continue;
        moe_status st = st_parse_entry(ctx, f, c, &f->tensors[f->count], f->shapes + used);
        if (st != MOE_OK) return st;
        used += f->tensors[f->count].ndim;
        f->count++;
    }

    /* Names must be unique (cJSON keeps duplicate keys as separate children). */
    const moei_st_tensor **names = malloc((size_t)n * sizeof *names);
    if (!names) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "safetensors %.200s: out of memory", f->origin);
    for (int64_t i = 0; i < n; i++) names[i] = &f->tensors[i];
    qsort(names, (size_t)n, sizeof *names, cmp_tensor_ptr_name);
    for (int64_t i = 1; i < n; i++)
        if (strcmp(names[i - 1]->name, names[i]->name) == 0) {
            moe_status st = st_format(ctx, f, "tensor name '%.200s' appears twice", names[i]->name);
            free(names);
            return st;
        }
    free(names);

    /* The tensors must tile the data region: sorted by offset, each begins where the last ended. */
    qsort(f->tensors, (size_t)n, sizeof *f->tensors, cmp_tensor_offset);
    uint64_t expect = 0;
    for (int64_t i = 0; i < n; i++) {
        const moei_st_tensor *t = &f->tensors[i];
        if (t->offset < expect)
            return st_format(ctx, f, "tensor '%.200s': data_offsets [%llu, %llu] overlap tensor '%.200s'", t->name,
                             (unsigned long long)t->offset, (unsigned long long)(t->offset + t->nbytes),
                             f->tensors[i - 1].name);
        if (t->offset > expect)
            return st_format(ctx, f, "tensor '%.200s': gap of %llu unused bytes before its data_offsets [%llu, %llu]",
                             t->name, (unsigned long long)(t->offset - expect), (unsigned long long)t->offset,
                             (unsigned long long)(t->offset + t->nbytes));
        expect = t->offset + t->nbytes;
    }
    if (expect != f->data_size)
        return st_format(ctx, f, "tensors cover %llu bytes but the data region has %llu (unused trailing bytes)",
                         (unsigned long long)expect, (unsigned long long)f->data_size);

    /* The name index, by position in the final (offset-sorted) table. */
    const moei_st_tensor **p = malloc((size_t)n * sizeof *p);
    if (!p) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "safetensors %.200s: out of memory", f->origin);
    for (int64_t i = 0; i < n; i++) p[i] = &f->tensors[i];
    qsort(p, (size_t)n, sizeof *p, cmp_tensor_ptr_name);
    for (int64_t i = 0; i < n; i++) f->by_name[i] = p[i] - f->tensors;
    free(p);
    return MOE_OK;
}

void moei_st_close(moei_st_file *f)
{
    if (!f) return;
    if (f->map) munmap(f->map, (size_t)f->size);
    free(f->owned);
    cJSON_Delete(f->root);
    free(f->tensors);
    free(f->by_name);
    free(f->shapes);
    free(f->meta);
    free(f->origin);
    free(f);
}

static moei_st_file *st_new(const char *origin)
{
    moei_st_file *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->origin = malloc(strlen(origin) + 1);
    if (!f->origin) {
        free(f);
        return NULL;
    }
    strcpy(f->origin, origin);
    return f;
}

moe_status moei_st_open_memory(moe_ctx *ctx, const void *buf, uint64_t size, moei_st_file **out)
{
    static const char *fn = "moei_st_open_memory";
    MOEI_CHECK_NOT_NULL(ctx, out, fn);
    MOEI_CHECK_ARG(ctx, buf != NULL || size == 0, fn, "argument 'buf' is NULL");
    moei_st_file *f = st_new("(memory)");
    if (!f) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    static const unsigned char empty[1] = {0};
    f->base = buf ? buf : empty;
    f->size = size;
    moe_status st = st_parse(ctx, f);
    if (st != MOE_OK) {
        moei_st_close(f);
        return st;
    }
    *out = f;
    return MOE_OK;
}

moe_status moei_st_open(moe_ctx *ctx, const char *path, moei_st_file **out)
{
    static const char *fn = "moei_st_open";
    MOEI_CHECK_NOT_NULL(ctx, out, fn);
    MOEI_CHECK_NOT_NULL(ctx, path, fn);
    moei_st_file *f = st_new(path);
    if (!f) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    int fd;
    do {
        fd = open(path, O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        int e = errno;
        moei_st_close(f);
        return moei_fail(ctx, MOE_ERR_IO, "safetensors %.200s: cannot open: %s", path, strerror(e));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        moei_st_close(f);
        return moei_fail(ctx, MOE_ERR_IO, "safetensors %.200s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        moei_st_close(f);
        return moei_fail(ctx, MOE_ERR_IO, "safetensors %.200s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        moei_st_close(f);
        return moei_fail(ctx, MOE_ERR_IO, "safetensors %.200s: file too large to map", path);
    }
    f->size = (uint64_t)sb.st_size;
    static const unsigned char empty[1] = {0};
    f->base = empty;
    if (f->size > 0) {
        void *m = mmap(NULL, (size_t)f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m != MAP_FAILED) {
            f->map = m;
            f->base = m;
        } else {
            /* Some file systems cannot map: read the file instead. */
            f->owned = malloc((size_t)f->size);
            if (!f->owned) {
                close(fd);
                moei_st_close(f);
                return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "safetensors %.200s: out of memory for %llu bytes",
                                 path, (unsigned long long)sb.st_size);
            }
            uint64_t got = 0;
            while (got < f->size) {
                ssize_t r = read(fd, (unsigned char *)f->owned + got, (size_t)(f->size - got));
                if (r < 0 && errno == EINTR) continue;
                if (r <= 0) {
                    int e = r < 0 ? errno : 0;
                    close(fd);
                    moei_st_close(f);
                    return moei_fail(ctx, MOE_ERR_IO, "safetensors %.200s: read failed: %s", path,
                                     e ? strerror(e) : "file shrank while being read");
                }
                got += (uint64_t)r;
            }
            f->base = f->owned;
        }
    }
    close(fd);
    moe_status st = st_parse(ctx, f);
    if (st != MOE_OK) {
        moei_st_close(f);
        return st;
    }
    *out = f;
    return MOE_OK;
}

int64_t moei_st_count(const moei_st_file *f) { return f ? f->count : 0; }

const moei_st_tensor *moei_st_at(const moei_st_file *f, int64_t i)
{
    if (!f || i < 0 || i >= f->count) return NULL;
    return &f->tensors[i];
}

const moei_st_tensor *moei_st_find(const moei_st_file *f, const char *name)
{
    if (!f || !name) return NULL;
    int64_t lo = 0, hi = f->count;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        const moei_st_tensor *t = &f->tensors[f->by_name[mid]];
        int c = strcmp(t->name, name);
        if (c == 0) return t;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

moe_status moei_st_get(moe_ctx *ctx, const moei_st_file *f, const char *name, const moei_st_tensor **out)
{
    static const char *fn = "moei_st_get";
    MOEI_CHECK_NOT_NULL(ctx, f, fn);
    MOEI_CHECK_NOT_NULL(ctx, name, fn);
    MOEI_CHECK_NOT_NULL(ctx, out, fn);
    const moei_st_tensor *t = moei_st_find(f, name);
    if (!t) return moei_fail(ctx, MOE_ERR_FORMAT, "safetensors %.200s: has no tensor named '%.200s'", f->origin, name);
    *out = t;
    return MOE_OK;
}

moe_status moei_st_read_f32(moe_ctx *ctx, const moei_st_tensor *t, int64_t first, int64_t count, float *out)
{
    static const char *fn = "moei_st_read_f32";
    MOEI_CHECK_NOT_NULL(ctx, t, fn);
    if (first < 0 || count < 0 || first > t->numel || count > t->numel - first)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: range [%lld, %lld + %lld) is outside tensor '%.200s' of %lld elements",
                         fn, (long long)first, (long long)first, (long long)count, t->name, (long long)t->numel);
    MOEI_CHECK_ARG(ctx, out != NULL || count == 0, fn, "argument 'out' is NULL");
    if (t->dtype != MOE_DTYPE_F32 && t->dtype != MOE_DTYPE_BF16 && t->dtype != MOE_DTYPE_F16)
        return moei_fail(ctx, MOE_ERR_UNSUPPORTED, "%s: tensor '%.200s' has dtype %s; only F32, BF16 and F16 convert to float",
                         fn, t->name, t->dtype_name);
    if (count == 0) return MOE_OK;
    const unsigned char *src = (const unsigned char *)t->data + (uint64_t)first * t->elem_size;
    if (t->dtype == MOE_DTYPE_F32) {
        memcpy(out, src, (size_t)count * sizeof(float));
        return MOE_OK;
    }
    const int bf16 = t->dtype == MOE_DTYPE_BF16;
#pragma omp parallel for schedule(static) if (count >= (1 << 20))
    for (int64_t i = 0; i < count; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2); /* the data has no alignment promise */
        out[i] = bf16 ? moei_bf16_to_f32(h) : moei_f16_to_f32(h);
    }
    return MOE_OK;
}

int64_t moei_st_metadata_count(const moei_st_file *f) { return f ? f->meta_count : 0; }

int moei_st_metadata_at(const moei_st_file *f, int64_t i, const char **key, const char **value)
{
    if (!f || i < 0 || i >= f->meta_count) return -1;
    if (key) *key = f->meta[i].key;
    if (value) *value = f->meta[i].value;
    return 0;
}

const char *moei_st_metadata_find(const moei_st_file *f, const char *key)
{
    if (!f || !key) return NULL;
    int64_t lo = 0, hi = f->meta_count;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->meta[mid].key, key);
        if (c == 0) return f->meta[mid].value;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

const char *moei_st_origin(const moei_st_file *f) { return f ? f->origin : ""; }

uint64_t moei_st_data_size(const moei_st_file *f) { return f ? f->data_size : 0; }

/* ------------------------------------------------------------------------------------------------
 * writer
 * ---------------------------------------------------------------------------------------------- */

typedef struct st_wentry {
    char *name;
    int32_t dtype;
    int32_t ndim;
    int64_t shape[MOE_TENSOR_MAX_DIMS];
    uint32_t elem_size;
    const void *data;
    uint64_t nbytes;
} st_wentry;

struct moei_st_writer {
    moe_ctx *ctx;
    st_wentry *e;
    int64_t n, cap;
    st_meta *meta; /* key/value owned (malloc'ed) */
    int64_t mn, mcap;
};

static char *st_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

moe_status moei_st_writer_create(moe_ctx *ctx, moei_st_writer **out)
{
    MOEI_CHECK_NOT_NULL(ctx, out, "moei_st_writer_create");
    moei_st_writer *w = calloc(1, sizeof *w);
    if (!w) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "moei_st_writer_create: out of memory");
    w->ctx = ctx;
    *out = w;
    return MOE_OK;
}

void moei_st_writer_destroy(moei_st_writer *w)
{
    if (!w) return;
    for (int64_t i = 0; i < w->n; i++) free(w->e[i].name);
    free(w->e);
    for (int64_t i = 0; i < w->mn; i++) {
        free((char *)w->meta[i].key);
        free((char *)w->meta[i].value);
    }
    free(w->meta);
    free(w);
}

moe_status moei_st_writer_add(moei_st_writer *w, const char *name, int32_t dtype, int32_t ndim, const int64_t *shape,
                              const void *data, uint64_t nbytes)
{
    static const char *fn = "moei_st_writer_add";
    if (!w) return moei_fail(NULL, MOE_ERR_INVALID_ARG, "%s: argument 'w' is NULL", fn);
    moe_ctx *ctx = w->ctx;
    MOEI_CHECK_NOT_NULL(ctx, name, fn);
    size_t nlen = strlen(name);
    MOEI_CHECK_ARG(ctx, nlen > 0, fn, "argument 'name' is empty");
    if (utf8_check((const unsigned char *)name, nlen, 0) != nlen)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'name' is not valid UTF-8", fn);
    if (strcmp(name, "__metadata__") == 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'name' may not be '__metadata__'", fn);
    const st_dtype_info *di = st_dtype_by_code(dtype);
    if (!di)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: tensor '%.200s': dtype %d is not a moe_dtype", fn, name,
                         (int)dtype);
    if (ndim < 0 || ndim > MOE_TENSOR_MAX_DIMS)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: tensor '%.200s': ndim %d is outside 0..%d", fn, name,
                         (int)ndim, MOE_TENSOR_MAX_DIMS);
    if (ndim > 0 && !shape)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: tensor '%.200s': argument 'shape' is NULL", fn, name);
    uint64_t numel = 1;
    int overflow = 0;
    for (int32_t d = 0; d < ndim; d++) {
        if (shape[d] < 0)
            return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: tensor '%.200s': shape[%d] = %lld is negative", fn, name,
                             (int)d, (long long)shape[d]);
        if ((double)shape[d] > ST_MAX_JSON_INT)
            return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: tensor '%.200s': shape[%d] is above 2^53", fn, name, (int)d);
        uint64_t v = (uint64_t)shape[d];
        if (v != 0 && numel > (uint64_t)INT64_MAX / v) overflow = 1;
        else numel *= v;
    }
    if (overflow) {
        int zero = 0;
        for (int32_t d = 0; d < ndim; d++) zero |= shape[d] == 0;
        if (!zero)
            return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: tensor '%.200s': shape element count overflows", fn, name);
        numel = 0;
    }
    if (numel > UINT64_MAX / di->size || numel * di->size != nbytes)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: tensor '%.200s': nbytes %llu does not match %s of %llu elements",
                         fn, name, (unsigned long long)nbytes, di->name, (unsigned long long)numel);
    if (nbytes > 0 && !data)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: tensor '%.200s': argument 'data' is NULL", fn, name);
    if (w->n == w->cap) {
        int64_t nc = w->cap ? 2 * w->cap : 16;
        st_wentry *ne = realloc(w->e, (size_t)nc * sizeof *ne);
        if (!ne) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
        w->e = ne;
        w->cap = nc;
    }
    st_wentry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    e->name = st_strdup(name);
    if (!e->name) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    e->dtype = dtype;
    e->ndim = ndim;
    for (int32_t d = 0; d < ndim; d++) e->shape[d] = shape[d];
    e->elem_size = di->size;
    e->data = data;
    e->nbytes = nbytes;
    w->n++;
    return MOE_OK;
}

moe_status moei_st_writer_set_metadata(moei_st_writer *w, const char *key, const char *value)
{
    static const char *fn = "moei_st_writer_set_metadata";
    if (!w) return moei_fail(NULL, MOE_ERR_INVALID_ARG, "%s: argument 'w' is NULL", fn);
    moe_ctx *ctx = w->ctx;
    MOEI_CHECK_NOT_NULL(ctx, key, fn);
    MOEI_CHECK_NOT_NULL(ctx, value, fn);
    if (utf8_check((const unsigned char *)key, strlen(key), 0) != strlen(key))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'key' is not valid UTF-8", fn);
    if (utf8_check((const unsigned char *)value, strlen(value), 0) != strlen(value))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: value of '%.200s' is not valid UTF-8", fn, key);
    char *v = st_strdup(value);
    if (!v) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    for (int64_t i = 0; i < w->mn; i++)
        if (strcmp(w->meta[i].key, key) == 0) {
            free((char *)w->meta[i].value);
            w->meta[i].value = v;
            return MOE_OK;
        }
    if (w->mn == w->mcap) {
        int64_t nc = w->mcap ? 2 * w->mcap : 8;
        st_meta *nm = realloc(w->meta, (size_t)nc * sizeof *nm);
        if (!nm) {
            free(v);
            return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
        }
        w->meta = nm;
        w->mcap = nc;
    }
    char *k = st_strdup(key);
    if (!k) {
        free(v);
        return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    }
    w->meta[w->mn].key = k;
    w->meta[w->mn].value = v;
    w->mn++;
    return MOE_OK;
}

/* A growable byte buffer for the header; `oom` latches the first allocation failure. */
typedef struct st_buf {
    char *p;
    size_t len, cap;
    int oom;
} st_buf;

static void sb_put(st_buf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->len + n > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->len + n) nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void sb_puts(st_buf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_u64(st_buf *b, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    sb_put(b, tmp, (size_t)n);
}

/* A JSON string literal: quotes, backslashes and control bytes escaped; UTF-8 passes through. */
static void sb_json_string(st_buf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        switch (*p) {
        case '"': sb_put(b, "\\\"", 2); break;
        case '\\': sb_put(b, "\\\\", 2); break;
        case '\n': sb_put(b, "\\n", 2); break;
        case '\r': sb_put(b, "\\r", 2); break;
        case '\t': sb_put(b, "\\t", 2); break;
        default:
            if (*p < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", (unsigned)*p);
                sb_put(b, esc, 6);
            } else
                sb_put(b, (const char *)p, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static int cmp_wentry_layout(const void *a, const void *b)
{
    const st_wentry *const *x = a, *const *y = b;
    if ((*x)->elem_size != (*y)->elem_size) return (*x)->elem_size > (*y)->elem_size ? -1 : 1;
    return strcmp((*x)->name, (*y)->name);
}

static int cmp_wentry_name(const void *a, const void *b)
{
    const st_wentry *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* Lay out the file: *order receives the tensors in data order (caller frees), `hdr` the 8-byte length
 * field followed by the padded JSON header; *data_size the size of the data region. */
static moe_status st_plan(moei_st_writer *w, const char *fn, st_buf *hdr, st_wentry ***order, uint64_t *data_size)
{
    moe_ctx *ctx = w->ctx;
    st_wentry **ord = malloc((size_t)(w->n ? w->n : 1) * sizeof *ord);
    if (!ord) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    for (int64_t i = 0; i < w->n; i++) ord[i] = &w->e[i];
    qsort(ord, (size_t)w->n, sizeof *ord, cmp_wentry_layout);
    /* Same name twice? Equal names sit next to each other only among equal element sizes, so check
     * on a name-sorted copy. */
    st_wentry **byname = malloc((size_t)(w->n ? w->n : 1) * sizeof *byname);
    if (!byname) {
        free(ord);
        return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    }
    memcpy(byname, ord, (size_t)w->n * sizeof *byname);
    qsort(byname, (size_t)w->n, sizeof *byname, cmp_wentry_name);
    for (int64_t i = 1; i < w->n; i++)
        if (strcmp(byname[i - 1]->name, byname[i]->name) == 0) {
            moe_status st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: tensor name '%.200s' was added twice", fn,
                                      byname[i]->name);
            free(byname);
            free(ord);
            return st;
        }
    free(byname);
    st_meta *meta = NULL;
    if (w->mn) {
        meta = malloc((size_t)w->mn * sizeof *meta);
        if (!meta) {
            free(ord);
            return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
        }
        memcpy(meta, w->meta, (size_t)w->mn * sizeof *meta);
        qsort(meta, (size_t)w->mn, sizeof *meta, cmp_meta);
    }

    sb_put(hdr, "\0\0\0\0\0\0\0\0", 8);
    sb_puts(hdr, "{");
    int first = 1;
    if (w->mn) {
        sb_puts(hdr, "\"__metadata__\":{");
        for (int64_t i = 0; i < w->mn; i++) {
            if (i) sb_puts(hdr, ",");
            sb_json_string(hdr, meta[i].key);
            sb_puts(hdr, ":");
            sb_json_string(hdr, meta[i].value);
        }
        sb_puts(hdr, "}");
        first = 0;
    }
    free(meta);
    uint64_t off = 0;
    for (int64_t i = 0; i < w->n; i++) {
        const st_wentry *e = ord[i];
        if (!first) sb_puts(hdr, ",");
        first = 0;
        sb_json_string(hdr, e->name);
        sb_puts(hdr, ":{\"dtype\":\"");
        sb_puts(hdr, st_dtype_by_code(e->dtype)->name);
        sb_puts(hdr, "\",\"shape\":[");
        for (int32_t d = 0; d < e->ndim; d++) {
            if (d) sb_puts(hdr, ",");
            sb_u64(hdr, (uint64_t)e->shape[d]);
        }
        sb_puts(hdr, "],\"data_offsets\":[");
        sb_u64(hdr, off);
        sb_puts(hdr, ",");
        if (e->nbytes > UINT64_MAX - off || off + e->nbytes > (uint64_t)ST_MAX_JSON_INT) {
            free(ord);
            free(hdr->p);
            hdr->p = NULL;
            return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: the data region would exceed 2^53 bytes", fn);
        }
        off += e->nbytes;
        sb_u64(hdr, off);
        sb_puts(hdr, "]}");
    }
    sb_puts(hdr, "}");
    /* Pad with spaces so the data starts 8-byte aligned, as the reference implementation does. */
    while (!hdr->oom && hdr->len % 8 != 0) sb_puts(hdr, " ");
    if (hdr->oom) {
        free(ord);
        free(hdr->p);
        hdr->p = NULL;
        return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of memory for the header", fn);
    }
    uint64_t hlen = hdr->len - 8;
    if (hlen > MOEI_ST_MAX_HEADER) {
        free(ord);
        free(hdr->p);
        hdr->p = NULL;
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: the header would be %llu bytes, over the %llu-byte limit", fn,
                         (unsigned long long)hlen, (unsigned long long)MOEI_ST_MAX_HEADER);
    }
    for (int i = 0; i < 8; i++) hdr->p[i] = (char)(unsigned char)(hlen >> (8 * i));
    *order = ord;
    *data_size = off;
    return MOE_OK;
}

/* The temp file beside `path`: same directory, so the rename stays within one file system. */
static char *st_temp_path(const char *path)
{
    size_t n = strlen(path) + 32;
    char *t = malloc(n);
    if (t) snprintf(t, n, "%s.tmp.%ld", path, (long)getpid());
    return t;
}

moe_status moei_st_writer_write(moei_st_writer *w, const char *path)
{
    static const char *fn = "moei_st_writer_write";
    if (!w) return moei_fail(NULL, MOE_ERR_INVALID_ARG, "%s: argument 'w' is NULL", fn);
    moe_ctx *ctx = w->ctx;
    MOEI_CHECK_NOT_NULL(ctx, path, fn);
    MOEI_CHECK_ARG(ctx, path[0] != '\0', fn, "argument 'path' is empty");
    st_buf hdr = {0};
    st_wentry **ord = NULL;
    uint64_t dsize = 0;
    moe_status st = st_plan(w, fn, &hdr, &ord, &dsize);
    if (st != MOE_OK) return st;
    char *tmp = st_temp_path(path);
    if (!tmp) {
        free(hdr.p);
        free(ord);
        return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    }

    const char *what = NULL; /* the call that failed */
    int err = 0, created = 0;
    int fd = moei_fs_open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        what = "open";
        err = errno;
        goto fail;
    }
    created = 1;
    if (moei_fs_write(fd, hdr.p, hdr.len) != 0) {
        what = "write";
        err = errno;
        goto fail;
    }
    for (int64_t i = 0; i < w->n; i++) {
        if (ord[i]->nbytes == 0) continue;
        if ((uint64_t)(size_t)ord[i]->nbytes != ord[i]->nbytes ||
            moei_fs_write(fd, ord[i]->data, (size_t)ord[i]->nbytes) != 0) {
            what = "write";
            err = (uint64_t)(size_t)ord[i]->nbytes != ord[i]->nbytes ? EFBIG : errno;
            goto fail;
        }
    }
    if (moei_fs_fsync(fd) != 0) {
        what = "fsync";
        err = errno;
        goto fail;
    }
    {
        int r = moei_fs_close(fd);
        fd = -1;
        if (r != 0) {
            what = "close";
            err = errno;
            goto fail;
        }
    }
    if (moei_fs_rename(tmp, path) != 0) {
        what = "rename";
        err = errno;
        goto fail;
    }
    created = 0;
    free(tmp);
    free(hdr.p);
    free(ord);
    /* The new name is durable only once the directory entry is. */
    if (moei_fs_fsync_parent(path) != 0) {
        err = errno;
        return moei_fail(ctx, MOE_ERR_IO, "%s: fsync of the directory of '%.200s' failed: %s", fn, path,
                         strerror(err));
    }
    return MOE_OK;

fail:
    if (fd >= 0) (void)moei_fs_close(fd);
    if (created) (void)moei_fs_unlink(tmp);
    if (strcmp(what, "rename") == 0)
        st = moei_fail(ctx, MOE_ERR_IO, "%s: rename of '%.200s' to '%.200s' failed: %s", fn, tmp, path, strerror(err));
    else
        st = moei_fail(ctx, MOE_ERR_IO, "%s: %s of '%.200s' failed: %s", fn, what, tmp, strerror(err));
    free(tmp);
    free(hdr.p);
    free(ord);
    return st;
}

moe_status moei_st_writer_serialize(moei_st_writer *w, void **out, uint64_t *size)
{
    static const char *fn = "moei_st_writer_serialize";
    if (!w) return moei_fail(NULL, MOE_ERR_INVALID_ARG, "%s: argument 'w' is NULL", fn);
    moe_ctx *ctx = w->ctx;
    MOEI_CHECK_NOT_NULL(ctx, out, fn);
    MOEI_CHECK_NOT_NULL(ctx, size, fn);
    st_buf hdr = {0};
    st_wentry **ord = NULL;
    uint64_t dsize = 0;
    moe_status st = st_plan(w, fn, &hdr, &ord, &dsize);
    if (st != MOE_OK) return st;
    uint64_t total = hdr.len + dsize;
    unsigned char *buf = total == (uint64_t)(size_t)total ? malloc((size_t)total) : NULL;
    if (!buf) {
        free(hdr.p);
        free(ord);
        return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of memory for %llu bytes", fn, (unsigned long long)total);
    }
    memcpy(buf, hdr.p, hdr.len);
    uint64_t at = hdr.len;
    for (int64_t i = 0; i < w->n; i++) {
        if (ord[i]->nbytes) memcpy(buf + at, ord[i]->data, (size_t)ord[i]->nbytes);
        at += ord[i]->nbytes;
    }
    free(hdr.p);
    free(ord);
    *out = buf;
    *size = total;
    return MOE_OK;
}

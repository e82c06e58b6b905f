/* moe-dataset: make and inspect token datasets with the public API only. `build` turns text files
 * into a Megatron indexed dataset of byte tokens, `info` prints what a dataset holds, `generate`
 * writes (or checks) the built-in corpus. Exit status: 0 success, 1 the operation failed, 2 the
 * command line was wrong; every error is one line on stderr. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <moe/ctx.h>
#include <moe/data.h>

#include "gen_corpus.h"

#define PROG "moe-dataset"

/* The built-in corpus (data/corpus.txt) is `generate` with these defaults. */
#define CORPUS_SEED 1
#define CORPUS_BYTES 500000

static void usage(FILE *f)
{
    fprintf(f,
            "usage: " PROG " COMMAND [OPTIONS]\n"
            "\n"
            "commands:\n"
            "  build --output PREFIX [--dtype uint8|uint16|int32] [--split-lines] FILE...\n"
            "      Write PREFIX.bin + PREFIX.idx, a Megatron indexed dataset (MMIDIDX version 1) whose\n"
            "      tokens are the bytes of the files. Each FILE is one document; with --split-lines\n"
            "      each line (with its newline) is one. FILE '-' reads standard input. Default dtype uint8.\n"
            "  info [--seq-len N] [--validation-fraction F] [--seed S] PATH\n"
            "      Print the kind, dtype, documents, tokens and vocabulary of a dataset (PATH: a text\n"
            "      file or an indexed dataset prefix); with --seq-len also its training and validation\n"
            "      sample counts (validation fraction default 0.05, seed default 1234).\n"
            "  generate [--seed S] [--bytes N] [--output FILE | --check FILE]\n"
            "      Write the built-in English corpus to FILE (default: standard output), or compare\n"
            "      FILE with it. The defaults (seed %d, %d bytes) give data/corpus.txt.\n"
            "\n"
            "options:\n"
            "  -h, --help   show this help\n",
            CORPUS_SEED, CORPUS_BYTES);
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, PROG ": ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see " PROG " --help)\n");
    return 2;
}

static int lib_error(const char *what, moe_status st)
{
    fprintf(stderr, PROG ": %s failed (%s): %s\n", what, moe_status_string(st), moe_last_error());
    return 1;
}

static int is_help(const char *a) { return strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0; }

/* Parse a whole decimal integer in [lo, hi]. */
static int parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || !end || end == s || *end != '\0' || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    if (s[0] == '-') return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || !end || end == s || *end != '\0') return -1;
    *out = v;
    return 0;
}

/* The value of option argv[*i], advancing *i; NULL (after an error line) when it is missing. */
static const char *option_value(int argc, char **argv, int *i)
{
    if (*i + 1 >= argc) {
        usage_error("option '%s' needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

/* ---- build -------------------------------------------------------------------------------------- */

/* Stream one file into the writer: one document, or one per line. */
static int add_file(moe_dataset_writer *w, const char *path, int split_lines)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, PROG ": cannot open '%s': %s\n", path, strerror(errno));
        return 1;
    }
    static unsigned char bytes[1 << 16];
    static int32_t toks[1 << 16];
    size_t n;
    int rc = 0, open_line = 0; /* open_line: bytes after the last newline were added */
    moe_status st = MOE_OK;
    while (st == MOE_OK && (n = fread(bytes, 1, sizeof bytes, f)) > 0) {
        for (size_t i = 0; i < n; i++) toks[i] = bytes[i];
        if (!split_lines) {
            st = moe_dataset_writer_add_tokens(w, toks, (int64_t)n);
            continue;
        }
        size_t start = 0;
        for (size_t i = 0; i < n && st == MOE_OK; i++) {
            if (bytes[i] != '\n') continue;
            st = moe_dataset_writer_add_tokens(w, toks + start, (int64_t)(i + 1 - start));
            if (st == MOE_OK) st = moe_dataset_writer_end_document(w);
            start = i + 1;
            open_line = 0;
        }
        if (st == MOE_OK && start < n) {
            st = moe_dataset_writer_add_tokens(w, toks + start, (int64_t)(n - start));
            open_line = 1;
        }
    }
    if (st != MOE_OK) {
        rc = lib_error("adding tokens", st);
    } else if (ferror(f)) {
        fprintf(stderr, PROG ": cannot read '%s': %s\n", path, strerror(errno));
        rc = 1;
    } else if (!split_lines || open_line) {
        /* The file (an empty file is an empty document), or its last line without a newline, ends
         * here, so the next file starts a new document. */
        st = moe_dataset_writer_end_document(w);
        if (st != MOE_OK) rc = lib_error("ending a document", st);
    }
    if (f != stdin) fclose(f);
    return rc;
}

static int cmd_build(moe_ctx *ctx, int argc, char **argv)
{
    const char *output = NULL;
    int32_t dtype = MOE_DATASET_DTYPE_U8;
    int split_lines = 0, first_file = -1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (is_help(a)) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--output") == 0 || strcmp(a, "-o") == 0) {
            if (!(output = option_value(argc, argv, &i))) return 2;
        } else if (strcmp(a, "--dtype") == 0) {
            const char *v = option_value(argc, argv, &i);
            if (!v) return 2;
            if (strcmp(v, "uint8") == 0)
                dtype = MOE_DATASET_DTYPE_U8;
            else if (strcmp(v, "uint16") == 0)
                dtype = MOE_DATASET_DTYPE_U16;
            else if (strcmp(v, "int32") == 0)
                dtype = MOE_DATASET_DTYPE_I32;
            else
                return usage_error("--dtype must be uint8, uint16 or int32, not '%s'", v);
        } else if (strcmp(a, "--split-lines") == 0) {
            split_lines = 1;
        } else if (a[0] == '-' && a[1] != '\0') {
            return usage_error("unknown option '%s' for build", a);
        } else {
            first_file = i;
            break;
        }
    }
    if (!output) return usage_error("%s: build needs --output PREFIX", "missing option");
    if (first_file < 0) return usage_error("%s: build needs at least one input FILE", "missing argument");
    for (int i = first_file; i < argc; i++)
        if (argv[i][0] == '-' && argv[i][1] != '\0')
            return usage_error("options must come before the files: '%s'", argv[i]);

    moe_dataset_writer *w = NULL;
    moe_status st = moe_dataset_writer_create(ctx, output, dtype, &w);
    if (st != MOE_OK) return lib_error("creating the dataset", st);
    int rc = 0;
    for (int i = first_file; i < argc && rc == 0; i++) rc = add_file(w, argv[i], split_lines);
    if (rc == 0) {
        st = moe_dataset_writer_commit(w);
        if (st != MOE_OK) rc = lib_error("writing the dataset", st);
    }
    moe_dataset_writer_destroy(w);
    if (rc == 0) printf("wrote %s.bin and %s.idx\n", output, output);
    return rc;
}

/* ---- info --------------------------------------------------------------------------------------- */

static const char *dtype_name(int32_t d)
{
    switch (d) {
    case MOE_DATASET_DTYPE_U8: return "uint8";
    case MOE_DATASET_DTYPE_I8: return "int8";
    case MOE_DATASET_DTYPE_I16: return "int16";
    case MOE_DATASET_DTYPE_I32: return "int32";
    case MOE_DATASET_DTYPE_I64: return "int64";
    case MOE_DATASET_DTYPE_U16: return "uint16";
    default: return "?";
    }
}

static int cmd_info(moe_ctx *ctx, int argc, char **argv)
{
    moe_dataset_config cfg;
    moe_dataset_config_init(&cfg, sizeof cfg);
    cfg.seq_len = 0;
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        int64_t v;
        if (is_help(a)) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--seq-len") == 0) {
            const char *s = option_value(argc, argv, &i);
            if (!s) return 2;
            if (parse_i64(s, 1, INT32_MAX - 1, &v) != 0)
                return usage_error("--seq-len expects an integer in [1, 2147483646], not '%s'", s);
            cfg.seq_len = (int32_t)v;
        } else if (strcmp(a, "--validation-fraction") == 0) {
            const char *s = option_value(argc, argv, &i);
            if (!s) return 2;
            char *end = NULL;
            double f = strtod(s, &end);
            if (!end || end == s || *end != '\0' || !(f >= 0.0 && f < 1.0))
                return usage_error("--validation-fraction expects a number in [0, 1), not '%s'", s);
            cfg.validation_fraction = f;
        } else if (strcmp(a, "--seed") == 0) {
            const char *s = option_value(argc, argv, &i);
            if (!s) return 2;
            if (parse_u64(s, &cfg.seed) != 0) return usage_error("--seed expects an unsigned integer, not '%s'", s);
        } else if (a[0] == '-' && a[1] != '\0') {
            return usage_error("unknown option '%s' for info", a);
        } else if (path) {
            return usage_error("info takes one PATH; '%s' is one too many", a);
        } else {
            path = a;
        }
    }
    if (!path) return usage_error("%s: info needs a PATH", "missing argument");
    cfg.path = path;
    moe_dataset *ds = NULL;
    moe_status st = moe_dataset_open(ctx, &cfg, &ds);
    if (st != MOE_OK) return lib_error("opening the dataset", st);
    int32_t kind = 0, dtype = 0, vocab = 0;
    int64_t docs = 0, tokens = 0, ntrain = 0, nval = 0;
    moe_dataset_format(ds, &kind, &dtype);
    moe_dataset_num_documents(ds, &docs);
    moe_dataset_num_tokens(ds, &tokens);
    moe_dataset_vocab_size(ds, &vocab);
    printf("path:        %s\n", path);
    printf("kind:        %s\n", kind == MOE_DATASET_KIND_TEXT ? "text (one token per byte)" : "indexed (.bin + .idx)");
    printf("dtype:       %s\n", dtype_name(dtype));
    printf("documents:   %" PRId64 "\n", docs);
    printf("tokens:      %" PRId64 "\n", tokens);
    printf("vocabulary:  %d%s\n", (int)vocab, vocab == 0 ? " (not known)" : "");
    if (cfg.seq_len > 0) {
        moe_dataset_num_samples(ds, MOE_DATASET_SPLIT_TRAIN, &ntrain);
        moe_dataset_num_samples(ds, MOE_DATASET_SPLIT_VALIDATION, &nval);
        printf("samples:     %" PRId64 " training + %" PRId64 " validation of %d tokens (seed %" PRIu64 ")\n", ntrain,
               nval, (int)cfg.seq_len, cfg.seed);
    }
    moe_dataset_destroy(ds);
    return 0;
}

/* ---- generate ----------------------------------------------------------------------------------- */

static int cmd_generate(int argc, char **argv)
{
    uint64_t seed = CORPUS_SEED;
    int64_t bytes = CORPUS_BYTES;
    const char *output = NULL, *check = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (is_help(a)) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--seed") == 0) {
            const char *s = option_value(argc, argv, &i);
            if (!s) return 2;
            if (parse_u64(s, &seed) != 0) return usage_error("--seed expects an unsigned integer, not '%s'", s);
        } else if (strcmp(a, "--bytes") == 0) {
            const char *s = option_value(argc, argv, &i);
            if (!s) return 2;
            if (parse_i64(s, 0, (int64_t)1 << 32, &bytes) != 0)
                return usage_error("--bytes expects an integer in [0, 2^32], not '%s'", s);
        } else if (strcmp(a, "--output") == 0 || strcmp(a, "-o") == 0) {
            if (!(output = option_value(argc, argv, &i))) return 2;
        } else if (strcmp(a, "--check") == 0) {
            if (!(check = option_value(argc, argv, &i))) return 2;
        } else if (a[0] == '-' && a[1] != '\0') {
            return usage_error("unknown option '%s' for generate", a);
        } else {
            return usage_error("generate takes no FILE argument ('%s'); use --output", a);
        }
    }
    if (output && check) return usage_error("%s: --output and --check exclude each other", "conflicting options");
    char *text = NULL;
    size_t len = 0;
    if (corpus_generate(seed, bytes, &text, &len) != 0) {
        fprintf(stderr, PROG ": out of memory generating the corpus\n");
        return 1;
    }
    int rc = 0;
    if (check) {
        FILE *f = fopen(check, "rb");
        if (!f) {
            fprintf(stderr, PROG ": cannot open '%s': %s\n", check, strerror(errno));
            free(text);
            return 1;
        }
        size_t pos = 0, n;
        unsigned char buf[1 << 14];
        while (rc == 0 && (n = fread(buf, 1, sizeof buf, f)) > 0) {
            for (size_t i = 0; i < n; i++, pos++)
                if (pos >= len || buf[i] != (unsigned char)text[pos]) {
                    fprintf(stderr, PROG ": '%s' differs from the generated corpus at byte %zu\n", check, pos);
                    rc = 1;
                    break;
                }
        }
        if (rc == 0 && pos != len) {
            fprintf(stderr, PROG ": '%s' has %zu bytes, the generated corpus %zu\n", check, pos, len);
            rc = 1;
        }
        fclose(f);
        if (rc == 0) printf("'%s' matches the generated corpus (%zu bytes)\n", check, len);
    } else {
        FILE *f = output ? fopen(output, "wb") : stdout;
        if (!f) {
            fprintf(stderr, PROG ": cannot create '%s': %s\n", output, strerror(errno));
            free(text);
            return 1;
        }
        if (fwrite(text, 1, len, f) != len || fflush(f) != 0) {
            fprintf(stderr, PROG ": cannot write '%s': %s\n", output ? output : "standard output", strerror(errno));
            rc = 1;
        }
        if (output && fclose(f) != 0 && rc == 0) {
            fprintf(stderr, PROG ": cannot write '%s': %s\n", output, strerror(errno));
            rc = 1;
        }
    }
    free(text);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (is_help(cmd) || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "generate") == 0) return cmd_generate(argc - 2, argv + 2);
    if (strcmp(cmd, "build") != 0 && strcmp(cmd, "info") != 0)
        return usage_error(cmd[0] == '-' ? "unknown option '%s'" : "unknown command '%s'", cmd);
    moe_ctx *ctx = NULL;
    moe_status st = moe_ctx_create(NULL, &ctx);
    if (st != MOE_OK) return lib_error("creating a context", st);
    int rc = strcmp(cmd, "build") == 0 ? cmd_build(ctx, argc - 2, argv + 2) : cmd_info(ctx, argc - 2, argv + 2);
    moe_ctx_destroy(ctx);
    return rc;
}

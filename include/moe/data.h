/**
 * @file moe/data.h
 * @brief Token datasets for training: byte-level text files and Megatron indexed datasets
 *        (.bin + .idx), shuffled samples with a held-out validation split, and a writer for
 *        indexed datasets.
 *
 * A dataset is one stream of tokens: the bytes of a text file (each byte a token, vocabulary 256),
 * or the sequences of a Megatron indexed dataset concatenated in index order (documents in
 * document order). Sample j is the seq_len + 1 tokens that start at token j * seq_len (consecutive
 * samples share one boundary token, as Megatron's GPT dataset cuts them; samples cross document
 * boundaries), so a stream of T tokens holds floor((T - 1) / seq_len) samples. Its tokens are the
 * first seq_len of them and its targets the last seq_len (the tokens shifted by one).
 *
 * Order is stateless: which sample sits at index i of the training split is a pure function of
 * (seed, i), so a run resumed at sample index k sees exactly the batches an uninterrupted run sees
 * from k on. Training index i lies in epoch e = i / num_train; every epoch visits every training
 * sample exactly once, in an order drawn afresh for each epoch. The validation split is a fixed
 * set of samples chosen by the seed, disjoint from the training split.
 *
 * Files are read through a read-only memory map. Every field of an .idx file is checked against
 * the bytes present before any is used; a malformed file fails with MOE_ERR_FORMAT and a message
 * naming the field, never with an out-of-bounds read. A mapped file must not be truncated while a
 * dataset uses it.
 *
 * Thread-safety: a dataset writer is used as its ctx: one thread at a time; destroy from any thread.
 * An open dataset is never modified after moe_dataset_open(): its query functions and
 * moe_dataset_batch() may run on several threads at once (a prefetching thread beside the training
 * thread), the ctx lock keeping a failure's message intact (the ctx then reports whichever failure
 * came last). Destroy is safe from any thread once no other call on the dataset is running.
 */
#ifndef MOE_DATA_H
#define MOE_DATA_H

#include "moe/common.h"
#include "moe/ctx.h"

MOE_EXTERN_C_BEGIN

/**
 * @defgroup moe_data Datasets
 * @brief Token streams, shuffled resumable samples, and indexed-dataset files.
 * @{
 */

/** @brief An opaque open dataset. Made by moe_dataset_open(), freed by moe_dataset_destroy(). */
typedef struct moe_dataset moe_dataset;

/** @brief An opaque writer of one indexed dataset. Made by moe_dataset_writer_create(). */
typedef struct moe_dataset_writer moe_dataset_writer;

/** @brief What file(s) a dataset path names. */
typedef enum moe_dataset_kind {
    /** Decide from the file system: INDEXED when `path.idx` exists, or when path ends in ".idx" or
     *  ".bin" and the same name with ".idx" exists (the suffix is dropped to get the prefix);
     *  otherwise TEXT. */
    MOE_DATASET_KIND_AUTO = 0,
    MOE_DATASET_KIND_TEXT = 1,    /**< A file whose every byte is one token (vocabulary 256). */
    MOE_DATASET_KIND_INDEXED = 2, /**< A Megatron indexed dataset: path is the prefix of prefix.bin + prefix.idx
                                       (a path ending in ".bin" or ".idx" also names it, as for AUTO). */
    MOE_DATASET_KIND_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum. */
} moe_dataset_kind;

/** @brief Which samples a batch is drawn from. */
typedef enum moe_dataset_split {
    MOE_DATASET_SPLIT_TRAIN = 0,      /**< The training samples, reshuffled every epoch. */
    MOE_DATASET_SPLIT_VALIDATION = 1, /**< The held-out samples, in one fixed order. */
    MOE_DATASET_SPLIT_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum. */
} moe_dataset_split;

/**
 * @brief Token element types of an indexed dataset. The values are the dtype codes Megatron writes
 *        in the .idx header (megatron/core/datasets/indexed_dataset.py, class DType).
 *
 * Tokens must be integers in [0, 2^31 - 1): the float codes are recognised only to be refused.
 */
typedef enum moe_dataset_dtype {
    MOE_DATASET_DTYPE_U8 = 1,  /**< uint8. */
    MOE_DATASET_DTYPE_I8 = 2,  /**< int8. */
    MOE_DATASET_DTYPE_I16 = 3, /**< int16. */
    MOE_DATASET_DTYPE_I32 = 4, /**< int32. */
    MOE_DATASET_DTYPE_I64 = 5, /**< int64. */
    MOE_DATASET_DTYPE_F64 = 6, /**< float64: not a token type; reading it is MOE_ERR_FORMAT. */
    MOE_DATASET_DTYPE_F32 = 7, /**< float32: not a token type; reading it is MOE_ERR_FORMAT. */
    MOE_DATASET_DTYPE_U16 = 8, /**< uint16. */
    MOE_DATASET_DTYPE_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum. */
} moe_dataset_dtype;

/**
 * @brief Options for moe_dataset_open(). Fill with moe_dataset_config_init() before setting fields.
 */
typedef struct moe_dataset_config {
    uint32_t struct_size; /**< sizeof(moe_dataset_config) as compiled by the caller; set by moe_dataset_config_init(). */
    int32_t kind;         /**< A ::moe_dataset_kind. Default MOE_DATASET_KIND_AUTO. */
    const char *path;     /**< UTF-8 path of the text file, or the prefix of an indexed dataset (without
                               ".bin"/".idx"). Required; copied, not kept. Default NULL. */
    int32_t seq_len;      /**< Tokens per sample (each sample reads seq_len + 1 tokens), >= 0 and below
                               2^31 - 1. 0 opens the dataset for its counts only: it then has no samples
                               and moe_dataset_batch() fails with MOE_ERR_STATE. Default 256. */
    int32_t vocab_size;   /**< 0: tokens may be any value in [0, 2^31 - 1). > 0: every token must be
                               below it (checked as the other token checks). Default 0. */
    uint64_t seed;        /**< Seed of the validation split and of every epoch's order. Default 1234. */
    double validation_fraction; /**< Share of the samples held out for validation, in [0, 1). 0 holds
                               out none; otherwise round(fraction * samples) samples, at least 1, and at
                               least 1 sample must remain for training. Default 0.05. */
    uint32_t verify_tokens; /**< 1: read every token once at open, so a token outside the allowed range
                               fails the open (MOE_ERR_FORMAT, naming its position) and the vocabulary
                               hint is exact. 0: skip that pass (for very large datasets); a bad token
                               then fails the moe_dataset_batch() that reads it. Must be 0 or 1. Default 1. */
} moe_dataset_config;

/**
 * @brief Fill a dataset config with its defaults.
 * @param cfg The config to fill; the library writes at most @p struct_size bytes.
 * @param struct_size sizeof(moe_dataset_config) as the caller compiled it; must cover at least the
 *        struct_size field.
 * @return MOE_OK, or MOE_ERR_INVALID_ARG if @p cfg is NULL or @p struct_size is too small.
 */
MOE_API moe_status moe_dataset_config_init(moe_dataset_config *cfg, uint32_t struct_size);

/**
 * @brief Open a dataset: map its file(s), validate them, and fix the split.
 *
 * An indexed dataset must be as Megatron's builder writes it: the "MMIDIDX\x00\x00" magic, version 1,
 * an integer dtype code, sequence pointers that start at 0 and follow each other without gaps,
 * document indices that start at 0, never decrease and end at the sequence count, and a .bin of
 * exactly the bytes the index describes. A per-sequence mode array (multimodal datasets) after the
 * document indices is accepted and ignored.
 * @param ctx The ctx; the dataset belongs to it and must be destroyed before it.
 * @param cfg Options (path required), filled by moe_dataset_config_init(); copied, not kept.
 * @param out Receives the dataset; the caller owns it and frees it with moe_dataset_destroy().
 * @return MOE_OK; MOE_ERR_INVALID_ARG for a NULL argument or a bad config field (named), including a
 *         seq_len that leaves no sample in the data or a validation_fraction that leaves no training
 *         sample; MOE_ERR_IO when a file cannot be opened, inspected or mapped (the message carries the
 *         path and the system's reason); MOE_ERR_FORMAT for a malformed .idx/.bin pair or a token out
 *         of range (the message names the field or position); MOE_ERR_OUT_OF_MEMORY.
 */
MOE_API moe_status moe_dataset_open(moe_ctx *ctx, const moe_dataset_config *cfg, moe_dataset **out);

/**
 * @brief Close a dataset and unmap its files.
 * @param ds The dataset; NULL is a no-op. Safe from any thread.
 */
MOE_API void moe_dataset_destroy(moe_dataset *ds);

/**
 * @brief Number of samples in a split.
 * @param ds The dataset.
 * @param split A ::moe_dataset_split.
 * @param count Receives the number of distinct samples (training: one epoch).
 * @return MOE_OK or MOE_ERR_INVALID_ARG for a NULL argument or an unknown split.
 */
MOE_API moe_status moe_dataset_num_samples(const moe_dataset *ds, int32_t split, int64_t *count);

/**
 * @brief Number of tokens in the stream (bytes of a text file; sum of sequence lengths of an indexed dataset).
 * @param ds The dataset.
 * @param count Receives the count.
 * @return MOE_OK or MOE_ERR_INVALID_ARG for a NULL argument.
 */
MOE_API moe_status moe_dataset_num_tokens(const moe_dataset *ds, int64_t *count);

/**
 * @brief Number of documents (1 for a text file; the document count of an indexed dataset).
 * @param ds The dataset.
 * @param count Receives the count.
 * @return MOE_OK or MOE_ERR_INVALID_ARG for a NULL argument.
 */
MOE_API moe_status moe_dataset_num_documents(const moe_dataset *ds, int64_t *count);

/**
 * @brief The smallest vocabulary that holds every token, as far as the dataset knows it.
 *
 * ::moe_dataset_config::vocab_size when it was set; 256 for a text file; for an indexed dataset the
 * largest token + 1 when the tokens were verified at open (1 for a dataset without tokens), otherwise
 * the range of its dtype (256 for uint8, 128 for int8, 65536 for uint16, 32768 for int16) or 0 (not
 * known) for int32 and int64.
 * @param ds The dataset.
 * @param vocab_size Receives the hint.
 * @return MOE_OK or MOE_ERR_INVALID_ARG for a NULL argument.
 */
MOE_API moe_status moe_dataset_vocab_size(const moe_dataset *ds, int32_t *vocab_size);

/**
 * @brief What the dataset was opened as and how its tokens are stored.
 * @param ds The dataset.
 * @param kind Receives MOE_DATASET_KIND_TEXT or MOE_DATASET_KIND_INDEXED; may be NULL.
 * @param dtype Receives a ::moe_dataset_dtype (MOE_DATASET_DTYPE_U8 for text); may be NULL.
 * @return MOE_OK or MOE_ERR_INVALID_ARG for a NULL @p ds.
 */
MOE_API moe_status moe_dataset_format(const moe_dataset *ds, int32_t *kind, int32_t *dtype);

/**
 * @brief The sample length the dataset was opened with (::moe_dataset_config::seq_len).
 * @param ds The dataset.
 * @param seq_len Receives it.
 * @return MOE_OK or MOE_ERR_INVALID_ARG for a NULL argument.
 */
MOE_API moe_status moe_dataset_seq_len(const moe_dataset *ds, int32_t *seq_len);

/**
 * @brief Where sample @p index of a split starts in the token stream.
 *
 * Training indices run over all epochs (index i is position i % num_train of epoch i / num_train);
 * validation indices wrap around the validation split (index i is validation sample i % num_validation).
 * @param ds The dataset.
 * @param split A ::moe_dataset_split.
 * @param index Sample index, >= 0.
 * @param first_token Receives the stream position of the sample's first token (a multiple of seq_len).
 * @return MOE_OK; MOE_ERR_INVALID_ARG for a NULL argument, an unknown split, a negative index or an
 *         empty split; MOE_ERR_STATE for a dataset opened with seq_len 0.
 */
MOE_API moe_status moe_dataset_sample_position(const moe_dataset *ds, int32_t split, int64_t index,
                                               int64_t *first_token);

/**
 * @brief Fill a batch of samples.
 *
 * For k in [0, count) and t in [0, seq_len), with p the first_token of sample first_sample + k
 * (see moe_dataset_sample_position()): tokens[k * seq_len + t] = stream[p + t] and
 * targets[k * seq_len + t] = stream[p + t + 1].
 * @param ds The dataset.
 * @param split A ::moe_dataset_split.
 * @param first_sample Index of the first sample, >= 0 (indices as in moe_dataset_sample_position());
 *        first_sample + count must not overflow int64.
 * @param count Number of samples, >= 0; 0 does nothing.
 * @param tokens Caller buffer of count * seq_len int32 values; may be NULL when count is 0.
 * @param targets Caller buffer of count * seq_len int32 values; may be NULL when count is 0.
 * @return MOE_OK; MOE_ERR_INVALID_ARG for a NULL argument, an unknown split, a negative index or
 *         count, or an empty split (named); MOE_ERR_STATE for a dataset opened with seq_len 0;
 *         MOE_ERR_FORMAT when a token is out of range (only when opened with verify_tokens = 0;
 *         the buffers are then left untouched).
 */
MOE_API moe_status moe_dataset_batch(const moe_dataset *ds, int32_t split, int64_t first_sample, int32_t count,
                                     int32_t *tokens, int32_t *targets);

/**
 * @brief Start writing an indexed dataset at @p prefix (prefix.bin + prefix.idx).
 *
 * Tokens stream into a temporary file beside prefix.bin; nothing appears at the destination until
 * moe_dataset_writer_commit(). Each document becomes one sequence (documents longer than 2^31 - 1
 * tokens become several sequences), as Megatron's builder writes them.
 * @param ctx The ctx; the writer belongs to it.
 * @param prefix UTF-8 path prefix, non-empty; copied.
 * @param dtype Integer ::moe_dataset_dtype the tokens are stored as (U8, I8, I16, I32, I64, U16).
 * @param out Receives the writer; the caller owns it and frees it with moe_dataset_writer_destroy().
 * @return MOE_OK; MOE_ERR_INVALID_ARG (named argument; float dtypes are refused); MOE_ERR_IO when the
 *         temporary file cannot be created; MOE_ERR_OUT_OF_MEMORY.
 */
MOE_API moe_status moe_dataset_writer_create(moe_ctx *ctx, const char *prefix, int32_t dtype,
                                             moe_dataset_writer **out);

/**
 * @brief Append tokens to the current document.
 * @param w The writer.
 * @param tokens @p count tokens, each >= 0 and representable in the writer's dtype; read during the
 *        call only. May be NULL when @p count is 0.
 * @param count Number of tokens, >= 0.
 * @return MOE_OK; MOE_ERR_INVALID_ARG for a NULL argument or a token out of range (its index and
 *         value named; nothing of this call is written); MOE_ERR_IO when writing fails (the writer is
 *         then broken: later calls return MOE_ERR_STATE); MOE_ERR_STATE after a commit or a failure;
 *         MOE_ERR_OUT_OF_MEMORY.
 */
MOE_API moe_status moe_dataset_writer_add_tokens(moe_dataset_writer *w, const int32_t *tokens, int64_t count);

/**
 * @brief End the current document (an empty document is recorded as a document without sequences).
 * @param w The writer.
 * @return MOE_OK; MOE_ERR_INVALID_ARG for NULL; MOE_ERR_STATE after a commit or a failure;
 *         MOE_ERR_OUT_OF_MEMORY.
 */
MOE_API moe_status moe_dataset_writer_end_document(moe_dataset_writer *w);

/**
 * @brief Finish the dataset: end a document that has tokens pending, then write, fsync and rename
 *        both files into place.
 *
 * Any dataset already at @p prefix is replaced: its .idx is removed first, then prefix.bin and
 * finally prefix.idx are renamed into place, so the .idx appears last and only beside its own .bin.
 * On failure the temporary files are removed, and the destination holds either the previous
 * dataset untouched (a failure before its .idx was removed), no dataset and no .bin at all, or the
 * complete new dataset. A failure of the final directory
 * fsync leaves the complete new dataset in place but is reported, since durability is not assured.
 * @param w The writer; after the call it can only be destroyed.
 * @return MOE_OK; MOE_ERR_INVALID_ARG for NULL; MOE_ERR_IO (the call, the path and the system's
 *         reason); MOE_ERR_STATE after a commit or a failure; MOE_ERR_OUT_OF_MEMORY.
 */
MOE_API moe_status moe_dataset_writer_commit(moe_dataset_writer *w);

/**
 * @brief Free a writer; an uncommitted dataset is abandoned and its temporary file removed.
 * @param w The writer; NULL is a no-op. Safe from any thread.
 */
MOE_API void moe_dataset_writer_destroy(moe_dataset_writer *w);

/**
 * @brief Write a whole indexed dataset in one call: @p num_docs documents, taken in order from
 *        @p tokens with the lengths in @p doc_lengths.
 *
 * Equivalent to moe_dataset_writer_create(), one moe_dataset_writer_add_tokens() and
 * moe_dataset_writer_end_document() per document, and moe_dataset_writer_commit(), with the same
 * atomicity.
 * @param ctx The ctx.
 * @param prefix UTF-8 path prefix, non-empty; copied.
 * @param dtype Integer ::moe_dataset_dtype to store the tokens as.
 * @param tokens @p num_tokens tokens (each >= 0 and representable in @p dtype); may be NULL when
 *        @p num_tokens is 0. Read during the call only.
 * @param num_tokens Number of tokens, >= 0; must equal the sum of @p doc_lengths.
 * @param doc_lengths @p num_docs document lengths, each >= 0; may be NULL when @p num_docs is 0.
 * @param num_docs Number of documents, >= 0.
 * @return MOE_OK; MOE_ERR_INVALID_ARG (named argument, checked before any file is touched);
 *         MOE_ERR_IO; MOE_ERR_OUT_OF_MEMORY.
 */
MOE_API moe_status moe_dataset_write_indexed(moe_ctx *ctx, const char *prefix, int32_t dtype, const int32_t *tokens,
                                             int64_t num_tokens, const int64_t *doc_lengths, int64_t num_docs);

/** @} */

MOE_EXTERN_C_END

#endif /* MOE_DATA_H */

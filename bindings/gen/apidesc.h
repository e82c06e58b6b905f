/* The API description tool, in three rooms: extract.c turns libclang's view of the public headers
 * into a cJSON description, lint.c checks that description against API_STYLE.md, apidesc.c parses,
 * drives both and writes the JSON. Keys starting with '_' are facts only the lint needs (file, line,
 * flags); they are stripped before the description is written, so the output stays portable. */
#ifndef MOE_APIDESC_H
#define MOE_APIDESC_H

#include <stdio.h>

#include <cjson/cJSON.h>
#include <clang-c/Index.h>

/* Builds the description of every declaration spelled in a file under include_dir (an existing
 * directory; header paths in the result are relative to it). Returns NULL after printing to stderr
 * when something cannot be described (out of memory). */
cJSON *apidesc_extract(CXTranslationUnit tu, const char *include_dir);

/* Prints one "file:line: rule: message" line per violation to out; returns the number printed. */
int apidesc_lint(const cJSON *desc, FILE *out);

#endif /* MOE_APIDESC_H */

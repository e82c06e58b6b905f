/* Runs the API lint on a fixture header and checks that it reports exactly the violations marked in
 * the fixture by `expect: <rule> ...` comments (same line, same rule, nothing else), exits 1 when
 * there are any and 0 when there are none, and that every rule named on the command line is marked.
 * usage: lint_expect APIDESC INCLUDE_DIR HEADER [RULE...] */
#define _POSIX_C_SOURCE 200809L /* popen, getline */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define MAX_EXPECT 256

typedef struct expect {
    long line;
    char rule[32];
    int seen;
} expect;

static expect expects[MAX_EXPECT];
static int n_expects;

/* Collects the markers: each word after "expect:" up to the end of the comment. */
static int read_markers(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        return -1;
    }
    char *buf = NULL;
    size_t cap = 0;
    for (long line = 1; getline(&buf, &cap, f) >= 0; line++) {
        char *p = strstr(buf, "expect:");
        if (!p)
            continue;
        char *end = strstr(p, "*/");
        if (end)
            *end = '\0';
        for (char *w = strtok(p + strlen("expect:"), " \t\r\n"); w; w = strtok(NULL, " \t\r\n")) {
            if (n_expects == MAX_EXPECT || strlen(w) >= sizeof expects[0].rule) {
                fprintf(stderr, "%s:%ld: too many markers or too long a rule name\n", path, line);
                free(buf);
                fclose(f);
                return -1;
            }
            expects[n_expects].line = line;
            strcpy(expects[n_expects].rule, w);
            n_expects++;
        }
    }
    free(buf);
    fclose(f);
    return 0;
}

/* Splits "path:line: rule: message"; returns 0 when the line has that shape. */
static int parse_violation(char *s, char **path, long *line, char **rule)
{
    for (char *p = strchr(s, ':'); p; p = strchr(p + 1, ':')) {
        char *end;
        long n = strtol(p + 1, &end, 10);
        if (end == p + 1 || strncmp(end, ": ", 2) != 0)
            continue;
        char *r = end + 2, *colon = strstr(r, ": ");
        if (!colon)
            return -1;
        *p = '\0';
        *colon = '\0';
        *path = s;
        *line = n;
        *rule = r;
        return 0;
    }
    return -1;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: lint_expect APIDESC INCLUDE_DIR HEADER [RULE...]\n");
        return 2;
    }
    const char *tool = argv[1], *dir = argv[2], *header = argv[3];
    for (int i = 1; i < 4; i++)
        if (strchr(argv[i], '\'')) {
            fprintf(stderr, "quotes in paths are not supported: %s\n", argv[i]);
            return 2;
        }
    char path[4096], cmd[3 * 4096 + 64];
    snprintf(path, sizeof path, "%s/%s", dir, header);
    if (read_markers(path))
        return 2;
    snprintf(cmd, sizeof cmd, "'%s' --lint --header '%s' '%s'", tool, header, dir);

    int failures = 0;
    FILE *p = popen(cmd, "r");
    if (!p) {
        fprintf(stderr, "cannot run %s\n", cmd);
        return 2;
    }
    char *buf = NULL;
    size_t cap = 0;
    while (getline(&buf, &cap, p) >= 0) {
        printf("lint: %s", buf);
        char *file, *rule;
        long line;
        int matched = 0;
        if (parse_violation(buf, &file, &line, &rule) == 0 && strlen(file) >= strlen(header) &&
            strcmp(file + strlen(file) - strlen(header), header) == 0)
            for (int i = 0; i < n_expects; i++)
                if (expects[i].line == line && strcmp(expects[i].rule, rule) == 0) {
                    expects[i].seen++;
                    matched = 1;
                }
        if (!matched) {
            printf("  ^ FAIL: not marked as expected in %s\n", header);
            failures++;
        }
    }
    free(buf);
    int status = pclose(p);
    int want = n_expects ? 1 : 0;
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != want) {
        printf("FAIL: the lint exited with status %d, expected %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1,
               want);
        failures++;
    }
    for (int i = 0; i < n_expects; i++)
        if (!expects[i].seen) {
            printf("FAIL: %s:%ld: %s was not reported\n", header, expects[i].line, expects[i].rule);
            failures++;
        }
    for (int r = 4; r < argc; r++) {
        int marked = 0;
        for (int i = 0; i < n_expects; i++)
            marked |= strcmp(expects[i].rule, argv[r]) == 0;
        if (!marked) {
            printf("FAIL: rule %s has no marked violation in %s\n", argv[r], header);
            failures++;
        }
    }
    printf("%s: %d marked violation%s, %d failure%s\n", header, n_expects, n_expects == 1 ? "" : "s", failures,
           failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}

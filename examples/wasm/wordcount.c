/*
 * wordcount: a small `wc`-like demo program for Shoal's WASM runner.
 *
 *   wordcount FILE...
 *
 * Prints "<lines> <words> <bytes> <path>" for each file, then
 * "<lines> <words> <bytes> total". If the directory /outputs exists (i.e. the
 * job has an outputs mount), the same report is also written to
 * /outputs/counts.txt. A file that cannot be read is reported on stderr, the
 * other files are still counted, and the exit status is 1.
 *
 * Built into wordcount.wasm by scripts/wasm-build (clang-14, wasm32-wasi).
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct counts {
    unsigned long long lines, words, bytes;
};

static int count_file(const char *path, struct counts *c) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    unsigned char buf[8192];
    size_t r;
    int in_word = 0;
    while ((r = fread(buf, 1, sizeof buf, f)) > 0) {
        c->bytes += r;
        for (size_t i = 0; i < r; i++) {
            if (buf[i] == '\n') c->lines++;
            if (isspace(buf[i])) {
                in_word = 0;
            } else if (!in_word) {
                in_word = 1;
                c->words++;
            }
        }
    }
    int err = ferror(f);
    fclose(f);
    return err ? -1 : 0;
}

static void emit(FILE *out, FILE *copy, const struct counts *c, const char *name) {
    fprintf(out, "%llu %llu %llu %s\n", c->lines, c->words, c->bytes, name);
    if (copy)
        fprintf(copy, "%llu %llu %llu %s\n", c->lines, c->words, c->bytes, name);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs("usage: wordcount FILE...\n", stderr);
        return 2;
    }

    FILE *report = NULL;
    struct stat st;
    if (stat("/outputs", &st) == 0 && S_ISDIR(st.st_mode)) {
        report = fopen("/outputs/counts.txt", "w");
        if (!report)
            fprintf(stderr, "wordcount: cannot write /outputs/counts.txt: %s\n",
                    strerror(errno));
    }

    struct counts total = {0, 0, 0};
    int status = 0;
    for (int i = 1; i < argc; i++) {
        struct counts c = {0, 0, 0};
        if (count_file(argv[i], &c) != 0) {
            fprintf(stderr, "wordcount: %s: %s\n", argv[i], strerror(errno));
            status = 1;
            continue;
        }
        emit(stdout, report, &c, argv[i]);
        total.lines += c.lines;
        total.words += c.words;
        total.bytes += c.bytes;
    }
    emit(stdout, report, &total, "total");

    if (report && fclose(report) != 0) {
        fprintf(stderr, "wordcount: writing /outputs/counts.txt: %s\n",
                strerror(errno));
        status = 1;
    }
    return status;
}

/* A conformance reader in C: checks its own hessian, accumulate_hessian, dgs_group_sizes,
 * ipr_ratios and reconstruction_error against an oracle export (docs/oracle.md).
 *
 *   gcc -O2 -std=c99 -o reader examples/oracle/reader.c -lm && ./reader golden/
 *
 * Reads each case's arrays through cases/<id>/arrays.txt (one line per array: KEY FILE DTYPE
 * OFFSET NDIM DIM...) and the data of each .npy at that offset; its scalar arguments and
 * tolerances by looking keys up in case.json (no JSON library: the keys it needs are unique
 * after the point it starts from, and any JSON whitespace is allowed).
 * Prints one line per case; exit 0 when all pass, 1 when any fails, 2 on bad input. */
#define _DEFAULT_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *slurp(const char *path, long *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc(n + 1);
    if (fread(buf, 1, n, f) != (size_t)n) { fclose(f); free(buf); return NULL; }
    fclose(f);
    buf[n] = 0;
    if (size) *size = n;
    return buf;
}

static const char *skip_space(const char *p) {
    while (isspace((unsigned char)*p)) p++;
    return p;
}

/* the value after the first "key" : at or after `from` (a "key" that is a value is passed over) */
static const char *value_of(const char *from, const char *key) {
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    for (const char *p = from ? strstr(from, pat) : NULL; p; p = strstr(p + 1, pat)) {
        const char *q = skip_space(p + strlen(pat));
        if (*q == ':') return skip_space(q + 1);
    }
    return NULL;
}

static double num(const char *from, const char *key) {
    const char *p = value_of(from, key);
    return p ? strtod(p, NULL) : NAN;
}

/* an array of the case: data (float64 or int64 as double), element count, shape */
typedef struct { double *v; long n; long shape[8]; int ndim; } Array;

/* the array `key` of the case in folder `dir`, found in its arrays.txt */
static int load(const char *dir, const char *key, Array *a) {
    char path[1500], line[512], k[128], file[128], dtype[8];
    long offset = 0;
    int found = 0;
    snprintf(path, sizeof path, "%s/arrays.txt", dir);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    while (!found && fgets(line, sizeof line, f)) {
        int used;
        if (sscanf(line, "%127s %127s %7s %ld %d%n", k, file, dtype, &offset, &a->ndim, &used) != 5 ||
            strcmp(k, key) || a->ndim > 8) continue;
        const char *p = line + used;
        a->n = 1;
        for (int i = 0; i < a->ndim; i++, p += used) {
            if (sscanf(p, "%ld%n", &a->shape[i], &used) != 1) { fclose(f); return 0; }
            a->n *= a->shape[i];
        }
        found = 1;
    }
    fclose(f);
    if (!found) return 0;
    snprintf(path, sizeof path, "%s/%s", dir, file);
    long size;
    char *raw = slurp(path, &size);
    if (!raw || size != offset + 8 * a->n) { free(raw); return 0; }
    int is_int = !strcmp(dtype, "<i8");
    a->v = malloc(sizeof(double) * (a->n ? a->n : 1));
    for (long i = 0; i < a->n; i++) {   /* little-endian host assumed (x86, arm64) */
        if (is_int) { long long t; memcpy(&t, raw + offset + 8 * i, 8); a->v[i] = (double)t; }
        else memcpy(&a->v[i], raw + offset + 8 * i, 8);
    }
    free(raw);
    return 1;
}

/* |a - e| <= atol + rtol |e| for every element, with the output's float64 tolerances */
static int close_all(const char *json, const char *out, const double *a, const Array *e) {
    char quoted[64];
    snprintf(quoted, sizeof quoted, "\"%s\"", out);
    const char *p = value_of(json, "outputs");
    while ((p = value_of(p, "name")) && strncmp(p, quoted, strlen(quoted))) {}
    const char *tol = value_of(p, "float64");
    double rtol = num(tol, "rtol"), atol = num(tol, "atol");
    for (long i = 0; i < e->n; i++)
        if (!(fabs(a[i] - e->v[i]) <= atol + rtol * fabs(e->v[i]))) return 0;
    return 1;
}

static void hessian_into(double *H, const Array *X, double scale_old, const double *H_old, long n_seen) {
    long n = X->shape[0], d = X->shape[1];
    for (long i = 0; i < d; i++)
        for (long j = 0; j < d; j++) {
            double s = 0;
            for (long t = 0; t < n; t++) s += X->v[t * d + i] * X->v[t * d + j];
            H[i * d + j] = ((H_old ? scale_old * H_old[i * d + j] : 0) + 2.0 * s) / (double)(n_seen + n);
        }
}

/* one case: 1 pass, 0 fail, -1 not an operation of this reader */
static int check_case(const char *dir, const char *json) {
    char op[64];
    sscanf(value_of(json, "operation"), "\"%63[^\"]\"", op);
    const char *args = value_of(json, "arguments");
    int raises = value_of(json, "raises") != NULL;
    Array X, H, W, Wn, E;
    if (!strcmp(op, "hessian")) {
        if (!load(dir, "in.X", &X) || !load(dir, "out.H", &E)) return 0;
        double *out = malloc(sizeof(double) * E.n);
        hessian_into(out, &X, 0, NULL, 0);
        return close_all(json, "H", out, &E);
    }
    if (!strcmp(op, "accumulate_hessian")) {
        long n_seen = (long)num(args, "n_seen");
        int has_H = strncmp(value_of(args, "H"), "null", 4) != 0;
        if (!load(dir, "in.X", &X) || !load(dir, "out.H", &E) || !load(dir, "out.n_seen", &Wn))
            return 0;
        if (has_H && !load(dir, "in.H", &H)) return 0;
        double *out = malloc(sizeof(double) * E.n);
        hessian_into(out, &X, (double)n_seen, has_H ? H.v : NULL, n_seen);
        return close_all(json, "H", out, &E) && Wn.v[0] == n_seen + X.shape[0];
    }
    if (!strcmp(op, "dgs_group_sizes")) {
        long T = (long)num(args, "n_prune"), b = (T - 512) / 2 - ((T - 512) % 2 < 0), left = T, k = 0;
        if (!load(dir, "out.group_sizes", &E)) return 0;
        long sizes[4096];
        while (left > 0) {
            long g = b > 64 ? b : 64;
            g = g < 1024 ? g : 1024;
            g = g < left ? g : left;
            sizes[k++] = g;
            left -= g;
            b = (b - 512) / 2 - ((b - 512) % 2 < 0);   /* floor division */
        }
        if (k != E.n) return 0;
        for (long i = 0; i < k; i++) if (sizes[i] != (long)E.v[i]) return 0;
        return 1;
    }
    if (!strcmp(op, "ipr_ratios")) {
        long n = (long)num(args, "n_layers");
        double first = num(args, "first"), last = num(args, "last");
        char strategy[32];
        sscanf(value_of(args, "strategy"), "\"%31[^\"]\"", strategy);
        if (first > last || (!strcmp(strategy, "uniform") && first != last)) return raises;
        if (raises || !load(dir, "out.ratios", &E)) return 0;
        double *r = malloc(sizeof(double) * n);
        int decrease = strstr(strategy, "-decrease") != NULL, is_log = !strncmp(strategy, "log", 3);
        for (long i = 0; i < n; i++) {
            long j = decrease ? n - 1 - i : i;
            double shape = n == 1 ? 0 : is_log ? log((double)j + 1) / log((double)n) : (double)j / (n - 1);
            r[i] = !strcmp(strategy, "uniform") ? first : first + (last - first) * shape;
        }
        return close_all(json, "ratios", r, &E);
    }
    if (!strcmp(op, "reconstruction_error")) {
        if (!load(dir, "in.W", &W) || !load(dir, "in.W_new", &Wn) || !load(dir, "in.H", &H) ||
            !load(dir, "out.error", &E)) return 0;
        long r = W.shape[0], d = W.shape[1];
        double err = 0;
        for (long o = 0; o < r; o++)
            for (long i = 0; i < d; i++)
                for (long j = 0; j < d; j++)
                    err += (W.v[o * d + i] - Wn.v[o * d + i]) * H.v[i * d + j] * (W.v[o * d + j] - Wn.v[o * d + j]);
        err *= 0.5;
        return close_all(json, "error", &err, &E);
    }
    return -1;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: reader EXPORT_DIR\n"); return 2; }
    char path[1024];
    snprintf(path, sizeof path, "%s/cases", argv[1]);
    DIR *d = opendir(path);
    if (!d) { fprintf(stderr, "reader: %s is not an oracle export (no cases/ folder)\n", argv[1]); return 2; }
    int passed = 0, failed = 0;
    struct dirent *ent;
    while ((ent = readdir(d))) {
        if (ent->d_name[0] == '.') continue;
        char dir[1400], file[1500];
        snprintf(dir, sizeof dir, "%s/%s", path, ent->d_name);
        snprintf(file, sizeof file, "%s/case.json", dir);
        char *json = slurp(file, NULL);
        if (!json) { fprintf(stderr, "reader: %s unreadable\n", file); return 2; }
        int ok = check_case(dir, json);
        if (ok >= 0) {
            printf("%s %s\n", ok ? "pass" : "FAIL", ent->d_name);
            ok ? passed++ : failed++;
        }
        free(json);
    }
    closedir(d);
    printf("%d passed, %d failed\n", passed, failed);
    return failed || !passed ? 1 : 0;
}

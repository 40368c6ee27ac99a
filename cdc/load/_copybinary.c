/* COPY text rows converted to Postgres' binary COPY, in C.
 *
 * Optional: cdc.load.copybinary uses it when it was built; without it the rows are
 * COPYed as text. Its input is what Postgres' output functions printed (the replication
 * stream's values, a source COPY's rows) in COPY text format; its output is the same rows
 * as each column's receive function reads them, which spares the server the text input
 * functions. `plan` has one code per column (numbered as in copybinary.py). A value of a
 * form the converter does not know (a BC date, an octal escape, bytea in escape format)
 * makes the whole conversion None: the caller COPYs the text, which Postgres reads (or
 * names the value it cannot read) as before. Rows of the wrong width are a ValueError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum {
    C_TEXT = 1, C_BOOL = 2, C_INT2 = 3, C_INT4 = 4, C_INT8 = 5, C_OID = 6, C_FLOAT4 = 7,
    C_FLOAT8 = 8, C_NUMERIC = 9, C_DATE = 10, C_TIMESTAMP = 11, C_TIMESTAMPTZ = 12,
    C_UUID = 13, C_JSONB = 14, C_BYTEA = 15, C_LAST = 15,
};

static const char SIGNATURE[] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0";  /* + flags, extension */
#define SIGNATURE_SIZE 19
#define POSTGRES_EPOCH_DAYS 10957  /* 2000-01-01 from 1970-01-01 */
#define USECS_PER_DAY INT64_C(86400000000)

static void
put_u16(char *out, uint16_t v)
{
    out[0] = (char)(v >> 8);
    out[1] = (char)v;
}

static void
put_u32(char *out, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8) {
        out[i] = (char)v;
    }
}

static void
put_u64(char *out, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8) {
        out[i] = (char)v;
    }
}

/* A field's bytes without COPY text escapes into `out` (room for `n`): their length, or
 * -1 if an escape is not one that Postgres' COPY TO writes (octal, hex: left to the
 * server). */
static Py_ssize_t
unescape(const char *s, Py_ssize_t n, char *out)
{
    char *start = out;
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = s[i];
        if (c != '\\') {
            *out++ = c;
            continue;
        }
        if (++i == n) {
            return -1;
        }
        switch (s[i]) {
        case '\\': *out++ = '\\'; break;
        case 'n': *out++ = '\n'; break;
        case 'r': *out++ = '\r'; break;
        case 't': *out++ = '\t'; break;
        case 'b': *out++ = '\b'; break;
        case 'f': *out++ = '\f'; break;
        case 'v': *out++ = '\v'; break;
        default: return -1;
        }
    }
    return out - start;
}

/* Digits [s, s + n) as an unsigned number below `limit`; 0 if not. */
static int
digits(const char *s, Py_ssize_t n, uint64_t limit, uint64_t *value)
{
    uint64_t v = 0;
    if (n <= 0 || n > 19) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > limit) {
        return 0;
    }
    *value = v;
    return 1;
}

static int
integer(const char *s, Py_ssize_t n, int size, char *out)
{
    int negative = n > 0 && s[0] == '-';
    uint64_t limit = size == 2 ? 32767 : size == 4 ? 2147483647 : INT64_MAX;
    uint64_t v;
    if (!digits(s + negative, n - negative, limit + (uint64_t)negative, &v)) {
        return 0;
    }
    uint64_t bits = negative ? (uint64_t)0 - v : v;
    if (size == 2) {
        put_u16(out, (uint16_t)bits);
    } else if (size == 4) {
        put_u32(out, (uint32_t)bits);
    } else {
        put_u64(out, bits);
    }
    return size;
}

static int
floating(const char *s, Py_ssize_t n, int size, char *out)
{
    char text[64];
    double v;
    if (n <= 0 || n >= (Py_ssize_t)sizeof(text)) {
        return 0;
    }
    memcpy(text, s, (size_t)n);
    text[n] = '\0';
    if (strcmp(text, "NaN") == 0) {
        v = NAN;
    } else if (strcmp(text, "Infinity") == 0) {
        v = INFINITY;
    } else if (strcmp(text, "-Infinity") == 0) {
        v = -INFINITY;
    } else {
        for (Py_ssize_t i = 0; i < n; i++) {
            char c = text[i];
            if (!((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == '-' || c == '+')) {
                return 0;  /* what strtod would read too (hex, "inf"), not Postgres' form */
            }
        }
        char *end;
        if (size == 4) {
            float f = strtof(text, &end);
            v = f;
        } else {
            v = strtod(text, &end);
        }
        if (end != text + n) {
            return 0;
        }
    }
    if (size == 4) {
        float f = (float)v;
        uint32_t bits;
        memcpy(&bits, &f, 4);
        put_u32(out, bits);
    } else {
        uint64_t bits;
        memcpy(&bits, &v, 8);
        put_u64(out, bits);
    }
    return size;
}

/* numeric_send's form at `p`: ndigits, weight, sign, dscale, then base-10000 digits. Its
 * size (at most 12 + n / 2), or 0 if refused. */
static int
numeric(const char *s, Py_ssize_t n, char *p)
{
    uint16_t sign = 0;
    if (n == 3 && memcmp(s, "NaN", 3) == 0) {
        sign = 0xC000;
    } else if (n == 8 && memcmp(s, "Infinity", 8) == 0) {
        sign = 0xD000;
    } else if (n == 9 && memcmp(s, "-Infinity", 9) == 0) {
        sign = 0xF000;
    }
    if (sign) {
        put_u16(p, 0);
        put_u16(p + 2, 0);
        put_u16(p + 4, sign);
        put_u16(p + 6, 0);
        return 8;
    }
    Py_ssize_t i = 0;
    if (n > 0 && s[0] == '-') {
        sign = 0x4000;
        i = 1;
    }
    Py_ssize_t int_start = i;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        i++;
    }
    Py_ssize_t int_len = i - int_start, frac_start = i, frac_len = 0;
    if (i < n && s[i] == '.') {
        frac_start = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            i++;
        }
        frac_len = i - frac_start;
    }
    if (i != n || int_len + frac_len == 0 || frac_len > 0x3FFF || int_len > 131072) {
        return 0;
    }
    /* Groups of four digits aligned on the decimal point. */
    Py_ssize_t int_groups = (int_len + 3) / 4, groups = int_groups + (frac_len + 3) / 4;
    char *digits_at = p + 8;
    Py_ssize_t lead = int_groups * 4 - int_len;  /* zeros before the first integer digit */
    Py_ssize_t first = -1, last = -1;
    for (Py_ssize_t g = 0; g < groups; g++) {
        unsigned v = 0;
        for (Py_ssize_t k = 0; k < 4; k++) {
            char c;
            if (g < int_groups) {
                Py_ssize_t at = g * 4 + k - lead;  /* among the integer digits */
                c = at >= 0 ? s[int_start + at] : '0';
            } else {
                Py_ssize_t at = (g - int_groups) * 4 + k;  /* among the fraction digits */
                c = at < frac_len ? s[frac_start + at] : '0';
            }
            v = v * 10 + (unsigned)(c - '0');
        }
        if (v != 0) {
            if (first < 0) {
                first = g;
            }
            last = g;
        }
        put_u16(digits_at + 2 * g, (uint16_t)v);
    }
    Py_ssize_t ndigits = first < 0 ? 0 : last - first + 1;  /* zero has none */
    if (first > 0) {
        memmove(digits_at, digits_at + 2 * first, (size_t)(2 * ndigits));
    }
    put_u16(p, (uint16_t)ndigits);
    put_u16(p + 2, first < 0 ? 0 : (uint16_t)(int16_t)(int_groups - 1 - first));
    put_u16(p + 4, first < 0 ? 0 : sign);
    put_u16(p + 6, (uint16_t)frac_len);
    return (int)(8 + 2 * ndigits);
}

/* Days from 1970-01-01 of a proleptic Gregorian date. */
static int64_t
days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static int
leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* "YYYY-MM-DD" (a year of 4 or more digits) at s: days from 2000-01-01, and its length. */
static Py_ssize_t
date_part(const char *s, Py_ssize_t n, int64_t *days)
{
    static const unsigned month_days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    Py_ssize_t i = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        i++;
    }
    uint64_t y, m, d;
    if (i < 4 || i > 6 || !digits(s, i, 999999, &y) || n < i + 6 || s[i] != '-'
        || s[i + 3] != '-' || !digits(s + i + 1, 2, 12, &m) || !digits(s + i + 4, 2, 31, &d)
        || m == 0 || d == 0 || y == 0) {
        return 0;
    }
    if (d > month_days[m - 1] + (m == 2 && leap((int64_t)y))) {
        return 0;
    }
    *days = days_from_civil((int64_t)y, (unsigned)m, (unsigned)d) - POSTGRES_EPOCH_DAYS;
    return i + 6;
}

static int
date_value(const char *s, Py_ssize_t n, char *out)
{
    int64_t days;
    if (n == 8 && memcmp(s, "infinity", 8) == 0) {
        days = INT32_MAX;
    } else if (n == 9 && memcmp(s, "-infinity", 9) == 0) {
        days = INT32_MIN;
    } else if (date_part(s, n, &days) != n) {
        return 0;
    }
    put_u32(out, (uint32_t)(int32_t)days);
    return 4;
}

/* "YYYY-MM-DD HH:MM:SS[.ffffff]" then, with a zone, "+HH[:MM[:SS]]": microseconds from
 * 2000-01-01 (UTC with a zone). */
static int
timestamp_value(const char *s, Py_ssize_t n, int zoned, char *out)
{
    int64_t value;
    if (n == 8 && memcmp(s, "infinity", 8) == 0) {
        value = INT64_MAX;
    } else if (n == 9 && memcmp(s, "-infinity", 9) == 0) {
        value = INT64_MIN;
    } else {
        int64_t days;
        Py_ssize_t i = date_part(s, n, &days);
        uint64_t h, m, sec, frac = 0;
        if (i == 0 || n < i + 9 || s[i] != ' ' || s[i + 3] != ':' || s[i + 6] != ':'
            || !digits(s + i + 1, 2, 23, &h) || !digits(s + i + 4, 2, 59, &m)
            || !digits(s + i + 7, 2, 59, &sec)) {
            return 0;
        }
        i += 9;
        if (i < n && s[i] == '.') {
            Py_ssize_t start = ++i;
            while (i < n && s[i] >= '0' && s[i] <= '9') {
                i++;
            }
            Py_ssize_t width = i - start;
            if (width < 1 || width > 6 || !digits(s + start, width, 999999, &frac)) {
                return 0;
            }
            for (Py_ssize_t k = width; k < 6; k++) {
                frac *= 10;
            }
        }
        int64_t offset = 0;
        if (zoned) {
            uint64_t oh, om = 0, os = 0;
            if (i + 3 > n || (s[i] != '+' && s[i] != '-') || !digits(s + i + 1, 2, 15, &oh)) {
                return 0;
            }
            int negative = s[i] == '-';
            i += 3;
            if (i < n && s[i] == ':') {
                if (i + 3 > n || !digits(s + i + 1, 2, 59, &om)) {
                    return 0;
                }
                i += 3;
                if (i < n && s[i] == ':') {
                    if (i + 3 > n || !digits(s + i + 1, 2, 59, &os)) {
                        return 0;
                    }
                    i += 3;
                }
            }
            offset = (int64_t)(oh * 3600 + om * 60 + os);
            if (negative) {
                offset = -offset;
            }
        }
        if (i != n) {
            return 0;  /* " BC" and anything else: left to the server */
        }
        int64_t seconds = (int64_t)(h * 3600 + m * 60 + sec) - offset;
        value = days * USECS_PER_DAY + seconds * 1000000 + (int64_t)frac;
    }
    put_u64(out, (uint64_t)value);
    return 8;
}

/* A hex digit's value by byte; -1 for the others. */
static signed char hex_values[256];

static void
init_hex_values(void)
{
    memset(hex_values, -1, sizeof(hex_values));
    for (int i = 0; i < 10; i++) {
        hex_values['0' + i] = (signed char)i;
    }
    for (int i = 0; i < 6; i++) {
        hex_values['a' + i] = hex_values['A' + i] = (signed char)(10 + i);
    }
}

/* The bytes of `count` hex digit pairs at `s` into `out`; 0 if one is not hex. */
static int
hex_pairs(const char *s, Py_ssize_t count, char *out)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        int hi = hex_values[(unsigned char)s[2 * i]], lo = hex_values[(unsigned char)s[2 * i + 1]];
        if ((hi | lo) < 0) {
            return 0;
        }
        out[i] = (char)(hi << 4 | lo);
    }
    return 1;
}

/* 8-4-4-4-12 hex digits. */
static int
uuid_value(const char *s, Py_ssize_t n, char *out)
{
    if (n != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-') {
        return 0;
    }
    int ok = hex_pairs(s, 4, out) && hex_pairs(s + 9, 2, out + 4) && hex_pairs(s + 14, 2, out + 6)
        && hex_pairs(s + 19, 2, out + 8) && hex_pairs(s + 24, 6, out + 10);
    return ok ? 16 : 0;
}

/* One field's binary value at `p`: its size (at most 16 + n), or -1 if refused. `s`: the
 * field without escapes. */
static Py_ssize_t
field(int code, const char *s, Py_ssize_t n, char *p)
{
    Py_ssize_t size;
    switch (code) {
    case C_TEXT:
        memcpy(p, s, (size_t)n);
        return n;
    case C_JSONB:
        *p = 1;  /* jsonb_send's version byte, then the text */
        memcpy(p + 1, s, (size_t)n);
        return n + 1;
    case C_BOOL:
        if (n != 1 || (s[0] != 't' && s[0] != 'f' && s[0] != '0' && s[0] != '1')) {
            return -1;
        }
        *p = s[0] == 't' || s[0] == '1';
        return 1;
    case C_INT2:
        size = integer(s, n, 2, p);
        break;
    case C_INT4:
        size = integer(s, n, 4, p);
        break;
    case C_INT8:
        size = integer(s, n, 8, p);
        break;
    case C_OID: {
        uint64_t v;
        if (!digits(s, n, UINT32_MAX, &v)) {
            return -1;
        }
        put_u32(p, (uint32_t)v);
        return 4;
    }
    case C_FLOAT4:
        size = floating(s, n, 4, p);
        break;
    case C_FLOAT8:
        size = floating(s, n, 8, p);
        break;
    case C_NUMERIC:
        size = numeric(s, n, p);
        break;
    case C_DATE:
        size = date_value(s, n, p);
        break;
    case C_TIMESTAMP:
    case C_TIMESTAMPTZ:
        size = timestamp_value(s, n, code == C_TIMESTAMPTZ, p);
        break;
    case C_UUID:
        size = uuid_value(s, n, p);
        break;
    case C_BYTEA:
        if (n < 2 || s[0] != '\\' || s[1] != 'x' || n % 2 != 0 || !hex_pairs(s + 2, n / 2 - 1, p)) {
            return -1;
        }
        return n / 2 - 1;
    default:
        return -1;
    }
    return size == 0 ? -1 : size;  /* the fixed-size forms and numeric are never empty */
}

/* The most a row of `width` fields and `length` bytes of text takes in binary: its field
 * count, and per field a length word and at most 16 bytes more than its text. */
#define ROW_BOUND(width, length) (2 + (width) * (4 + 16) + (length))

/* to_binary(data, plan) -> bytes or None */
static PyObject *
to_binary(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer text, plan;
    if (!PyArg_ParseTuple(args, "y*y*", &text, &plan)) {
        return NULL;
    }
    const unsigned char *codes = plan.buf;
    Py_ssize_t width = plan.len;
    const char *s = text.buf, *end = s + text.len;
    char *scratch = NULL;  /* a field without its escapes; made at the first escape */
    PyObject *out = NULL;
    if (width == 0 || width > 1600) {
        PyErr_SetString(PyExc_ValueError, "to_binary: a plan has 1 to 1600 columns");
        goto failed;
    }
    for (Py_ssize_t j = 0; j < width; j++) {
        if (codes[j] == 0 || codes[j] > C_LAST) {
            PyErr_Format(PyExc_ValueError, "to_binary: unknown code %d", codes[j]);
            goto failed;
        }
    }
    Py_ssize_t rows = 0, longest = 0;
    for (const char *at = s, *line = s; at < end && (at = memchr(at, '\n', (size_t)(end - at)));
         line = ++at) {
        rows++;
        longest = at - line > longest ? at - line : longest;
    }
    /* Written in place: the bound is never passed, and what is left over is given back. */
    out = PyBytes_FromStringAndSize(NULL, SIGNATURE_SIZE + 2 + rows * ROW_BOUND(width, 0)
                                    + text.len);
    if (out == NULL) {
        goto failed;
    }
    char *o = PyBytes_AS_STRING(out);
    memcpy(o, SIGNATURE, SIGNATURE_SIZE);
    o += SIGNATURE_SIZE;
    while (s < end) {
        const char *line_end = memchr(s, '\n', (size_t)(end - s));
        if (line_end == NULL) {
            PyErr_SetString(PyExc_ValueError, "to_binary: the last row has no newline");
            goto failed;
        }
        put_u16(o, (uint16_t)width);
        o += 2;
        for (Py_ssize_t j = 0; j < width; j++) {
            const char *stop = memchr(s, '\t', (size_t)(line_end - s));
            if ((stop == NULL) != (j + 1 == width)) {
                PyErr_Format(PyExc_ValueError, "to_binary: a row does not have %zd fields", width);
                goto failed;
            }
            if (stop == NULL) {
                stop = line_end;
            }
            Py_ssize_t n = stop - s, size;
            if (n == 2 && s[0] == '\\' && s[1] == 'N') {
                size = -1;  /* NULL */
            } else if (memchr(s, '\\', (size_t)n) == NULL) {
                if ((size = field(codes[j], s, n, o + 4)) < 0) {
                    goto refused;
                }
            } else {
                if (scratch == NULL && (scratch = PyMem_Malloc((size_t)longest + 1)) == NULL) {
                    PyErr_NoMemory();
                    goto failed;
                }
                Py_ssize_t plain = unescape(s, n, scratch);
                if (plain < 0 || (size = field(codes[j], scratch, plain, o + 4)) < 0) {
                    goto refused;
                }
            }
            put_u32(o, (uint32_t)size);  /* -1: NULL */
            o += 4 + (size < 0 ? 0 : size);
            s = stop + 1;
        }
    }
    put_u16(o, 0xFFFF);
    o += 2;
    if (_PyBytes_Resize(&out, o - PyBytes_AS_STRING(out)) < 0) {
        goto failed;  /* `out` is NULL */
    }
    goto done;
refused:
    Py_SETREF(out, Py_NewRef(Py_None));
    goto done;
failed:
    Py_CLEAR(out);
done:
    PyMem_Free(scratch);
    PyBuffer_Release(&text);
    PyBuffer_Release(&plan);
    return out;
}

static PyMethodDef methods[] = {
    {"to_binary", to_binary, METH_VARARGS,
     "COPY text rows as binary COPY (header and trailer included), or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_copybinary", "COPY text rows as binary COPY.", -1, methods,
};

PyMODINIT_FUNC
PyInit__copybinary(void)
{
    init_hex_values();
    return PyModule_Create(&module);
}

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

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buffer;

static int
reserve(Buffer *b, Py_ssize_t more)
{
    if (b->len + more <= b->cap) {
        return 0;
    }
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more) {
        cap *= 2;
    }
    char *data = PyMem_Realloc(b->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

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

/* A field's bytes without COPY text escapes into `scratch`; 0 if an escape is not one
 * that Postgres' COPY TO writes (octal, hex: left to the server). */
static int
unescape(const char *s, Py_ssize_t n, Buffer *scratch)
{
    scratch->len = 0;
    if (reserve(scratch, n) < 0) {
        return -1;
    }
    char *out = scratch->data;
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = s[i];
        if (c != '\\') {
            *out++ = c;
            continue;
        }
        if (++i == n) {
            return 0;
        }
        switch (s[i]) {
        case '\\': *out++ = '\\'; break;
        case 'n': *out++ = '\n'; break;
        case 'r': *out++ = '\r'; break;
        case 't': *out++ = '\t'; break;
        case 'b': *out++ = '\b'; break;
        case 'f': *out++ = '\f'; break;
        case 'v': *out++ = '\v'; break;
        default: return 0;
        }
    }
    scratch->len = out - scratch->data;
    return 1;
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

/* numeric_send's form: ndigits, weight, sign, dscale, then base-10000 digits. */
static int
numeric(const char *s, Py_ssize_t n, Buffer *out)
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
        if (reserve(out, 8) < 0) {
            return -1;
        }
        char *p = out->data + out->len;
        put_u16(p, 0);
        put_u16(p + 2, 0);
        put_u16(p + 4, sign);
        put_u16(p + 6, 0);
        out->len += 8;
        return 1;
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
    Py_ssize_t int_groups = (int_len + 3) / 4, frac_groups = (frac_len + 3) / 4;
    Py_ssize_t groups = int_groups + frac_groups;
    if (reserve(out, 8 + 2 * groups) < 0) {
        return -1;
    }
    char *header = out->data + out->len;
    char *p = header + 8;
    Py_ssize_t lead = int_groups * 4 - int_len;  /* zeros before the first integer digit */
    int first = -1, last = -1;
    for (Py_ssize_t g = 0; g < groups; g++) {
        unsigned v = 0;
        for (int k = 0; k < 4; k++) {
            Py_ssize_t pos = g * 4 + k - lead;  /* position among the integer digits */
            char c;
            if (g < int_groups) {
                c = pos >= 0 ? s[int_start + pos] : '0';
            } else {
                Py_ssize_t f = (g - int_groups) * 4 + k;
                c = f < frac_len ? s[frac_start + f] : '0';
            }
            v = v * 10 + (unsigned)(c - '0');
        }
        if (v != 0) {
            if (first < 0) {
                first = (int)g;
            }
            last = (int)g;
        }
        put_u16(p + 2 * g, (uint16_t)v);
    }
    uint16_t dscale = (uint16_t)frac_len;
    if (first < 0) {  /* zero */
        put_u16(header, 0);
        put_u16(header + 2, 0);
        put_u16(header + 4, 0);
        put_u16(header + 6, dscale);
        out->len += 8;
        return 1;
    }
    Py_ssize_t ndigits = last - first + 1;
    if (first > 0) {
        memmove(p, p + 2 * first, (size_t)(2 * ndigits));
    }
    put_u16(header, (uint16_t)ndigits);
    put_u16(header + 2, (uint16_t)(int16_t)(int_groups - 1 - first));
    put_u16(header + 4, sign);
    put_u16(header + 6, dscale);
    out->len += 8 + 2 * ndigits;
    return 1;
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

static int
hex_digit(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

static int
uuid_value(const char *s, Py_ssize_t n, char *out)
{
    if (n != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-') {
        return 0;
    }
    int k = 0;
    for (Py_ssize_t i = 0; i < n; i += 2) {
        if (s[i] == '-') {
            i--;
            continue;
        }
        int hi = hex_digit(s[i]), lo = hex_digit(s[i + 1]);
        if (hi < 0 || lo < 0) {
            return 0;
        }
        out[k++] = (char)(hi * 16 + lo);
    }
    return k == 16 ? 16 : 0;
}

/* One field's binary value appended to `out` after its length word; 1 done, 0 refused,
 * -1 with an exception set. `s`: the field without escapes. */
static int
field(int code, const char *s, Py_ssize_t n, Buffer *out)
{
    Py_ssize_t at = out->len;
    int size;
    if (reserve(out, 4 + 16 + n) < 0) {
        return -1;
    }
    out->len += 4;
    char *p = out->data + out->len;
    switch (code) {
    case C_TEXT:
        memcpy(p, s, (size_t)n);
        size = (int)n;
        break;
    case C_JSONB:
        *p = 1;  /* jsonb_send's version byte, then the text */
        memcpy(p + 1, s, (size_t)n);
        size = (int)n + 1;
        break;
    case C_BOOL:
        if (n != 1 || (s[0] != 't' && s[0] != 'f' && s[0] != '0' && s[0] != '1')) {
            return 0;
        }
        *p = s[0] == 't' || s[0] == '1';
        size = 1;
        break;
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
        size = digits(s, n, UINT32_MAX, &v) ? 4 : 0;
        if (size) {
            put_u32(p, (uint32_t)v);
        }
        break;
    }
    case C_FLOAT4:
        size = floating(s, n, 4, p);
        break;
    case C_FLOAT8:
        size = floating(s, n, 8, p);
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
        if (n < 2 || s[0] != '\\' || s[1] != 'x' || n % 2 != 0) {
            return 0;
        }
        for (Py_ssize_t i = 2; i < n; i += 2) {
            int hi = hex_digit(s[i]), lo = hex_digit(s[i + 1]);
            if (hi < 0 || lo < 0) {
                return 0;
            }
            p[i / 2 - 1] = (char)(hi * 16 + lo);
        }
        size = (int)(n / 2 - 1);
        break;
    case C_NUMERIC: {
        int done = numeric(s, n, out);
        if (done <= 0) {
            return done;
        }
        size = (int)(out->len - at - 4);
        put_u32(out->data + at, (uint32_t)size);
        return 1;
    }
    default:
        return 0;
    }
    if (size == 0 && code != C_TEXT && code != C_BYTEA) {
        return 0;
    }
    put_u32(out->data + at, (uint32_t)size);
    out->len += size;
    return 1;
}

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
    Buffer out = {NULL, 0, 0}, scratch = {NULL, 0, 0};
    PyObject *result = NULL;
    int refused = 0;
    if (width == 0 || width > 1600) {
        PyErr_SetString(PyExc_ValueError, "to_binary: a plan has 1 to 1600 columns");
        goto done;
    }
    for (Py_ssize_t j = 0; j < width; j++) {
        if (codes[j] == 0 || codes[j] > C_LAST) {
            PyErr_Format(PyExc_ValueError, "to_binary: unknown code %d", codes[j]);
            goto done;
        }
    }
    if (reserve(&out, SIGNATURE_SIZE + text.len + text.len / 2) < 0) {
        goto done;
    }
    memcpy(out.data, SIGNATURE, SIGNATURE_SIZE);
    out.len = SIGNATURE_SIZE;
    while (s < end && !refused) {
        const char *line_end = memchr(s, '\n', (size_t)(end - s));
        if (line_end == NULL) {
            PyErr_SetString(PyExc_ValueError, "to_binary: the last row has no newline");
            goto done;
        }
        if (reserve(&out, 2) < 0) {
            goto done;
        }
        put_u16(out.data + out.len, (uint16_t)width);
        out.len += 2;
        for (Py_ssize_t j = 0; j < width; j++) {
            const char *stop = j + 1 < width ? memchr(s, '\t', (size_t)(line_end - s)) : line_end;
            if (stop == NULL || (j + 1 == width && memchr(s, '\t', (size_t)(line_end - s)))) {
                PyErr_Format(PyExc_ValueError, "to_binary: a row does not have %zd fields", width);
                goto done;
            }
            Py_ssize_t n = stop - s;
            int done_;
            if (n == 2 && s[0] == '\\' && s[1] == 'N') {
                if (reserve(&out, 4) < 0) {
                    goto done;
                }
                put_u32(out.data + out.len, UINT32_MAX);
                out.len += 4;
                done_ = 1;
            } else if (memchr(s, '\\', (size_t)n) != NULL) {
                int plain = unescape(s, n, &scratch);
                done_ = plain <= 0 ? plain : field(codes[j], scratch.data, scratch.len, &out);
            } else {
                done_ = field(codes[j], s, n, &out);
            }
            if (done_ < 0) {
                goto done;
            }
            if (done_ == 0) {
                refused = 1;
                break;
            }
            s = stop + 1;
        }
    }
    if (refused) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (reserve(&out, 2) < 0) {
        goto done;
    }
    put_u16(out.data + out.len, 0xFFFF);
    out.len += 2;
    result = PyBytes_FromStringAndSize(out.data, out.len);
done:
    PyMem_Free(out.data);
    PyMem_Free(scratch.data);
    PyBuffer_Release(&text);
    PyBuffer_Release(&plan);
    return result;
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
    return PyModule_Create(&module);
}

/* Postgres binary COPY rows converted to ClickHouse RowBinary, in C, without the GIL.
 *
 * Optional: cdc.sinks.clickhouse.rowbinary uses it when it was built; without it a backfill sends COPY text.
 * `convert(data, plan, version)` reads a whole binary COPY (header, tuples, trailer) and
 * writes each tuple's fields as the plan says, then `version` (16 bytes, a UInt128), per
 * row. The plan holds three bytes per column: a conversion code, 1 if the target column is
 * Nullable, and a Decimal's scale. A value the target cannot hold (a date outside
 * ClickHouse's range, a numeric NaN, a NULL for a column that is not Nullable) raises
 * `Refused(column, reason)`; data that is not a binary COPY of the plan's columns raises
 * ValueError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum {
    BOOL = 1, INT2, INT4, INT8, UINT4, FLOAT4, FLOAT8, UUID, DATE, TIMESTAMP, STRING, JSONB,
    DECIMAL32, DECIMAL64, DECIMAL128, DECIMAL256,
};

/* Days and microseconds from Postgres's epoch (2000-01-01) to 1970-01-01, 1900-01-01 and
 * 2300-01-01: ClickHouse's Date32 and DateTime64 hold [1900-01-01, 2300-01-01). */
#define EPOCH_DAYS 10957
#define FIRST_DAYS (-36524)
#define END_DAYS 109573
#define DAY_US INT64_C(86400000000)

static PyObject *Refused;

/* Failures that are not a refused value: the data or the plan is wrong. */
static const char MALFORMED[] = "malformed field";
static const char NO_MEMORY[] = "out of memory";

typedef struct {
    char *data;
    size_t length, capacity;
} Buffer;

static int
reserve(Buffer *out, size_t more)
{
    if (out->length + more <= out->capacity) {
        return 0;
    }
    size_t wanted = out->capacity ? out->capacity : 1 << 16;
    while (wanted < out->length + more) {
        wanted *= 2;
    }
    char *grown = realloc(out->data, wanted);
    if (grown == NULL) {
        return -1;
    }
    out->data = grown;
    out->capacity = wanted;
    return 0;
}

static uint16_t be16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static uint32_t
be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64(const unsigned char *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }

/* Little-endian bytes of `value`, `size` of them (the host may be of either order). */
static void
put_le(char *out, uint64_t value, int size)
{
    for (int i = 0; i < size; i++) {
        out[i] = (char)(value >> (8 * i));
    }
}

/* A 256-bit unsigned integer, eight little-endian 32-bit limbs; each step fails on carry. */
typedef struct {
    uint32_t limb[8];
} U256;

static int
mul_add(U256 *x, uint32_t factor, uint32_t addend)
{
    uint64_t carry = addend;
    for (int i = 0; i < 8; i++) {
        uint64_t product = (uint64_t)x->limb[i] * factor + carry;
        x->limb[i] = (uint32_t)product;
        carry = product >> 32;
    }
    return carry != 0 ? -1 : 0;
}

static int
mul_pow10(U256 *x, int exponent)
{
    static const uint32_t pow10[] = {
        1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000,
    };
    while (exponent > 0) {
        int step = exponent > 9 ? 9 : exponent;
        if (mul_add(x, pow10[step], 0) < 0) {
            return -1;
        }
        exponent -= step;
    }
    return 0;
}

/* A numeric's value times 10^scale, as a two's complement integer of `size` bytes: NULL,
 * or why not (NaN or infinite, digits below the scale, too large), or MALFORMED. */
static const char *
decimal(const unsigned char *p, int32_t length, int scale, int size, char *out)
{
    if (length < 8) {
        return MALFORMED;
    }
    int ndigits = (int16_t)be16(p), weight = (int16_t)be16(p + 2);
    uint16_t sign = be16(p + 4);
    if (sign != 0x0000 && sign != 0x4000) {
        return "NaN or infinity has no Decimal";
    }
    if (ndigits < 0 || length != 8 + 2 * ndigits) {
        return MALFORMED;
    }
    U256 value = {{0}};
    int last = -1; /* the exponent of ten of the last digit taken whole */
    for (int i = 0; i < ndigits; i++) {
        int digit = be16(p + 8 + 2 * i);
        int exponent = 4 * (weight - i) + scale; /* of this base-10000 digit, in tens */
        if (exponent >= 0) {
            if (mul_add(&value, 10000, (uint32_t)digit) < 0) {
                return "too large";
            }
            last = exponent;
            continue;
        }
        if (last >= 0 && mul_pow10(&value, last) < 0) {
            return "too large";
        }
        last = -1;
        /* Below the scale: only the zeros of the digit's lower places may be. */
        int divisor = exponent == -1 ? 10 : exponent == -2 ? 100 : exponent == -3 ? 1000 : 0;
        if (digit == 0) {
            continue;
        }
        if (divisor == 0 || digit % divisor != 0) {
            return "more fractional digits than the Decimal's scale";
        }
        if (mul_add(&value, 1, (uint32_t)(digit / divisor)) < 0) {
            return "too large";
        }
    }
    if (last >= 0 && mul_pow10(&value, last) < 0) {
        return "too large";
    }
    /* Fits a signed integer of `size` bytes: every bit from the sign bit up is clear. */
    int bits = 8 * size - 1;
    for (int limb = bits / 32; limb < 8; limb++) {
        uint32_t mask = limb == bits / 32 ? ~(uint32_t)0 << (bits % 32) : ~(uint32_t)0;
        if (value.limb[limb] & mask) {
            return "too large for the Decimal";
        }
    }
    if (sign == 0x4000) { /* two's complement */
        uint32_t carry = 1;
        for (int limb = 0; limb < 8; limb++) {
            value.limb[limb] = ~value.limb[limb] + carry;
            carry = carry && value.limb[limb] == 0;
        }
    }
    for (int limb = 0; limb < size / 4; limb++) {
        put_le(out + 4 * limb, value.limb[limb], 4);
    }
    return NULL;
}

static const int decimal_sizes[] = {[DECIMAL32] = 4, [DECIMAL64] = 8, [DECIMAL128] = 16,
                                    [DECIMAL256] = 32};

/* One field's value (not NULL) in RowBinary: NULL, or the reason it is refused, or
 * MALFORMED or NO_MEMORY. */
static const char *
field(Buffer *out, int code, int scale, const unsigned char *p, int32_t length)
{
    static const int fixed[] = {[BOOL] = 1, [INT2] = 2, [INT4] = 4, [INT8] = 8, [UINT4] = 4,
                                [FLOAT4] = 4, [FLOAT8] = 8, [UUID] = 16, [DATE] = 4,
                                [TIMESTAMP] = 8};
    if (code <= TIMESTAMP && length != fixed[code]) {
        return MALFORMED;
    }
    if (reserve(out, (size_t)length + 40) < 0) {
        return NO_MEMORY;
    }
    char *at = out->data + out->length;
    switch (code) {
    case BOOL:
        at[0] = p[0] ? 1 : 0;
        out->length += 1;
        return NULL;
    case INT2:
        put_le(at, be16(p), 2);
        out->length += 2;
        return NULL;
    case INT4: case UINT4: case FLOAT4: case DATE:
        if (code == DATE) {
            int32_t days = (int32_t)be32(p);
            if (days < FIRST_DAYS || days >= END_DAYS) {
                return "a date outside ClickHouse's range";
            }
            put_le(at, (uint32_t)(days + EPOCH_DAYS), 4);
        }
        else {
            put_le(at, be32(p), 4);
        }
        out->length += 4;
        return NULL;
    case INT8: case FLOAT8: case TIMESTAMP:
        if (code == TIMESTAMP) {
            int64_t us = (int64_t)be64(p);
            if (us < FIRST_DAYS * DAY_US || us >= END_DAYS * DAY_US) {
                return "a timestamp outside ClickHouse's range";
            }
            put_le(at, (uint64_t)(us + EPOCH_DAYS * DAY_US), 8);
        }
        else {
            put_le(at, be64(p), 8);
        }
        out->length += 8;
        return NULL;
    case UUID: /* two UInt64, each little-endian: the first eight bytes, then the others */
        for (int i = 0; i < 8; i++) {
            at[i] = (char)p[7 - i];
            at[8 + i] = (char)p[15 - i];
        }
        out->length += 16;
        return NULL;
    case JSONB: case STRING:
        if (code == JSONB) {
            if (length < 1 || p[0] != 1) {
                return MALFORMED; /* jsonb's binary form is version 1 */
            }
            p += 1;
            length -= 1;
        }
        {
            uint32_t rest = (uint32_t)length;
            do { /* LEB128 length */
                *at++ = (char)((rest & 0x7F) | (rest > 0x7F ? 0x80 : 0));
                rest >>= 7;
            } while (rest != 0);
            memcpy(at, p, (size_t)length);
            out->length = (size_t)(at - out->data) + (size_t)length;
        }
        return NULL;
    case DECIMAL32: case DECIMAL64: case DECIMAL128: case DECIMAL256: {
        const char *why = decimal(p, length, scale, decimal_sizes[code], at);
        if (why == NULL) {
            out->length += (size_t)decimal_sizes[code];
        }
        return why;
    }
    default:
        return MALFORMED;
    }
}

typedef struct {
    const unsigned char *data;
    size_t length;
    const unsigned char *plan;
    int columns;
    const unsigned char *version;
    Buffer out;
    Py_ssize_t rows;
    int column;         /* of the value refused, or -1 */
    const char *reason; /* of the failure, or NULL */
} Conversion;

static const unsigned char SIGNATURE[11] = "PGCOPY\n\377\r\n";

static void
run(Conversion *c)
{
    const unsigned char *p = c->data, *end = c->data + c->length;
    if (c->length < 19 || memcmp(p, SIGNATURE, 11) != 0) {
        c->reason = "not a binary COPY (no PGCOPY signature)";
        return;
    }
    uint32_t extension = be32(p + 15);
    if (extension > c->length - 19) {
        c->reason = "truncated header";
        return;
    }
    p += 19 + extension;
    for (;;) {
        if (end - p < 2) {
            c->reason = "truncated: no trailer";
            return;
        }
        int16_t count = (int16_t)be16(p);
        p += 2;
        if (count == -1) {
            if (p != end) {
                c->reason = "data after the trailer";
            }
            return;
        }
        if (count != c->columns) {
            c->reason = "a row's column count differs from the plan's";
            return;
        }
        for (int i = 0; i < c->columns; i++) {
            if (end - p < 4) {
                c->reason = "truncated row";
                return;
            }
            int32_t length = (int32_t)be32(p);
            p += 4;
            int code = c->plan[3 * i], nullable = c->plan[3 * i + 1], scale = c->plan[3 * i + 2];
            if (reserve(&c->out, 1) < 0) {
                c->reason = NO_MEMORY;
                return;
            }
            if (length == -1) {
                if (!nullable) {
                    c->column = i;
                    c->reason = "NULL for a column that is not Nullable";
                    return;
                }
                c->out.data[c->out.length++] = 1;
                continue;
            }
            if (length < 0 || end - p < length) {
                c->reason = "truncated field";
                return;
            }
            if (nullable) {
                c->out.data[c->out.length++] = 0;
            }
            const char *why = field(&c->out, code, scale, p, length);
            if (why != NULL) {
                c->column = why == MALFORMED || why == NO_MEMORY ? -1 : i;
                c->reason = why;
                return;
            }
            p += length;
        }
        if (reserve(&c->out, 16) < 0) {
            c->reason = NO_MEMORY;
            return;
        }
        memcpy(c->out.data + c->out.length, c->version, 16);
        c->out.length += 16;
        c->rows += 1;
    }
}

/* convert(data, plan, version) -> (rowbinary, rows) */
static PyObject *
convert(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer data, plan, version;
    if (!PyArg_ParseTuple(args, "y*y*y*", &data, &plan, &version)) {
        return NULL;
    }
    PyObject *result = NULL;
    if (plan.len % 3 != 0 || version.len != 16) {
        PyErr_SetString(PyExc_ValueError, "a plan is 3 bytes per column; a version 16 bytes");
        goto done;
    }
    Conversion c = {data.buf, (size_t)data.len, plan.buf, (int)(plan.len / 3), version.buf,
                    {NULL, 0, 0}, 0, -1, NULL};
    Py_BEGIN_ALLOW_THREADS
    if (reserve(&c.out, (size_t)data.len + (size_t)data.len / 2) < 0) {
        c.reason = NO_MEMORY;
    }
    else {
        run(&c);
    }
    Py_END_ALLOW_THREADS
    if (c.reason != NULL && c.column >= 0) {
        PyObject *refusal = Py_BuildValue("(is)", c.column, c.reason);
        if (refusal != NULL) {
            PyErr_SetObject(Refused, refusal);
            Py_DECREF(refusal);
        }
    }
    else if (c.reason == NO_MEMORY) {
        PyErr_NoMemory();
    }
    else if (c.reason != NULL) {
        PyErr_Format(PyExc_ValueError, "binary COPY data: %s (row %zd)", c.reason, c.rows + 1);
    }
    else {
        PyObject *out = PyBytes_FromStringAndSize(c.out.data ? c.out.data : "",
                                                  (Py_ssize_t)c.out.length);
        if (out != NULL) {
            result = Py_BuildValue("(Nn)", out, c.rows);
        }
    }
    free(c.out.data);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&plan);
    PyBuffer_Release(&version);
    return result;
}

static PyMethodDef methods[] = {
    {"convert", convert, METH_VARARGS, "Binary COPY rows as RowBinary, each with a version."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "cdc.sinks.clickhouse._rowbinary", "Binary COPY rows as ClickHouse RowBinary.", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__rowbinary(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    Refused = PyErr_NewException("cdc.sinks.clickhouse._rowbinary.Refused", PyExc_ValueError, NULL);
    if (Refused == NULL || PyModule_AddObjectRef(m, "Refused", Refused) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

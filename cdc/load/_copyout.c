/* A COPY's rows read in C: one libpq call per row, without the GIL.
 *
 * Optional: cdc.load.copyout uses it when it was built and libpq is found, and reads the rows in
 * Python otherwise. It calls the libpq this process has loaded already (psycopg's), found
 * among the loaded objects by name; `load()` is false if there is none, or more than one.
 * `read_rows` then checks that the connection it is given answers with its backend's PID
 * through that library before reading from it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <link.h>
#include <stdlib.h>
#include <string.h>

typedef int (*get_copy_data_fn)(void *conn, char **buffer, int async);
typedef void (*freemem_fn)(void *ptr);
typedef int (*backend_pid_fn)(const void *conn);

static get_copy_data_fn get_copy_data;
static freemem_fn freemem;
static backend_pid_fn backend_pid;

typedef struct {
    int found;
    char path[4096];
} Search;

static int
find_libpq(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    Search *search = data;
    const char *path = info->dlpi_name;
    if (path == NULL || path[0] == '\0') {
        return 0;
    }
    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    if (strncmp(name, "libpq", 5) != 0 || (name[5] != '.' && name[5] != '-')) {
        return 0;
    }
    search->found += 1;
    strncpy(search->path, path, sizeof(search->path) - 1);
    search->path[sizeof(search->path) - 1] = '\0';
    return 0;
}

static PyObject *
load(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    if (get_copy_data != NULL) {
        Py_RETURN_TRUE;
    }
    Search search = {0, {0}};
    dl_iterate_phdr(find_libpq, &search);
    if (search.found != 1) {
        Py_RETURN_FALSE; /* none loaded, or two: which one holds the connection is unknown */
    }
    void *library = dlopen(search.path, RTLD_NOW | RTLD_NOLOAD);
    if (library == NULL) {
        Py_RETURN_FALSE;
    }
    get_copy_data_fn get = (get_copy_data_fn)dlsym(library, "PQgetCopyData");
    freemem_fn free_ = (freemem_fn)dlsym(library, "PQfreemem");
    backend_pid_fn pid = (backend_pid_fn)dlsym(library, "PQbackendPID");
    if (get == NULL || free_ == NULL || pid == NULL) {
        dlclose(library);
        Py_RETURN_FALSE;
    }
    freemem = free_;
    backend_pid = pid;
    get_copy_data = get; /* kept loaded: the functions are used for the process's lifetime */
    Py_RETURN_TRUE;
}

/* read_rows(pgconn_ptr, expected_pid) -> (data, rows) | None
 *
 * Every row of the COPY the connection is in, appended in order, up to its end or an
 * error (the caller then takes the result, which names the error). None if the connection
 * does not answer with `expected_pid` through the loaded library: the caller reads the
 * rows itself. */
static PyObject *
read_rows(PyObject *self, PyObject *args)
{
    (void)self;
    unsigned long long address;
    int expected_pid;
    if (!PyArg_ParseTuple(args, "Ki", &address, &expected_pid)) {
        return NULL;
    }
    void *conn = (void *)(uintptr_t)address;
    if (get_copy_data == NULL || conn == NULL || backend_pid(conn) != expected_pid) {
        Py_RETURN_NONE;
    }
    char *out = NULL;
    size_t length = 0, capacity = 0;
    Py_ssize_t rows = 0;
    int out_of_memory = 0;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        char *row = NULL;
        int size = get_copy_data(conn, &row, 0); /* -1: the copy is done, -2: an error */
        if (size <= 0) {
            break;
        }
        if (!out_of_memory && length + (size_t)size > capacity) {
            size_t wanted = capacity ? capacity : (size_t)1 << 20;
            while (wanted < length + (size_t)size) {
                wanted *= 2;
            }
            char *grown = realloc(out, wanted);
            if (grown == NULL) {
                out_of_memory = 1; /* read on to the end: the connection stays usable */
            }
            else {
                out = grown;
                capacity = wanted;
            }
        }
        if (!out_of_memory) {
            memcpy(out + length, row, (size_t)size);
            length += (size_t)size;
            rows += 1;
        }
        freemem(row);
    }
    Py_END_ALLOW_THREADS
    if (out_of_memory) {
        free(out);
        return PyErr_NoMemory();
    }
    PyObject *data = PyBytes_FromStringAndSize(out ? out : "", (Py_ssize_t)length);
    free(out);
    if (data == NULL) {
        return NULL;
    }
    return Py_BuildValue("(Nn)", data, rows);
}

static PyMethodDef methods[] = {
    {"load", load, METH_NOARGS, "Find the loaded libpq's functions; False if not found."},
    {"read_rows", read_rows, METH_VARARGS, "Read every row of the connection's COPY."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "cdc.load._copyout", "A COPY's rows read in C.", -1, methods,
};

PyMODINIT_FUNC
PyInit__copyout(void)
{
    return PyModule_Create(&module);
}

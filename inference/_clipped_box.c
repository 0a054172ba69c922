/* Box means of a clipped integer image in one pass over its pixels.

   `inference.letterbox.clipped_box_means` does the same in numpy, which needs a strided pass per
   row phase and per step (clip, add); here each pixel is read once, clipped and added into a row of
   column sums that stays in the first-level cache, and each band of `factor` rows is then summed
   by columns. The sums are exact integers, and each mean is the float32 division numpy does, so
   both give the same bits. The interpreter lock is released while it runs. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The row loop is compiled for AVX2 and for SSE4.1 (32-bit min and max) besides the x86-64 baseline;
   the loader picks the best the processor has. */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "sse4.1", "default")))
#endif
#endif
#ifndef VECTOR_CLONES
#define VECTOR_CLONES
#endif

/* Adds `count` pixels of one row, clipped to [low, high], into `sums`. */
#define DEFINE_ADD_ROW(NAME, TYPE)                                                           \
    VECTOR_CLONES static void NAME(const void *row, Py_ssize_t count, int32_t low,           \
                                   int32_t high, int32_t *restrict sums)                     \
    {                                                                                        \
        const TYPE *restrict pixels = (const TYPE *)row;                                     \
        for (Py_ssize_t c = 0; c < count; c++) {                                             \
            int32_t v = pixels[c];                                                           \
            v = v < low ? low : v;                                                           \
            v = v > high ? high : v;                                                         \
            sums[c] += v;                                                                    \
        }                                                                                    \
    }

DEFINE_ADD_ROW(add_row_u8, uint8_t)
DEFINE_ADD_ROW(add_row_i8, int8_t)
DEFINE_ADD_ROW(add_row_u16, uint16_t)
DEFINE_ADD_ROW(add_row_i16, int16_t)

typedef void (*add_row_fn)(const void *, Py_ssize_t, int32_t, int32_t, int32_t *);

static add_row_fn add_row_for(int code, Py_ssize_t *itemsize)
{
    switch (code) {
    case 'B': *itemsize = 1; return add_row_u8;
    case 'b': *itemsize = 1; return add_row_i8;
    case 'H': *itemsize = 2; return add_row_u16;
    case 'h': *itemsize = 2; return add_row_i16;
    default: return NULL;
    }
}

/* One band's means from its rows' column sums: the columns of each box are summed in doubles (exact
   for any sum here), then divided in float32 by the box's area, as numpy divides. */
static void band_means(const int32_t *restrict row_sums, Py_ssize_t cols, Py_ssize_t factor, float height,
                       double *restrict col_sums, float *restrict means)
{
    Py_ssize_t boxes = (cols + factor - 1) / factor, full = cols / factor;
    for (Py_ssize_t box = 0; box < boxes; box++)
        col_sums[box] = 0.0;
    for (Py_ssize_t phase = 0; phase < factor; phase++)
        for (Py_ssize_t box = 0; box < full; box++)
            col_sums[box] += row_sums[box * factor + phase];
    for (Py_ssize_t c = full * factor; c < cols; c++)
        col_sums[full] += row_sums[c];
    float area = height * (float)factor;
    for (Py_ssize_t box = 0; box < full; box++)
        means[box] = (float)col_sums[box] / area;
    if (full < boxes)
        means[full] = (float)col_sums[full] / (height * (float)(cols - full * factor));
}

static void box_means(const char *image, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t itemsize,
                      add_row_fn add_row, Py_ssize_t factor, int32_t low, int32_t high,
                      int32_t *row_sums, double *col_sums, float *means)
{
    Py_ssize_t bands = (rows + factor - 1) / factor, boxes = (cols + factor - 1) / factor;
    for (Py_ssize_t band = 0; band < bands; band++) {
        Py_ssize_t first = band * factor, last = first + factor < rows ? first + factor : rows;
        memset(row_sums, 0, (size_t)cols * sizeof(int32_t));
        for (Py_ssize_t r = first; r < last; r++)
            add_row(image + r * cols * itemsize, cols, low, high, row_sums);
        band_means(row_sums, cols, factor, (float)(last - first), col_sums, means + band * boxes);
    }
}

PyDoc_STRVAR(clipped_box_means_doc,
"clipped_box_means(image, rows, cols, code, factor, low, high, out)\n\n"
"Write into `out` (float32, ceil(rows/factor) x ceil(cols/factor)) the box means of the C-ordered\n"
"native `image` (struct code B, b, H or h) clipped to [low, high].");

static PyObject *clipped_box_means(PyObject *self, PyObject *args)
{
    Py_buffer image, out;
    Py_ssize_t rows, cols, factor;
    int code, low, high;
    if (!PyArg_ParseTuple(args, "y*nnCniiw*", &image, &rows, &cols, &code, &factor, &low, &high, &out))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t itemsize = 0;
    add_row_fn add_row = add_row_for(code, &itemsize);
    Py_ssize_t out_rows = rows > 0 && factor > 0 ? (rows + factor - 1) / factor : 0;
    Py_ssize_t out_cols = cols > 0 && factor > 0 ? (cols + factor - 1) / factor : 0;
    int32_t *row_sums = NULL;
    double *col_sums = NULL;
    if (add_row == NULL) {
        PyErr_Format(PyExc_ValueError, "unsupported pixel type code %c", code);
    } else if (rows < 1 || cols < 1 || factor < 1 || factor > 32768 || low > high) {
        PyErr_SetString(PyExc_ValueError, "need rows, cols >= 1, 1 <= factor <= 32768 and low <= high");
    } else if (rows > PY_SSIZE_T_MAX / cols / itemsize || image.len < rows * cols * itemsize) {
        PyErr_SetString(PyExc_ValueError, "image buffer shorter than rows x cols pixels");
    } else if (out.len != out_rows * out_cols * (Py_ssize_t)sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "output buffer is not ceil(rows/factor) x ceil(cols/factor) float32");
    } else if ((row_sums = malloc((size_t)cols * sizeof(int32_t))) == NULL
               || (col_sums = malloc((size_t)out_cols * sizeof(double))) == NULL) {
        PyErr_NoMemory();
    } else {
        Py_BEGIN_ALLOW_THREADS
        box_means(image.buf, rows, cols, itemsize, add_row, factor, low, high, row_sums, col_sums, out.buf);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    free(row_sums);
    free(col_sums);
    PyBuffer_Release(&image);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"clipped_box_means", clipped_box_means, METH_VARARGS, clipped_box_means_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_clipped_box", "Box means of a clipped integer image, one pass.", -1, methods,
};

PyMODINIT_FUNC PyInit__clipped_box(void)
{
    return PyModule_Create(&module);
}

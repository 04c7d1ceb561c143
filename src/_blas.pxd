# Row-major gemm over scipy's BLAS: the only place that touches cython_blas.
#
# A row-major C[m, n] = op(A) @ op(B) is the column-major product C^T = op(B)^T @ op(A)^T,
# so the operands and m/n swap while the transpose flags pass through unchanged.
from cython cimport floating
from libc.string cimport memset
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating *a, int lda,
                      const floating *b, int ldb,
                      floating beta, floating *c, int ldc) noexcept nogil:
    """C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C, all row-major."""
    cdef char ta = b't' if trans_a else b'n'
    cdef char tb = b't' if trans_b else b'n'
    cdef char tv
    cdef int one = 1, incx, rows, cols
    if m <= 0 or n <= 0:
        return
    if m == 1 and k > 0:
        # one row: a matrix-vector product (BLAS's gemm would copy B into its own panels
        # first, which for one row costs several times the product itself).  c = op(B)^T a
        # with B read as column-major (n, k) (op N) or (k, n) (op T), leading dimension ldb
        tv = b't' if trans_b else b'n'
        rows = k if trans_b else n
        cols = n if trans_b else k
        incx = lda if trans_a else 1
        if beta == 0:
            memset(c, 0, <size_t> n * sizeof(floating))   # y is not read: no stray NaN
        if floating is float:
            sgemv(&tv, &rows, &cols, &alpha, <float *> b, &ldb, <float *> a, &incx, &beta,
                  c, &one)
        else:
            dgemv(&tv, &rows, &cols, &alpha, <double *> b, &ldb, <double *> a, &incx, &beta,
                  c, &one)
        return
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float *> b, &ldb, <float *> a, &lda,
              &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double *> b, &ldb, <double *> a, &lda,
              &beta, c, &ldc)

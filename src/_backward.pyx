# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Backward kernel (backpropagation through time): one LSTM layer, one direction.

The caller (``fastlstm/layers.py``) validates every argument and allocates every output;
this module trusts it.  Rows are laid out as in ``_forward``: the row of batch item ``n``
at time ``t`` is ``n * rn + t * rt`` (``rn, rt = T, 1`` batch-major, ``1, N`` time-major),
shared by X, Y, dY, dX and the training cache.

Two entries:

- ``recurrence``: the reverse time loop.  Per block of batch rows it carries only ``dh``
  (N, Hout) and ``dc`` (N, H); per step it forms the gate pre-activation gradients ``dG_t``
  (4H per row) in one fused pointwise pass per active row, written over the gate cache,
  then ``dh_{t-1} = dG_t @ U^T`` (one gemm; with a projection another gemm
  ``dm = dhp @ P^T`` comes first).  Rows with ``t >= L[n]`` are skipped: their ``dh``,
  ``dc`` pass through unchanged and their gate-cache rows are left as the caller allocated
  them (zeros), so they contribute nothing below.  With ``n_threads > 1`` each thread owns
  a block of batch rows for the whole call (the caller holds BLAS to one thread); the
  row blocks do not depend on the thread count, so neither do the results.
- ``param_grads``: after the loop, one gemm per product over all N*T rows:
  ``dX = dG @ W^T``, ``[dW; dU] = [X, Hprev]^T @ dG``, ``db = sum_rows dG`` and
  ``dP = M^T @ dHP``, split over a fixed number of row ranges run by the OpenMP threads
  with single-threaded BLAS (partial sums reduced in a fixed order).  The caller passes an
  X whose padded rows are zero and a finite ``Hprev``, so NaN/Inf in padding cannot reach
  a parameter gradient.

Derivatives are taken from the post-activation values kept by the forward pass:
sigmoid ``y (1 - y)``, tanh ``1 - y^2``, relu ``y > 0``, hard sigmoids their slope where
``0 < y < 1``; a clip passes the gradient where ``|v| <= clip`` and blocks it elsewhere.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy

from _blas cimport gemm

cdef extern from *:
    """
    #include "fl_pointwise.h"

    /* Backward of one forward step for one batch row (see fl_pointwise_fwd).
     *
     *   dm:     dL/dm_t, gradient at the cell output o * act(c) (H)
     *   dc:     in dL/dc_t from the later steps, out dL/dc_{t-1} (H)
     *   c_raw:  pre-clip cell state of this step (H)
     *   c_prev: the cell state this step started from (already clipped) (H)
     *   g:      in the post-activation gates (i, f, g, o) (4H), out dL/dz (4H)
     *   peep:   (3, H) peepholes or NULL; dpeep: (3, H) accumulator, or NULL
     *   w:      scratch of 2H
     */
    #define FL_DEFINE_BWD(T, SUF)                                                          \\
    static void fl_pointwise_bwd##SUF(int H, const T *restrict dm, T *restrict dc,         \\
                                      const T *restrict c_raw, const T *restrict c_prev,   \\
                                      T *restrict g, const T *restrict peep,               \\
                                      int use_clip, T clip, int act, int rec,              \\
                                      T *restrict dpeep, T *restrict w)                    \\
    {                                                                                      \\
        int j;                                                                             \\
        T *restrict cn = w, *restrict ac = w + H;                                          \\
        T slope = rec == FL_REC_HARD_SIGMOID ? (T)1 / (T)6 : (T)0.2;                       \\
        for (j = 0; j < H; j++) {                                                          \\
            T v = c_raw[j];                                                                \\
            if (use_clip) { v = v < -clip ? -clip : v; v = v > clip ? clip : v; }          \\
            cn[j] = v;                                                                     \\
            ac[j] = v;                                                                     \\
        }                                                                                  \\
        fl_act_inplace##SUF(act, ac, H);                                                   \\
        for (j = 0; j < H; j++) {                                                          \\
            T ig = g[j], fg = g[H + j], gg = g[2 * H + j], og = g[3 * H + j];              \\
            T di, df, dg, dO, da, dzo, dcn, dcr, dzi, dzf, dzg;                            \\
            switch (rec) {                                                                 \\
            case FL_REC_SIGMOID:                                                           \\
                di = ig * ((T)1 - ig); df = fg * ((T)1 - fg); dO = og * ((T)1 - og);       \\
                break;                                                                     \\
            default:                                                                       \\
                di = (ig > 0 && ig < 1) ? slope : (T)0;                                    \\
                df = (fg > 0 && fg < 1) ? slope : (T)0;                                    \\
                dO = (og > 0 && og < 1) ? slope : (T)0;                                    \\
                break;                                                                     \\
            }                                                                              \\
            switch (act) {                                                                 \\
            case FL_ACT_TANH:                                                              \\
                dg = ((T)1 - gg) * ((T)1 + gg); da = ((T)1 - ac[j]) * ((T)1 + ac[j]);      \\
                break;                                                                     \\
            case FL_ACT_RELU:                                                              \\
                dg = gg > 0 ? (T)1 : (T)0; da = ac[j] > 0 ? (T)1 : (T)0;                   \\
                break;                                                                     \\
            case FL_ACT_SIGMOID:                                                           \\
                dg = gg * ((T)1 - gg); da = ac[j] * ((T)1 - ac[j]);                        \\
                break;                                                                     \\
            default:                                                                       \\
                dg = (T)1; da = (T)1;                                                      \\
                break;                                                                     \\
            }                                                                              \\
            dzo = dm[j] * ac[j] * dO;                                                      \\
            dcn = dc[j] + dm[j] * og * da;                                                 \\
            if (peep != NULL) dcn += dzo * peep[2 * H + j];                                \\
            dcr = dcn;                                                                     \\
            if (use_clip) dcr = (c_raw[j] >= -clip && c_raw[j] <= clip) ? dcn : (T)0;      \\
            dzi = dcr * gg * di;                                                           \\
            dzf = dcr * c_prev[j] * df;                                                    \\
            dzg = dcr * ig * dg;                                                           \\
            dc[j] = dcr * fg;                                                              \\
            if (peep != NULL) dc[j] += dzi * peep[j] + dzf * peep[H + j];                  \\
            if (dpeep != NULL) {                                                           \\
                dpeep[j] += dzi * c_prev[j];                                               \\
                dpeep[H + j] += dzf * c_prev[j];                                           \\
                dpeep[2 * H + j] += dzo * cn[j];                                           \\
            }                                                                              \\
            g[j] = dzi; g[H + j] = dzf; g[2 * H + j] = dzg; g[3 * H + j] = dzo;            \\
        }                                                                                  \\
    }
    FL_DEFINE_BWD(float, f)
    FL_DEFINE_BWD(double, d)

    /* C[m, n] = A[m, K] @ B[n, K]^T, all row-major: dot products of contiguous rows.
     *
     * The step product dh = dG_t @ U^T for a small block of rows: BLAS would re-pack U
     * on every call (more work than the product itself at a few rows), while rows of U
     * are already contiguous.  Tiles of 4 rows x 2 columns in 8 vector accumulators;
     * GCC vector extensions, compiled for AVX2 + FMA (chosen at run time) and for the
     * baseline ISA.  Lanes are summed in a fixed order, so results depend on the ISA only.
     */
    #if (defined(__GNUC__) || defined(__clang__))
    #define FL_BK_VECTOR 1
    typedef float fl_bk_vf __attribute__((vector_size(32)));
    typedef double fl_bk_vd __attribute__((vector_size(32)));
    #else
    #define FL_BK_VECTOR 0
    #endif
    #if FL_BK_VECTOR && (defined(__x86_64__) || defined(__i386__))
    #define FL_BK_X86 1
    #define FL_BK_TARGET_AVX2 __attribute__((target("avx2,fma")))
    #else
    #define FL_BK_X86 0
    #define FL_BK_TARGET_AVX2
    #endif

    #if FL_BK_VECTOR
    #define FL_DEFINE_DOTNT(T, VT, NAME, ATTR)                                             \\
    ATTR static void NAME(int m, int n, int K, const T *A, int lda, const T *B, int ldb,   \\
                          T *C, int ldc)                                                   \\
    {                                                                                      \\
        const int VL = (int)(sizeof(VT) / sizeof(T));                                      \\
        const int KV = K - K % VL;                                                         \\
        int i, j, k, r, q, l;                                                              \\
        for (i = 0; i < m; i += 4) {                                                       \\
            const int mr = m - i < 4 ? m - i : 4;                                          \\
            const T *a[4];                                                                 \\
            for (r = 0; r < 4; r++) a[r] = A + (long long)(i + (r < mr ? r : 0)) * lda;   \\
            for (j = 0; j < n; j += 2) {                                                   \\
                const int nq = n - j < 2 ? n - j : 2;                                      \\
                const T *b0 = B + (long long)j * ldb;                                      \\
                const T *b1 = B + (long long)(j + (nq > 1 ? 1 : 0)) * ldb;                 \\
                VT acc[4][2];                                                              \\
                memset(acc, 0, sizeof(acc));                                               \\
                for (k = 0; k < KV; k += VL) {                                             \\
                    VT u0, u1;                                                             \\
                    memcpy(&u0, b0 + k, sizeof(VT));                                       \\
                    memcpy(&u1, b1 + k, sizeof(VT));                                       \\
                    for (r = 0; r < 4; r++) {                                              \\
                        VT v;                                                              \\
                        memcpy(&v, a[r] + k, sizeof(VT));                                  \\
                        acc[r][0] += v * u0;                                               \\
                        acc[r][1] += v * u1;                                               \\
                    }                                                                      \\
                }                                                                          \\
                for (r = 0; r < mr; r++) {                                                 \\
                    for (q = 0; q < nq; q++) {                                             \\
                        const T *bq = q ? b1 : b0;                                         \\
                        T sum = 0;                                                         \\
                        for (l = 0; l < VL; l++) sum += acc[r][q][l];                      \\
                        for (k = KV; k < K; k++) sum += a[r][k] * bq[k];                   \\
                        C[(long long)(i + r) * ldc + j + q] = sum;                         \\
                    }                                                                      \\
                }                                                                          \\
            }                                                                              \\
        }                                                                                  \\
    }
    FL_DEFINE_DOTNT(float, fl_bk_vf, fl_dot_ntf_base, )
    FL_DEFINE_DOTNT(double, fl_bk_vd, fl_dot_ntd_base, )
    #if FL_BK_X86
    FL_DEFINE_DOTNT(float, fl_bk_vf, fl_dot_ntf_avx2, FL_BK_TARGET_AVX2)
    FL_DEFINE_DOTNT(double, fl_bk_vd, fl_dot_ntd_avx2, FL_BK_TARGET_AVX2)
    #endif
    #else
    #define FL_DEFINE_DOTNT_SCALAR(T, NAME)                                                \\
    static void NAME(int m, int n, int K, const T *A, int lda, const T *B, int ldb,        \\
                     T *C, int ldc)                                                        \\
    {                                                                                      \\
        int i, j, k;                                                                       \\
        for (i = 0; i < m; i++)                                                            \\
            for (j = 0; j < n; j++) {                                                      \\
                T sum = 0;                                                                 \\
                for (k = 0; k < K; k++)                                           \\
                    sum += A[(long long)i * lda + k] * B[(long long)j * ldb + k];        \\
                C[(long long)i * ldc + j] = sum;                                           \\
            }                                                                              \\
    }
    FL_DEFINE_DOTNT_SCALAR(float, fl_dot_ntf_base)
    FL_DEFINE_DOTNT_SCALAR(double, fl_dot_ntd_base)
    #endif

    /* instruction set of fl_dot_nt: 0 baseline, 1 AVX2 + FMA; -1 = not chosen yet */
    static int fl_bk_isa = -1;

    static int fl_bk_cpu_has_avx2(void)
    {
    #if FL_BK_X86
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    #else
        return 0;
    #endif
    }

    /* -1 automatic, 0 baseline, 1 AVX2 (only if the CPU has it); returns the one in use */
    static int fl_bk_set_isa(int isa)
    {
        int has = fl_bk_cpu_has_avx2();
        if (isa < 0) isa = has;
        fl_bk_isa = (isa == 1 && has) ? 1 : 0;
        return fl_bk_isa;
    }

    static void fl_dot_ntf(int m, int n, int K, const float *A, int lda, const float *B,
                           int ldb, float *C, int ldc)
    {
    #if FL_BK_X86
        if (fl_bk_isa == 1) { fl_dot_ntf_avx2(m, n, K, A, lda, B, ldb, C, ldc); return; }
    #endif
        fl_dot_ntf_base(m, n, K, A, lda, B, ldb, C, ldc);
    }

    static void fl_dot_ntd(int m, int n, int K, const double *A, int lda, const double *B,
                           int ldb, double *C, int ldc)
    {
    #if FL_BK_X86
        if (fl_bk_isa == 1) { fl_dot_ntd_avx2(m, n, K, A, lda, B, ldb, C, ldc); return; }
    #endif
        fl_dot_ntd_base(m, n, K, A, lda, B, ldb, C, ldc);
    }
    """
    int fl_bk_set_isa(int isa) noexcept nogil
    void fl_dot_ntf(int m, int n, int K, const float *A, int lda, const float *B, int ldb,
                    float *C, int ldc) noexcept nogil
    void fl_dot_ntd(int m, int n, int K, const double *A, int lda, const double *B, int ldb,
                    double *C, int ldc) noexcept nogil
    void fl_pointwise_bwdf(int H, const float *dm, float *dc, const float *c_raw,
                           const float *c_prev, float *g, const float *peep, int use_clip,
                           float clip, int act, int rec, float *dpeep, float *w) noexcept nogil
    void fl_pointwise_bwdd(int H, const double *dm, double *dc, const double *c_raw,
                           const double *c_prev, double *g, const double *peep, int use_clip,
                           double clip, int act, int rec, double *dpeep, double *w) noexcept nogil

cdef extern from "fl_packed.h" nogil:
    int FL_ACT_TANH, FL_REC_SIGMOID
    int FL_PK_MR, FL_PK_NU_F, FL_PK_NU_D
    int fl_pk_get_isa() noexcept
    int fl_pk_set_isa(int isa) noexcept
    void *fl_pk_alloc(size_t nbytes) noexcept
    void fl_pk_free(void *p) noexcept
    size_t fl_pk_packT_sizef(int n, int K) noexcept
    size_t fl_pk_packT_sized(int n, int K) noexcept
    void fl_pk_packTf(int n, int K, const float *B, float *out) noexcept
    void fl_pk_packTd(int n, int K, const double *B, double *out) noexcept
    int fl_pk_bwdf(int H, const float *dm, float *dc, const float *c_raw, const float *c_prev,
                   float *g, float *dz2) noexcept
    int fl_pk_bwdd(int H, const double *dm, double *dc, const double *c_raw,
                   const double *c_prev, double *g, double *dz2) noexcept
    void fl_pk_dotTf(int m, int n, int K, const float *A, long long lda, const float *packed,
                     float *C, long long ldc, float *ztmp) noexcept
    void fl_pk_dotTd(int m, int n, int K, const double *A, long long lda,
                     const double *packed, double *C, long long ldc, double *ztmp) noexcept

ctypedef long long i64

# On AVX2 the step product runs in fl_packed.h's kernels on U packed once per call.
# Otherwise, row blocks up to this many rows use the packing-free step product
# (fl_dot_nt); larger ones use BLAS, whose per-call packing of U then pays off (measured
# on AVX2: 2x faster at 4 rows, even at 8, slower from 16).
cdef enum:
    DOT_MAX_ROWS = 8


cdef struct Config:
    int N, T, H, Ho
    i64 rn, rt
    bint reverse
    int act, rec
    bint use_cclip, use_pclip
    double cclip, pclip


cdef inline void _pointwise(int H, const floating *dm, floating *dc, const floating *c_raw,
                            const floating *c_prev, floating *g, const floating *peep,
                            bint use_clip, double clip, int act, int rec, floating *dpeep,
                            floating *w) noexcept nogil:
    if floating is float:
        fl_pointwise_bwdf(H, dm, dc, c_raw, c_prev, g, peep, use_clip, <float> clip, act, rec,
                          dpeep, w)
    else:
        fl_pointwise_bwdd(H, dm, dc, c_raw, c_prev, g, peep, use_clip, clip, act, rec, dpeep, w)


cdef inline int _bwd_fast(int H, const floating *dm, floating *dc, const floating *c_raw,
                          const floating *c_prev, floating *g, floating *dz2) noexcept nogil:
    if floating is float:
        return fl_pk_bwdf(H, dm, dc, c_raw, c_prev, g, dz2)
    else:
        return fl_pk_bwdd(H, dm, dc, c_raw, c_prev, g, dz2)


cdef inline void _dotT(int m, int n, int K, const floating *A, i64 lda, const floating *packed,
                       floating *C, i64 ldc, floating *ztmp) noexcept nogil:
    if floating is float:
        fl_pk_dotTf(m, n, K, A, lda, packed, C, ldc, ztmp)
    else:
        fl_pk_dotTd(m, n, K, A, lda, packed, C, ldc, ztmp)


cdef inline void _dot_nt(int m, int n, int K, const floating *A, int lda, const floating *B,
                         int ldb, floating *C, int ldc) noexcept nogil:
    if floating is float:
        fl_dot_ntf(m, n, K, A, lda, B, ldb, C, ldc)
    else:
        fl_dot_ntd(m, n, K, A, lda, B, ldb, C, ldc)


fl_bk_set_isa(-1)
fl_pk_set_isa(-1)


def set_isa(isa):
    """Instruction set of the step product: "auto", "avx512", "avx2" or "baseline"; returns
    the one in use (one the CPU lacks falls back to the best it runs below it).  The
    packing-free product (dot_nt) has no AVX-512 code and runs its AVX2 code for "avx512".
    For tests and benchmarks."""
    code = {"auto": -1, "baseline": 0, "avx2": 1, "avx512": 2}[isa]
    used = fl_pk_set_isa(code)
    fl_bk_set_isa(min(used, 1))
    return ("baseline", "avx2", "avx512")[used]


def dot_nt(const floating[:, ::1] A, const floating[:, ::1] B, floating[:, ::1] C):
    """C = A @ B.T with the step-product kernel (A: (m, K), B: (n, K), C: (m, n))."""
    cdef int m = A.shape[0], n = B.shape[0], K = A.shape[1]
    if B.shape[1] != K or C.shape[0] != m or C.shape[1] != n:
        raise ValueError("dot_nt: shapes do not match")
    if m == 0 or n == 0:
        return
    with nogil:
        _dot_nt(m, n, K, &A[0, 0] if K else NULL, K, &B[0, 0] if K else NULL, K, &C[0, 0], n)


def dot_nt_packed(const floating[:, ::1] A, const floating[:, ::1] B, floating[:, ::1] C):
    """C = A @ B.T with B packed once (fl_pk_packT) and the packed kernel, as the backward
    step product runs when the packed kernel's instruction set is AVX2.  For tests."""
    cdef int m = A.shape[0], n = B.shape[0], K = A.shape[1]
    cdef floating *packed = NULL
    cdef floating *ztmp = NULL
    if B.shape[1] != K or C.shape[0] != m or C.shape[1] != n:
        raise ValueError("dot_nt_packed: shapes do not match")
    if m == 0 or n == 0 or K == 0:
        C[...] = 0
        return
    if floating is float:
        packed = <floating *> fl_pk_alloc(fl_pk_packT_sizef(n, K) * sizeof(float))
    else:
        packed = <floating *> fl_pk_alloc(fl_pk_packT_sized(n, K) * sizeof(double))
    ztmp = <floating *> malloc(<size_t> FL_PK_MR * 16 * sizeof(floating))
    try:
        if packed == NULL or ztmp == NULL:
            raise MemoryError("fastlstm: could not allocate the product workspace")
        with nogil:
            if floating is float:
                fl_pk_packTf(n, K, &B[0, 0], packed)
            else:
                fl_pk_packTd(n, K, &B[0, 0], packed)
            _dotT(m, n, K, &A[0, 0], K, packed, &C[0, 0], n, ztmp)
    finally:
        fl_pk_free(packed)
        free(ztmp)


cdef inline int _bwd_block(const Config *s, int blk, int nblocks, const floating *dY,
                           const floating *U, const floating *UT, const floating *peep,
                           const floating *P, floating *G, const floating *CC,
                           const floating *CHP, const floating *c0, floating *dc,
                           floating *dh, floating *dHP, const i64 *lengths,
                           floating *dpeep) noexcept nogil:
    """Row block ``blk`` of ``nblocks`` (contiguous, of near-equal size); dpeep: the
    blocks' peephole accumulators (3H each) or NULL."""
    cdef int r0 = <int> ((<i64> blk * s.N) // nblocks)
    cdef int r1 = <int> ((<i64> (blk + 1) * s.N) // nblocks)
    return _bwd_rows(s, r0, r1, dY, U, UT, peep, P, G, CC, CHP, c0, dc, dh, dHP, lengths,
                     dpeep + <i64> blk * 3 * s.H if dpeep != NULL else NULL)


cdef int _bwd_rows(const Config *s, int r0, int r1, const floating *dY,
                   const floating *U, const floating *UT, const floating *peep,
                   const floating *P,
                   floating *G, const floating *CC, const floating *CHP,
                   const floating *c0, floating *dc, floating *dh, floating *dHP,
                   const i64 *lengths, floating *dpeep) noexcept nogil:
    """Reverse time loop for batch rows [r0, r1).  Returns 0, or -1 if out of memory.

    UT: U packed by fl_pk_packT (the step product then runs in fl_packed.h's kernels), or
    NULL (the packing-free product for a few rows, BLAS above).
    """
    cdef int nr = r1 - r0
    cdef int H = s.H, H4 = 4 * s.H, Ho = s.Ho, T = s.T
    cdef i64 rn = s.rn, rt = s.rt
    cdef floating *DG
    cdef floating *DH
    cdef floating *DM = NULL
    cdef floating *DMC = NULL
    cdef floating *tmp
    cdef floating *cpb
    cdef floating *work
    cdef floating *ztmp
    cdef floating *v
    cdef const floating *dmc
    cdef const floating *cp
    cdef const floating *src
    cdef const floating *hp
    cdef floating clip
    cdef int n, k, j, t, L, kmax
    cdef bint all_active
    # the common case runs in fl_packed.h's vector code (on AVX2)
    cdef bint fast = (s.act == FL_ACT_TANH and s.rec == FL_REC_SIGMOID and not s.use_cclip
                      and peep == NULL)
    cdef i64 row, prow

    DG = <floating *> calloc(<size_t> nr * H4, sizeof(floating))
    DH = <floating *> malloc(<size_t> nr * Ho * sizeof(floating))
    tmp = <floating *> malloc(<size_t> (Ho if Ho > H else H) * sizeof(floating))
    cpb = <floating *> malloc(<size_t> H * sizeof(floating))
    work = <floating *> malloc(<size_t> 2 * H * sizeof(floating))
    ztmp = <floating *> malloc(<size_t> FL_PK_MR * 16 * sizeof(floating))
    if P != NULL:
        DM = <floating *> calloc(<size_t> nr * Ho, sizeof(floating))
        DMC = <floating *> malloc(<size_t> nr * H * sizeof(floating))
    if DG == NULL or DH == NULL or tmp == NULL or cpb == NULL or work == NULL \
            or ztmp == NULL or (P != NULL and (DM == NULL or DMC == NULL)):
        free(DG); free(DH); free(tmp); free(cpb); free(work); free(ztmp); free(DM); free(DMC)
        return -1

    kmax = 0
    for n in range(r0, r1):
        L = <int> lengths[n] if lengths != NULL else T
        if L > kmax:
            kmax = L

    for k in range(kmax - 1, -1, -1):
        all_active = True
        # ---- projection: dm = (dh + dY) * clip-pass, then dm_cell = dm @ P^T ----
        if P != NULL:
            for n in range(r0, r1):
                L = <int> lengths[n] if lengths != NULL else T
                if k >= L:
                    all_active = False
                    continue
                t = L - 1 - k if s.reverse else k
                row = n * rn + t * rt
                v = DM + <i64> (n - r0) * Ho
                src = dY + row * Ho
                for j in range(Ho):
                    v[j] = dh[<i64> n * Ho + j] + src[j]
                if s.use_pclip:
                    clip = <floating> s.pclip
                    hp = CHP + row * Ho
                    for j in range(Ho):
                        if not (hp[j] >= -clip and hp[j] <= clip):
                            v[j] = 0
                memcpy(dHP + row * Ho, v, Ho * sizeof(floating))
            if nr <= DOT_MAX_ROWS:
                _dot_nt(nr, H, Ho, DM, Ho, P, Ho, DMC, H)
            else:
                gemm(False, True, nr, H, Ho, <floating> 1, DM, Ho, P, Ho, <floating> 0, DMC, H)
        # ---- pointwise: gate gradients, dc ----
        for n in range(r0, r1):
            L = <int> lengths[n] if lengths != NULL else T
            if k >= L:
                all_active = False
                continue
            if s.reverse:
                t = L - 1 - k
                prow = n * rn + (t + 1) * rt
            else:
                t = k
                prow = n * rn + (t - 1) * rt
            row = n * rn + t * rt
            if P != NULL:
                dmc = DMC + <i64> (n - r0) * H
            else:
                src = dY + row * Ho
                for j in range(Ho):
                    tmp[j] = dh[<i64> n * Ho + j] + src[j]
                dmc = tmp
            if k == 0:
                cp = c0 + <i64> n * H
            elif s.use_cclip:
                clip = <floating> s.cclip
                src = CC + prow * H
                for j in range(H):
                    cpb[j] = src[j]
                    if cpb[j] < -clip:
                        cpb[j] = -clip
                    if cpb[j] > clip:
                        cpb[j] = clip
                cp = cpb
            else:
                cp = CC + prow * H
            if (fast and _bwd_fast(H, dmc, dc + <i64> n * H, CC + row * H, cp, G + row * H4,
                                   DG + <i64> (n - r0) * H4) == 0):
                continue
            _pointwise(H, dmc, dc + <i64> n * H, CC + row * H, cp, G + row * H4, peep,
                       s.use_cclip, s.cclip, s.act, s.rec, dpeep, work)
            memcpy(DG + <i64> (n - r0) * H4, G + row * H4, H4 * sizeof(floating))
        # ---- dh_{t-1} = dG_t @ U^T (inactive rows of DG are zero and keep their dh) ----
        v = dh + <i64> r0 * Ho if all_active else DH
        if UT != NULL:
            _dotT(nr, Ho, H4, DG, H4, UT, v, Ho, ztmp)
        elif nr <= DOT_MAX_ROWS:
            _dot_nt(nr, Ho, H4, DG, H4, U, H4, v, Ho)
        else:
            gemm(False, True, nr, Ho, H4, <floating> 1, DG, H4, U, H4, <floating> 0, v, Ho)
        if not all_active:
            for n in range(r0, r1):
                L = <int> lengths[n] if lengths != NULL else T
                if k < L:
                    memcpy(dh + <i64> n * Ho, DH + <i64> (n - r0) * Ho, Ho * sizeof(floating))

    free(DG); free(DH); free(tmp); free(cpb); free(work); free(ztmp); free(DM); free(DMC)
    return 0


def recurrence(const floating[:, ::1] dY, int N, int T, bint time_major,
               const floating[:, ::1] U, const floating[:, ::1] peepholes,
               const floating[:, ::1] P, floating[:, ::1] gates, const floating[:, ::1] cell,
               const floating[:, ::1] hp, const floating[:, ::1] c0,
               floating[:, ::1] dc, floating[:, ::1] dh, floating[:, ::1] dhp,
               const long long[::1] lengths, bint reverse, int act, int rec,
               cell_clip, proj_clip, floating[:, ::1] dpeep, int n_chunks, int n_threads):
    """Reverse time loop, in place on ``gates`` (-> dG), ``dc``, ``dh``, ``dhp``, ``dpeep``.

    dY: (N*T, Ho) output gradient rows (rows past a length are ignored);
    U: (Ho, 4H); peepholes: (3, H) or None; P: (H, Ho) or None;
    gates: (N*T, 4H) the forward's post-activation gate cache, overwritten with dL/dz on
    valid rows (padded rows are not touched: the caller zero-fills them);
    cell: (N*T, H) the forward's raw (pre-clip) cell cache; hp: (N*T, Ho) the raw
    projection cache (only read with ``proj_clip``) or None; c0: (N, H) initial cell state;
    dc: (N, H) and dh: (N, Ho), dL/d(final state) on entry and dL/d(initial state) on
    return; dhp: (N*T, Ho) output, dL/d(projection) on valid rows (only with P);
    lengths: (N,) int64 or None; act, rec: activation codes of ``fl_pointwise.h``;
    dpeep: (n_chunks, 3H) zero-filled accumulators, one row per row block (only with
    peepholes); n_chunks: the batch rows are split into min(n_chunks, N) contiguous
    blocks, each run on its own, so the result does not depend on n_threads (>= 1), the
    number of OpenMP threads sharing the blocks.
    """
    cdef Config s
    cdef int status = 0, nblocks, nteam, blk
    cdef const floating *pdy = &dY[0, 0]
    cdef const floating *pu = &U[0, 0]
    cdef const floating *pp = &peepholes[0, 0] if peepholes is not None else NULL
    cdef const floating *pP = &P[0, 0] if P is not None else NULL
    cdef floating *pg = &gates[0, 0]
    cdef const floating *pc = &cell[0, 0]
    cdef const floating *php = &hp[0, 0] if hp is not None else NULL
    cdef const floating *pc0 = &c0[0, 0]
    cdef floating *pdc = &dc[0, 0]
    cdef floating *pdh = &dh[0, 0]
    cdef floating *pdhp = &dhp[0, 0] if dhp is not None else NULL
    cdef const i64 *pl = &lengths[0] if lengths is not None else NULL
    cdef floating *pdp = &dpeep[0, 0] if dpeep is not None else NULL
    cdef floating *put = NULL

    if N <= 0 or T <= 0:
        return
    s.N = N
    s.T = T
    s.H = gates.shape[1] // 4
    s.Ho = U.shape[0]
    s.rn = 1 if time_major else T
    s.rt = N if time_major else 1
    s.reverse = reverse
    s.act = act
    s.rec = rec
    s.use_cclip = cell_clip is not None
    s.cclip = cell_clip if cell_clip is not None else 0.0
    s.use_pclip = proj_clip is not None and P is not None
    s.pclip = proj_clip if proj_clip is not None else 0.0

    nblocks = n_chunks if n_chunks < N else N
    nteam = n_threads if n_threads < nblocks else nblocks
    if fl_pk_get_isa() >= 1:
        # U packed once for the step products (instead of BLAS packing it every step)
        if floating is float:
            put = <floating *> fl_pk_alloc(fl_pk_packT_sizef(s.Ho, 4 * s.H) * sizeof(float))
        else:
            put = <floating *> fl_pk_alloc(fl_pk_packT_sized(s.Ho, 4 * s.H) * sizeof(double))
        if put == NULL:
            raise MemoryError("fastlstm: could not allocate the backward workspace")
    try:
        with nogil:
            if put != NULL:
                if floating is float:
                    fl_pk_packTf(s.Ho, 4 * s.H, pu, put)
                else:
                    fl_pk_packTd(s.Ho, 4 * s.H, pu, put)
            if nteam <= 1:              # no OpenMP region at all on the serial path
                for blk in range(nblocks):
                    status += _bwd_block(&s, blk, nblocks, pdy, pu, put, pp, pP, pg, pc, php,
                                         pc0, pdc, pdh, pdhp, pl, pdp)
            else:
                for blk in prange(nblocks, num_threads=nteam, schedule='static', chunksize=1):
                    status += _bwd_block(&s, blk, nblocks, pdy, pu, put, pp, pP, pg, pc, php,
                                         pc0, pdc, pdh, pdhp, pl, pdp)
    finally:
        fl_pk_free(put)
    if status != 0:
        raise MemoryError("fastlstm: could not allocate the backward workspace")


cdef inline int _grads_part(int part, int nparts, i64 R, int H4, int I, int K, int H, int Hp,
                            const floating *dG, const floating *XH, const floating *W,
                            floating *dX, floating beta_x, floating *dWU, floating *db,
                            const floating *M, const floating *dHP, floating *dP,
                            floating *partial, i64 size, i64 offs_b,
                            i64 offs_p) noexcept nogil:
    """Row range ``part`` of ``nparts``: part 0 writes dWU, db, dP themselves; part k > 0
    writes its partial sums into slot k-1 of ``partial`` (added in order afterwards)."""
    cdef int r0 = <int> ((<i64> part * R) // nparts)
    cdef int r1 = <int> ((<i64> (part + 1) * R) // nparts)
    cdef floating *mine
    if part == 0:
        return _grads_rows(r0, r1, H4, I, K, H, Hp, dG, XH, W, dX, beta_x, dWU, db, M, dHP,
                           dP)
    mine = partial + (part - 1) * size
    return _grads_rows(r0, r1, H4, I, K, H, Hp, dG, XH, W, dX, beta_x, mine, mine + offs_b,
                       M, dHP, mine + offs_p if dP != NULL else NULL)


cdef int _grads_rows(int r0, int r1, int H4, int I, int K, int H, int Hp,
                     const floating *dG, const floating *XH, const floating *W,
                     floating *dX, floating beta_x, floating *dWU, floating *db,
                     const floating *M, const floating *dHP, floating *dP) noexcept nogil:
    """Parameter gradients of rows [r0, r1) written (beta 0) into dWU, db, dP; dX rows."""
    cdef int nr = r1 - r0, r, j
    cdef const floating *g = dG + <i64> r0 * H4
    cdef const floating *row
    if dX != NULL:
        gemm(False, True, nr, I, H4, <floating> 1, g, H4, W, H4, beta_x, dX + <i64> r0 * I, I)
    gemm(True, False, K, H4, nr, <floating> 1, XH + <i64> r0 * K, K, g, H4, <floating> 0,
         dWU, H4)
    for j in range(H4):
        db[j] = 0
    for r in range(nr):
        row = g + <i64> r * H4
        for j in range(H4):
            db[j] += row[j]
    if dP != NULL:
        gemm(True, False, H, Hp, nr, <floating> 1, M + <i64> r0 * H, H,
             dHP + <i64> r0 * Hp, Hp, <floating> 0, dP, Hp)
    return 0


def param_grads(const floating[:, ::1] dG, const floating[:, ::1] XH,
                const floating[:, ::1] W, floating[:, ::1] dX, bint accumulate_dX,
                floating[:, ::1] dWU, floating[::1] db,
                const floating[:, ::1] M, const floating[:, ::1] dHP, floating[:, ::1] dP,
                int n_parts, int n_threads):
    """The products after the time loop, over all R = N*T rows (gradients overwritten).

    dG: (R, 4H) gate gradients (zero on padded rows); XH: (R, I + Ho) each row's layer
    input (zero on padded rows) beside the h its step read (finite); W: (I, 4H);
    dX: (R, I) or None, written (or added to, with ``accumulate_dX``) as dG @ W^T;
    dWU: (I + Ho, 4H) = XH^T dG, i.e. dW over dU (one gemm, one pass over dG);
    db: (4H,) = column sums of dG;
    M: (R, H) pre-projection outputs, dHP: (R, Ho) projection gradients (zero on padded
    rows), dP: (H, Ho) = M^T dHP -- all three None without a projection.
    n_parts: the rows are split into this many contiguous ranges, each one gemm per
    product (partial sums added in a fixed order afterwards, so the result does not
    depend on n_threads, the OpenMP threads sharing the ranges; the caller holds BLAS to
    one thread when n_parts > 1).
    """
    cdef int R = dG.shape[0], H4 = dG.shape[1], I = W.shape[0], K = XH.shape[1]
    cdef int H = H4 // 4, Hp = dP.shape[1] if dP is not None else 0
    cdef int nparts, nteam, part, status = 0
    cdef i64 j, size, offs_b, offs_p
    cdef floating beta_x = 1 if accumulate_dX else 0
    cdef const floating *pg = &dG[0, 0] if R else NULL
    cdef const floating *pxh = &XH[0, 0] if R else NULL
    cdef const floating *pw = &W[0, 0]
    cdef floating *pdx = &dX[0, 0] if dX is not None and R else NULL
    cdef floating *pdwu = &dWU[0, 0]
    cdef floating *pdb = &db[0]
    cdef const floating *pm = &M[0, 0] if M is not None and R else NULL
    cdef const floating *pdhp = &dHP[0, 0] if dHP is not None and R else NULL
    cdef floating *pdp = &dP[0, 0] if dP is not None else NULL
    cdef floating *partial = NULL
    cdef floating *mine

    if XH.shape[0] != R or dWU.shape[0] != K or dWU.shape[1] != H4 or db.shape[0] != H4 \
            or W.shape[1] != H4 or K < I or (dX is not None and (dX.shape[0] != R
                                                                or dX.shape[1] != I)):
        raise ValueError("param_grads: inconsistent shapes")
    if R == 0:
        dWU[...] = 0
        db[...] = 0
        if dP is not None:
            dP[...] = 0
        return
    nparts = n_parts if n_parts < R else R
    if nparts < 1:
        nparts = 1
    nteam = n_threads if n_threads < nparts else nparts
    # part 0 writes the outputs; parts 1.. write partial sums, added in order afterwards
    offs_b = <i64> K * H4
    offs_p = offs_b + H4
    size = offs_p + <i64> H * Hp
    if nparts > 1:
        partial = <floating *> malloc(<size_t> (nparts - 1) * size * sizeof(floating))
        if partial == NULL:
            raise MemoryError("fastlstm: could not allocate the backward workspace")
    with nogil:
        if nteam <= 1:                  # no OpenMP region at all on the serial path
            for part in range(nparts):
                status += _grads_part(part, nparts, R, H4, I, K, H, Hp, pg, pxh, pw, pdx,
                                      beta_x, pdwu, pdb, pm, pdhp, pdp, partial, size,
                                      offs_b, offs_p)
        else:
            for part in prange(nparts, num_threads=nteam, schedule='static', chunksize=1):
                status += _grads_part(part, nparts, R, H4, I, K, H, Hp, pg, pxh, pw, pdx,
                                      beta_x, pdwu, pdb, pm, pdhp, pdp, partial, size,
                                      offs_b, offs_p)
        for part in range(1, nparts):
            mine = partial + (part - 1) * size
            for j in range(offs_b):
                pdwu[j] += mine[j]
            for j in range(H4):
                pdb[j] += mine[offs_b + j]
            if pdp != NULL:
                for j in range(size - offs_p):
                    pdp[j] += mine[offs_p + j]
    free(partial)

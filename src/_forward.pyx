# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Forward kernel: one LSTM layer, one direction, a whole sequence (or one step).

The caller (``fastlstm/layers.py``) validates every argument and allocates every output;
this module trusts it.  Inputs and outputs are 2-D row views: the row of batch item ``n``
at time ``t`` is ``n * rn + t * rt`` (``rn, rt = T, 1`` batch-major, ``1, N`` time-major),
shared by X, Y and the training cache.

Per block of time steps: one gemm for the input projection ``G = X @ W``; then per step a
recurrent gemm ``Z = h @ U`` and one fused pointwise pass per active row (bias, peepholes,
gates, cell update, clip) writing straight into the state, the output and, when training,
the cache.  With ``n_threads > 1`` each thread owns a block of batch rows for the whole call
(no barrier per step) and the caller holds BLAS to one thread.  A batch of one row without
projection runs each step as one ``fl_pk_rowstep`` (src/fl_packed.h): both products in
fastlstm's own loop and the cell update, shared by the threads, without BLAS.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset
from libc.math cimport fabs, INFINITY

from _blas cimport gemm
from _omp cimport (fl_affinity_count, fl_omp_bound_places, fl_omp_enabled,
                  fl_omp_max_threads)

cdef extern from "fl_pointwise.h" nogil:
    void fl_pointwise_fwdf(int H, const float *z, const float *gx, const float *b,
                           const float *peep, int use_clip, float clip, int act, int rec,
                           float *c, float *m, float *gates, float *c_raw) noexcept
    void fl_pointwise_fwdd(int H, const double *z, const double *gx, const double *b,
                           const double *peep, int use_clip, double clip, int act, int rec,
                           double *c, double *m, double *gates, double *c_raw) noexcept
    void fl_clip_inplacef(float *v, int n, float clip) noexcept
    void fl_clip_inplaced(double *v, int n, double clip) noexcept
    int FL_ACT_TANH
    int FL_REC_SIGMOID

cdef extern from "fl_packed.h" nogil:
    ctypedef struct fl_pk_spin:
        int slow
    ctypedef struct fl_pk_cfgf:
        int N, steps, In, H, kmax, reverse, act, rec, use_clip, use_peep
        long long rn, rt
        float clip
        const long long *lengths
        const int *perm
        const float *h0
        const float *X
        const float *zero_row
        float *c
        float *h
        float *hbuf0
        float *hbuf1
        float *Y
        float *cache_gates
        float *cache_c
        int stream_cache
        float *xo_same
        long long ld_same
        float *xo_next
        long long ld_next
        int tb
        fl_pk_spin *spin
    ctypedef struct fl_pk_cfgd:
        int N, steps, In, H, kmax, reverse, act, rec, use_clip, use_peep
        long long rn, rt
        double clip
        const long long *lengths
        const int *perm
        const double *h0
        const double *X
        const double *zero_row
        double *c
        double *h
        double *hbuf0
        double *hbuf1
        double *Y
        double *cache_gates
        double *cache_c
        int stream_cache
        double *xo_same
        long long ld_same
        double *xo_next
        long long ld_next
        int tb
        fl_pk_spin *spin
    int FL_PK_MR, FL_PK_NU_F, FL_PK_NU_D
    size_t fl_pk_packed_sizef(int I, int H) noexcept
    size_t fl_pk_packed_sized(int I, int H) noexcept
    int fl_pk_npanelsf(int H) noexcept
    long long fl_pk_panel_stridef(int I, int H) noexcept
    long long fl_pk_panel_strided(int I, int H) noexcept
    int fl_pk_npanelsd(int H) noexcept
    void fl_pk_packf(int I, int H, const float *W, const float *U, const float *b,
                     const float *peep, float *out, int pa, int pb) noexcept
    void fl_pk_packd(int I, int H, const double *W, const double *U, const double *b,
                     const double *peep, double *out, int pa, int pb) noexcept
    void fl_pk_runf(const fl_pk_cfgf *s, int b0, int b1, int p0, int p1, int sync,
                    const float **xrows, float *G, const float *packed, int pk0) noexcept
    void fl_pk_rund(const fl_pk_cfgd *s, int b0, int b1, int p0, int p1, int sync,
                    const double **xrows, double *G, const double *packed,
                    int pk0) noexcept
    void *fl_pk_alloc(size_t nbytes) noexcept
    void fl_pk_free(void *p) noexcept
    int fl_pk_set_isa(int isa) noexcept
    int fl_pk_get_isa() noexcept
    int fl_pk_team_size() noexcept
    int fl_pk_nblocks(int N) noexcept
    int fl_pk_split(const long long *prefix, int nb, int nt, int j) noexcept
    int fl_pk_block_row(int N, int j) noexcept
    int fl_pk_team_id() noexcept
    void fl_pk_barrier() noexcept
    int fl_pk_vecmatf(int k, int n, const float *a, long long inca, const float *B,
                      long long ldb, float *y, int accumulate, int nt) noexcept
    int fl_pk_vecmatd(int k, int n, const double *a, long long inca, const double *B,
                      long long ldb, double *y, int accumulate, int nt) noexcept
    int FL_PK_HAS_ROWCELL
    int fl_pk_rowstepf(int I, int H, const float *x, const float *W, float *zx,
                       const float *h, const float *U, float *zh, const float *b,
                       const float *peep, int use_clip, float clip, int cell, float *c,
                       float *m, float *gates, float *c_raw, int nt) noexcept
    int fl_pk_rowstepd(int I, int H, const double *x, const double *W, double *zx,
                       const double *h, const double *U, double *zh, const double *b,
                       const double *peep, int use_clip, double clip, int cell, double *c,
                       double *m, double *gates, double *c_raw, int nt) noexcept

import numpy as np
cimport numpy as cnp
from cpython.tuple cimport PyTuple_GET_SIZE

cdef extern from "fl_small.h" nogil:
    int FL_SMALL_MAX_H
    void fl_small_forwardf(int N, int Tn, int I, int H, long long rn, long long rt,
                           const float *X, const float *W, const float *U, const float *b,
                           const float *peep, const long long *lengths, int reverse, int act,
                           int rec, int use_clip, float clip, float *c, float *h, float *Y,
                           float *cache_gates, float *cache_c) noexcept
    void fl_small_forwardd(int N, int Tn, int I, int H, long long rn, long long rt,
                           const double *X, const double *W, const double *U,
                           const double *b, const double *peep, const long long *lengths,
                           int reverse, int act, int rec, int use_clip, double clip,
                           double *c, double *h, double *Y, double *cache_gates,
                           double *cache_c) noexcept

cnp.import_array()

ctypedef long long i64


cdef struct Config:
    int N, T, In, H, Ho
    i64 rn, rt          # row of (n, t) is n * rn + t * rt
    int kb              # time steps per input-projection block
    bint reverse
    int act, rec
    bint use_cclip, use_pclip
    double cclip, pclip
    int vec_threads     # threads for the products of a batch of one row (see _product)
    int *vec_slow       # counts their waits for a partner that was not running


def reaches(object a, double limit):
    """Whether a finite value of the float64 array ``a`` has a magnitude of at least
    ``limit`` (NaN and infinities do not count), in one pass without temporaries; None
    when ``a`` is not a C-contiguous, aligned float64 array in native byte order."""
    cdef cnp.ndarray arr
    cdef const double *p
    cdef Py_ssize_t i, n
    cdef double x
    cdef bint found = False
    if not cnp.PyArray_Check(a):
        return None
    arr = <cnp.ndarray> a
    if not (cnp.PyArray_TYPE(arr) == cnp.NPY_DOUBLE and cnp.PyArray_IS_C_CONTIGUOUS(arr)
            and cnp.PyArray_ISALIGNED(arr) and cnp.PyArray_ISNOTSWAPPED(arr)):
        return None
    p = <const double *> cnp.PyArray_DATA(arr)
    n = cnp.PyArray_SIZE(arr)
    with nogil:
        for i in range(n):
            x = fabs(p[i])
            if x >= limit and x != INFINITY:
                found = True
                break
    return found


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(fl_omp_enabled())


def omp_max_threads():
    return fl_omp_max_threads()


def affinity_count():
    """CPUs in the calling thread's affinity mask, or 0 when unknown (not Linux, or more
    CPUs than a cpu_set_t holds)."""
    return fl_affinity_count()


def omp_bound_places():
    """Places a bound OpenMP team may use (OMP_PROC_BIND), 0 when threads are not bound."""
    return fl_omp_bound_places()


cdef inline void _pointwise(int H, const floating *z, const floating *gx, const floating *b,
                            const floating *peep, bint use_clip, double clip, int act,
                            int rec, floating *c, floating *m, floating *gates,
                            floating *c_raw) noexcept nogil:
    if floating is float:
        fl_pointwise_fwdf(H, z, gx, b, peep, use_clip, <float> clip, act, rec, c, m, gates,
                          c_raw)
    else:
        fl_pointwise_fwdd(H, z, gx, b, peep, use_clip, clip, act, rec, c, m, gates, c_raw)


cdef inline void _clip(floating *v, int n, double clip) noexcept nogil:
    if floating is float:
        fl_clip_inplacef(v, n, <float> clip)
    else:
        fl_clip_inplaced(v, n, clip)


cdef inline void _product(const Config *s, int m, int n, int k, const floating *a, int lda,
                          const floating *b, floating *c) noexcept nogil:
    """c (m, n) = a (m, k) @ b (k, n), all row-major with leading dimensions lda, n, n.

    One row (m == 1) runs fastlstm's own vector-matrix loop, not BLAS's gemv: its results
    do not depend on any thread count, so it may use s.vec_threads threads and needs no
    BLAS thread limit."""
    cdef int slow
    if m == 1:
        if floating is float:
            slow = fl_pk_vecmatf(k, n, a, 1, b, n, c, 0, s.vec_threads)
        else:
            slow = fl_pk_vecmatd(k, n, a, 1, b, n, c, 0, s.vec_threads)
        if slow:                # (only with vec_threads > 1: one row, one block)
            s.vec_slow[0] += slow
    else:
        gemm(False, False, m, n, k, <floating> 1, a, lda, b, n, <floating> 0, c, n)


cdef inline bint _row_step(const Config *s, const floating *x, const floating *W,
                           floating *zx, const floating *h, const floating *U, floating *zh,
                           const floating *b, const floating *peep, floating *c,
                           floating *m, floating *gates, floating *c_raw) noexcept nogil:
    """One step of a batch of one row without projection (fl_pk_rowstep): zh = h @ U and,
    with x, zx = x @ W, on s.vec_threads threads sharing the units; for tanh / sigmoid the
    cell update too (returns True), else the caller's _pointwise runs it.  m must not be h."""
    cdef bint cell = (FL_PK_HAS_ROWCELL and s.act == FL_ACT_TANH
                      and s.rec == FL_REC_SIGMOID)
    cdef int slow
    if floating is float:
        slow = fl_pk_rowstepf(s.In, s.H, x, W, zx, h, U, zh, b, peep, s.use_cclip,
                              <float> s.cclip, cell, c, m, gates, c_raw, s.vec_threads)
    else:
        slow = fl_pk_rowstepd(s.In, s.H, x, W, zx, h, U, zh, b, peep, s.use_cclip,
                              s.cclip, cell, c, m, gates, c_raw, s.vec_threads)
    if slow:
        s.vec_slow[0] += slow
    return cell


cdef int _run_rows(const Config *s, int r0, int r1,
                   const floating *X, const floating *W, const floating *U,
                   const floating *b, const floating *peep, const floating *P,
                   floating *c, floating *h, floating *Y, const i64 *lengths,
                   floating *cg, floating *cc, floating *cm, floating *chp) noexcept nogil:
    """Run batch rows [r0, r1) through every time step.  Returns 0, or -1 if out of memory.

    cg (4H), cc (H), cm (H), chp (Ho): optional training cache rows, at the same row index
    as Y: post-activation gates, pre-clip cell state, pre-projection output, pre-clip
    projection.
    """
    cdef int nr = r1 - r0
    cdef int H = s.H, H4 = 4 * s.H, Ho = s.Ho, I = s.In, kb = s.kb, N = s.N, T = s.T
    cdef i64 rn = s.rn, rt = s.rt
    cdef bint uniform = lengths == NULL or not s.reverse
    cdef floating *G
    cdef floating *Z
    cdef floating *gtmp
    cdef floating *M = NULL
    cdef floating *HP = NULL
    cdef floating *gx
    cdef floating *gates
    cdef floating *mdst
    cdef floating *craw
    cdef floating *v
    cdef const floating *xrow
    cdef bint row1, fused_x
    cdef int n, k, k0, k1, kmax, t, ts = 0, te, nt, L, tsn
    cdef i64 gn = 0, gt = 0, row

    G = <floating *> malloc(<size_t> nr * kb * H4 * sizeof(floating))
    Z = <floating *> malloc(<size_t> nr * H4 * sizeof(floating))
    gtmp = <floating *> malloc(<size_t> H4 * sizeof(floating))
    if P != NULL:
        M = <floating *> calloc(<size_t> nr * H, sizeof(floating))
        HP = <floating *> malloc(<size_t> nr * Ho * sizeof(floating))
    if G == NULL or Z == NULL or gtmp == NULL or (P != NULL and (M == NULL or HP == NULL)):
        free(G); free(Z); free(gtmp); free(M); free(HP)
        return -1

    kmax = 0
    for n in range(r0, r1):
        L = <int> lengths[n] if lengths != NULL else T
        if L > kmax:
            kmax = L

    # one row without projection: each step is one fl_pk_rowstep, which computes the input
    # product too when blocks are of one step
    row1 = nr == 1 and P == NULL
    fused_x = row1 and kb == 1
    k0 = 0
    while k0 < kmax:
        k1 = k0 + kb
        if k1 > kmax:
            k1 = kmax
        # ---- input projection for iterations [k0, k1) ----
        if fused_x:
            pass
        elif uniform:
            if s.reverse:
                ts = T - k1
                te = T - k0
            else:
                ts = k0
                te = k1
            nt = te - ts
            if rt == 1:                       # batch-major: G row of (n, t) = (n-r0)*nt + t-ts
                gn = nt
                gt = 1
                if nt == T:
                    _product(s, nr * T, H4, I, X + r0 * rn * I, I, W, G)
                else:
                    for n in range(r0, r1):
                        _product(s, nt, H4, I, X + (n * rn + ts) * I, I, W,
                                 G + <i64> (n - r0) * nt * H4)
            else:                             # time-major: G row of (n, t) = (t-ts)*nr + n-r0
                gn = 1
                gt = nr
                if nr == N:
                    _product(s, nt * N, H4, I, X + <i64> ts * N * I, I, W, G)
                else:
                    for t in range(ts, te):
                        _product(s, nr, H4, I, X + (<i64> t * N + r0) * I, I, W,
                                 G + <i64> (t - ts) * nr * H4)
        else:
            # reverse with lengths: row n walks t = L-1-k, so its block of times is its own
            for n in range(r0, r1):
                L = <int> lengths[n]
                te = L - k0
                tsn = L - k1
                if tsn < 0:
                    tsn = 0
                if te > tsn:
                    _product(s, te - tsn, H4, I, X + (n * rn + tsn * rt) * I, <int> (rt * I),
                             W, G + <i64> (n - r0) * kb * H4)
        # ---- recurrence ----
        for k in range(k0, k1):
            if row1:
                n = r0
                L = <int> lengths[n] if lengths != NULL else T
                if k >= L:
                    continue
                t = L - 1 - k if s.reverse else k
                row = n * rn + t * rt
                if fused_x:
                    xrow = X + row * I
                    gx = G
                elif uniform:
                    xrow = NULL
                    gx = G + (t - ts) * H4
                else:
                    xrow = NULL
                    tsn = L - k1
                    if tsn < 0:
                        tsn = 0
                    gx = G + (t - tsn) * H4
                gates = cg + row * H4 if cg != NULL else NULL
                craw = cc + row * H if cc != NULL else NULL
                # m goes to Y first: the other threads still read h
                if _row_step(s, xrow, W, gx, h + <i64> n * Ho, U, Z, b, peep, c + <i64> n * H,
                             Y + row * Ho, gates, craw):
                    memcpy(h + <i64> n * Ho, Y + row * Ho, Ho * sizeof(floating))
                else:
                    _pointwise(H, Z, gx, b, peep, s.use_cclip, s.cclip, s.act, s.rec,
                               c + <i64> n * H, h + <i64> n * Ho,
                               gates if gates != NULL else gtmp, craw)
                    memcpy(Y + row * Ho, h + <i64> n * Ho, Ho * sizeof(floating))
                continue
            _product(s, nr, H4, Ho, h + <i64> r0 * Ho, Ho, U, Z)
            for n in range(r0, r1):
                L = <int> lengths[n] if lengths != NULL else T
                if k >= L:
                    continue
                if s.reverse:
                    t = L - 1 - k
                else:
                    t = k
                if uniform:
                    gx = G + ((n - r0) * gn + (t - ts) * gt) * H4
                else:
                    tsn = L - k1
                    if tsn < 0:
                        tsn = 0
                    gx = G + (<i64> (n - r0) * kb + (t - tsn)) * H4
                row = n * rn + t * rt
                gates = cg + row * H4 if cg != NULL else gtmp
                craw = cc + row * H if cc != NULL else NULL
                mdst = M + <i64> (n - r0) * H if P != NULL else h + <i64> n * Ho
                _pointwise(H, Z + <i64> (n - r0) * H4, gx, b, peep, s.use_cclip, s.cclip,
                           s.act, s.rec, c + <i64> n * H, mdst, gates, craw)
                if P == NULL:
                    memcpy(Y + row * Ho, mdst, Ho * sizeof(floating))
                elif cm != NULL:
                    memcpy(cm + row * H, mdst, H * sizeof(floating))
            if P != NULL:
                _product(s, nr, Ho, H, M, H, P, HP)
                for n in range(r0, r1):
                    L = <int> lengths[n] if lengths != NULL else T
                    if k >= L:
                        continue
                    t = L - 1 - k if s.reverse else k
                    row = n * rn + t * rt
                    v = HP + <i64> (n - r0) * Ho
                    if chp != NULL:
                        memcpy(chp + row * Ho, v, Ho * sizeof(floating))
                    if s.use_pclip:
                        _clip(v, Ho, s.pclip)
                    memcpy(h + <i64> n * Ho, v, Ho * sizeof(floating))
                    memcpy(Y + row * Ho, v, Ho * sizeof(floating))
        k0 = k1

    free(G); free(Z); free(gtmp); free(M); free(HP)
    return 0


cdef inline int _run_block(const Config *s, int blk, int nblocks,
                           const floating *X, const floating *W, const floating *U,
                           const floating *b, const floating *peep, const floating *P,
                           floating *c, floating *h, floating *Y, const i64 *lengths,
                           floating *cg, floating *cc, floating *cm,
                           floating *chp) noexcept nogil:
    """Row block ``blk`` of ``nblocks`` equal, contiguous blocks of the batch."""
    cdef int r0 = <int> ((<i64> blk * s.N) // nblocks)
    cdef int r1 = <int> ((<i64> (blk + 1) * s.N) // nblocks)
    return _run_rows(s, r0, r1, X, W, U, b, peep, P, c, h, Y, lengths, cg, cc, cm, chp)


def forward(const floating[:, ::1] X, int N, int T, bint time_major,
            const floating[:, ::1] W, const floating[:, ::1] U, const floating[::1] b,
            const floating[:, ::1] peepholes, const floating[:, ::1] P,
            floating[:, ::1] c, floating[:, ::1] h, floating[:, ::1] Y,
            const long long[::1] lengths, bint reverse, int act, int rec,
            cell_clip, proj_clip, int kb, int n_chunks, int n_threads,
            floating[:, ::1] cache_gates=None, floating[:, ::1] cache_c=None,
            floating[:, ::1] cache_m=None, floating[:, ::1] cache_hp=None):
    """Run one layer and direction over a sequence, in place on ``c``, ``h`` and ``Y``.

    X: (N*T, I) rows of the input (layout from ``time_major``); W: (I, 4H); U: (Ho, 4H);
    b: (4H,); peepholes: (3, H) or None; P: (H, Ho) or None; c: (N, H) and h: (N, Ho), the
    initial state on entry and the final state on return; Y: (N*T, Ho), zero-filled by the
    caller when ``lengths`` is given; lengths: (N,) int64 in [0, T] or None; act, rec:
    activation codes of ``fl_pointwise.h``; cell_clip, proj_clip: float or None;
    kb: time steps per input-projection block; n_chunks: the batch rows are split into
    this many contiguous blocks, each run on its own (gemms included), so the result does
    not depend on n_threads (>= 1), the number of OpenMP threads sharing the blocks (with
    N == 1, sharing the columns of the one-row products, which gives the same bits too).
    Returns how many times those threads waited for a partner that was not running.
    cache_*: optional training cache, rows as Y: gates (N*T, 4H), raw cell (N*T, H),
    pre-projection output (N*T, H), raw projection (N*T, Ho).
    """
    cdef Config s
    cdef int status = 0, nblocks, nteam, blk, vec_slow = 0
    cdef const floating *px = &X[0, 0]
    cdef const floating *pw = &W[0, 0]
    cdef const floating *pu = &U[0, 0]
    cdef const floating *pb = &b[0]
    cdef const floating *pp = &peepholes[0, 0] if peepholes is not None else NULL
    cdef const floating *pP = &P[0, 0] if P is not None else NULL
    cdef floating *pc = &c[0, 0]
    cdef floating *ph = &h[0, 0]
    cdef floating *py = &Y[0, 0]
    cdef const i64 *pl = &lengths[0] if lengths is not None else NULL
    cdef floating *cg = &cache_gates[0, 0] if cache_gates is not None else NULL
    cdef floating *cc = &cache_c[0, 0] if cache_c is not None else NULL
    cdef floating *cm = &cache_m[0, 0] if cache_m is not None else NULL
    cdef floating *chp = &cache_hp[0, 0] if cache_hp is not None else NULL

    if N <= 0 or T <= 0:
        return 0
    s.N = N
    s.T = T
    s.In = W.shape[0]
    s.H = b.shape[0] // 4
    s.Ho = U.shape[0]
    s.rn = 1 if time_major else T
    s.rt = N if time_major else 1
    s.kb = kb
    s.reverse = reverse
    s.act = act
    s.rec = rec
    s.use_cclip = cell_clip is not None
    s.cclip = cell_clip if cell_clip is not None else 0.0
    s.use_pclip = proj_clip is not None and P is not None
    s.pclip = proj_clip if proj_clip is not None else 0.0
    # one row: its products may share their columns among the threads (same bits)
    s.vec_threads = n_threads if N == 1 else 1
    s.vec_slow = &vec_slow

    nblocks = n_chunks if n_chunks < N else N
    nteam = n_threads if n_threads < nblocks else nblocks
    with nogil:
        if nteam <= 1:                  # no OpenMP region at all on the serial path
            for blk in range(nblocks):
                status += _run_block(&s, blk, nblocks, px, pw, pu, pb, pp, pP, pc, ph, py,
                                     pl, cg, cc, cm, chp)
        else:
            for blk in prange(nblocks, num_threads=nteam, schedule='static', chunksize=1):
                status += _run_block(&s, blk, nblocks, px, pw, pu, pb, pp, pP, pc, ph, py,
                                     pl, cg, cc, cm, chp)
    if status != 0:
        raise MemoryError("fastlstm: could not allocate the kernel workspace")
    return vec_slow


# ---------------------------------------------------------------------------------------
# packed-weight path (fl_packed.h): inference and the training cache, without projection


def packed_isa(isa=None):
    """The instruction set of the packed kernel: 2 = AVX-512, 1 = AVX2 + FMA, 0 = baseline.

    ``isa`` (tests): -1 automatic (the best the CPU runs), 0 force the baseline, 1 AVX2,
    2 AVX-512; one the CPU lacks falls back to the best it runs below it.
    """
    if isa is not None:
        fl_pk_set_isa(isa)
    return fl_pk_get_isa()


# Training caches of at least this many bytes (gates and cell state of one layer) are
# written with non-temporal stores: the backward reads them only after the rest of the
# forward has gone through the CPU caches, so reading each line before writing it would
# be wasted (1.03x a training step at the medium and large benchmark shapes, 16 and
# 131 MiB; at the small one, 2 MiB, the cache is still in the CPU caches for the backward
# and normal stores are 1.02x faster).
cdef long long _stream_min_bytes = 8 << 20


cdef inline bint _large(long long rows, long long H, long long itemsize) noexcept:
    return rows * 5 * H * itemsize >= _stream_min_bytes


def large_cache(long long rows, long long H, long long itemsize):
    """Whether a layer's training cache of ``rows`` rows (gates and cell state, 5H
    numbers of ``itemsize`` bytes each) counts as larger than the CPU caches."""
    return _large(rows, H, itemsize)


def stream_cache_min_bytes(n=None):
    """The size of a layer's training cache (gates and cell state, bytes) from which it
    counts as larger than the CPU caches: the packed kernel then streams it, and writes
    the cache's h rows itself (fastlstm/_training.py).  ``n`` (tests) sets it.  The
    values written do not depend on it."""
    global _stream_min_bytes
    if n is not None:
        _stream_min_bytes = int(n)
    return _stream_min_bytes


cdef inline void _pk_pack(int I, int H, const floating *W, const floating *U,
                          const floating *b, const floating *peep, floating *out, int pa,
                          int pb) noexcept nogil:
    """Pack panels [pa, pb) of the weights (fl_pk_pack)."""
    if floating is float:
        fl_pk_packf(I, H, W, U, b, peep, out, pa, pb)
    else:
        fl_pk_packd(I, H, W, U, b, peep, out, pa, pb)


cdef inline void _pk_run(const void *cfg, int b0, int b1, int p0, int p1, int sync,
                         const floating **xr, floating *G, const floating *packed,
                         int pk0) noexcept nogil:
    """Row blocks [b0, b1) (fl_pk_nblocks) and unit panels [p0, p1) of one thread; G: its
    products buffer, packed: the packed weights from panel pk0 on (fl_pk_run)."""
    if floating is float:
        fl_pk_runf(<const fl_pk_cfgf *> cfg, b0, b1, p0, p1, sync, xr, G, packed, pk0)
    else:
        fl_pk_rund(<const fl_pk_cfgd *> cfg, b0, b1, p0, p1, sync, xr, G, packed, pk0)


cdef class PackedWeights:
    """A layer's weights packed once into the packed kernel's panels (fl_pk_pack), for
    ``forward_packed(prepacked=...)``: what a frozen model (``fastlstm.freeze``) keeps
    instead of packing at every call.  Built by ``pack_weights``; never written after."""
    cdef void *data
    cdef readonly int input_size, hidden_size, itemsize
    cdef readonly bint has_peepholes
    cdef readonly size_t nbytes

    def __dealloc__(self):
        fl_pk_free(self.data)

    def __reduce__(self):
        raise TypeError("PackedWeights cannot be pickled (a frozen model packs again)")


def pack_weights(const floating[:, ::1] W, const floating[:, ::1] U, const floating[::1] b,
                 const floating[:, ::1] peepholes):
    """The weights W (I, 4H), U (H, 4H), b (4H,), peepholes (3, H) or None, packed."""
    cdef PackedWeights pw = PackedWeights.__new__(PackedWeights)
    cdef int I = W.shape[0], H = b.shape[0] // 4, P
    cdef size_t psz
    cdef floating *out
    if floating is float:
        P = fl_pk_npanelsf(H)
        psz = fl_pk_packed_sizef(I, H)
    else:
        P = fl_pk_npanelsd(H)
        psz = fl_pk_packed_sized(I, H)
    pw.input_size = I
    pw.hidden_size = H
    pw.itemsize = sizeof(floating)
    pw.has_peepholes = peepholes is not None
    pw.nbytes = psz * sizeof(floating)
    pw.data = fl_pk_alloc(pw.nbytes)
    if pw.data == NULL:
        raise MemoryError("fastlstm: could not allocate the packed weights")
    out = <floating *> pw.data
    with nogil:
        _pk_pack(I, H, &W[0, 0], &U[0, 0], &b[0],
                 &peepholes[0, 0] if peepholes is not None else NULL, out, 0, P)
    return pw


cdef bint _rows_ok(floating[:, :] a, Py_ssize_t rows, Py_ssize_t cols):
    """None, or (rows, cols) with contiguous rows."""
    if a is None:
        return True
    return (a.shape[0] == rows and a.shape[1] == cols
            and (cols <= 1 or a.strides[1] == sizeof(floating))
            and a.strides[0] % sizeof(floating) == 0)


def forward_packed(const floating[:, ::1] X, int N, int T, bint time_major,
                   const floating[:, ::1] W, const floating[:, ::1] U, const floating[::1] b,
                   const floating[:, ::1] peepholes,
                   floating[:, ::1] c, floating[:, ::1] h, floating[:, ::1] Y,
                   const long long[::1] lengths, bint reverse, int act, int rec,
                   cell_clip, int n_threads, bint by_rows, long long block_elements,
                   floating[:, ::1] cache_gates=None, floating[:, ::1] cache_c=None,
                   floating[:, :] xo_same=None, floating[:, :] xo_next=None,
                   long long own_pack_bytes=0, PackedWeights prepacked=None):
    """Same contract as ``forward`` for a layer without projection (``U`` is (H, 4H)).

    The weights are packed once per call into panels and every step (input product,
    recurrent product, cell update) runs in ``fl_packed.h``'s register-blocked kernel;
    no BLAS.  ``by_rows``: threads own blocks of batch rows (no synchronisation) instead of
    blocks of hidden units (one barrier per step).  Results do not depend on n_threads.
    ``block_elements``: size of the input-product buffer (the steps of a time block, at
    least one step); results do not depend on it either.
    ``own_pack_bytes``: threads owning rows each pack every panel into a copy of their own
    when the packed weights take at most this many bytes (see below); results do not
    depend on it.
    cache_gates (N*T, 4H) and cache_c (N*T, H): optional training cache, as ``forward``.
    xo_same, xo_next: (N*T, H) arrays with contiguous rows (any row stride), or None: each
    h_t is also written at its own row of xo_same and at the row of the row's next step
    (walking order) of xo_next; rows no step writes are left as they are.
    prepacked: these weights packed by ``pack_weights`` (the same values), or None to pack
    them in this call; every thread then reads that one read-only copy.
    Returns the number of per-step waits (threads owning units) that found a partner
    thread not running (see fl_pk_spin in fl_packed.h): more busy threads than cores.
    """
    cdef int I = W.shape[0], H = b.shape[0] // 4, P, nteam, kmax = T, n, sz_z, tb
    cdef int slow = 0
    cdef int tid = 0, nt = 1, r0 = 0, r1 = 0, p0 = 0, p1 = 0, nb = fl_pk_nblocks(N)
    cdef size_t fsz = sizeof(floating)
    cdef fl_pk_cfgf sf
    cdef fl_pk_cfgd sd
    cdef void *cfg
    cdef floating *packed = NULL
    cdef floating *zero_row = NULL
    cdef floating *hbuf = NULL
    cdef floating *gbuf = NULL
    cdef floating *gown = NULL
    cdef floating *pown = NULL
    cdef size_t psz, ps
    cdef bint own_pack, shared_pack
    cdef int gfail = 0
    cdef int *pgfail = &gfail
    cdef const floating **xr = NULL
    cdef const int *pperm = NULL
    cdef long long *cost = NULL
    cdef fl_pk_spin *spin = NULL
    cdef int blk, rb
    cdef long long Lb
    cdef const floating *ph0 = &h[0, 0]
    cdef int[::1] perm
    cdef floating[:, ::1] h_sorted
    cdef bint stream = False
    cdef const floating *pre = NULL

    if N <= 0 or T <= 0:
        return 0
    if prepacked is not None:
        if (prepacked.itemsize != sizeof(floating) or prepacked.input_size != I
                or prepacked.hidden_size != H
                or prepacked.has_peepholes != (peepholes is not None)):
            raise ValueError("forward_packed: prepacked was packed from other weights")
        pre = <const floating *> prepacked.data
    if not (_rows_ok(xo_same, N * T, H) and _rows_ok(xo_next, N * T, H)):
        raise ValueError("forward_packed: xo_same / xo_next must be (N*T, H) with "
                         "contiguous rows")
    if cache_gates is not None and cache_c is not None:
        stream = _large(<long long> N * T, H, fsz)
    if lengths is not None and N > 1:
        # rows by decreasing length: finished rows gather in whole tiles, which are skipped
        perm = np.argsort(-np.asarray(lengths), kind="stable").astype(np.intc)
        h_sorted = np.ascontiguousarray(np.asarray(h)[np.asarray(perm)])
        pperm = &perm[0]
        ph0 = &h_sorted[0, 0]
    if floating is float:
        P = fl_pk_npanelsf(H)
        sz_z = 4 * FL_PK_NU_F
        psz = fl_pk_packed_sizef(I, H)
        ps = <size_t> fl_pk_panel_stridef(I, H)
    else:
        P = fl_pk_npanelsd(H)
        sz_z = 4 * FL_PK_NU_D
        psz = fl_pk_packed_sized(I, H)
        ps = <size_t> fl_pk_panel_strided(I, H)
    if lengths is not None:
        kmax = 0
        for n in range(N):
            if lengths[n] > kmax:
                kmax = <int> lengths[n]
    nteam = n_threads
    if by_rows and nteam > nb:
        nteam = nb
    if not by_rows and nteam > P:
        nteam = P
    if nteam < 1:
        nteam = 1
    # Threads owning units pack and read their own panels only, into a buffer each
    # allocates itself (its own malloc arena, see fl_pk_run).  Threads owning rows read
    # every panel.  With one shared copy, each writes its share and then reads the others'
    # from the other cores' caches, every call; when the packed weights are small enough
    # to stay in a core's own cache, each thread packs a whole copy of its own instead,
    # with no barrier and no line written by one core and read by another.
    own_pack = by_rows and nteam > 1 and <long long> (psz * fsz) <= own_pack_bytes
    shared_pack = nteam == 1 or (by_rows and not own_pack)
    if pre != NULL:
        # packed before, never written: every thread reads the one copy, whose lines
        # stay in each core's cache (no line is written by one core and read by another)
        own_pack = shared_pack = False
    if shared_pack:
        packed = <floating *> fl_pk_alloc(psz * fsz)
    # steps per time block: the input products of a block fill at most block_elements
    tb = <int> max(1, min(<long long> kmax, block_elements // (<long long> N * P * sz_z)))
    zero_row = <floating *> calloc(I if I > 0 else 1, fsz)
    hbuf = <floating *> fl_pk_alloc(2 * <size_t> N * H * fsz)
    if nteam == 1:
        gbuf = <floating *> fl_pk_alloc(<size_t> tb * N * P * sz_z * fsz)
    xr = <const floating **> malloc(<size_t> nteam * tb * N * sizeof(floating *))
    cost = <long long *> malloc((<size_t> nb + 1) * sizeof(long long))
    spin = <fl_pk_spin *> fl_pk_alloc(sizeof(fl_pk_spin))
    if spin != NULL:
        memset(spin, 0, sizeof(fl_pk_spin))
    try:
        if ((shared_pack and packed == NULL) or zero_row == NULL or hbuf == NULL or xr == NULL
                or cost == NULL or spin == NULL or (nteam == 1 and gbuf == NULL)):
            raise MemoryError("fastlstm: could not allocate the packed-kernel workspace")
        # cumulative cost of the row blocks (rows x steps while any of its rows is running;
        # rows are sorted by decreasing length, so that is the first row's length), for
        # threads owning contiguous block ranges of equal cost
        cost[0] = 0
        for blk in range(nb):
            rb = fl_pk_block_row(N, blk)
            Lb = T
            if lengths is not None:
                Lb = lengths[pperm[rb] if pperm != NULL else rb]
            cost[blk + 1] = cost[blk] + (fl_pk_block_row(N, blk + 1) - rb) * Lb
        if floating is float:
            sf.N = N; sf.steps = T; sf.In = I; sf.H = H; sf.kmax = kmax
            sf.reverse = reverse; sf.act = act; sf.rec = rec
            sf.use_clip = cell_clip is not None
            sf.clip = cell_clip if cell_clip is not None else 0.0
            sf.use_peep = peepholes is not None
            sf.rn = 1 if time_major else T
            sf.rt = N if time_major else 1
            sf.lengths = &lengths[0] if lengths is not None else NULL
            sf.perm = pperm
            sf.h0 = ph0
            sf.X = &X[0, 0]; sf.zero_row = zero_row
            sf.c = &c[0, 0]; sf.h = &h[0, 0]; sf.hbuf0 = hbuf; sf.hbuf1 = hbuf + <size_t> N * H
            sf.Y = &Y[0, 0]
            sf.cache_gates = &cache_gates[0, 0] if cache_gates is not None else NULL
            sf.cache_c = &cache_c[0, 0] if cache_c is not None else NULL
            sf.stream_cache = stream
            sf.xo_same = &xo_same[0, 0] if xo_same is not None else NULL
            sf.ld_same = xo_same.strides[0] // fsz if xo_same is not None else 0
            sf.xo_next = &xo_next[0, 0] if xo_next is not None else NULL
            sf.ld_next = xo_next.strides[0] // fsz if xo_next is not None else 0
            sf.tb = tb
            sf.spin = spin
            cfg = &sf
        else:
            sd.N = N; sd.steps = T; sd.In = I; sd.H = H; sd.kmax = kmax
            sd.reverse = reverse; sd.act = act; sd.rec = rec
            sd.use_clip = cell_clip is not None
            sd.clip = cell_clip if cell_clip is not None else 0.0
            sd.use_peep = peepholes is not None
            sd.rn = 1 if time_major else T
            sd.rt = N if time_major else 1
            sd.lengths = &lengths[0] if lengths is not None else NULL
            sd.perm = pperm
            sd.h0 = ph0
            sd.X = &X[0, 0]; sd.zero_row = zero_row
            sd.c = &c[0, 0]; sd.h = &h[0, 0]; sd.hbuf0 = hbuf; sd.hbuf1 = hbuf + <size_t> N * H
            sd.Y = &Y[0, 0]
            sd.cache_gates = &cache_gates[0, 0] if cache_gates is not None else NULL
            sd.cache_c = &cache_c[0, 0] if cache_c is not None else NULL
            sd.stream_cache = stream
            sd.xo_same = &xo_same[0, 0] if xo_same is not None else NULL
            sd.ld_same = xo_same.strides[0] // fsz if xo_same is not None else 0
            sd.xo_next = &xo_next[0, 0] if xo_next is not None else NULL
            sd.ld_next = xo_next.strides[0] // fsz if xo_next is not None else 0
            sd.tb = tb
            sd.spin = spin
            cfg = &sd
        with nogil:
            if nteam == 1:
                if pre != NULL:
                    _pk_run(cfg, 0, nb, 0, P, 0, xr, gbuf, pre, 0)
                else:
                    _pk_pack(I, H, &W[0, 0], &U[0, 0], &b[0],
                             &peepholes[0, 0] if peepholes is not None else NULL, packed,
                             0, P)
                    _pk_run(cfg, 0, nb, 0, P, 0, xr, gbuf, packed, 0)
            else:
                with parallel(num_threads=nteam):
                    # the team may be smaller than asked for: partition by its real size
                    nt = fl_pk_team_size()
                    tid = fl_pk_team_id()
                    # every thread packs its share [p0, p1) of the panels (or all of them:
                    # own_pack).  Threads owning units run exactly that share; threads
                    # owning rows read every panel.
                    p0 = <int> ((<i64> tid * P) // nt)
                    p1 = <int> ((<i64> (tid + 1) * P) // nt)
                    if by_rows:
                        r0 = fl_pk_split(cost, nb, nt, tid)
                        r1 = fl_pk_split(cost, nb, nt, tid + 1)
                    else:
                        r0 = 0
                        r1 = nb
                    pown = NULL
                    # the thread's own products buffer, from its own malloc arena (see
                    # fl_pk_run); a failure stops the call (MemoryError below)
                    gown = <floating *> fl_pk_alloc(
                        <size_t> tb * (fl_pk_block_row(N, r1) - fl_pk_block_row(N, r0))
                        * (P if by_rows else p1 - p0) * sz_z * fsz)
                    if gown == NULL:
                        pgfail[0] = 1
                    if pre != NULL and by_rows:
                        if gown != NULL:
                            _pk_run(cfg, r0, r1, 0, P, 0, xr + <size_t> tid * tb * N, gown,
                                    pre, 0)
                    elif pre != NULL:
                        # units: threads wait for each other at every step, so all stop
                        # if any could not allocate (seen after the barrier)
                        fl_pk_barrier()
                        if pgfail[0] == 0:
                            _pk_run(cfg, r0, r1, p0, p1, nt, xr + <size_t> tid * tb * N,
                                    gown, pre, 0)
                    elif own_pack:
                        # no thread reads another's: no barrier, a failure stops its own
                        pown = <floating *> fl_pk_alloc(psz * fsz)
                        if pown == NULL or gown == NULL:
                            pgfail[0] = 1
                        else:
                            _pk_pack(I, H, &W[0, 0], &U[0, 0], &b[0],
                                     &peepholes[0, 0] if peepholes is not None else NULL,
                                     pown, 0, P)
                            _pk_run(cfg, r0, r1, 0, P, 0, xr + <size_t> tid * tb * N, gown,
                                    pown, 0)
                    elif not by_rows:
                        # units: threads wait for each other at every step, so all stop
                        # if any could not allocate (seen after the barrier)
                        pown = <floating *> fl_pk_alloc((p1 - p0) * ps * fsz)
                        if pown == NULL:
                            pgfail[0] = 1
                        else:
                            _pk_pack(I, H, &W[0, 0], &U[0, 0], &b[0],
                                     &peepholes[0, 0] if peepholes is not None else NULL,
                                     pown, p0, p1)
                        fl_pk_barrier()
                        if pgfail[0] == 0:
                            _pk_run(cfg, r0, r1, p0, p1, nt, xr + <size_t> tid * tb * N,
                                    gown, pown, p0)
                    else:
                        _pk_pack(I, H, &W[0, 0], &U[0, 0], &b[0],
                                 &peepholes[0, 0] if peepholes is not None else NULL,
                                 packed + p0 * ps, p0, p1)
                        fl_pk_barrier()
                        if pgfail[0] == 0:
                            _pk_run(cfg, r0, r1, 0, P, 0, xr + <size_t> tid * tb * N, gown,
                                    packed, 0)
                    fl_pk_free(pown)
                    fl_pk_free(gown)
        if gfail:
            raise MemoryError("fastlstm: could not allocate the packed-kernel workspace")
        slow = spin.slow
    finally:
        fl_pk_free(packed)
        fl_pk_free(spin)
        free(zero_row)
        fl_pk_free(hbuf)
        fl_pk_free(gbuf)
        free(xr)
        free(cost)
    return slow


# ---------------------------------------------------------------------------------------
# small problems (fl_small.h): no packing, no BLAS, no allocation; cheap to call


# multiply-adds per step call below which ``step_fast`` runs the whole call itself
cdef enum:
    _STEP_FAST_MAX_WORK = 1 << 17


def small_max_hidden():
    """Largest hidden size (without projection) that ``forward_small`` accepts."""
    return FL_SMALL_MAX_H


cdef inline void *_data(object a) noexcept:
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray> a)


cdef int _small(int tn, int N, int T, int I, int H, long long rn, long long rt, object X,
                object W, object U, object b, object peep, const long long *lengths,
                bint reverse, int act, int rec, object cell_clip, object c, object h,
                object Y, object cache_gates, object cache_c) except -1:
    cdef bint use_clip = cell_clip is not None
    cdef double clip = cell_clip if use_clip else 0.0
    cdef void *px = _data(X)
    cdef void *pw = _data(W)
    cdef void *pu = _data(U)
    cdef void *pb = _data(b)
    cdef void *pp = _data(peep)
    cdef void *pc = _data(c)
    cdef void *ph = _data(h)
    cdef void *py = _data(Y)
    cdef void *pg = _data(cache_gates)
    cdef void *pcc = _data(cache_c)
    with nogil:
        if tn == cnp.NPY_FLOAT32:
            fl_small_forwardf(N, T, I, H, rn, rt, <float *> px, <float *> pw, <float *> pu,
                              <float *> pb, <float *> pp, lengths, reverse, act, rec,
                              use_clip, <float> clip, <float *> pc, <float *> ph,
                              <float *> py, <float *> pg, <float *> pcc)
        else:
            fl_small_forwardd(N, T, I, H, rn, rt, <double *> px, <double *> pw,
                              <double *> pu, <double *> pb, <double *> pp, lengths, reverse,
                              act, rec, use_clip, clip, <double *> pc, <double *> ph,
                              <double *> py, <double *> pg, <double *> pcc)
    return 0


def forward_small(X, int N, int T, bint time_major, W, U, b, peepholes, c, h, Y,
                  lengths, bint reverse, int act, int rec, cell_clip, cache_gates=None,
                  cache_c=None):
    """Same contract as ``forward_packed``, for ``H <= small_max_hidden()``.

    Every array must be a C-contiguous ndarray of the layer's dtype (``lengths``: int64)
    laid out as ``forward`` describes: they are not checked here.
    """
    cdef cnp.ndarray bb = b
    cdef int H = <int> cnp.PyArray_DIM(bb, 0) // 4
    cdef int I = <int> cnp.PyArray_DIM(<cnp.ndarray> W, 0)
    if N <= 0 or T <= 0:
        return
    _small(cnp.PyArray_TYPE(bb), N, T, I, H, 1 if time_major else T, N if time_major else 1,
           X, W, U, b, peepholes, <const long long *> _data(lengths), reverse, act, rec,
           cell_clip, c, h, Y, cache_gates, cache_c)


cdef inline bint _plain(object a, int nd, Py_ssize_t d0, Py_ssize_t d1, int tn):
    """a is exactly an ndarray (N, d1) (d0 < 0: any N) of type tn in native byte order,
    aligned, C-contiguous."""
    cdef cnp.ndarray arr
    if not cnp.PyArray_CheckExact(a):
        return False
    arr = <cnp.ndarray> a
    return (cnp.PyArray_NDIM(arr) == nd and cnp.PyArray_TYPE(arr) == tn
            and cnp.PyArray_DIM(arr, 1) == d1 and (d0 < 0 or cnp.PyArray_DIM(arr, 0) == d0)
            and cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISALIGNED(arr)
            and cnp.PyArray_ISNOTSWAPPED(arr))


cdef inline bint _plain_pair(object pair, Py_ssize_t N, int H, int tn):
    """pair is a (c, h) 2-tuple (an LSTMState too) of plain (N, H) arrays of type tn."""
    return (isinstance(pair, tuple) and PyTuple_GET_SIZE(pair) == 2
            and _plain((<tuple> pair)[0], 2, N, H, tn)
            and _plain((<tuple> pair)[1], 2, N, H, tn))


cdef tuple _fresh_state(object pair, cnp.npy_intp *dims, int tn):
    """Writable copies (c, h) of a pair that passed _plain_pair, or zeros (dims) for None."""
    if pair is None:
        return (cnp.PyArray_ZEROS(2, dims, tn, 0), cnp.PyArray_ZEROS(2, dims, tn, 0))
    return (cnp.PyArray_NewCopy(<cnp.ndarray> (<tuple> pair)[0], cnp.NPY_CORDER),
            cnp.PyArray_NewCopy(<cnp.ndarray> (<tuple> pair)[1], cnp.NPY_CORDER))


def step_fast(x, state, W, U, b, peepholes, int act, int rec, cell_clip, state_type):
    """One step of a layer without projection, when the call is the common, small case.

    Returns ``(out, state_type(c, h))``, or None when ``x`` or ``state`` are anything else
    than plain C-contiguous arrays of the layer's dtype and shape (the caller then runs its
    full checks) or the step is too big for this path.  ``state``: None or a 2-tuple.
    """
    cdef cnp.ndarray bb = b
    cdef int tn = cnp.PyArray_TYPE(bb)
    cdef int H = <int> cnp.PyArray_DIM(bb, 0) // 4
    cdef int I = <int> cnp.PyArray_DIM(<cnp.ndarray> W, 0)
    cdef Py_ssize_t N
    cdef cnp.npy_intp dims[2]
    if H > FL_SMALL_MAX_H or not _plain(x, 2, -1, I, tn):
        return None
    N = cnp.PyArray_DIM(<cnp.ndarray> x, 0)
    if N <= 0 or N * 4 * H * (I + H) > _STEP_FAST_MAX_WORK:
        return None
    if state is not None and not _plain_pair(state, N, H, tn):
        return None
    dims[0] = N
    dims[1] = H
    c, h = _fresh_state(state, dims, tn)
    out = cnp.PyArray_EMPTY(2, dims, tn, 0)
    _small(tn, <int> N, 1, I, H, 1, 1, x, W, U, b, peepholes, NULL, False, act, rec,
           cell_clip, c, h, out, None, None)
    return out, tuple.__new__(state_type, (c, h))


def stack_small(cnp.ndarray X, list specs, state_type):
    """A stack of plain layers on the small kernel, one layer after the other, in one call:
    what ``MultiLSTM`` runs for a small stateless call (its checks done by the caller).

    X: (N, T, I) C-contiguous ndarray of the layers' dtype, N, T >= 1; specs: per layer a
    tuple (W, U, b, peepholes or None, act, rec, cell_clip) with H <= small_max_hidden().
    Returns the top layer's Y (N, T, H) and the tuple of ``state_type(c, h)`` per layer.
    """
    cdef int tn = cnp.PyArray_TYPE(X)
    cdef int N = <int> cnp.PyArray_DIM(X, 0), T = <int> cnp.PyArray_DIM(X, 1)
    cdef int I = <int> cnp.PyArray_DIM(X, 2), H
    cdef cnp.npy_intp dims[3]
    cdef tuple spec
    cdef object inp = X, c, h, Y
    cdef list states = []
    dims[0] = N
    dims[1] = T
    for spec in specs:
        H = <int> cnp.PyArray_DIM(<cnp.ndarray> spec[2], 0) // 4
        dims[1] = H
        c = cnp.PyArray_ZEROS(2, dims, tn, 0)
        h = cnp.PyArray_ZEROS(2, dims, tn, 0)
        dims[1] = T
        dims[2] = H
        Y = cnp.PyArray_EMPTY(3, dims, tn, 0)
        _small(tn, N, T, I, H, T, 1, inp, spec[0], spec[1], spec[2], spec[3], NULL, False,
               spec[4], spec[5], spec[6], c, h, Y, None, None)
        states.append(tuple.__new__(state_type, (c, h)))
        inp = Y
        I = H
    return inp, tuple(states)


def stack_step(x, state, list specs, state_type):
    """One step through a stack of plain layers whose steps all run on the small kernel
    (as ``step_fast`` runs them, the same bits), in one call: what ``MultiLSTM.step`` runs
    for the common case.  ``x``: (N, I); ``state``: None or a tuple of one (c, h) 2-tuple
    per layer; specs as for ``stack_small``.  Returns the top output and the tuple of
    ``state_type(c, h)``, or None when anything is not plain arrays of the layers' dtype
    and shapes, N is 0, or a layer's step is too big for the small kernel (the caller then
    runs its full checks)."""
    cdef int tn, H, I, k
    cdef Py_ssize_t N
    cdef cnp.npy_intp dims[2]
    cdef tuple spec
    cdef object inp = x, c, h, out = None
    cdef list states = []
    if not specs or not cnp.PyArray_CheckExact(x) or cnp.PyArray_NDIM(<cnp.ndarray> x) != 2:
        return None
    tn = cnp.PyArray_TYPE(<cnp.ndarray> specs[0][2])
    N = cnp.PyArray_DIM(<cnp.ndarray> x, 0)
    # (exactly a tuple: the general path refuses an LSTMState of two layers' states)
    if N <= 0 or (state is not None and not (type(state) is tuple
                                             and PyTuple_GET_SIZE(state) == len(specs))):
        return None
    I = <int> cnp.PyArray_DIM(<cnp.ndarray> specs[0][0], 0)
    if not _plain(x, 2, N, I, tn):
        return None
    for k, spec in enumerate(specs):       # every check before any step runs
        H = <int> cnp.PyArray_DIM(<cnp.ndarray> spec[2], 0) // 4
        if H > FL_SMALL_MAX_H or N * 4 * H * (I + H) > _STEP_FAST_MAX_WORK:
            return None
        if state is not None and not _plain_pair((<tuple> state)[k], N, H, tn):
            return None
        I = H
    I = <int> cnp.PyArray_DIM(<cnp.ndarray> specs[0][0], 0)
    dims[0] = N
    for k, spec in enumerate(specs):
        H = <int> cnp.PyArray_DIM(<cnp.ndarray> spec[2], 0) // 4
        dims[1] = H
        c, h = _fresh_state(None if state is None else (<tuple> state)[k], dims, tn)
        out = cnp.PyArray_EMPTY(2, dims, tn, 0)
        _small(tn, <int> N, 1, I, H, 1, 1, inp, spec[0], spec[1], spec[2], spec[3], NULL,
               False, spec[4], spec[5], spec[6], c, h, out, None, None)
        states.append(tuple.__new__(state_type, (c, h)))
        inp = out
        I = H
    return out, tuple(states)


cdef int _row_run(floating *dummy, int I, int H, const floating *px, const floating *pw,
                  const floating *pu, const floating *pb, const floating *pp, object cell_clip,
                  int act, int rec, floating *pc, floating *ph, floating *py,
                  int n_threads) except -1:
    """One step of one row without projection, as ``forward`` runs it (kb = 1); ``dummy``
    (NULL) only selects the floating type."""
    cdef Config s
    cdef int status, vec_slow = 0
    memset(&s, 0, sizeof(s))
    s.N = 1
    s.T = 1
    s.In = I
    s.H = H
    s.Ho = H
    s.rn = 1
    s.rt = 1
    s.kb = 1
    s.act = act
    s.rec = rec
    s.use_cclip = cell_clip is not None
    s.cclip = cell_clip if cell_clip is not None else 0.0
    s.vec_threads = n_threads
    s.vec_slow = &vec_slow
    with nogil:
        status = _run_rows(&s, 0, 1, px, pw, pu, pb, pp, NULL, pc, ph, py, NULL, NULL, NULL,
                           NULL, NULL)
    if status != 0:
        raise MemoryError("fastlstm: could not allocate the kernel workspace")
    return vec_slow


def step_row(x, state, W, U, b, peepholes, int act, int rec, cell_clip, state_type,
             int n_threads):
    """One step of a batch of one row for a layer without projection, on the BLAS kernel's
    path (what ``forward`` computes for N = T = 1, the same bits), when ``x`` and ``state``
    are plain C-contiguous arrays of the layer's dtype and shape, and ``state`` None or a
    2-tuple.  Returns ``(out, state_type(c, h), slow)`` (slow: as ``forward`` returns), or
    None for anything else (the caller then runs its full checks)."""
    cdef cnp.ndarray bb = b
    cdef int tn = cnp.PyArray_TYPE(bb)
    cdef int H = <int> cnp.PyArray_DIM(bb, 0) // 4
    cdef int I = <int> cnp.PyArray_DIM(<cnp.ndarray> W, 0)
    cdef int slow
    cdef cnp.npy_intp dims[2]
    if not _plain(x, 2, 1, I, tn):
        return None
    if state is not None and not _plain_pair(state, 1, H, tn):
        return None
    dims[0] = 1
    dims[1] = H
    c, h = _fresh_state(state, dims, tn)
    out = cnp.PyArray_EMPTY(2, dims, tn, 0)
    if tn == cnp.NPY_FLOAT32:
        slow = _row_run(<float *> NULL, I, H, <float *> _data(x), <float *> _data(W),
                        <float *> _data(U), <float *> _data(b), <float *> _data(peepholes),
                        cell_clip, act, rec, <float *> _data(c), <float *> _data(h),
                        <float *> _data(out), n_threads)
    else:
        slow = _row_run(<double *> NULL, I, H, <double *> _data(x), <double *> _data(W),
                        <double *> _data(U), <double *> _data(b),
                        <double *> _data(peepholes), cell_clip, act, rec,
                        <double *> _data(c), <double *> _data(h), <double *> _data(out),
                        n_threads)
    return out, tuple.__new__(state_type, (c, h)), slow

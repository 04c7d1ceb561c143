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
(no barrier per step) and the caller holds BLAS to one thread.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy

from _blas cimport gemm
from _omp cimport fl_omp_enabled, fl_omp_max_threads

cdef extern from "fl_pointwise.h" nogil:
    void fl_pointwise_fwdf(int H, const float *z, const float *gx, const float *b,
                           const float *peep, int use_clip, float clip, int act, int rec,
                           float *c, float *m, float *gates, float *c_raw) noexcept
    void fl_pointwise_fwdd(int H, const double *z, const double *gx, const double *b,
                           const double *peep, int use_clip, double clip, int act, int rec,
                           double *c, double *m, double *gates, double *c_raw) noexcept
    void fl_clip_inplacef(float *v, int n, float clip) noexcept
    void fl_clip_inplaced(double *v, int n, double clip) noexcept

ctypedef long long i64


cdef struct Config:
    int N, T, In, H, Ho
    i64 rn, rt          # row of (n, t) is n * rn + t * rt
    int kb              # time steps per input-projection block
    bint reverse
    int act, rec
    bint use_cclip, use_pclip
    double cclip, pclip


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(fl_omp_enabled())


def omp_max_threads():
    return fl_omp_max_threads()


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

    k0 = 0
    while k0 < kmax:
        k1 = k0 + kb
        if k1 > kmax:
            k1 = kmax
        # ---- input projection for iterations [k0, k1) ----
        if uniform:
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
                    gemm(False, False, nr * T, H4, I, <floating> 1, X + r0 * rn * I, I,
                         W, H4, <floating> 0, G, H4)
                else:
                    for n in range(r0, r1):
                        gemm(False, False, nt, H4, I, <floating> 1, X + (n * rn + ts) * I, I,
                             W, H4, <floating> 0, G + <i64> (n - r0) * nt * H4, H4)
            else:                             # time-major: G row of (n, t) = (t-ts)*nr + n-r0
                gn = 1
                gt = nr
                if nr == N:
                    gemm(False, False, nt * N, H4, I, <floating> 1, X + <i64> ts * N * I, I,
                         W, H4, <floating> 0, G, H4)
                else:
                    for t in range(ts, te):
                        gemm(False, False, nr, H4, I, <floating> 1,
                             X + (<i64> t * N + r0) * I, I,
                             W, H4, <floating> 0, G + <i64> (t - ts) * nr * H4, H4)
        else:
            # reverse with lengths: row n walks t = L-1-k, so its block of times is its own
            for n in range(r0, r1):
                L = <int> lengths[n]
                te = L - k0
                tsn = L - k1
                if tsn < 0:
                    tsn = 0
                if te > tsn:
                    gemm(False, False, te - tsn, H4, I, <floating> 1,
                         X + (n * rn + tsn * rt) * I, <int> (rt * I),
                         W, H4, <floating> 0, G + <i64> (n - r0) * kb * H4, H4)
        # ---- recurrence ----
        for k in range(k0, k1):
            gemm(False, False, nr, H4, Ho, <floating> 1, h + <i64> r0 * Ho, Ho, U, H4,
                 <floating> 0, Z, H4)
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
                gemm(False, False, nr, Ho, H, <floating> 1, M, H, P, Ho, <floating> 0, HP, Ho)
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
    not depend on n_threads (>= 1), the number of OpenMP threads sharing the blocks.
    cache_*: optional training cache, rows as Y: gates (N*T, 4H), raw cell (N*T, H),
    pre-projection output (N*T, H), raw projection (N*T, Ho).
    """
    cdef Config s
    cdef int status = 0, nblocks, nteam, blk, r0, r1
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
        return
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

    nblocks = n_chunks if n_chunks < N else N
    nteam = n_threads if n_threads < nblocks else nblocks
    with nogil:
        if nteam <= 1:
            for blk in range(nblocks):
                r0 = <int> ((<i64> blk * N) // nblocks)
                r1 = <int> ((<i64> (blk + 1) * N) // nblocks)
                status += _run_rows(&s, r0, r1, px, pw, pu, pb, pp, pP, pc, ph, py, pl,
                                    cg, cc, cm, chp)
        else:
            for blk in prange(nblocks, num_threads=nteam, schedule='static', chunksize=1):
                r0 = <int> ((<i64> blk * N) // nblocks)
                r1 = <int> ((<i64> (blk + 1) * N) // nblocks)
                status += _run_rows(&s, r0, r1, px, pw, pu, pb, pp, pP, pc, ph, py, pl,
                                    cg, cc, cm, chp)
    if status != 0:
        raise MemoryError("fastlstm: could not allocate the kernel workspace")

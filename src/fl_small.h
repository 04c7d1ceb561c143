/* Small-problem LSTM forward: no packing, no BLAS, no allocation, one row at a time.
 *
 * For tiny layers (a tutorial cell, a single step) the cost of a call is the call
 * itself: a BLAS gemm or a packed-weight copy costs more than the arithmetic.  Each batch
 * row runs through its own time steps (rows are independent), so variable lengths and
 * the reverse direction are just a different list of time indices per row:
 *
 *     z = x_t @ W  and  r = h @ U   (row vector times row-major (K, 4H): fl_packed.h's
 *                                    vector-matrix loop, along the 4H columns)
 *     gates, c, m = fl_pointwise_fwd(z, r, b, ...)       (fl_pointwise.h; for tanh /
 *                   sigmoid fl_packed.h's vector cell update of a row, fl_pk_rowcell_all)
 *
 * Scratch: three rows of 4H numbers on the stack, so H is limited to FL_SMALL_MAX_H.
 */
#ifndef FL_SMALL_H
#define FL_SMALL_H

#include <string.h>

#include "fl_packed.h"
#include "fl_pointwise.h"

#define FL_SMALL_MAX_H 128

#define FL_SMALL_DEFINE(T, SUF)                                                            \
/* out (4H) = v (K) @ M (K, 4H): fl_packed.h's vector-matrix loop on one thread (AVX2 +  \
   FMA when the packed kernel uses them, as its ISA setting says) */                      \
static void fl_small_vecmat##SUF(int K, int H4, const T *restrict v,                       \
                                 const T *restrict M, T *restrict out)                     \
{                                                                                          \
    fl_pk_vecmat##SUF(K, H4, v, 1, M, H4, out, 0, 1);                                      \
}                                                                                          \
                                                                                           \
/* rows [0, N) of a sequence; the row of (n, t) in X, Y and the caches is n*rn + t*rt.    \
 * c (N, H), h (N, H): the state, in place.  lengths: (N,) or NULL.  Y is written only    \
 * at valid steps (the caller zero-fills it when there are lengths). */                   \
static void fl_small_forward##SUF(int N, int Tn, int In, int H, long long rn, long long rt, \
                                  const T *X, const T *W, const T *U, const T *b,          \
                                  const T *peep, const long long *lengths, int reverse,    \
                                  int act, int rec, int use_clip, T clip,                  \
                                  T *c, T *h, T *Y, T *cache_gates, T *cache_c)            \
{                                                                                          \
    T z[4 * FL_SMALL_MAX_H], r[4 * FL_SMALL_MAX_H], g[4 * FL_SMALL_MAX_H];                 \
    const int H4 = 4 * H;                                                                  \
    /* tanh / sigmoid: fl_packed.h's vector cell update of a row (as its one-row step) */ \
    const int vcell = act == FL_ACT_TANH && rec == FL_REC_SIGMOID;                         \
    int n, k;                                                                              \
    for (n = 0; n < N; n++) {                                                              \
        const long long L = lengths ? lengths[n] : Tn;                                     \
        T *cn = c + (long long) n * H, *hn = h + (long long) n * H;                        \
        for (k = 0; k < L; k++) {                                                          \
            const long long t = reverse ? L - 1 - k : k;                                   \
            const long long row = n * rn + t * rt;                                         \
            T *gates = cache_gates ? cache_gates + row * H4 : g;                           \
            fl_small_vecmat##SUF(In, H4, X + row * In, W, z);                              \
            fl_small_vecmat##SUF(H, H4, hn, U, r);                                         \
            if (!vcell || fl_pk_rowcell_all##SUF(H, r, z, b, peep, use_clip, clip, cn, hn, \
                                                 cache_gates ? gates : NULL,               \
                                                 cache_c ? cache_c + row * H : NULL) < 0)  \
                fl_pointwise_fwd##SUF(H, z, r, b, peep, use_clip, clip, act, rec, cn, hn,  \
                                      gates, cache_c ? cache_c + row * H : NULL);          \
            memcpy(Y + row * H, hn, (size_t) H * sizeof(T));                               \
        }                                                                                  \
    }                                                                                      \
}

FL_SMALL_DEFINE(float, f)
FL_SMALL_DEFINE(double, d)

#endif

/* Vectorisable activations and the fused LSTM pointwise stages, float and double.
 *
 * The loops are plain C that gcc -O3 auto-vectorises (no libm calls inside them, no
 * branches that depend on the data).  exp() is a Cephes-style range reduction with a
 * polynomial (float) or Pade approximant (double), accurate to about 1 ulp; sigmoid and
 * tanh are built on it.  Clamps are written as comparisons that keep NaN, so a NaN input
 * propagates to the outputs of its own row and nowhere else.
 *
 * Gate blocks are (i, f, g, o), each H wide.
 */
#ifndef FL_POINTWISE_H
#define FL_POINTWISE_H

#include <stdint.h>
#include <string.h>

#define FL_ACT_TANH 0
#define FL_ACT_RELU 1
#define FL_ACT_SIGMOID 2
#define FL_ACT_LINEAR 3

#define FL_REC_SIGMOID 0
#define FL_REC_HARD_SIGMOID 1     /* Keras 3: clip(x / 6 + 0.5, 0, 1) = relu6(x + 3) / 6 */
#define FL_REC_HARD_SIGMOID_K2 2  /* Keras 2: clip(0.2 x + 0.5, 0, 1) */

#if defined(__GNUC__) || defined(__clang__)
#define FL_INLINE static inline __attribute__((always_inline))
#else
#define FL_INLINE static inline
#endif

/* ---- exp -------------------------------------------------------------------------- */

/* The cores of exp, shared with the vector versions in fl_packed.h (TYPE: float or double,
 * or a GNU vector of them); x is already clamped (float: [-87, 88.7], double: [-708, 709.7]) or
 * NaN.  Both round x / ln 2 to an integer n by adding a magic number (1.5 * 2^23 or 1.5 *
 * 2^52), then compute p = exp(r), r = x - n ln 2 (ln 2 in two parts), |r| <= ln(2) / 2;
 * the caller scales p by 2^n, whose exponent field it takes from t's low mantissa bits.
 * float: the magic number is 1.5 * 2^23 + 127, which leaves n + 127 there; a fitted
 * minimax polynomial of degree 6 (relative error 4e-9; every float input checked: at
 * most 0.91 ulp with FMA, 1.18 without).  double: Cephes' rational approximation. */
#define FL_EXPF_MAGIC 12583039.0f
/* the reduction and (e^r - 1) / r in p, r in r_ */
#define FL_EXPF_REDUCE(TYPE, x, t, r_, p)                                                  \
    do {                                                                                   \
        TYPE n_;                                                                           \
        t = (x) * 1.44269504088896341f + FL_EXPF_MAGIC;                                    \
        n_ = t - FL_EXPF_MAGIC;                                                            \
        r_ = (x) - n_ * 0.693359375f;                                                      \
        r_ = r_ - n_ * -2.12194440e-4f;                                                    \
        p = r_ * 1.381461275741458E-3f + 8.368710055947304E-3f;                            \
        p = p * r_ + 4.166838899254799E-2f;                                                \
        p = p * r_ + 1.666652113199234E-1f;                                                \
        p = p * r_ + 4.999999403953552E-1f;                                                \
        p = p * r_ + 1.0f;                                                                 \
    } while (0)
#define FL_EXPF_CORE(TYPE, x, t, p)                                                        \
    do {                                                                                   \
        TYPE rc_;                                                                          \
        FL_EXPF_REDUCE(TYPE, x, t, rc_, p);                                                \
        p = p * rc_ + 1.0f;                                                                \
    } while (0)
/* e^r - 1 (the caller forms e^x - 1 = 2^n q + (2^n - 1)): no cancellation near x = 0 */
#define FL_EM1F_CORE(TYPE, x, t, q)                                                        \
    do {                                                                                   \
        TYPE rc_;                                                                          \
        FL_EXPF_REDUCE(TYPE, x, t, rc_, q);                                                \
        q = q * rc_;                                                                       \
    } while (0)
#define FL_EXP_MAGIC 6755399441055744.0
/* the reduction and e^r - 1 = 2 P(r) / (Q(r) - P(r)) in q */
#define FL_EM1_CORE(TYPE, x, t, q)                                                         \
    do {                                                                                   \
        TYPE n_, r_, rr_, px_, qx_;                                                        \
        t = (x) * 1.4426950408889634073599 + FL_EXP_MAGIC;                                 \
        n_ = t - FL_EXP_MAGIC;                                                             \
        r_ = (x) - n_ * 6.93145751953125E-1;                                               \
        r_ = r_ - n_ * 1.42860682030941723212E-6;                                          \
        rr_ = r_ * r_;                                                                     \
        px_ = r_ * ((1.26177193074810590878E-4 * rr_ + 3.02994407707441961300E-2) * rr_    \
                    + 9.99999999999999999910E-1);                                          \
        qx_ = ((3.00198505138664455042E-6 * rr_ + 2.52448340349684104192E-3) * rr_         \
               + 2.27265548208155028766E-1) * rr_ + 2.00000000000000000009E0;              \
        q = 2.0 * (px_ / (qx_ - px_));                                                     \
    } while (0)
#define FL_EXP_CORE(TYPE, x, t, p)                                                         \
    do {                                                                                   \
        FL_EM1_CORE(TYPE, x, t, p);                                                        \
        p = 1.0 + p;                                                                       \
    } while (0)

/* exp(x): x clamped to [-87, 88.7] (float) or [-708, 709.7] (double); NaN passes.  At
 * the top of the range n = 128 (1024) and 2^n's exponent field is all ones: the scale is
 * +inf, so exp overflows to +inf from x ~ 88.38 (709.44) on, where the true value is
 * above 2^127.5 (2^1023.5): a sigmoid of a pre-activation below that is exactly 0, not a
 * floor of 1 / (1 + e^88) = 6e-39 that an unbounded activation (relu, linear) of a huge
 * candidate value could multiply up to O(1).  Below -87 / -708 exp stays at e^-87 /
 * e^-708: every use adds 1 to it. */
#define FL_EXPF_HI 88.7f
#define FL_EXP_HI 709.7

FL_INLINE float fl_expf(float x)
{
    float t, p, scale;
    uint32_t ti;
    x = x < -87.0f ? -87.0f : x;  /* comparisons keep NaN */
    x = x > FL_EXPF_HI ? FL_EXPF_HI : x;
    FL_EXPF_CORE(float, x, t, p);
    memcpy(&ti, &t, 4);
    ti <<= 23;                     /* n + 127, the exponent field of 2^n */
    memcpy(&scale, &ti, 4);
    return p * scale;
}

FL_INLINE double fl_exp(double x)
{
    const double magic = FL_EXP_MAGIC;
    double t, p, scale;
    uint64_t ti, mi, e;
    x = x < -708.0 ? -708.0 : x;
    x = x > FL_EXP_HI ? FL_EXP_HI : x;
    FL_EXP_CORE(double, x, t, p);
    memcpy(&ti, &t, 8);
    memcpy(&mi, &magic, 8);
    e = (ti - mi + 1023u) << 52;
    memcpy(&scale, &e, 8);
    return p * scale;
}

/* e^x - 1 for x <= 0 (clamped at -87 / -708; NaN passes), with the relative accuracy of
 * exp near x = 0, where e^x - 1 computed from e^x cancels: tanh is built on it. */
FL_INLINE float fl_em1nf(float x)
{
    float t, q, scale;
    uint32_t ti;
    x = x < -87.0f ? -87.0f : x;
    FL_EM1F_CORE(float, x, t, q);
    memcpy(&ti, &t, 4);
    ti <<= 23;
    memcpy(&scale, &ti, 4);
    return scale * q + (scale - 1.0f);
}

FL_INLINE double fl_em1n(double x)
{
    const double magic = FL_EXP_MAGIC;
    double t, q, scale;
    uint64_t ti, mi, e;
    x = x < -708.0 ? -708.0 : x;
    FL_EM1_CORE(double, x, t, q);
    memcpy(&ti, &t, 8);
    memcpy(&mi, &magic, 8);
    e = (ti - mi + 1023u) << 52;
    memcpy(&scale, &e, 8);
    return scale * q + (scale - 1.0);
}

/* ---- activations over arrays (in place) ------------------------------------------- */

/* tanh |x| = (1 - e) / (1 + e), e = exp(-2|x|), written with m = e - 1 (fl_em1n) as
 * m / (-2 - m): relative accuracy near 0 too (1 - e cancels there); the sign is x's
 * (tanh(+0) = +0: the quotient is -0 there).
 * The hard sigmoids as (x + 3) / 6 and (x + 2.5) / 5: x / 6 + 0.5 and 0.2 x + 0.5 cancel
 * just above the lower knee (25-37 % off for x one ulp above it in float32). */
#define FL_DEFINE_ACTIVATIONS(T, SUF, EXP, EM1N, FABS, COPYSIGN)                        \
FL_INLINE T fl_sigmoid##SUF(T x) { return (T)1 / ((T)1 + EXP(-x)); }                   \
FL_INLINE T fl_tanh##SUF(T x)                                                          \
{                                                                                      \
    T m = EM1N((T)-2 * FABS(x));                                                       \
    return COPYSIGN(FABS(m / ((T)-2 - m)), x);                                         \
}                                                                                      \
static void fl_act_inplace##SUF(int kind, T *restrict a, int n)                        \
{                                                                                      \
    int j;                                                                             \
    switch (kind) {                                                                    \
    case FL_ACT_TANH:                                                                  \
        for (j = 0; j < n; j++) a[j] = fl_tanh##SUF(a[j]);                             \
        break;                                                                         \
    case FL_ACT_RELU:                                                                  \
        for (j = 0; j < n; j++) a[j] = a[j] < 0 ? (T)0 : a[j];                         \
        break;                                                                         \
    case FL_ACT_SIGMOID:                                                               \
        for (j = 0; j < n; j++) a[j] = fl_sigmoid##SUF(a[j]);                          \
        break;                                                                         \
    default:                                                                           \
        break;                                                                         \
    }                                                                                  \
}                                                                                      \
static void fl_rec_inplace##SUF(int kind, T *restrict a, int n)                        \
{                                                                                      \
    int j;                                                                             \
    T v;                                                                               \
    switch (kind) {                                                                    \
    case FL_REC_SIGMOID:                                                               \
        for (j = 0; j < n; j++) a[j] = fl_sigmoid##SUF(a[j]);                          \
        break;                                                                         \
    case FL_REC_HARD_SIGMOID:                                                          \
        for (j = 0; j < n; j++) {                                                      \
            v = (a[j] + (T)3) / (T)6;                                                  \
            v = v < 0 ? (T)0 : v;                                                      \
            a[j] = v > 1 ? (T)1 : v;                                                   \
        }                                                                              \
        break;                                                                         \
    default:                                                                           \
        for (j = 0; j < n; j++) {                                                      \
            v = (a[j] + (T)2.5) / (T)5;                                                \
            v = v < 0 ? (T)0 : v;                                                      \
            a[j] = v > 1 ? (T)1 : v;                                                   \
        }                                                                              \
        break;                                                                         \
    }                                                                                  \
}

FL_DEFINE_ACTIVATIONS(float, f, fl_expf, fl_em1nf, __builtin_fabsf, __builtin_copysignf)
FL_DEFINE_ACTIVATIONS(double, d, fl_exp, fl_em1n, __builtin_fabs, __builtin_copysign)

#if defined(__GNUC__) || defined(__clang__)
#define FL_UNUSED __attribute__((unused))   /* not every module uses every helper */
#else
#define FL_UNUSED
#endif

/* ---- fused forward step for one batch row ------------------------------------------
 *
 *   gates[0:4H] = z + gx + b  (+ peephole terms)  -> activated (i, f, g, o)
 *   c_raw       = f * c_prev + i * g ;  c = clip(c_raw)  (clip only when use_clip)
 *   m           = o * act(c)
 *
 * z: recurrent product h_prev @ U (4H); gx: input product x_t @ W (4H); b: bias (4H);
 * peep: (3, H) peepholes p_i, p_f, p_o, or NULL; c: in c_prev, out the new (clipped) c;
 * m: out (H); gates: out, post-activation gates (4H); c_raw: out, pre-clip c, or NULL.
 */
#define FL_DEFINE_POINTWISE(T, SUF)                                                     \
FL_UNUSED static void fl_pointwise_fwd##SUF(int H, const T *restrict z,                \
                                  const T *restrict gx,                                 \
                                  const T *restrict b, const T *restrict peep,          \
                                  int use_clip, T clip, int act, int rec,               \
                                  T *restrict c, T *restrict m, T *restrict gates,      \
                                  T *restrict c_raw)                                    \
{                                                                                      \
    int j;                                                                             \
    const int H4 = 4 * H;                                                              \
    for (j = 0; j < H4; j++) gates[j] = z[j] + gx[j] + b[j];                           \
    if (peep != NULL) {                                                                \
        for (j = 0; j < H; j++) {                                                      \
            gates[j] += peep[j] * c[j];                                                \
            gates[H + j] += peep[H + j] * c[j];                                        \
        }                                                                              \
    } else {                                                                           \
        fl_rec_inplace##SUF(rec, gates + 3 * H, H);                                    \
    }                                                                                  \
    fl_rec_inplace##SUF(rec, gates, 2 * H);                                            \
    fl_act_inplace##SUF(act, gates + 2 * H, H);                                        \
    for (j = 0; j < H; j++) {                                                          \
        T cn = gates[H + j] * c[j] + gates[j] * gates[2 * H + j];                      \
        if (c_raw != NULL) c_raw[j] = cn;                                              \
        c[j] = cn;                                                                     \
    }                                                                                  \
    if (use_clip) {                                                                    \
        for (j = 0; j < H; j++) {                                                      \
            T v = c[j];                                                                \
            v = v < -clip ? -clip : v;                                                 \
            c[j] = v > clip ? clip : v;                                                \
        }                                                                              \
    }                                                                                  \
    if (peep != NULL) {                                                                \
        for (j = 0; j < H; j++) gates[3 * H + j] += peep[2 * H + j] * c[j];            \
        fl_rec_inplace##SUF(rec, gates + 3 * H, H);                                    \
    }                                                                                  \
    for (j = 0; j < H; j++) m[j] = c[j];                                               \
    fl_act_inplace##SUF(act, m, H);                                                    \
    for (j = 0; j < H; j++) m[j] *= gates[3 * H + j];                                  \
}                                                                                      \
/* v = clip(v) in place (NaN kept) */                                                  \
FL_UNUSED static void fl_clip_inplace##SUF(T *restrict v, int n, T clip)               \
{                                                                                      \
    int j;                                                                             \
    for (j = 0; j < n; j++) {                                                          \
        T x = v[j];                                                                    \
        x = x < -clip ? -clip : x;                                                     \
        v[j] = x > clip ? clip : x;                                                    \
    }                                                                                  \
}

FL_DEFINE_POINTWISE(float, f)
FL_DEFINE_POINTWISE(double, d)

#endif

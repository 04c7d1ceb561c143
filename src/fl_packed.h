/* Packed-weight LSTM recurrence: the whole step (input and recurrent products, gates, cell
 * update) in one register-blocked kernel, for float and double.
 *
 * Per call the stacked weights [W; U] ((I + H) x 4H) are copied once into panels: panel p
 * holds NU hidden units (NU = 16 floats or 8 doubles, two 256-bit vectors) for each of the
 * four gates, and within a gate the (I + H) rows of NU values are contiguous:
 *
 *     panel p starts at p * PS, PS = (4 * K + 7) * NU, K = I + H, and holds
 *     [(q * K + k) * NU + j]      = WU[k, q * H + p * NU + j]   gate q, row k of [W; U]
 *     [(4 * K + q) * NU + j]      = b[q * H + p * NU + j]        bias
 *     [(4 * K + 4 + r) * NU + j]  = peepholes[r, p * NU + j]     (zeros without peepholes)
 *   with zeros for the units past H in the last panel.
 *
 * Steps run in time blocks.  A block starts with the input products x_t @ W of all its
 * steps (tiles of MR (step, row) pairs); then each step a thread computes, for its rows
 * and its panels, a tile of MR rows x NU units for each gate, adding h_{t-1} @ U to those
 * products in MR x 2 vector accumulators (12 of the 16 AVX2 registers; tiles of 1-4 rows
 * take several gates at once), and runs the cell update for those rows and units straight
 * away.  The microkernels are separate functions per instruction set; the loops use GCC
 * vector extensions, so that the same source compiles to AVX2 + FMA (chosen at run time
 * when the CPU has them) and to the baseline SSE2 of x86-64.  On CPUs with AVX-512 a
 * panel row is one 512-bit vector: one microkernel (fl_pk_mkz) computes the four gates of
 * up to MR rows at once in 4 x MR accumulators (24 of the 32 registers), and the cell
 * update runs on 512-bit vectors; every element is computed by the same operations as on
 * AVX2, so the two give the same bits.  There, inference over whole sequences leaves the
 * cell update of a tile of 1-6 rows pending and runs it inside the thread's next tile of
 * as many rows (fl_pk_mkzc), so that its latency chains (exp, division) run beside that
 * tile's multiply-adds instead of stalling between the tiles; a step's last one goes into
 * the next step's first tile, unless threads wait for each other at each step (units) or
 * the time block ends.
 *
 * The same microkernels serve the backward's step product dh = dG @ U^T on U packed once
 * (fl_pk_packT / fl_pk_dotT), and its common gate-gradient case (fl_pk_bwd).
 *
 * With variable lengths the kernel's rows are the batch rows sorted by decreasing length
 * (perm), so that rows past their length gather in whole tiles, which are skipped.
 *
 * Threads own either whole units (panels; all threads must then wait for each other at
 * the end of every step, since step t+1 reads every unit of h_t) or whole rows (no
 * barrier).  Every output element is computed by the same sequence of operations whatever
 * the partition, so results do not depend on the number of threads.
 */
#ifndef FL_PACKED_H
#define FL_PACKED_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fl_pointwise.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* wait for the rest of the OpenMP team (orphaned barrier: binds to the caller's region) */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((unused))
#endif
static void fl_pk_barrier(void)
{
#ifdef _OPENMP
#pragma omp barrier
#endif
}

typedef long long fl_i64;

/* The per-step wait of threads that own hidden units: a spinning barrier on one cache line
 * (libgomp's barrier costs ~0.3 us on the development machine, and a step at batch 1 is
 * about 1 us).  count: threads arrived; gen: completed waits; slow: waits that outlasted
 * FL_PK_SPIN_POLLS polls with PAUSE (~50 us), after which the waiting thread yields its CPU
 * at every poll: the partner is not running (more busy threads than cores), and the
 * caller, told so, stops splitting units for a while.  Acquire/release order makes every
 * write before the wait visible to every thread after it. */
typedef struct { int count, gen, slow; char pad[52]; } fl_pk_spin;
#define FL_PK_SPIN_POLLS 2000
#if defined(__GNUC__) || defined(__clang__)
#define FL_PK_SPIN_FN static __attribute__((unused))
#else
#define FL_PK_SPIN_FN static
#endif
#if (defined(__GNUC__) || defined(__clang__)) && defined(__unix__)
#include <sched.h>
FL_PK_SPIN_FN void fl_pk_spin_wait_polls(fl_pk_spin *b, int nt, long max_polls)
{
    const int gen = __atomic_load_n(&b->gen, __ATOMIC_ACQUIRE);
    long polls = 0;
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == nt) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->gen, gen + 1, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&b->gen, __ATOMIC_ACQUIRE) == gen) {
        if (polls++ < max_polls) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        } else {
            if (polls == max_polls + 1) __atomic_add_fetch(&b->slow, 1, __ATOMIC_RELAXED);
            sched_yield();
        }
    }
}
#else
FL_PK_SPIN_FN void fl_pk_spin_wait_polls(fl_pk_spin *b, int nt, long max_polls)
{
    (void) b; (void) nt; (void) max_polls;
    fl_pk_barrier();
}
#endif
FL_PK_SPIN_FN void fl_pk_spin_wait(fl_pk_spin *b, int nt)
{
    fl_pk_spin_wait_polls(b, nt, FL_PK_SPIN_POLLS);
}

/* helpers a module including this file may not use */
#if defined(__GNUC__) || defined(__clang__)
#define FL_PK_MAYBE_UNUSED __attribute__((unused))
#else
#define FL_PK_MAYBE_UNUSED
#endif

#define FL_PK_MR 6
#define FL_PK_NU_F 16
#define FL_PK_NU_D 8
#define FL_PK_ALIGN 64

#if defined(__GNUC__) || defined(__clang__)
#define FL_PK_VECTOR 1
typedef float fl_pk_vf __attribute__((vector_size(32)));
typedef double fl_pk_vd __attribute__((vector_size(32)));
#else
#define FL_PK_VECTOR 0
#endif

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define FL_PK_X86 1
#define FL_PK_TARGET_AVX2 __attribute__((target("avx2,fma")))
/* 512-bit vectors also where the compiler vectorises loops itself (fl_pk_vecmat) */
#if defined(__clang__)
#define FL_PK_TARGET_AVX512                                                                \
    __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"),                  \
                   min_vector_width(512)))
#else
#define FL_PK_TARGET_AVX512                                                                \
    __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,"                   \
                          "prefer-vector-width=512")))
#endif
#include <immintrin.h>
/* one panel row (NU numbers: 16 floats or 8 doubles) in one 512-bit vector */
typedef float fl_pk_zf __attribute__((vector_size(64)));
typedef double fl_pk_zd __attribute__((vector_size(64)));
#else
#define FL_PK_X86 0
#define FL_PK_TARGET_AVX2
#endif

/* M(T, SUF, NU, V, ISA, ATTR) for float and double, baseline and (on x86) AVX2 + FMA;
 * FL_PK_FOR_AVX512: the same code on 512-bit vectors (one panel row each) for AVX-512: the
 * sequence kernel and its cell update, whose products run in fl_pk_mkz */
#if FL_PK_X86
#define FL_PK_FOR_ISAS(M)                                                                  \
    M(float, f, FL_PK_NU_F, fl_pk_vf, base, ) M(double, d, FL_PK_NU_D, fl_pk_vd, base, )   \
    M(float, f, FL_PK_NU_F, fl_pk_vf, avx2, FL_PK_TARGET_AVX2)                             \
    M(double, d, FL_PK_NU_D, fl_pk_vd, avx2, FL_PK_TARGET_AVX2)
#define FL_PK_FOR_AVX512(M)                                                                \
    M(float, f, FL_PK_NU_F, fl_pk_zf, avx512, FL_PK_TARGET_AVX512)                         \
    M(double, d, FL_PK_NU_D, fl_pk_zd, avx512, FL_PK_TARGET_AVX512)
#else
#define FL_PK_FOR_ISAS(M)                                                                  \
    M(float, f, FL_PK_NU_F, fl_pk_vf, base, ) M(double, d, FL_PK_NU_D, fl_pk_vd, base, )
#define FL_PK_FOR_AVX512(M)
#endif

/* instruction set used by the packed kernel: 0 baseline, 1 AVX2 + FMA, 2 AVX-512 (F, VL,
 * DQ, BW; the AVX2 code where no 512-bit code exists); -1 = not chosen */
static int fl_pk_isa = -1;

/* the best instruction set this CPU runs: 0, 1 or 2 as above */
static int fl_pk_cpu_isa(void)
{
#if FL_PK_X86
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return 0;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
            && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
        return 2;
    return 1;
#else
    return 0;
#endif
}

/* Choose the instruction set: -1 automatic (the best the CPU runs), 0 baseline, 1 AVX2,
 * 2 AVX-512; one the CPU lacks falls back to the best it runs below it.  Returns the one
 * in use. */
static int fl_pk_set_isa(int isa)
{
    int has = fl_pk_cpu_isa();
    if (isa < 0 || isa > has) isa = has;
    fl_pk_isa = isa;
    return fl_pk_isa;
}

/* threads in the current OpenMP team (1 outside a parallel region or without OpenMP) */
FL_PK_MAYBE_UNUSED static int fl_pk_team_size(void)
{
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* inside an active parallel region (a nested team would run on one thread anyway) */
FL_PK_MAYBE_UNUSED static int fl_pk_in_parallel(void)
{
#ifdef _OPENMP
    return omp_in_parallel();
#else
    return 0;
#endif
}

FL_PK_MAYBE_UNUSED static int fl_pk_team_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static int fl_pk_get_isa(void)
{
    if (fl_pk_isa < 0) fl_pk_set_isa(-1);
    return fl_pk_isa;
}

static void *fl_pk_alloc(size_t bytes)
{
    void *p = NULL;
    if (bytes == 0) bytes = FL_PK_ALIGN;
    bytes = (bytes + FL_PK_ALIGN - 1) / FL_PK_ALIGN * FL_PK_ALIGN;
#if defined(_WIN32)
    p = _aligned_malloc(bytes, FL_PK_ALIGN);
#else
    if (posix_memalign(&p, FL_PK_ALIGN, bytes) != 0) p = NULL;
#endif
    return p;
}

static void fl_pk_free(void *p)
{
#if defined(_WIN32)
    _aligned_free(p);
#else
    free(p);
#endif
}

/* ---- the kernel, generated per type ------------------------------------------------- */

#define FL_PK_DEFINE(T, SUF, NU, V)                                                        \
                                                                                           \
typedef struct {                                                                           \
    int N, steps, In, H, kmax, reverse, act, rec, use_clip;                                 \
    fl_i64 rn, rt;           /* row of (n, t) in X, Y, caches: n * rn + t * rt */         \
    T clip;                                                                                \
    const fl_i64 *lengths;   /* (N,) or NULL */                                           \
    const int *perm;          /* kernel row i is batch row perm[i]; NULL: identity */     \
    const T *h0;              /* initial h in kernel row order (= h without perm) */      \
    const T *X;               /* (N*T, I) */                                               \
    int use_peep;                                                                          \
    const T *zero_row;        /* I zeros, the input of rows past their length */          \
    T *c;                     /* (N, H) in/out */                                          \
    T *h;                     /* (N, H) in/out */                                          \
    T *hbuf0, *hbuf1;         /* (N, H) scratch each */                                    \
    T *Y;                     /* (N*T, H) */                                               \
    T *cache_gates;           /* (N*T, 4H) post-activation gates, or NULL */               \
    T *cache_c;               /* (N*T, H) pre-clip cell state, or NULL */                  \
    int stream_cache;         /* write the cache past the CPU caches (non-temporal) */    \
    T *xo_same;               /* h_t also at row (n, t) here (ld_same apart), or NULL */  \
    fl_i64 ld_same;                                                                        \
    T *xo_next;               /* h_t also at the row of n's next step, or NULL */         \
    fl_i64 ld_next;                                                                        \
    int tb;                   /* steps per time block (input products computed ahead) */  \
    fl_pk_spin *spin;         /* the per-step wait of threads owning units (zeroed) */    \
} fl_pk_cfg##SUF;                                                                          \
                                                                                           \
static int fl_pk_npanels##SUF(int H) { return (H + NU - 1) / NU; }                         \
                                                                                           \
static fl_i64 fl_pk_panel_stride##SUF(int I, int H)                                      \
{                                                                                          \
    return (4 * ((fl_i64) I + H) + 7) * NU;                                               \
}                                                                                          \
                                                                                           \
FL_PK_MAYBE_UNUSED static size_t fl_pk_packed_size##SUF(int I, int H)                     \
{                                                                                          \
    return (size_t) fl_pk_npanels##SUF(H) * (size_t) fl_pk_panel_stride##SUF(I, H);        \
}                                                                                          \
                                                                                           \
/* the x rows of a tile of mr (step, row) pairs: rows past their length (NULL) read     \
 * zero_row; returns how many are not */                                                   \
static inline int fl_pk_xtile##SUF(const T **xa, const T *const *xrows, int mr,            \
                                   const T *zero_row)                                      \
{                                                                                          \
    int i, active = 0;                                                                     \
    for (i = 0; i < mr; i++) {                                                             \
        xa[i] = xrows[i];                                                                  \
        active += xa[i] != NULL;                                                           \
        if (xa[i] == NULL) xa[i] = zero_row;                                               \
    }                                                                                      \
    return active;                                                                         \
}                                                                                          \
                                                                                           \
static inline void fl_pk_copy_pad##SUF(T *dst, const T *src, int nu)                       \
{                                                                                          \
    int j = 0;                                                                             \
    if (src && nu == NU) {   /* a whole panel: a fixed-size copy, inlined */               \
        memcpy(dst, src, NU * sizeof(T));                                                  \
        return;                                                                            \
    }                                                                                      \
    if (src) for (; j < nu; j++) dst[j] = src[j];                                          \
    for (; j < NU; j++) dst[j] = 0;                                                        \
}                                                                                          \
                                                                                           \
/* W (I, 4H), U (H, 4H), b (4H,), peep (3, H) or NULL, into panels [pa, pb) (top of this  \
 * file), panel pa at out; threads pack disjoint panel ranges, or each the whole into a    \
 * copy of its own.                                                                        \
 * The body is inlined into one function per instruction set (on AVX-512 a panel row is   \
 * one 512-bit load and store). */                                                         \
static inline __attribute__((always_inline)) void                                          \
fl_pk_pack_body##SUF(int I, int H, const T *W, const T *U, const T *b, const T *peep,      \
                     T *out, int pa, int pb)                                               \
{                                                                                          \
    const int K = I + H, pw = H / NU < pb ? H / NU : pb;   /* [pa, pw): whole panels */   \
    const fl_i64 H4 = 4 * (fl_i64) H, PS = fl_pk_panel_stride##SUF(I, H);                \
    int p, q, k;                                                                           \
    /* source rows in order (a walk down each column would miss the cache and the TLB     \
       at every row: it cost more than a step at batch 8), and in a row its gates and     \
       panels in order: the reads run straight along the row */                            \
    for (k = 0; k < K; k++) {                                                              \
        const T *src = k < I ? W + k * H4 : U + (k - I) * H4;                              \
        for (q = 0; q < 4; q++) {                                                          \
            const T *sq = src + q * (fl_i64) H;                                            \
            T *dq = out + ((fl_i64) q * K + k) * NU;                                       \
            for (p = pa; p < pw; p++)                                                      \
                memcpy(dq + (p - pa) * PS, sq + (fl_i64) p * NU, NU * sizeof(T));          \
            for (; p < pb; p++)                                                            \
                fl_pk_copy_pad##SUF(dq + (p - pa) * PS, sq + (fl_i64) p * NU, H - p * NU); \
        }                                                                                  \
    }                                                                                      \
    for (p = pa; p < pb; p++) {                                                            \
        int u0 = p * NU, nu = H - u0 < NU ? H - u0 : NU;                                   \
        T *dst = out + (p - pa) * PS + 4 * (fl_i64) K * NU;                                \
        for (q = 0; q < 4; q++, dst += NU)                                                 \
            fl_pk_copy_pad##SUF(dst, b + q * (fl_i64) H + u0, nu);                        \
        for (q = 0; q < 3; q++, dst += NU)                                                 \
            fl_pk_copy_pad##SUF(dst, peep ? peep + q * (fl_i64) H + u0 : NULL, nu);       \
    }                                                                                      \
}                                                                                          \
FL_PK_PACK_AVX512(T, SUF)                                                                  \
static void fl_pk_pack##SUF##_base(int I, int H, const T *W, const T *U, const T *b,       \
                                   const T *peep, T *out, int pa, int pb)                  \
{                                                                                          \
    fl_pk_pack_body##SUF(I, H, W, U, b, peep, out, pa, pb);                                \
}                                                                                          \
FL_PK_MAYBE_UNUSED static void fl_pk_pack##SUF(int I, int H, const T *W, const T *U,       \
                                               const T *b, const T *peep, T *out, int pa,  \
                                               int pb)                                     \
{                                                                                          \
    FL_PK_PACK_CALL_AVX512(SUF)                                                            \
    fl_pk_pack##SUF##_base(I, H, W, U, b, peep, out, pa, pb);                              \
}

#if FL_PK_X86
#define FL_PK_PACK_AVX512(T, SUF)                                                          \
FL_PK_TARGET_AVX512 static void fl_pk_pack##SUF##_avx512(int I, int H, const T *W,         \
                                                         const T *U, const T *b,           \
                                                         const T *peep, T *out, int pa,    \
                                                         int pb)                           \
{                                                                                          \
    fl_pk_pack_body##SUF(I, H, W, U, b, peep, out, pa, pb);                                \
}
#define FL_PK_PACK_CALL_AVX512(SUF)                                                        \
    if (fl_pk_get_isa() == 2) {                                                            \
        fl_pk_pack##SUF##_avx512(I, H, W, U, b, peep, out, pa, pb);                        \
        return;                                                                            \
    }
#else
#define FL_PK_PACK_AVX512(T, SUF)
#define FL_PK_PACK_CALL_AVX512(SUF)
#endif

FL_PK_DEFINE(float, f, FL_PK_NU_F, fl_pk_vf)
FL_PK_DEFINE(double, d, FL_PK_NU_D, fl_pk_vd)

/* Row blocks of at most FL_PK_MR rows, an even number of them when the blocks keep at least
 * 4 rows: two threads owning rows then get the same work (64 rows: 12 blocks of 5 or 6
 * rows, not 11 blocks of which one thread would run 6), and no tile drops to the 1- to
 * 3-row kernels (slower, and summing in another order).  Depends on N only. */
static int fl_pk_nblocks(int N)
{
    int nb = (N + FL_PK_MR - 1) / FL_PK_MR;
    if ((nb & 1) && N >= 4 * (nb + 1)) nb++;
    return nb;
}

/* First row block of thread j of nt, when the blocks are cut into nt contiguous ranges of
 * about equal cost; prefix: nb + 1 cumulative block costs (prefix[0] = 0). */
FL_PK_MAYBE_UNUSED static int fl_pk_split(const fl_i64 *prefix, int nb, int nt, int j)
{
    fl_i64 target;
    int b = 0;
    if (j <= 0) return 0;
    if (j >= nt) return nb;
    target = prefix[nb] * j;
    while (b < nb && prefix[b] * nt < target) b++;
    if (b > 0 && target - prefix[b - 1] * nt < prefix[b] * nt - target) b--;
    return b;
}

/* first row of row block j (j = nblocks gives N) */
static int fl_pk_block_row(int N, int j)
{
    return (int) (((fl_i64) j * N) / fl_pk_nblocks(N));
}

/* ---- microkernel: z[MR][NU] = sum_k xa[i][k] * B[k][:]  (k < I)
 *                              + sum_k ha[i*ldh + k] * B[I + k][:]  (k < H)
 * written with vector extensions (two vectors per row) or, without them, scalar loops. */

#if FL_PK_VECTOR
/* unaligned vector load and store (one instruction each) */
#define FL_PK_VLD(V, p) ({ V v_; memcpy(&v_, (p), sizeof(V)); v_; })
#define FL_PK_VST(p, v) do { __typeof__(v) v_ = (v); memcpy((p), &v_, sizeof(v_)); } while (0)
/* CH independent accumulator chains per output vector (summed at the end, in a fixed
 * order): a 1- or 2-row tile would otherwise wait on the FMA latency at every k. */
#define FL_PK_MK_LOOP(T, NU, V, MR, CH, KN, ROWS)                                         \
    {                                                                                      \
        const T *Bk = B;                                                                   \
        fl_i64 k;                                                                          \
        _Pragma("GCC unroll 2")                                                            \
        for (k = 0; k + CH <= (fl_i64) (KN); k += CH, Bk += CH * NU) {                      \
            for (ch = 0; ch < CH; ch++) {                                                  \
                V b0 = *(const V *) (Bk + ch * NU), b1 = *(const V *) (Bk + ch * NU + VL); \
                for (i = 0; i < MR; i++) {                                                 \
                    T a = ROWS[i][k + ch];                                                 \
                    acc0[ch][i] += a * b0;                                                 \
                    acc1[ch][i] += a * b1;                                                 \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
        for (; k < (fl_i64) (KN); k++, Bk += NU) {                                         \
            V b0 = *(const V *) Bk, b1 = *(const V *) (Bk + VL);                           \
            for (i = 0; i < MR; i++) {                                                     \
                T a = ROWS[i][k];                                                          \
                acc0[0][i] += a * b0;                                                      \
                acc1[0][i] += a * b1;                                                      \
            }                                                                              \
        }                                                                                  \
    }
#define FL_PK_MK(T, SUF, NU, V, MR, CH, NAME, ISA, ATTR)                                   \
ATTR static __attribute__((noinline)) void                                                 \
fl_pk_##NAME##SUF##_##ISA##_##MR(int I, const T *const *xa, int H, const T *ha, fl_i64 ldh,        \
                     const T *B, T *z, int ldz, int init)                                  \
{                                                                                          \
    enum { VL = sizeof(V) / sizeof(T) };                                                   \
    V acc0[CH][MR], acc1[CH][MR];                                                          \
    const T *hr[MR];                                                                       \
    int i, ch;                                                                             \
    /* fully unrolled: the accumulators live in registers from the first load on (no      \
       round trip through the stack, whose narrower stores a vector load cannot forward) */\
    _Pragma("GCC unroll 16")                                                               \
    for (ch = 0; ch < CH; ch++)                                                            \
        _Pragma("GCC unroll 16")                                                           \
        for (i = 0; i < MR; i++) {                                                         \
            acc0[ch][i] = init && ch == 0 ? FL_PK_VLD(V, z + i * ldz) : (V){0};            \
            acc1[ch][i] = init && ch == 0 ? FL_PK_VLD(V, z + i * ldz + VL) : (V){0};       \
        }                                                                                  \
    FL_PK_MK_LOOP(T, NU, V, MR, CH, I, xa)                                                 \
    B += (fl_i64) I * NU;                                                                  \
    for (i = 0; i < MR; i++) hr[i] = ha + i * ldh;                                         \
    FL_PK_MK_LOOP(T, NU, V, MR, CH, H, hr)                                                 \
    _Pragma("GCC unroll 16")                                                               \
    for (ch = 1; ch < CH; ch++)                                                            \
        _Pragma("GCC unroll 16")                                                           \
        for (i = 0; i < MR; i++) { acc0[0][i] += acc0[ch][i]; acc1[0][i] += acc1[ch][i]; } \
    _Pragma("GCC unroll 16")                                                               \
    for (i = 0; i < MR; i++) {                                                             \
        FL_PK_VST(z + i * ldz, acc0[0][i]);                                                \
        FL_PK_VST(z + i * ldz + VL, acc1[0][i]);                                           \
    }                                                                                      \
}
#else
#define FL_PK_MK(T, SUF, NU, V, MR, CH, NAME, ISA, ATTR)                                   \
static void fl_pk_##NAME##SUF##_##ISA##_##MR(int I, const T *const *xa, int H, const T *ha,        \
                                 fl_i64 ldh, const T *B, T *z, int ldz, int init)          \
{                                                                                          \
    T acc[MR][NU];                                                                         \
    int i, j, k;                                                                           \
    for (i = 0; i < MR; i++) for (j = 0; j < NU; j++) acc[i][j] = init ? z[i * ldz + j] : 0; \
    for (k = 0; k < I; k++)                                                                \
        for (i = 0; i < MR; i++) {                                                         \
            T a = xa[i][k];                                                                \
            for (j = 0; j < NU; j++) acc[i][j] += a * B[k * NU + j];                       \
        }                                                                                  \
    B += (fl_i64) I * NU;                                                                 \
    for (k = 0; k < H; k++)                                                                \
        for (i = 0; i < MR; i++) {                                                         \
            T a = ha[i * ldh + k];                                                         \
            for (j = 0; j < NU; j++) acc[i][j] += a * B[k * NU + j];                       \
        }                                                                                  \
    for (i = 0; i < MR; i++) for (j = 0; j < NU; j++) z[i * ldz + j] = acc[i][j];          \
}
#endif

/* mk: the recurrent tiles (few rows: several chains); mk1: the input products of a time
 * block, always one chain per element, so that a value does not depend on which tile of
 * (step, row) pairs it fell in. */
#define FL_PK_MK_ALL(T, SUF, NU, V, ISA, ATTR)                                             \
    FL_PK_MK(T, SUF, NU, V, 1, 4, mk, ISA, ATTR) FL_PK_MK(T, SUF, NU, V, 2, 2, mk, ISA, ATTR) \
    FL_PK_MK(T, SUF, NU, V, 3, 2, mk, ISA, ATTR) FL_PK_MK(T, SUF, NU, V, 4, 1, mk, ISA, ATTR) \
    FL_PK_MK(T, SUF, NU, V, 5, 1, mk, ISA, ATTR) FL_PK_MK(T, SUF, NU, V, 6, 1, mk, ISA, ATTR) \
    FL_PK_MK(T, SUF, NU, V, 1, 1, mk1, ISA, ATTR) FL_PK_MK(T, SUF, NU, V, 2, 1, mk1, ISA, ATTR) \
    FL_PK_MK(T, SUF, NU, V, 3, 1, mk1, ISA, ATTR)

/* The microkernels are separate functions (not inlined into the long step function), so
 * that the compiler allocates their registers on their own. */
FL_PK_FOR_ISAS(FL_PK_MK_ALL)

/* A 4-row tile has only 8 accumulators per gate, barely enough to cover the FMA latency.
 * fl_pk_mkg computes NV of the tile's 8 output vectors (gate q = v / 2, half v % 2) at
 * once, across gates, so that 4 rows x 3 vectors keep 12 accumulators busy.  Every output
 * element is the same single chain of multiply-adds over k as in fl_pk_mk (CH = 1), so
 * the results are identical. */
#if FL_PK_VECTOR
#define FL_PK_MKG(T, SUF, NU, V, MR, NV, ISA, ATTR)                                        \
ATTR static __attribute__((noinline)) void                                                 \
fl_pk_mkg##SUF##_##ISA##_##MR##_##NV(int I, const T *const *xa, int H, const T *ha, fl_i64 ldh,    \
                             const T *B, fl_i64 gs, int v0, T *z, int ldz, int init)       \
{                                                                                          \
    enum { VL = sizeof(V) / sizeof(T) };                                                   \
    V acc[NV][MR];                                                                         \
    const T *Bv[NV], *hr[MR];                                                              \
    fl_i64 k;                                                                              \
    int i, v;                                                                              \
    _Pragma("GCC unroll 16")   /* registers from the first load on, as in fl_pk_mk */     \
    for (v = 0; v < NV; v++) {                                                             \
        const T *zv = z + ((v0 + v) / 2) * NU + ((v0 + v) % 2) * VL;                       \
        Bv[v] = B + ((v0 + v) / 2) * gs + ((v0 + v) % 2) * VL;                             \
        _Pragma("GCC unroll 16")                                                           \
        for (i = 0; i < MR; i++) acc[v][i] = init ? FL_PK_VLD(V, zv + i * ldz) : (V){0};   \
    }                                                                                      \
    for (k = 0; k < I; k++)                                                                \
        for (i = 0; i < MR; i++) {                                                         \
            T a = xa[i][k];                                                                \
            for (v = 0; v < NV; v++) acc[v][i] += a * *(const V *) (Bv[v] + k * NU);     \
        }                                                                                  \
    for (v = 0; v < NV; v++) Bv[v] += (fl_i64) I * NU;                                     \
    for (i = 0; i < MR; i++) hr[i] = ha + i * ldh;                                         \
    _Pragma("GCC unroll 2")                                                                \
    for (k = 0; k < H; k++) {                                                              \
        for (i = 0; i < MR; i++) {                                                         \
            T a = hr[i][k];                                                                \
            for (v = 0; v < NV; v++) acc[v][i] += a * *(const V *) Bv[v];                 \
        }                                                                                  \
        for (v = 0; v < NV; v++) Bv[v] += NU;                                              \
    }                                                                                      \
    _Pragma("GCC unroll 16")                                                               \
    for (v = 0; v < NV; v++)                                                               \
        _Pragma("GCC unroll 16")                                                           \
        for (i = 0; i < MR; i++)                                                           \
            FL_PK_VST(z + i * ldz + ((v0 + v) / 2) * NU + ((v0 + v) % 2) * VL, acc[v][i]);  \
}
/* tiles of 1 to 3 rows in the recurrence: 8 to 9 accumulators across gates as well (and
 * at most 16 vector registers in all) */
#define FL_PK_MKG_ALL(T, SUF, NU, V, ISA, ATTR)                                            \
    FL_PK_MKG(T, SUF, NU, V, 4, 3, ISA, ATTR) FL_PK_MKG(T, SUF, NU, V, 4, 2, ISA, ATTR)    \
    FL_PK_MKG(T, SUF, NU, V, 3, 3, ISA, ATTR) FL_PK_MKG(T, SUF, NU, V, 3, 2, ISA, ATTR)    \
    FL_PK_MKG(T, SUF, NU, V, 2, 4, ISA, ATTR)    \
    FL_PK_MKG(T, SUF, NU, V, 1, 8, ISA, ATTR)
FL_PK_FOR_ISAS(FL_PK_MKG_ALL)
#define FL_PK_GROUPED 1
#else
#define FL_PK_GROUPED 0
#define FL_PK_MKG_STUB(T, SUF, MR, NV)                                                         \
static void fl_pk_mkg##SUF##_base_##MR##_##NV(int I, const T *const *xa, int H,            \
                                              const T *ha,                                 \
                                    fl_i64 ldh, const T *B, fl_i64 gs, int v0, T *z,       \
                                    int ldz, int init)                                     \
{                                                                                          \
    (void) I; (void) xa; (void) H; (void) ha; (void) ldh; (void) B; (void) gs; (void) v0;  \
    (void) z; (void) ldz; (void) init;                                                     \
}
FL_PK_MKG_STUB(float, f, 4, 3) FL_PK_MKG_STUB(float, f, 4, 2) FL_PK_MKG_STUB(float, f, 3, 3)
FL_PK_MKG_STUB(float, f, 3, 2)
FL_PK_MKG_STUB(float, f, 2, 4) FL_PK_MKG_STUB(float, f, 1, 8)
FL_PK_MKG_STUB(double, d, 4, 3) FL_PK_MKG_STUB(double, d, 4, 2) FL_PK_MKG_STUB(double, d, 3, 3)
FL_PK_MKG_STUB(double, d, 3, 2)
FL_PK_MKG_STUB(double, d, 2, 4) FL_PK_MKG_STUB(double, d, 1, 8)
#endif

/* AVX-512: one panel row is one 512-bit vector, so a tile computes NQ panel blocks (the
 * four gates of a panel, gs apart, or in fl_pk_dotT NQ panels) for MR rows at once: 24
 * accumulators of the 32 registers for 6 rows and 4 gates.  Every output element is the
 * same single chain of multiply-adds over k as in fl_pk_mk (CH = 1) and fl_pk_mkg, x part
 * then h part, so the results are those of the AVX2 kernels. */
#if FL_PK_X86
/* acc[q][i] += sum over k < KN of ROWS[i][k] * (row k of block q), one chain each */
#define FL_PK_MKZ_LOOP(T, V, MR, NQ, KN, ROWS)                                             \
    _Pragma("GCC unroll 2")                                                                \
    for (k = 0; k < (KN); k++) {                                                           \
        V b[NQ];                                                                           \
        for (q = 0; q < NQ; q++) b[q] = *(const V *) (B + q * gs + k * NU);                \
        for (i = 0; i < MR; i++) {                                                         \
            T a = ROWS[i][k];                                                              \
            for (q = 0; q < NQ; q++) acc[q][i] += a * b[q];                                \
        }                                                                                  \
    }
#define FL_PK_MKZ(T, SUF, V, MR, NQ)                                                       \
FL_PK_TARGET_AVX512 static __attribute__((noinline, unused)) void                          \
fl_pk_mkz##SUF##_##MR##_##NQ(int I, const T *const *xa, int H, const T *ha, fl_i64 ldh,    \
                             const T *B, fl_i64 gs, T *z, int ldz, int init)               \
{                                                                                          \
    enum { NU = sizeof(V) / sizeof(T) };                                                   \
    V acc[NQ][MR];                                                                         \
    const T *hr[MR];                                                                       \
    fl_i64 k;                                                                              \
    int i, q;                                                                              \
    _Pragma("GCC unroll 16")   /* registers from the first load on, as in fl_pk_mk */     \
    for (q = 0; q < NQ; q++)                                                               \
        _Pragma("GCC unroll 16")                                                           \
        for (i = 0; i < MR; i++)                                                           \
            acc[q][i] = init ? FL_PK_VLD(V, z + i * ldz + q * NU) : (V){0};               \
    FL_PK_MKZ_LOOP(T, V, MR, NQ, I, xa)                                                    \
    B += (fl_i64) I * NU;                                                                  \
    for (i = 0; i < MR; i++) hr[i] = ha + i * ldh;                                         \
    FL_PK_MKZ_LOOP(T, V, MR, NQ, H, hr)                                                    \
    _Pragma("GCC unroll 16")                                                               \
    for (q = 0; q < NQ; q++)                                                               \
        _Pragma("GCC unroll 16")                                                           \
        for (i = 0; i < MR; i++) FL_PK_VST(z + i * ldz + q * NU, acc[q][i]);               \
}
#define FL_PK_MKZ_ALL(T, SUF, V)                                                           \
    FL_PK_MKZ(T, SUF, V, 1, 4) FL_PK_MKZ(T, SUF, V, 2, 4) FL_PK_MKZ(T, SUF, V, 3, 4)       \
    FL_PK_MKZ(T, SUF, V, 4, 4) FL_PK_MKZ(T, SUF, V, 5, 4) FL_PK_MKZ(T, SUF, V, 6, 4)       \
    FL_PK_MKZ(T, SUF, V, 1, 1) FL_PK_MKZ(T, SUF, V, 2, 1) FL_PK_MKZ(T, SUF, V, 3, 1)       \
    FL_PK_MKZ(T, SUF, V, 4, 1) FL_PK_MKZ(T, SUF, V, 5, 1) FL_PK_MKZ(T, SUF, V, 6, 1)
FL_PK_MKZ_ALL(float, f, fl_pk_zf)
FL_PK_MKZ_ALL(double, d, fl_pk_zd)
/* tile of mr rows, NQ blocks gs apart, on AVX-512 */
#define FL_PK_MKZ_CALL(SUF, NQ, mr, I, xa, H, ha, ldh, B, gs, z, ldz, init)                \
    do {                                                                                   \
        switch (mr) {                                                                      \
        case 6: fl_pk_mkz##SUF##_6_##NQ(I, xa, H, ha, ldh, B, gs, z, ldz, init); break;    \
        case 5: fl_pk_mkz##SUF##_5_##NQ(I, xa, H, ha, ldh, B, gs, z, ldz, init); break;    \
        case 4: fl_pk_mkz##SUF##_4_##NQ(I, xa, H, ha, ldh, B, gs, z, ldz, init); break;    \
        case 3: fl_pk_mkz##SUF##_3_##NQ(I, xa, H, ha, ldh, B, gs, z, ldz, init); break;    \
        case 2: fl_pk_mkz##SUF##_2_##NQ(I, xa, H, ha, ldh, B, gs, z, ldz, init); break;    \
        default: fl_pk_mkz##SUF##_1_##NQ(I, xa, H, ha, ldh, B, gs, z, ldz, init); break;   \
        }                                                                                  \
    } while (0)
#define FL_PK_IS512_avx512 1
/* the AVX2 tiles under the AVX-512 names that the sequence kernel's code mentions (its
 * AVX-512 build takes the fl_pk_mkz branches) */
#define fl_pk_mkf_avx512_1 fl_pk_mkf_avx2_1
#define fl_pk_mkf_avx512_2 fl_pk_mkf_avx2_2
#define fl_pk_mkf_avx512_3 fl_pk_mkf_avx2_3
#define fl_pk_mkf_avx512_4 fl_pk_mkf_avx2_4
#define fl_pk_mkf_avx512_5 fl_pk_mkf_avx2_5
#define fl_pk_mkf_avx512_6 fl_pk_mkf_avx2_6
#define fl_pk_mk1f_avx512_1 fl_pk_mk1f_avx2_1
#define fl_pk_mk1f_avx512_2 fl_pk_mk1f_avx2_2
#define fl_pk_mk1f_avx512_3 fl_pk_mk1f_avx2_3
#define fl_pk_mkgf_avx512_4_3 fl_pk_mkgf_avx2_4_3
#define fl_pk_mkgf_avx512_4_2 fl_pk_mkgf_avx2_4_2
#define fl_pk_mkgf_avx512_3_3 fl_pk_mkgf_avx2_3_3
#define fl_pk_mkgf_avx512_3_2 fl_pk_mkgf_avx2_3_2
#define fl_pk_mkgf_avx512_2_4 fl_pk_mkgf_avx2_2_4
#define fl_pk_mkgf_avx512_1_8 fl_pk_mkgf_avx2_1_8
#define fl_pk_mkd_avx512_1 fl_pk_mkd_avx2_1
#define fl_pk_mkd_avx512_2 fl_pk_mkd_avx2_2
#define fl_pk_mkd_avx512_3 fl_pk_mkd_avx2_3
#define fl_pk_mkd_avx512_4 fl_pk_mkd_avx2_4
#define fl_pk_mkd_avx512_5 fl_pk_mkd_avx2_5
#define fl_pk_mkd_avx512_6 fl_pk_mkd_avx2_6
#define fl_pk_mk1d_avx512_1 fl_pk_mk1d_avx2_1
#define fl_pk_mk1d_avx512_2 fl_pk_mk1d_avx2_2
#define fl_pk_mk1d_avx512_3 fl_pk_mk1d_avx2_3
#define fl_pk_mkgd_avx512_4_3 fl_pk_mkgd_avx2_4_3
#define fl_pk_mkgd_avx512_4_2 fl_pk_mkgd_avx2_4_2
#define fl_pk_mkgd_avx512_3_3 fl_pk_mkgd_avx2_3_3
#define fl_pk_mkgd_avx512_3_2 fl_pk_mkgd_avx2_3_2
#define fl_pk_mkgd_avx512_2_4 fl_pk_mkgd_avx2_2_4
#define fl_pk_mkgd_avx512_1_8 fl_pk_mkgd_avx2_1_8
#else
#define FL_PK_MKZ_CALL(SUF, NQ, mr, I, xa, H, ha, ldh, B, gs, z, ldz, init) ((void) 0)
#endif
#define FL_PK_IS512_base 0
#define FL_PK_IS512_avx2 0
/* a tile of mr rows (1 to FL_PK_MR) of products with K rows of x only, on the tiles of
 * fl_pk_mk; MK13 names those of 1 to 3 rows: mk (one chain per element, as the wider
 * tiles) or mk1 */
#define FL_PK_MK_CALL(SUF, ISA, MK13, mr, K, xa, B, z, ldz)                                \
    do {                                                                                   \
        switch (mr) {                                                                      \
        case 6: fl_pk_mk##SUF##_##ISA##_6(K, xa, 0, NULL, 0, B, z, ldz, 0); break;         \
        case 5: fl_pk_mk##SUF##_##ISA##_5(K, xa, 0, NULL, 0, B, z, ldz, 0); break;         \
        case 4: fl_pk_mk##SUF##_##ISA##_4(K, xa, 0, NULL, 0, B, z, ldz, 0); break;         \
        case 3: fl_pk_##MK13##SUF##_##ISA##_3(K, xa, 0, NULL, 0, B, z, ldz, 0); break;     \
        case 2: fl_pk_##MK13##SUF##_##ISA##_2(K, xa, 0, NULL, 0, B, z, ldz, 0); break;     \
        default: fl_pk_##MK13##SUF##_##ISA##_1(K, xa, 0, NULL, 0, B, z, ldz, 0); break;    \
        }                                                                                  \
    } while (0)

/* ---- C = A @ B^T with B packed once: the backward's step product dh = dG @ U^T ------
 * B (n, K) row-major is packed into ceil(n / NU) panels of K x NU (panel p, row k: the
 * NU values B[p * NU + j, k], zeros past n), so that every step reuses the same panels
 * with the forward's microkernels.  Row tiles of FL_PK_MR rows (from the first row of A):
 * a value depends on m (and the instruction set) only. */
#define FL_PK_DOTT(T, SUF, NU)                                                             \
static __attribute__((unused)) size_t fl_pk_packT_size##SUF(int n, int K)                 \
{                                                                                          \
    return (size_t) ((n + NU - 1) / NU) * (size_t) K * NU;                                 \
}                                                                                          \
static __attribute__((unused)) void fl_pk_packT##SUF(int n, int K, const T *B, T *out)    \
{                                                                                          \
    int p, j, k;                                                                           \
    for (p = 0; p < (n + NU - 1) / NU; p++) {                                              \
        T *dst = out + (fl_i64) p * K * NU;                                                \
        for (j = 0; j < NU; j++) {                                                         \
            const T *src = B + (fl_i64) (p * NU + j) * K;                                  \
            if (p * NU + j < n)                                                            \
                for (k = 0; k < K; k++) dst[(fl_i64) k * NU + j] = src[k];                 \
            else                                                                           \
                for (k = 0; k < K; k++) dst[(fl_i64) k * NU + j] = 0;                      \
        }                                                                                  \
    }                                                                                      \
}
FL_PK_DOTT(float, f, FL_PK_NU_F)
FL_PK_DOTT(double, d, FL_PK_NU_D)

/* Row tiles of FL_PK_MR rows from the first row of A.  On AVX-512, tiles of 4 to 6 rows
 * take four whole panels at once (fl_pk_mkz, the panels K * NU apart), or one; tiles of
 * 1 to 3 rows keep the AVX2 tiles (several chains per element there; the AVX-512 names
 * of fl_pk_mk are the AVX2 ones), so that every value is the AVX2 kernel's. */
#define FL_PK_DOTT_RUN(T, SUF, NU, V, ISA, ATTR)                                           \
ATTR static __attribute__((unused)) void                                                   \
fl_pk_dotT##SUF##_##ISA(int m, int n, int K, const T *A, fl_i64 lda, const T *packed,     \
                        T *C, fl_i64 ldc, T *ztmp)                                         \
{                                                                                          \
    int p, i0, i, j, nq;                                                                   \
    for (p = 0; p < (n + NU - 1) / NU; p += nq) {                                          \
        const T *Bp = packed + (fl_i64) p * K * NU;                                        \
        const int nu = n - p * NU < NU ? n - p * NU : NU;                                  \
        nq = FL_PK_IS512_##ISA && n - p * NU >= 4 * NU ? 4 : 1;                            \
        for (i0 = 0; i0 < m; i0 += FL_PK_MR) {                                             \
            const int mr = m - i0 < FL_PK_MR ? m - i0 : FL_PK_MR;                          \
            const T *xa[FL_PK_MR];                                                         \
            T *z = nu == NU ? C + i0 * ldc + p * NU : ztmp;                                \
            const int ldz = nu == NU ? (int) ldc : NU;                                     \
            for (i = 0; i < mr; i++) xa[i] = A + (i0 + i) * lda;                           \
            if (FL_PK_IS512_##ISA && mr >= 4 && nq == 4)                                   \
                FL_PK_MKZ_CALL(SUF, 4, mr, K, xa, 0, NULL, 0, Bp, (fl_i64) K * NU, z, ldz, 0); \
            else if (FL_PK_IS512_##ISA && mr >= 4)                                         \
                FL_PK_MKZ_CALL(SUF, 1, mr, K, xa, 0, NULL, 0, Bp, 0, z, ldz, 0);           \
            else                                                                           \
                for (j = 0; j < nq; j++)                                                   \
                    FL_PK_MK_CALL(SUF, ISA, mk, mr, K, xa, Bp + (fl_i64) j * K * NU,       \
                                  z + j * NU, ldz);                                        \
            if (nu < NU)                                                                   \
                for (i = 0; i < mr; i++)                                                   \
                    for (j = 0; j < nu; j++) C[(i0 + i) * ldc + p * NU + j] = ztmp[i * NU + j]; \
        }                                                                                  \
    }                                                                                      \
}
FL_PK_FOR_ISAS(FL_PK_DOTT_RUN)
FL_PK_FOR_AVX512(FL_PK_DOTT_RUN)
#if FL_PK_X86
#define FL_PK_DOTT_AVX512(SUF, ...)                                                        \
    if (fl_pk_get_isa() == 2) { fl_pk_dotT##SUF##_avx512(__VA_ARGS__); return; }
#else
#define FL_PK_DOTT_AVX512(SUF, ...)
#endif

/* C (m, n) = A (m, K) @ B^T, B packed by fl_pk_packT; ztmp: FL_PK_MR * NU scratch */
#define FL_PK_DOTT_DISPATCH(T, SUF)                                                        \
static __attribute__((unused)) void fl_pk_dotT##SUF(int m, int n, int K, const T *A,      \
                                                    fl_i64 lda, const T *packed, T *C,     \
                                                    fl_i64 ldc, T *ztmp)                   \
{                                                                                          \
    FL_PK_DOTT_AVX512(SUF, m, n, K, A, lda, packed, C, ldc, ztmp)                          \
    if (FL_PK_X86 && fl_pk_get_isa() >= 1)                                                 \
        FL_PK_DOTT_AVX2(SUF)(m, n, K, A, lda, packed, C, ldc, ztmp);                       \
    else                                                                                   \
        fl_pk_dotT##SUF##_base(m, n, K, A, lda, packed, C, ldc, ztmp);                     \
}
#if FL_PK_X86
#define FL_PK_DOTT_AVX2(SUF) fl_pk_dotT##SUF##_avx2
#else
#define FL_PK_DOTT_AVX2(SUF) fl_pk_dotT##SUF##_base
#endif
FL_PK_DOTT_DISPATCH(float, f)
FL_PK_DOTT_DISPATCH(double, d)

/* ---- one row times a row-major matrix: y (n) = a (k values, stride inca) @ B (k x n) ----
 * For the products of a batch of one row (a step() call), in place of BLAS's gemv: every
 * y[j] is one chain of multiply-adds over i in order (from 0, or from y[j] with
 * accumulate), so the columns may be cut anywhere and shared by any number of threads
 * with the same bits, and no BLAS thread count is involved.  B is read in row order,
 * eight rows at a time (one load and store of y per eight multiply-adds). */
#define FL_PK_VECMAT(T, SUF, NU, V, ISA, ATTR)                                             \
ATTR static __attribute__((unused)) void                                                   \
fl_pk_vecmat##SUF##_##ISA(int k, int j0, int j1, const T *a, fl_i64 inca,                 \
                          const T *restrict B, fl_i64 ldb, T *restrict y, int accumulate)  \
{                                                                                          \
    int i = 0, j;                                                                          \
    if (!accumulate)                                                                       \
        for (j = j0; j < j1; j++) y[j] = 0;                                                \
    for (; i + 8 <= k; i += 8) {                                                           \
        const T a0 = a[i * inca], a1 = a[(i + 1) * inca], a2 = a[(i + 2) * inca];         \
        const T a3 = a[(i + 3) * inca], a4 = a[(i + 4) * inca], a5 = a[(i + 5) * inca];   \
        const T a6 = a[(i + 6) * inca], a7 = a[(i + 7) * inca];                            \
        const T *restrict b0 = B + (fl_i64) i * ldb;                                       \
        for (j = j0; j < j1; j++) {                                                        \
            T v = y[j];                                                                    \
            v += a0 * b0[j];                                                               \
            v += a1 * b0[ldb + j];                                                         \
            v += a2 * b0[2 * ldb + j];                                                     \
            v += a3 * b0[3 * ldb + j];                                                     \
            v += a4 * b0[4 * ldb + j];                                                     \
            v += a5 * b0[5 * ldb + j];                                                     \
            v += a6 * b0[6 * ldb + j];                                                     \
            v += a7 * b0[7 * ldb + j];                                                     \
            y[j] = v;                                                                      \
        }                                                                                  \
    }                                                                                      \
    for (; i < k; i++) {                                                                   \
        const T ai = a[i * inca];                                                          \
        const T *restrict bi = B + (fl_i64) i * ldb;                                       \
        for (j = j0; j < j1; j++) y[j] += ai * bi[j];                                      \
    }                                                                                      \
}
FL_PK_FOR_ISAS(FL_PK_VECMAT)
FL_PK_FOR_AVX512(FL_PK_VECMAT)


/* Products this large (multiply-adds) share their columns among the threads asked for */
#define FL_PK_VECMAT_MIN_THREADED (1 << 18)
/* A wait at the end of a product counts as slow after ~0.5 ms of polls, not ~50 us as a
 * per-step wait: the first product after an idle spell waits for a worker thread to wake
 * up, which takes tens of microseconds, where a descheduled partner takes a time slice */
#define FL_PK_VECMAT_POLLS 20000

#if FL_PK_X86
#define FL_PK_VECMAT_AVX2(SUF) fl_pk_vecmat##SUF##_avx2
#define FL_PK_VECMAT_AVX512(SUF) fl_pk_vecmat##SUF##_avx512
#else
#define FL_PK_VECMAT_AVX2(SUF) fl_pk_vecmat##SUF##_base
#define FL_PK_VECMAT_AVX512(SUF) fl_pk_vecmat##SUF##_base
#endif
/* y = a @ B (+ y with accumulate) as above, on up to nt OpenMP threads (one outside a
 * parallel region or below FL_PK_VECMAT_MIN_THREADED), cut at multiples of 16 columns.
 * The threads meet on a fl_pk_spin wait at the end: returns how many of them waited long
 * for a partner that was not running (more busy threads than cores), so that the caller can
 * stop sharing for a while, as for the packed kernel's unit split. */
#define FL_PK_VECMAT_DISPATCH(T, SUF)                                                      \
static __attribute__((unused)) int fl_pk_vecmat##SUF(int k, int n, const T *a, fl_i64 inca,  \
                                                     const T *B, fl_i64 ldb, T *y,         \
                                                     int accumulate, int nt)               \
{                                                                                          \
    const int isa = FL_PK_X86 ? fl_pk_get_isa() : 0;                                       \
    if (n <= 0) return 0;                                                                  \
    if (nt > 1 && (fl_i64) k * n >= FL_PK_VECMAT_MIN_THREADED && n >= 32 &&               \
            !fl_pk_in_parallel()) {                                                        \
        fl_pk_spin spin;                                                                   \
        memset(&spin, 0, sizeof(spin));                                                    \
        _Pragma("omp parallel num_threads(nt)")                                            \
        {                                                                                  \
            const int t = fl_pk_team_id(), m = fl_pk_team_size();                          \
            const int c0 = (int) (((fl_i64) n * t / m) / 16 * 16);                         \
            const int c1 = t + 1 == m ? n : (int) (((fl_i64) n * (t + 1) / m) / 16 * 16);  \
            if (isa == 2) FL_PK_VECMAT_AVX512(SUF)(k, c0, c1, a, inca, B, ldb, y, accumulate); \
            else if (isa == 1) FL_PK_VECMAT_AVX2(SUF)(k, c0, c1, a, inca, B, ldb, y, accumulate); \
            else fl_pk_vecmat##SUF##_base(k, c0, c1, a, inca, B, ldb, y, accumulate);      \
            if (m > 1) fl_pk_spin_wait_polls(&spin, m, FL_PK_VECMAT_POLLS);               \
        }                                                                                  \
        return spin.slow;                                                                  \
    }                                                                                      \
    if (isa == 2) FL_PK_VECMAT_AVX512(SUF)(k, 0, n, a, inca, B, ldb, y, accumulate);       \
    else if (isa == 1) FL_PK_VECMAT_AVX2(SUF)(k, 0, n, a, inca, B, ldb, y, accumulate);    \
    else fl_pk_vecmat##SUF##_base(k, 0, n, a, inca, B, ldb, y, accumulate);                \
    return 0;                                                                              \
}
FL_PK_VECMAT_DISPATCH(float, f)
FL_PK_VECMAT_DISPATCH(double, d)

/* ---- vectorised activations and cell update (the sigmoid/tanh fast path) ------------
 * The exp cores of fl_pointwise.h (FL_EXPF_CORE, FL_EXP_CORE) on vectors, so that they
 * vectorise inside the big step function.  Clamps keep NaN. */
#if FL_PK_VECTOR
#if defined(__GNUC__) && !defined(__clang__)
/* the vector helpers are always inlined: no 256-bit value crosses a call in baseline code */
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef int fl_pk_vif __attribute__((vector_size(32)));
typedef long long fl_pk_vid __attribute__((vector_size(32)));
/* the integer vector of each float vector type, by name: V##i */
typedef fl_pk_vif fl_pk_vfi;
typedef fl_pk_vid fl_pk_vdi;
#if FL_PK_X86
typedef int fl_pk_zfi __attribute__((vector_size(64)));
typedef long long fl_pk_zdi __attribute__((vector_size(64)));
#endif


/* Clamps, per instruction set: fl_pk_vmin(a, x) = a < x ? a : x and fl_pk_vmax(a, x) =
 * a > x ? a : x, lane by lane; a NaN in x passes through (the semantics of x86 MINPS/MAXPS
 * with x second, one instruction on AVX2 and AVX-512; a compare and a select on the
 * baseline). */
#define FL_PK_VMIN_base_f(a, x) fl_pk_self((a) < (x), (a), (x))
#define FL_PK_VMAX_base_f(a, x) fl_pk_self((a) > (x), (a), (x))
#define FL_PK_VMIN_base_d(a, x) fl_pk_seld((a) < (x), (a), (x))
#define FL_PK_VMAX_base_d(a, x) fl_pk_seld((a) > (x), (a), (x))
#define FL_PK_VMIN_avx2_f(a, x) ((fl_pk_vf) __builtin_ia32_minps256((a), (x)))
#define FL_PK_VMAX_avx2_f(a, x) ((fl_pk_vf) __builtin_ia32_maxps256((a), (x)))
#define FL_PK_VMIN_avx2_d(a, x) ((fl_pk_vd) __builtin_ia32_minpd256((a), (x)))
#define FL_PK_VMAX_avx2_d(a, x) ((fl_pk_vd) __builtin_ia32_maxpd256((a), (x)))
/* 512-bit: VMINPS / VMAXPS zmm (the intrinsics, inlined into AVX-512 functions) */
#define FL_PK_VMIN_avx512_f(a, x) ((fl_pk_zf) _mm512_min_ps((__m512) (a), (__m512) (x)))
#define FL_PK_VMAX_avx512_f(a, x) ((fl_pk_zf) _mm512_max_ps((__m512) (a), (__m512) (x)))
#define FL_PK_VMIN_avx512_d(a, x) ((fl_pk_zd) _mm512_min_pd((__m512d) (a), (__m512d) (x)))
#define FL_PK_VMAX_avx512_d(a, x) ((fl_pk_zd) _mm512_max_pd((__m512d) (a), (__m512d) (x)))

#define FL_PK_VSEL(T, SUF, V, VI)                                                          \
static inline __attribute__((always_inline)) V fl_pk_sel##SUF(VI m, V a, V b)              \
{                                                                                          \
    return (V) (((VI) a & m) | ((VI) b & ~m));                                             \
}
FL_PK_VSEL(float, f, fl_pk_vf, fl_pk_vif)
FL_PK_VSEL(double, d, fl_pk_vd, fl_pk_vid)

/* exp for x in [-87, 88.7] (float) or [-708, 709.7] (double), or NaN: the cores of
 * fl_pointwise.h on vectors (V: fl_pk_vf / fl_pk_vd, or the 512-bit fl_pk_zf / fl_pk_zd,
 * only inlined into AVX-512 code), scaled by 2^n (+inf for n = 128 / 1024); e^x - 1
 * likewise (fl_em1nf / fl_em1n): 2^n (e^r - 1) + (2^n - 1) */
#define FL_PK_EXPCORES(V, ATTR)                                                            \
ATTR static inline __attribute__((always_inline, unused)) V fl_pk_expcoref_##V(V x)            \
{                                                                                          \
    V t, p;                                                                                \
    FL_EXPF_CORE(V, x, t, p);                                                              \
    return p * (V) ((V##i) t << 23);   /* n + 127: the exponent field of 2^n */             \
}                                                                                          \
ATTR static inline __attribute__((always_inline, unused)) V fl_pk_em1coref_##V(V x)            \
{                                                                                          \
    V t, q, scale;                                                                         \
    FL_EM1F_CORE(V, x, t, q);                                                              \
    scale = (V) ((V##i) t << 23);                                                          \
    return scale * q + (scale - 1.0f);                                                     \
}
#define FL_PK_EXPCORES_D(V, ATTR)                                                          \
ATTR static inline __attribute__((always_inline, unused)) V fl_pk_expcored_##V(V x)            \
{                                                                                          \
    V t, p;                                                                                \
    FL_EXP_CORE(V, x, t, p);                                                               \
    /* 0x4338000000000000: the bits of the magic number */                                 \
    return p * (V) (((V##i) t - 0x4338000000000000LL + 1023) << 52);                       \
}                                                                                          \
ATTR static inline __attribute__((always_inline, unused)) V fl_pk_em1cored_##V(V x)            \
{                                                                                          \
    V t, q, scale;                                                                         \
    FL_EM1_CORE(V, x, t, q);                                                               \
    scale = (V) (((V##i) t - 0x4338000000000000LL + 1023) << 52);                          \
    return scale * q + (scale - 1.0);                                                      \
}
FL_PK_EXPCORES(fl_pk_vf, )
FL_PK_EXPCORES_D(fl_pk_vd, )
#if FL_PK_X86
FL_PK_EXPCORES(fl_pk_zf, FL_PK_TARGET_AVX512)
FL_PK_EXPCORES_D(fl_pk_zd, FL_PK_TARGET_AVX512)
#endif

/* A store to the training cache, non-temporal where p is aligned to the vector: the
 * line is not read first and does not evict data the kernel reuses.  The forward writes
 * the cache once and only the backward reads it, so when the cache is larger than the
 * CPU caches (stream_cache; see _forward.pyx) this saves a read of every line written:
 * 1.03x a training step at the medium and large benchmark shapes.  The values are the
 * same; the run functions' dispatch ends with a store fence. */
#define FL_PK_NTST(T, SUF, NU, V, ISA, ATTR)                                               \
ATTR static inline __attribute__((always_inline)) void fl_pk_ntst##SUF##_##ISA(T *p, V v)  \
{                                                                                          \
    FL_PK_NTST_BODY_##ISA(T, p, v)                                                         \
}
#define FL_PK_NTST_BODY_base(T, p, v) FL_PK_VST(p, v);
/* a vector of BITS bits: stream where p is aligned to it (STREAM##_ps / _pd) */
#define FL_PK_NTST_BODY_VEC(T, p, v, BITS, STREAM)                                         \
    if (((uintptr_t) (p) & (BITS / 8 - 1)) == 0) {                                         \
        if (sizeof(T) == 4) STREAM##_ps((float *) (void *) (p), (__m##BITS) (v));          \
        else STREAM##_pd((double *) (void *) (p), (__m##BITS##d) (v));                     \
    } else {                                                                               \
        FL_PK_VST(p, v);                                                                   \
    }
#define FL_PK_NTST_BODY_avx2(T, p, v) FL_PK_NTST_BODY_VEC(T, p, v, 256, _mm256_stream)
#define FL_PK_NTST_BODY_avx512(T, p, v) FL_PK_NTST_BODY_VEC(T, p, v, 512, _mm512_stream)
FL_PK_FOR_ISAS(FL_PK_NTST)
FL_PK_FOR_AVX512(FL_PK_NTST)

/* exp as fl_expf / fl_exp (fl_pk_expv: clamped to the same range, so +inf from x ~ 88.38
 * (709.44) on); e^x - 1 for x <= 0 (fl_pk_em1n); sigmoid, tanh, sigmoid(a) * tanh(x) from
 * ea = exp(-a); the cell updates; per instruction set, for the clamps. */
#define FL_PK_CELL(T, SUF, NU, V, ISA, ATTR)                                               \
ATTR static inline __attribute__((always_inline)) V fl_pk_expv##SUF##_##ISA(V x)          \
{                                                                                          \
    const V hi = (V){0} + (sizeof(T) == 4 ? (T) FL_EXPF_HI : (T) FL_EXP_HI);               \
    const V lo = (V){0} + (sizeof(T) == 4 ? (T) -87 : (T) -708);                           \
    return fl_pk_expcore##SUF##_##V(FL_PK_VMAX_##ISA##_##SUF(lo, FL_PK_VMIN_##ISA##_##SUF(hi, x))); \
}                                                                                          \
ATTR static inline __attribute__((always_inline)) V fl_pk_em1n##SUF##_##ISA(V x)          \
{   /* e^x - 1 for x <= 0 */                                                               \
    const V lo = (V){0} + (sizeof(T) == 4 ? (T) -87 : (T) -708);                           \
    return fl_pk_em1core##SUF##_##V(FL_PK_VMAX_##ISA##_##SUF(lo, x));                           \
}                                                                                          \
ATTR static inline __attribute__((always_inline)) V fl_pk_clip##SUF##_##ISA(V x, T clip)  \
{                                                                                          \
    const V hi = (V){0} + clip, lo = (V){0} - clip;                                        \
    return FL_PK_VMAX_##ISA##_##SUF(lo, FL_PK_VMIN_##ISA##_##SUF(hi, x));                 \
}                                                                                          \
ATTR static inline __attribute__((always_inline)) V fl_pk_sigm##SUF##_##ISA(V x)          \
{                                                                                          \
    return (T) 1 / ((T) 1 + fl_pk_expv##SUF##_##ISA(-x));                                  \
}                                                                                          \
ATTR static inline __attribute__((always_inline)) V fl_pk_tanhv##SUF##_##ISA(V x)         \
{                                                                                          \
    const V##i sign = (V##i) (-(V){0});   /* -0.0 */                     \
    V ax = (V) ((V##i) x & ~sign);                                                \
    V m = fl_pk_em1n##SUF##_##ISA((T) -2 * ax);      /* tanh |x| = -m / (2 + m) */         \
    V r = m / ((T) -2 - m);                          /* -0 for x = 0: x's sign, not its */ \
    return (V) (((V##i) r & ~sign) | ((V##i) x & sign));                 \
}                                                                                          \
ATTR static inline __attribute__((always_inline)) V fl_pk_sgtanh##SUF##_##ISA(V ea, V x)  \
{   /* sigmoid(a) * tanh(x), ea = exp(-a) */                                               \
    const V##i sign = (V##i) (-(V){0});                                  \
    V ax = (V) ((V##i) x & ~sign);                                                \
    V m = fl_pk_em1n##SUF##_##ISA((T) -2 * ax);                                            \
    V r = m / (((T) 1 + ea) * ((T) -2 - m));                                               \
    return (V) (((V##i) r & ~sign) | ((V##i) x & sign));                 \
}                                                                                          \
/* the gate pre-activations of one vector of units: products z (gate q at z + q * NU) plus  \
 * bias, and the input and forget gates' peepholes on c_{t-1} (c0) */                      \
ATTR static inline __attribute__((always_inline)) void                                     \
fl_pk_gates_in##SUF##_##ISA(const T *z, const T *bp, V c0, int use_peep, V *zi, V *zf,     \
                            V *zg, V *zo)                                                  \
{                                                                                          \
    *zi = FL_PK_VLD(V, z) + FL_PK_VLD(V, bp);                                              \
    *zf = FL_PK_VLD(V, z + NU) + FL_PK_VLD(V, bp + NU);                                    \
    *zg = FL_PK_VLD(V, z + 2 * NU) + FL_PK_VLD(V, bp + 2 * NU);                            \
    *zo = FL_PK_VLD(V, z + 3 * NU) + FL_PK_VLD(V, bp + 3 * NU);                            \
    if (use_peep) {                                                                        \
        *zi += FL_PK_VLD(V, bp + 4 * NU) * c0;                                             \
        *zf += FL_PK_VLD(V, bp + 5 * NU) * c0;                                             \
    }                                                                                      \
}                                                                                          \
/* one row, NU units: z (4 x NU) raw products, bp: the panel's bias and peepholes,        \
 * cp: c_{t-1}.  Out: activated gates, raw and clipped c, m = o * tanh(c) (in mm, and in   \
 * m2 unless NULL).  cn may be cp. */                                                      \
ATTR static inline __attribute__((always_inline)) void                                     \
fl_pk_cell_fast##SUF##_##ISA(const T *z, const T *bp, const T *cp, int use_peep,           \
                             int use_clip, T clip, T *gi, T *gf, T *gg, T *go, T *cr,      \
                             T *cn, T *mm, T *m2, int nt)                                  \
{                                                                                          \
    enum { VL = sizeof(V) / sizeof(T) };                                                   \
    int v;                                                                                 \
    for (v = 0; v < NU; v += VL) {                                                         \
        V c0 = FL_PK_VLD(V, cp + v), zi, zf, zg, zo;                                       \
        V i, f, g, o, c;                                                                   \
        fl_pk_gates_in##SUF##_##ISA(z + v, bp + v, c0, use_peep, &zi, &zf, &zg, &zo);      \
        i = fl_pk_sigm##SUF##_##ISA(zi);                                                   \
        f = fl_pk_sigm##SUF##_##ISA(zf);                                                   \
        g = fl_pk_tanhv##SUF##_##ISA(zg);                                                  \
        c = f * c0 + i * g;                                                                \
        if (nt) fl_pk_ntst##SUF##_##ISA(cr + v, c); else FL_PK_VST(cr + v, c);            \
        if (use_clip) c = fl_pk_clip##SUF##_##ISA(c, clip);                                \
        if (use_peep) zo += FL_PK_VLD(V, bp + 6 * NU + v) * c;                             \
        o = fl_pk_sigm##SUF##_##ISA(zo);                                                   \
        if (nt) {                                                                          \
            fl_pk_ntst##SUF##_##ISA(gi + v, i); fl_pk_ntst##SUF##_##ISA(gf + v, f);        \
            fl_pk_ntst##SUF##_##ISA(gg + v, g); fl_pk_ntst##SUF##_##ISA(go + v, o);        \
        } else {                                                                           \
            FL_PK_VST(gi + v, i); FL_PK_VST(gf + v, f);                                    \
            FL_PK_VST(gg + v, g); FL_PK_VST(go + v, o);                                    \
        }                                                                                  \
        FL_PK_VST(cn + v, c);                                                              \
        c = o * fl_pk_tanhv##SUF##_##ISA(c);                                               \
        FL_PK_VST(mm + v, c);                                                              \
        if (m2) FL_PK_VST(m2 + v, c);                                                      \
    }                                                                                      \
}                                                                                          \
/* Inference (no training cache), a whole panel: reads c_{t-1} at c and writes c_t there,  \
 * m_t at h and y.  Products of activations share one division:                            \
 *     i * g = sign(zg) mg / ((1 + ei) (-2 - mg)),  ei = exp(-zi), mg = exp(-2|zg|) - 1    \
 *     f * c = c / (1 + ef),   o * tanh(c) likewise as i * g                               \
 * (3 divisions instead of 5; an infinite ei or ef, a gate of exactly 0, gives 0: the      \
 * numerators are finite, -1 <= mg <= 0). */                                               \
ATTR static inline __attribute__((always_inline)) void                                     \
fl_pk_cell_inf##SUF##_##ISA(const T *z, const T *bp, T *c, T *h, T *y, int use_peep,       \
                            int use_clip, T clip)                                          \
{                                                                                          \
    enum { VL = sizeof(V) / sizeof(T) };                                                   \
    int v;                                                                                 \
    for (v = 0; v < NU; v += VL) {                                                         \
        V c0 = FL_PK_VLD(V, c + v), zi, zf, zg, zo;                                        \
        V cc, m;                                                                           \
        fl_pk_gates_in##SUF##_##ISA(z + v, bp + v, c0, use_peep, &zi, &zf, &zg, &zo);      \
        cc = c0 / ((T) 1 + fl_pk_expv##SUF##_##ISA(-zf))                                   \
             + fl_pk_sgtanh##SUF##_##ISA(fl_pk_expv##SUF##_##ISA(-zi), zg);                \
        if (use_clip) cc = fl_pk_clip##SUF##_##ISA(cc, clip);                              \
        if (use_peep) zo += FL_PK_VLD(V, bp + 6 * NU + v) * cc;                            \
        m = fl_pk_sgtanh##SUF##_##ISA(fl_pk_expv##SUF##_##ISA(-zo), cc);                   \
        FL_PK_VST(c + v, cc);                                                              \
        FL_PK_VST(h + v, m);                                                               \
        FL_PK_VST(y + v, m);                                                               \
    }                                                                                      \
}
FL_PK_FOR_ISAS(FL_PK_CELL)
FL_PK_FOR_AVX512(FL_PK_CELL)

#define FL_PK_HAS_INF 1

/* A tile's inference cell update left pending (mr = 1-6 rows of one panel, from row rb;
 * the panel's first unit u0; step k): the products z (row i at z + i * 4 NU), the
 * panel's bias and peepholes, and each row's c, next h and output. */
#define FL_PK_PEND(T, SUF)                                                                 \
typedef struct {                                                                           \
    const T *z, *bp;                                                                       \
    T *c[6], *h[6], *y[6];                                                                 \
    int mr, rb, u0, k, use_peep, use_clip;                                                 \
    T clip;                                                                                \
} fl_pk_pend##SUF;
FL_PK_PEND(float, f)
FL_PK_PEND(double, d)

/* The recurrent products of a tile of MR (1-6) rows of one panel on AVX-512
 * (fl_pk_mkz##SUF##_MR_4 with I = 0 and init: every element the same chain of
 * multiply-adds over k, so the same bits) with the pending cell update of a previous tile
 * of as many rows (pc) spread through its k loop: row r's gates and cell state after part
 * 2r of the loop's first kd steps, its output after part 2r + 1.  Each part is kd / (2 MR)
 * steps of k (for H = 128, MR = 4: 16 steps, ~128 cycles of multiply-adds), longer than
 * the latency chain of a half cell update (an exp, a division), which therefore runs
 * beside the products instead of holding the reorder buffer after them.  kd = H, or the
 * first unit of the pending panel when that update is the step before's for these very
 * rows: its h values are written before the loop reads them.  The cell update is
 * fl_pk_cell_inf's expressions, whole helper calls to a part, so its results are the same
 * bits too (GCC fuses multiply-adds only within a basic block). */
#if FL_PK_X86
#define FL_PK_MKZC_LOOP(T, V, MR, KEND)                                                    \
    _Pragma("GCC unroll 2")                                                                \
    for (; k < (KEND); k++) {                                                              \
        V b[4];                                                                            \
        for (q = 0; q < 4; q++) b[q] = *(const V *) (B + q * gs + k * NU);                 \
        for (i = 0; i < MR; i++) {                                                         \
            T a = hr[i][k];                                                                \
            for (q = 0; q < 4; q++) acc[q][i] += a * b[q];                                 \
        }                                                                                  \
    }
#define FL_PK_MKZC(T, SUF, V, MR)                                                          \
FL_PK_TARGET_AVX512 static __attribute__((noinline, unused)) void                          \
fl_pk_mkzc##SUF##_##MR(int H, const T *ha, fl_i64 ldh, const T *B, fl_i64 gs, T *z,        \
                       int ldz, const fl_pk_pend##SUF *pc, fl_i64 kd)                      \
{                                                                                          \
    enum { NU = sizeof(V) / sizeof(T), Z4 = 4 * NU };                                      \
    V acc[4][MR];                                                                          \
    const T *hr[MR];                                                                       \
    fl_i64 k = 0;                                                                          \
    int i, q, r;                                                                           \
    _Pragma("GCC unroll 16")                                                               \
    for (q = 0; q < 4; q++)                                                                \
        _Pragma("GCC unroll 16")                                                           \
        for (i = 0; i < MR; i++) acc[q][i] = FL_PK_VLD(V, z + i * ldz + q * NU);           \
    for (i = 0; i < MR; i++) hr[i] = ha + i * ldh;                                         \
    for (r = 0; r < MR; r++) {                                                             \
        V c0, zi, zf, zg, zo, cc, m;                                                       \
        FL_PK_MKZC_LOOP(T, V, MR, kd * (2 * r + 1) / (2 * MR))                             \
        c0 = FL_PK_VLD(V, pc->c[r]);                                                       \
        fl_pk_gates_in##SUF##_avx512(pc->z + r * Z4, pc->bp, c0, pc->use_peep,             \
                                     &zi, &zf, &zg, &zo);                                  \
        cc = c0 / ((T) 1 + fl_pk_expv##SUF##_avx512(-zf))                                  \
             + fl_pk_sgtanh##SUF##_avx512(fl_pk_expv##SUF##_avx512(-zi), zg);              \
        if (pc->use_clip) cc = fl_pk_clip##SUF##_avx512(cc, pc->clip);                     \
        if (pc->use_peep) zo += FL_PK_VLD(V, pc->bp + 6 * NU) * cc;                        \
        FL_PK_MKZC_LOOP(T, V, MR, kd * (2 * r + 2) / (2 * MR))                             \
        m = fl_pk_sgtanh##SUF##_avx512(fl_pk_expv##SUF##_avx512(-zo), cc);                 \
        FL_PK_VST(pc->c[r], cc);                                                           \
        FL_PK_VST(pc->h[r], m);                                                            \
        FL_PK_VST(pc->y[r], m);                                                            \
    }                                                                                      \
    FL_PK_MKZC_LOOP(T, V, MR, (fl_i64) H)                                                  \
    _Pragma("GCC unroll 16")                                                               \
    for (q = 0; q < 4; q++)                                                                \
        _Pragma("GCC unroll 16")                                                           \
        for (i = 0; i < MR; i++) FL_PK_VST(z + i * ldz + q * NU, acc[q][i]);               \
}
#define FL_PK_MKZC_ALL(T, SUF, V)                                                          \
    FL_PK_MKZC(T, SUF, V, 1) FL_PK_MKZC(T, SUF, V, 2) FL_PK_MKZC(T, SUF, V, 3)             \
    FL_PK_MKZC(T, SUF, V, 4) FL_PK_MKZC(T, SUF, V, 5) FL_PK_MKZC(T, SUF, V, 6)
FL_PK_MKZC_ALL(float, f, fl_pk_zf)
FL_PK_MKZC_ALL(double, d, fl_pk_zd)
/* the tile of mr (1 to 6) rows with the pending cell update of as many rows */
#define FL_PK_MKZC_CALL_avx512(SUF, mr, H, ha, ldh, B, gs, z, ldz, pc, kd)                 \
    do {                                                                                   \
        switch (mr) {                                                                      \
        case 6: fl_pk_mkzc##SUF##_6(H, ha, ldh, B, gs, z, ldz, pc, kd); break;             \
        case 5: fl_pk_mkzc##SUF##_5(H, ha, ldh, B, gs, z, ldz, pc, kd); break;             \
        case 4: fl_pk_mkzc##SUF##_4(H, ha, ldh, B, gs, z, ldz, pc, kd); break;             \
        case 3: fl_pk_mkzc##SUF##_3(H, ha, ldh, B, gs, z, ldz, pc, kd); break;             \
        case 2: fl_pk_mkzc##SUF##_2(H, ha, ldh, B, gs, z, ldz, pc, kd); break;             \
        default: fl_pk_mkzc##SUF##_1(H, ha, ldh, B, gs, z, ldz, pc, kd); break;            \
        }                                                                                  \
    } while (0)
#define FL_PK_PEND_FLUSH_avx512(SUF, pc)                                                   \
    do {                                                                                   \
        int r_;                                                                            \
        for (r_ = 0; r_ < (pc)->mr; r_++)                                                  \
            fl_pk_cell_inf##SUF##_avx512((pc)->z + r_ * 4 * (sizeof(fl_pk_z##SUF) /        \
                                         sizeof(*(pc)->z)), (pc)->bp, (pc)->c[r_],         \
                                         (pc)->h[r_], (pc)->y[r_], (pc)->use_peep,         \
                                         (pc)->use_clip, (pc)->clip);                      \
    } while (0)
#endif
#define FL_PK_MKZC_CALL_base(SUF, mr, H, ha, ldh, B, gs, z, ldz, pc, kd) ((void) 0)
#define FL_PK_MKZC_CALL_avx2(SUF, mr, H, ha, ldh, B, gs, z, ldz, pc, kd) ((void) 0)
#define FL_PK_PEND_FLUSH_base(SUF, pc) ((void) 0)
#define FL_PK_PEND_FLUSH_avx2(SUF, pc) ((void) 0)

/* Backward of one step for one row, for tanh / sigmoid without clip or peepholes (the
 * backward's common case; see fl_pointwise_bwd in _backward.pyx for the general one):
 * dm: dL/dm_t (H); dc: dL/dc_t in, dL/dc_{t-1} out; c_raw: c_t; c_prev: c_{t-1};
 * g: the gates (i, f, g, o) in, dL/dz out, also written to dz2. */
#define FL_PK_BWD(T, SUF, NU, V, ISA, ATTR)                                                \
ATTR FL_PK_MAYBE_UNUSED static void fl_pk_bwd##SUF##_##ISA(int H, const T *dm, T *dc,     \
                                                           const T *c_raw, const T *c_prev, \
                                                           T *g, T *dz2)                   \
{                                                                                          \
    enum { VL = sizeof(V) / sizeof(T) };                                                   \
    int j0, j, n;                                                                          \
    for (j0 = 0; j0 < H; j0 += VL) {                                                       \
        T b[11][VL];   /* a partial last vector goes through zero-padded copies */         \
        const int full = H - j0 >= VL;                                                     \
        V ig, fg, gg, og, ac, dmv, dcn, dzi, dzf, dzg, dzo;                                \
        const T *src[7];                                                                   \
        src[0] = c_raw + j0; src[1] = g + j0; src[2] = g + H + j0; src[3] = g + 2 * H + j0; \
        src[4] = g + 3 * H + j0; src[5] = dm + j0; src[6] = dc + j0;                       \
        n = full ? VL : H - j0;                                                            \
        if (!full) {                                                                       \
            for (j = 0; j < 7; j++) {                                                      \
                memset(b[j], 0, sizeof(b[j]));                                             \
                memcpy(b[j], src[j], (size_t) n * sizeof(T));                              \
                src[j] = b[j];                                                             \
            }                                                                              \
            memset(b[7], 0, sizeof(b[7]));                                                 \
            memcpy(b[7], c_prev + j0, (size_t) n * sizeof(T));                             \
        }                                                                                  \
        ac = fl_pk_tanhv##SUF##_##ISA(FL_PK_VLD(V, src[0]));                                       \
        ig = FL_PK_VLD(V, src[1]); fg = FL_PK_VLD(V, src[2]);                              \
        gg = FL_PK_VLD(V, src[3]); og = FL_PK_VLD(V, src[4]);                              \
        dmv = FL_PK_VLD(V, src[5]);                                                        \
        dzo = dmv * ac * (og * ((T) 1 - og));                                              \
        dcn = FL_PK_VLD(V, src[6]) + dmv * og * ((T) 1 - ac * ac);                         \
        dzi = dcn * gg * (ig * ((T) 1 - ig));                                              \
        dzf = dcn * FL_PK_VLD(V, full ? c_prev + j0 : b[7]) * (fg * ((T) 1 - fg));         \
        dzg = dcn * ig * ((T) 1 - gg * gg);                                                \
        dcn = dcn * fg;                                                                    \
        if (full) {                                                                        \
            FL_PK_VST(dc + j0, dcn);                                                       \
            FL_PK_VST(g + j0, dzi); FL_PK_VST(g + H + j0, dzf);                            \
            FL_PK_VST(g + 2 * H + j0, dzg); FL_PK_VST(g + 3 * H + j0, dzo);                \
            FL_PK_VST(dz2 + j0, dzi); FL_PK_VST(dz2 + H + j0, dzf);                        \
            FL_PK_VST(dz2 + 2 * H + j0, dzg); FL_PK_VST(dz2 + 3 * H + j0, dzo);            \
        } else {                                                                           \
            FL_PK_VST(b[8], dcn); memcpy(dc + j0, b[8], (size_t) n * sizeof(T));           \
            FL_PK_VST(b[8], dzi); FL_PK_VST(b[9], dzf); FL_PK_VST(b[10], dzg);             \
            memcpy(g + j0, b[8], (size_t) n * sizeof(T));                                  \
            memcpy(g + H + j0, b[9], (size_t) n * sizeof(T));                              \
            memcpy(g + 2 * H + j0, b[10], (size_t) n * sizeof(T));                         \
            memcpy(dz2 + j0, b[8], (size_t) n * sizeof(T));                                \
            memcpy(dz2 + H + j0, b[9], (size_t) n * sizeof(T));                            \
            memcpy(dz2 + 2 * H + j0, b[10], (size_t) n * sizeof(T));                       \
            FL_PK_VST(b[8], dzo);                                                          \
            memcpy(g + 3 * H + j0, b[8], (size_t) n * sizeof(T));                          \
            memcpy(dz2 + 3 * H + j0, b[8], (size_t) n * sizeof(T));                        \
        }                                                                                  \
    }                                                                                      \
}
FL_PK_FOR_ISAS(FL_PK_BWD)
FL_PK_FOR_AVX512(FL_PK_BWD)
/* returns 0 when done, -1 when the caller must use its general code (no AVX2) */
#define FL_PK_BWD_DISPATCH(T, SUF)                                                         \
FL_PK_MAYBE_UNUSED static int fl_pk_bwd##SUF(int H, const T *dm, T *dc, const T *c_raw,   \
                                             const T *c_prev, T *g, T *dz2)                \
{                                                                                          \
    if (!FL_PK_X86 || fl_pk_get_isa() < 1) return -1;                                      \
    if (fl_pk_get_isa() == 2) FL_PK_BWD_AVX512(SUF)(H, dm, dc, c_raw, c_prev, g, dz2);     \
    else FL_PK_BWD_AVX2(SUF)(H, dm, dc, c_raw, c_prev, g, dz2);                            \
    return 0;                                                                              \
}
#if FL_PK_X86
#define FL_PK_BWD_AVX2(SUF) fl_pk_bwd##SUF##_avx2
#define FL_PK_BWD_AVX512(SUF) fl_pk_bwd##SUF##_avx512
#else
#define FL_PK_BWD_AVX2(SUF) fl_pk_bwd##SUF##_base
#define FL_PK_BWD_AVX512(SUF) fl_pk_bwd##SUF##_base
#endif
FL_PK_BWD_DISPATCH(float, f)
FL_PK_BWD_DISPATCH(double, d)

/* Cell update of one row for hidden units [u0, u1) (tanh / sigmoid), the gate blocks
 * (i, f, g, o) H apart: pre-activations zh + zx + b (+ peepholes), as fl_pointwise_fwd
 * computes them, then what it computes from them, on vectors: c (in: c_{t-1}, out: c_t,
 * clipped), m (out), gates (out, activated; NULL: not kept), c_raw (out, or NULL).  A last
 * partial vector (u1 = H) goes through zero-padded copies, so that every unit is computed
 * by the same vector code whatever range it falls in. */
#define FL_PK_ROWCELL(T, SUF, NU, V, ISA, ATTR)                                            \
ATTR FL_PK_MAYBE_UNUSED static void                                                        \
fl_pk_rowcell##SUF##_##ISA(int H, int u0, int u1, const T *zh, const T *zx, const T *b,   \
                           const T *peep, int use_clip, T clip, T *c, T *m, T *gates,      \
                           T *c_raw)                                                       \
{                                                                                          \
    enum { VL = sizeof(V) / sizeof(T) };                                                   \
    int u, q, n;                                                                           \
    for (u = u0; u < u1; u += VL) {                                                        \
        T buf[20][VL];   /* a partial vector: inputs 0..15, outputs 0..6 reused */         \
        V z[4], pv[3], c0, cn, gv[4], mv;                                                  \
        n = u1 - u < VL ? u1 - u : VL;                                                     \
        if (n == VL) {                                                                     \
            for (q = 0; q < 4; q++)                                                        \
                z[q] = FL_PK_VLD(V, zh + q * H + u) + FL_PK_VLD(V, zx + q * H + u)         \
                       + FL_PK_VLD(V, b + q * H + u);                                      \
            c0 = FL_PK_VLD(V, c + u);                                                      \
            if (peep)                                                                      \
                for (q = 0; q < 3; q++) pv[q] = FL_PK_VLD(V, peep + q * H + u);            \
        } else {                                                                           \
            memset(buf, 0, sizeof(buf));                                                  \
            for (q = 0; q < 4; q++) {                                                      \
                memcpy(buf[q], zh + q * H + u, (size_t) n * sizeof(T));                    \
                memcpy(buf[4 + q], zx + q * H + u, (size_t) n * sizeof(T));                \
                memcpy(buf[8 + q], b + q * H + u, (size_t) n * sizeof(T));                 \
            }                                                                              \
            memcpy(buf[12], c + u, (size_t) n * sizeof(T));                                \
            if (peep)                                                                      \
                for (q = 0; q < 3; q++)                                                    \
                    memcpy(buf[13 + q], peep + q * H + u, (size_t) n * sizeof(T));         \
            for (q = 0; q < 4; q++)                                                        \
                z[q] = FL_PK_VLD(V, buf[q]) + FL_PK_VLD(V, buf[4 + q])                     \
                       + FL_PK_VLD(V, buf[8 + q]);                                         \
            c0 = FL_PK_VLD(V, buf[12]);                                                    \
            for (q = 0; q < 3; q++) pv[q] = FL_PK_VLD(V, buf[13 + q]);                     \
        }                                                                                  \
        if (peep) {                                                                        \
            z[0] += pv[0] * c0;                                                            \
            z[1] += pv[1] * c0;                                                            \
        }                                                                                  \
        gv[0] = fl_pk_sigm##SUF##_##ISA(z[0]);                                             \
        gv[1] = fl_pk_sigm##SUF##_##ISA(z[1]);                                             \
        gv[2] = fl_pk_tanhv##SUF##_##ISA(z[2]);                                            \
        cn = gv[1] * c0 + gv[0] * gv[2];                                                   \
        if (c_raw) {                                                                       \
            if (n == VL) FL_PK_VST(c_raw + u, cn);                                         \
            else { FL_PK_VST(buf[16], cn); memcpy(c_raw + u, buf[16], (size_t) n * sizeof(T)); } \
        }                                                                                  \
        if (use_clip) cn = fl_pk_clip##SUF##_##ISA(cn, clip);                              \
        if (peep) z[3] += pv[2] * cn;                                                      \
        gv[3] = fl_pk_sigm##SUF##_##ISA(z[3]);                                             \
        mv = fl_pk_tanhv##SUF##_##ISA(cn) * gv[3];                                         \
        if (n == VL) {                                                                     \
            FL_PK_VST(c + u, cn);                                                          \
            FL_PK_VST(m + u, mv);                                                          \
            if (gates)                                                                     \
                for (q = 0; q < 4; q++) FL_PK_VST(gates + q * H + u, gv[q]);               \
        } else {                                                                           \
            FL_PK_VST(buf[16], cn);                                                        \
            memcpy(c + u, buf[16], (size_t) n * sizeof(T));                                \
            FL_PK_VST(buf[17], mv);                                                        \
            memcpy(m + u, buf[17], (size_t) n * sizeof(T));                                \
            if (gates)                                                                     \
                for (q = 0; q < 4; q++) {                                                  \
                    FL_PK_VST(buf[q], gv[q]);                                              \
                    memcpy(gates + q * H + u, buf[q], (size_t) n * sizeof(T));             \
                }                                                                          \
        }                                                                                  \
    }                                                                                      \
}
FL_PK_FOR_ISAS(FL_PK_ROWCELL)
FL_PK_FOR_AVX512(FL_PK_ROWCELL)
#define FL_PK_HAS_ROWCELL 1

#else  /* no vector extensions: the same on scalars */
#define FL_PK_CELL(T, SUF, NU)                                                             \
static void fl_pk_cell_fast##SUF##_base(const T *z, const T *bp, const T *cp, int use_peep, \
                                 int use_clip, T clip, T *gi, T *gf, T *gg, T *go, T *cr,  \
                                 T *cn, T *mm, T *m2, int nt)                              \
{                                                                                          \
    int j;                                                                                 \
    (void) nt;                                                                             \
    for (j = 0; j < NU; j++) {                                                             \
        T zi = z[j] + bp[j], zf = z[NU + j] + bp[NU + j];                                  \
        T zg = z[2 * NU + j] + bp[2 * NU + j], zo = z[3 * NU + j] + bp[3 * NU + j], c;     \
        if (use_peep) { zi += bp[4 * NU + j] * cp[j]; zf += bp[5 * NU + j] * cp[j]; }      \
        gi[j] = fl_sigmoid##SUF(zi);                                                       \
        gf[j] = fl_sigmoid##SUF(zf);                                                       \
        gg[j] = fl_tanh##SUF(zg);                                                          \
        c = gf[j] * cp[j] + gi[j] * gg[j];                                                 \
        cr[j] = c;                                                                         \
        if (use_clip) { c = c < -clip ? -clip : c; c = c > clip ? clip : c; }              \
        if (use_peep) zo += bp[6 * NU + j] * c;                                            \
        go[j] = fl_sigmoid##SUF(zo);                                                       \
        cn[j] = c;                                                                         \
        mm[j] = go[j] * fl_tanh##SUF(c);                                                   \
        if (m2) m2[j] = mm[j];                                                             \
    }                                                                                      \
}
FL_PK_CELL(float, f, FL_PK_NU_F)
FL_PK_CELL(double, d, FL_PK_NU_D)
#define FL_PK_HAS_INF 0
#define FL_PK_CELL_INF_STUB(T, SUF)                                                        \
static void fl_pk_cell_inf##SUF##_base(const T *z, const T *bp, T *c, T *h, T *y,         \
                                      int use_peep,                                        \
                                int use_clip, T clip)                                      \
{                                                                                          \
    (void) z; (void) bp; (void) c; (void) h; (void) y; (void) use_peep; (void) use_clip;   \
    (void) clip;                                                                           \
}
FL_PK_CELL_INF_STUB(float, f)
FL_PK_CELL_INF_STUB(double, d)
#define FL_PK_BWD_STUB(T, SUF)                                                             \
FL_PK_MAYBE_UNUSED static int fl_pk_bwd##SUF(int H, const T *dm, T *dc, const T *c_raw,   \
                                             const T *c_prev, T *g, T *dz2)                \
{                                                                                          \
    (void) H; (void) dm; (void) dc; (void) c_raw; (void) c_prev; (void) g; (void) dz2;     \
    return -1;                                                                             \
}
FL_PK_BWD_STUB(float, f)
FL_PK_BWD_STUB(double, d)
#define FL_PK_HAS_ROWCELL 0
#define FL_PK_ROWCELL_STUB(T, SUF)                                                         \
FL_PK_MAYBE_UNUSED static void fl_pk_rowcell##SUF##_base(int H, int u0, int u1, const T *zh, \
                                                         const T *zx, const T *b,          \
                                                         const T *peep, int use_clip,      \
                                                         T clip, T *c, T *m, T *gates,     \
                                                         T *c_raw)                         \
{                                                                                          \
    (void) H; (void) u0; (void) u1; (void) zh; (void) zx; (void) b; (void) peep;           \
    (void) use_clip; (void) clip; (void) c; (void) m; (void) gates; (void) c_raw;          \
}
FL_PK_ROWCELL_STUB(float, f)
FL_PK_ROWCELL_STUB(double, d)
#endif

/* The vector cell update of one whole row (fl_pk_rowcell over [0, H)) on the instruction
 * set in use; returns -1, having done nothing, when it is not
 * compiled in (the caller then runs fl_pointwise_fwd).  tanh / sigmoid only. */
#if FL_PK_X86
#define FL_PK_ROWCELL_AVX2(SUF) fl_pk_rowcell##SUF##_avx2
#define FL_PK_ROWCELL_AVX512(SUF) fl_pk_rowcell##SUF##_avx512
#else
#define FL_PK_ROWCELL_AVX2(SUF) fl_pk_rowcell##SUF##_base
#define FL_PK_ROWCELL_AVX512(SUF) fl_pk_rowcell##SUF##_base
#endif
#define FL_PK_ROWCELL_DISPATCH(T, SUF)                                                     \
FL_PK_MAYBE_UNUSED static int fl_pk_rowcell_all##SUF(int H, const T *zh, const T *zx,      \
                                                     const T *b, const T *peep,            \
                                                     int use_clip, T clip, T *c, T *m,     \
                                                     T *gates, T *c_raw)                   \
{                                                                                          \
    if (!FL_PK_HAS_ROWCELL) return -1;                                                     \
    if (FL_PK_X86 && fl_pk_get_isa() == 2)                                                 \
        FL_PK_ROWCELL_AVX512(SUF)(H, 0, H, zh, zx, b, peep, use_clip, clip, c, m, gates,   \
                                  c_raw);                                                  \
    else if (FL_PK_X86 && fl_pk_get_isa() == 1)                                            \
        FL_PK_ROWCELL_AVX2(SUF)(H, 0, H, zh, zx, b, peep, use_clip, clip, c, m, gates, c_raw); \
    else                                                                                   \
        fl_pk_rowcell##SUF##_base(H, 0, H, zh, zx, b, peep, use_clip, clip, c, m, gates,   \
                                  c_raw);                                                  \
    return 0;                                                                              \
}
FL_PK_ROWCELL_DISPATCH(float, f)
FL_PK_ROWCELL_DISPATCH(double, d)

/* ---- one step of one row, shared by threads ----------------------------------------
 * For a batch of one row without projection: zh = h @ U (4H) and, when x is given,
 * zx = x @ W (else zx holds x_t @ W already), then with `cell` (tanh and sigmoid, and the
 * vector cell update compiled in) the cell update of fl_pk_rowcell, writing c, m, and the
 * optional gates / c_raw as fl_pointwise_fwd does; without it the caller runs
 * fl_pointwise_fwd on zh and zx.  On nt threads (from FL_PK_VECMAT_MIN_THREADED multiply-
 * adds, outside a parallel region, at most 4H / 16): each computes the columns of a range
 * of the 4H cut at multiples of 16 (contiguous pieces of the weights' rows, as
 * fl_pk_vecmat), all wait, then each updates the units of a range of the H cut likewise
 * (empty for some threads when H < 16 nt), and all wait again.  Each
 * product column is fl_pk_vecmat's single chain and each unit the same vector code, so the
 * bits do not depend on nt.  m must not alias h.  Returns the number of waits for a
 * partner that was not running, as fl_pk_vecmat. */
#define FL_PK_ROWSTEP_PART(SUF, ISA, c0, c1, u0, u1, WAIT)                                 \
    do {                                                                                   \
        if (x) fl_pk_vecmat##SUF##_##ISA(I, c0, c1, x, 1, W, 4 * (fl_i64) H, zx, 0);       \
        fl_pk_vecmat##SUF##_##ISA(H, c0, c1, h, 1, U, 4 * (fl_i64) H, zh, 0);              \
        WAIT;                                                                              \
        if (cell) fl_pk_rowcell##SUF##_##ISA(H, u0, u1, zh, zx, b, peep, use_clip, clip, c, \
                                             m, gates, c_raw);                             \
    } while (0)
#if FL_PK_X86
#define FL_PK_ROWSTEP_ANY(SUF, c0, c1, u0, u1, WAIT)                                       \
    do {                                                                                   \
        if (isa == 2) FL_PK_ROWSTEP_PART(SUF, avx512, c0, c1, u0, u1, WAIT);               \
        else if (isa == 1) FL_PK_ROWSTEP_PART(SUF, avx2, c0, c1, u0, u1, WAIT);            \
        else FL_PK_ROWSTEP_PART(SUF, base, c0, c1, u0, u1, WAIT);                          \
    } while (0)
#else
#define FL_PK_ROWSTEP_ANY(SUF, c0, c1, u0, u1, WAIT)                                       \
    FL_PK_ROWSTEP_PART(SUF, base, c0, c1, u0, u1, WAIT)
#endif
#define FL_PK_ROWSTEP(T, SUF)                                                              \
FL_PK_MAYBE_UNUSED static int fl_pk_rowstep##SUF(int I, int H, const T *x, const T *W,    \
                                                 T *zx, const T *h, const T *U, T *zh,     \
                                                 const T *b, const T *peep, int use_clip,  \
                                                 T clip, int cell, T *c, T *m, T *gates,   \
                                                 T *c_raw, int nt)                         \
{                                                                                          \
    const int isa = FL_PK_X86 ? fl_pk_get_isa() : 0;                                       \
    const fl_i64 work = 4 * (fl_i64) H * ((x ? I : 0) + (fl_i64) H);                       \
    fl_pk_spin spin;                                                                       \
    cell = cell && FL_PK_HAS_ROWCELL;                                                      \
    if (nt > 4 * H / 16) nt = 4 * H / 16;   /* units: a thread may have none */            \
    if (nt <= 1 || work < FL_PK_VECMAT_MIN_THREADED || fl_pk_in_parallel()) {              \
        FL_PK_ROWSTEP_ANY(SUF, 0, 4 * H, 0, H, (void) 0);                                  \
        return 0;                                                                          \
    }                                                                                      \
    memset(&spin, 0, sizeof(spin));                                                        \
    _Pragma("omp parallel num_threads(nt)")                                                \
    {                                                                                      \
        const int t = fl_pk_team_id(), mt = fl_pk_team_size();                             \
        const int c0 = (int) ((4 * (fl_i64) H * t / mt) / 16 * 16);                        \
        const int c1 = t + 1 == mt ? 4 * H : (int) ((4 * (fl_i64) H * (t + 1) / mt) / 16 * 16); \
        const int u0 = (int) (((fl_i64) H * t / mt) / 16 * 16);                            \
        const int u1 = t + 1 == mt ? H : (int) (((fl_i64) H * (t + 1) / mt) / 16 * 16);    \
        FL_PK_ROWSTEP_ANY(SUF, c0, c1, u0, u1,                                             \
                          if (mt > 1 && cell)                                              \
                              fl_pk_spin_wait_polls(&spin, mt, FL_PK_VECMAT_POLLS));       \
        if (mt > 1) fl_pk_spin_wait_polls(&spin, mt, FL_PK_VECMAT_POLLS);                 \
    }                                                                                      \
    return spin.slow;                                                                      \
}
FL_PK_ROWSTEP(float, f)
FL_PK_ROWSTEP(double, d)

/* ---- one thread's share of the whole sequence ---------------------------------------
 *
 * Rows are cut into fl_pk_nblocks(N) blocks of at most FL_PK_MR rows, of sizes that
 * differ by at most one and depend on N only (so a row is always computed by the same
 * tile, whatever the number of threads).  A thread runs row blocks [b0, b1) and unit
 * panels [p0, p1); sync: the number of threads that wait for each other after each step
 * (they own other units of the same rows).  xrows: scratch of s->tb * (r1 - r0) pointers;
 * G: the thread's own products buffer, s->tb * (r1 - r0) * (p1 - p0) * 4NU numbers;
 * packed: fl_pk_pack's output (weights, bias, peepholes) from panel pk0 on (pk0 <= p0),
 * through at least panel p1 - 1.
 *
 * Steps run in time blocks of s->tb.  A block starts with the input products of all its
 * steps, G = x_t @ W for the thread's rows and units, as one batch of (step, row) pairs:
 * many rows per tile even at batch 1, and W's panels stay in cache across the tiles.  The
 * steps then only add h_{t-1} @ U, starting each accumulator from G, so every element is
 * still one chain of multiply-adds, x part then h part, as without the split.  In G the
 * pair (step kl, row n) of panel p is at ((p - p0) * tb + kl) * R + n - r0.  Each thread
 * allocates its G itself, so that with glibc it comes from that thread's own malloc arena:
 * memory it alone wrote at the last call, still in its own caches.  One buffer shared by
 * the threads could be handed out, call after call, at addresses whose cache lines the
 * other core holds modified (measured: the first time block of one thread's rows taking
 * 2.5x as long, one call in four slower, depending on what the caller allocated between
 * calls).
 */
/* copy nu <= NU numbers (fl_nu_ = NU, fl_ts_ = sizeof(T) in the caller): a fixed-size,
   inlined copy for whole panels */
#define FL_PK_CPY(dst, src, nu)                                                            \
    do {                                                                                   \
        if ((nu) == fl_nu_) memcpy((dst), (src), fl_nu_ * fl_ts_);                         \
        else memcpy((dst), (src), (size_t) (nu) * fl_ts_);                                 \
    } while (0)

/* h_t (nu numbers at src) of row `row` (batch row a, step k of L) also where the training
 * cache keeps it: the next layer's input rows (xo_same) and this layer's "h the step
 * read" rows (xo_next: the row of the step after k in walking order), so that the caller
 * does not copy them from Y afterwards */
#define FL_PK_XO(src, nu)                                                                  \
    do {                                                                                   \
        if (s->xo_same) FL_PK_CPY(s->xo_same + row * s->ld_same + u0, (src), (nu));       \
        if (s->xo_next && k + 1 < L)                                                       \
            FL_PK_CPY(s->xo_next + (a * s->rn + (s->reverse ? L - 2 - k : k + 1) * s->rt)  \
                      * s->ld_next + u0, (src), (nu));                                     \
    } while (0)

#define FL_PK_RUN(T, SUF, NU, V, ISA, ATTR)                                                \
ATTR static void fl_pk_run##SUF##_##ISA(const fl_pk_cfg##SUF *s, int b0, int b1, int p0,   \
                                        int p1, int sync, const T **xrows, T *const G,     \
                                        const T *packed, int pk0)                          \
{                                                                                          \
    const int N = s->N, r0 = fl_pk_block_row(N, b0), r1 = fl_pk_block_row(N, b1);         \
    const int I = s->In, H = s->H, T_ = s->steps, Z4 = 4 * NU, R = r1 - r0, tb = s->tb;    \
    const fl_i64 H4 = 4 * (fl_i64) H, K = I + H, PS = fl_pk_panel_stride##SUF(I, H);     \
    const int fast = s->act == FL_ACT_TANH && s->rec == FL_REC_SIGMOID;                    \
    const int inf = FL_PK_HAS_INF && fast && !s->cache_c && !s->cache_gates;               \
    const int train = fast && s->cache_c && s->cache_gates;                                \
    const size_t fl_nu_ = NU, fl_ts_ = sizeof(T);                                          \
    const T *hp = s->h0;                                                                   \
    T *hn = s->hbuf0;                                                                      \
    int k, kb, kl, nk, m0, p, blk, i, j, n, q;                                             \
    T gi[NU], gf[NU], gg[NU], go[NU], cn[NU], mm[NU], cp[NU], cr[NU];                          \
    /* inference on AVX-512 over whole sequences: a tile's cell update (1-6 rows) waits  \
       for the thread's next tile of as many rows and runs inside it (fl_pk_mkzc) */      \
    const int fuse = FL_PK_IS512_##ISA && inf && !s->lengths;                              \
    FL_PK_MAYBE_UNUSED fl_pk_pend##SUF pend;                                               \
    int pending = 0;                                                                       \
    pend.use_peep = s->use_peep; pend.use_clip = s->use_clip; pend.clip = s->clip;         \
    for (kb = 0; kb < s->kmax; kb += tb) {                                                 \
        nk = s->kmax - kb < tb ? s->kmax - kb : tb;                                        \
        for (kl = 0; kl < nk; kl++) {                                                      \
            for (n = r0; n < r1; n++) {                                                    \
                const fl_i64 a = s->perm ? s->perm[n] : n;                                 \
                fl_i64 L = s->lengths ? s->lengths[a] : T_;                                \
                k = kb + kl;                                                               \
                if (k < L) {                                                               \
                    fl_i64 t = s->reverse ? L - 1 - k : k;                                 \
                    xrows[kl * R + n - r0] = s->X + (a * s->rn + t * s->rt) * I;           \
                } else {                                                                   \
                    xrows[kl * R + n - r0] = NULL;                                         \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
        /* the input products of the block: tiles of FL_PK_MR (step, row) pairs */        \
        for (p = p0; p < p1; p++) {                                                        \
            T *Gp = G + (fl_i64) (p - p0) * tb * R * Z4;                                   \
            const T *Bp = packed + (fl_i64) (p - pk0) * PS;                               \
            for (m0 = 0; FL_PK_IS512_##ISA && m0 < nk * R; m0 += FL_PK_MR) {               \
                const int mr = nk * R - m0 < FL_PK_MR ? nk * R - m0 : FL_PK_MR;            \
                const T *xa[FL_PK_MR];                                                     \
                if (fl_pk_xtile##SUF(xa, xrows + m0, mr, s->zero_row))                     \
                    /* all four gates of the panel at once */                              \
                    FL_PK_MKZ_CALL(SUF, 4, mr, I, xa, 0, NULL, 0, Bp, K * NU,              \
                                   Gp + (fl_i64) m0 * Z4, Z4, 0);                          \
            }                                                                              \
            for (q = 0; q < 4 && !FL_PK_IS512_##ISA; q++) {                                \
                const T *Bq = Bp + (fl_i64) q * K * NU;                                    \
                for (m0 = 0; m0 < nk * R; m0 += FL_PK_MR) {                                \
                    const int mr = nk * R - m0 < FL_PK_MR ? nk * R - m0 : FL_PK_MR;        \
                    const T *xa[FL_PK_MR];                                                 \
                    T *zq = Gp + (fl_i64) m0 * Z4 + q * NU;                                \
                    if (!fl_pk_xtile##SUF(xa, xrows + m0, mr, s->zero_row))                \
                        continue;   /* never read: past every row's length */              \
                    FL_PK_MK_CALL(SUF, ISA, mk1, mr, I, xa, Bq, zq, Z4);                   \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
        for (kl = 0; kl < nk; kl++) {                                                      \
        const T **xk = xrows + (fl_i64) kl * R;                                            \
        k = kb + kl;                                                                       \
        for (p = p0; p < p1; p++) {                                                        \
            const int u0 = p * NU, nu = H - u0 < NU ? H - u0 : NU;                         \
            const T *Bp = packed + (fl_i64) (p - pk0) * PS;                                    \
            const T *bp = Bp + 4 * K * NU;                                                 \
            T *Gk = G + ((fl_i64) (p - p0) * tb + kl) * R * Z4;                            \
            for (blk = b0; blk < b1; blk++) {                                              \
                const int rb = fl_pk_block_row(N, blk), mr = fl_pk_block_row(N, blk + 1) - rb; \
                const T *ha = hp + (fl_i64) rb * H;                                        \
                T *z = Gk + (fl_i64) (rb - r0) * Z4;                                       \
                int active = 0;                                                            \
                for (i = 0; i < mr; i++) active += xk[rb - r0 + i] != NULL;                \
                if (!active) {   /* every row of the tile is past its length */            \
                    for (i = 0; i < mr; i++)                                               \
                        memcpy(hn + (fl_i64) (rb + i) * H + u0, ha + (fl_i64) i * H + u0,  \
                               nu * sizeof(T));                                            \
                    continue;                                                              \
                }                                                                          \
                if (fuse && mr <= 6 && nu == NU) {                                         \
                    const fl_i64 t = s->reverse ? T_ - 1 - k : k;                          \
                    /* a pending update of the step before, for these rows, must have      \
                       written its units of h before this tile reads them (kd) */         \
                    fl_i64 kd = H;                                                         \
                    if (pending && pend.k != k && pend.rb == rb) kd = pend.u0;             \
                    if (pending && (pend.mr != mr || 2 * kd < H)) {                        \
                        FL_PK_PEND_FLUSH_##ISA(SUF, &pend);                                \
                        pending = 0;                                                       \
                    }                                                                      \
                    if (pending)                                                           \
                        FL_PK_MKZC_CALL_##ISA(SUF, mr, H, ha, H, Bp + I * NU, K * NU, z, Z4, \
                                              &pend, kd);                                  \
                    else                                                                   \
                        FL_PK_MKZ_CALL(SUF, 4, mr, 0, NULL, H, ha, H, Bp + I * NU, K * NU, \
                                       z, Z4, 1);                                          \
                    pend.z = z;                                                            \
                    pend.bp = bp;                                                          \
                    pend.mr = mr;                                                          \
                    pend.rb = rb;                                                          \
                    pend.u0 = u0;                                                          \
                    pend.k = k;                                                            \
                    for (i = 0; i < mr; i++) {                                             \
                        const fl_i64 a = s->perm ? s->perm[rb + i] : rb + i;               \
                        pend.c[i] = s->c + a * H + u0;                                     \
                        pend.h[i] = hn + (fl_i64) (rb + i) * H + u0;                       \
                        pend.y[i] = s->Y + (a * s->rn + t * s->rt) * H + u0;               \
                    }                                                                      \
                    pending = 1;                                                           \
                    continue;                                                              \
                }                                                                          \
                if (pending) {                                                             \
                    FL_PK_PEND_FLUSH_##ISA(SUF, &pend);                                    \
                    pending = 0;                                                           \
                }                                                                          \
                if (FL_PK_IS512_##ISA) {                                                   \
                    FL_PK_MKZ_CALL(SUF, 4, mr, 0, NULL, H, ha, H, Bp + I * NU, K * NU, z, Z4, 1); \
                } else if (FL_PK_GROUPED && mr <= 4) {                                     \
                    const T *Bh = Bp + I * NU;                                             \
                    const fl_i64 gs = K * NU;                                              \
                    switch (mr) {                                                          \
                    case 4:                                                                \
                        fl_pk_mkg##SUF##_##ISA##_4_3(0, NULL, H, ha, H, Bh, gs, 0, z, Z4, 1); \
                        fl_pk_mkg##SUF##_##ISA##_4_3(0, NULL, H, ha, H, Bh, gs, 3, z, Z4, 1); \
                        fl_pk_mkg##SUF##_##ISA##_4_2(0, NULL, H, ha, H, Bh, gs, 6, z, Z4, 1); \
                        break;                                                             \
                    case 3:                                                                \
                        fl_pk_mkg##SUF##_##ISA##_3_3(0, NULL, H, ha, H, Bh, gs, 0, z, Z4, 1); \
                        fl_pk_mkg##SUF##_##ISA##_3_3(0, NULL, H, ha, H, Bh, gs, 3, z, Z4, 1); \
                        fl_pk_mkg##SUF##_##ISA##_3_2(0, NULL, H, ha, H, Bh, gs, 6, z, Z4, 1); \
                        break;                                                             \
                    case 2:                                                                \
                        fl_pk_mkg##SUF##_##ISA##_2_4(0, NULL, H, ha, H, Bh, gs, 0, z, Z4, 1); \
                        fl_pk_mkg##SUF##_##ISA##_2_4(0, NULL, H, ha, H, Bh, gs, 4, z, Z4, 1); \
                        break;                                                             \
                    default:                                                               \
                        fl_pk_mkg##SUF##_##ISA##_1_8(0, NULL, H, ha, H, Bh, gs, 0, z, Z4, 1); \
                    }                                                                      \
                }                                                                          \
                for (q = 0; q < 4 && !FL_PK_IS512_##ISA && !(FL_PK_GROUPED && mr <= 4); q++) { \
                    const T *Bq = Bp + (fl_i64) q * K * NU + (fl_i64) I * NU;              \
                    T *zq = z + q * NU;                                                    \
                    switch (mr) {                                                          \
                    case 6: fl_pk_mk##SUF##_##ISA##_6(0, NULL, H, ha, H, Bq, zq, Z4, 1); break;    \
                    case 5: fl_pk_mk##SUF##_##ISA##_5(0, NULL, H, ha, H, Bq, zq, Z4, 1); break;    \
                    case 4: fl_pk_mk##SUF##_##ISA##_4(0, NULL, H, ha, H, Bq, zq, Z4, 1); break;    \
                    case 3: fl_pk_mk##SUF##_##ISA##_3(0, NULL, H, ha, H, Bq, zq, Z4, 1); break;    \
                    case 2: fl_pk_mk##SUF##_##ISA##_2(0, NULL, H, ha, H, Bq, zq, Z4, 1); break;    \
                    default: fl_pk_mk##SUF##_##ISA##_1(0, NULL, H, ha, H, Bq, zq, Z4, 1); break;   \
                    }                                                                      \
                }                                                                          \
                for (i = 0; i < mr; i++) {                                                 \
                    const T *zr = z + i * Z4;                                              \
                    const fl_i64 a = s->perm ? s->perm[rb + i] : rb + i;                   \
                    T *c = s->c + a * H + u0;                                              \
                    T *hnr = hn + (fl_i64) (rb + i) * H + u0;                              \
                    fl_i64 L, t, row;                                                      \
                    n = rb + i;                                                            \
                    if (xk[n - r0] == NULL) {     /* past its length: state carried */      \
                        FL_PK_CPY(hnr, hp + (fl_i64) n * H + u0, nu);                      \
                        continue;                                                          \
                    }                                                                      \
                    L = s->lengths ? s->lengths[a] : T_;                                   \
                    t = s->reverse ? L - 1 - k : k;                                        \
                    row = a * s->rn + t * s->rt;                                           \
                    if (inf && nu == NU) {                                                 \
                        fl_pk_cell_inf##SUF##_##ISA(zr, bp, c, hnr, s->Y + row * H + u0,           \
                                            s->use_peep, s->use_clip, s->clip);            \
                        continue;                                                          \
                    }                                                                      \
                    if (train && nu == NU) {   /* straight to the outputs and the cache */ \
                        T *cg = s->cache_gates + row * H4 + u0;                            \
                        fl_pk_cell_fast##SUF##_##ISA(zr, bp, c, s->use_peep, s->use_clip, s->clip, \
                                             cg, cg + H, cg + 2 * H, cg + 3 * H,           \
                                             s->cache_c + row * H + u0, c, hnr,            \
                                             s->Y + row * H + u0, s->stream_cache);        \
                        FL_PK_XO(hnr, NU);                                                 \
                        continue;                                                          \
                    }                                                                      \
                    FL_PK_CPY(cp, c, nu);                                                  \
                    for (j = nu; j < NU; j++) cp[j] = 0;                                   \
                    if (fast) {                                                            \
                        fl_pk_cell_fast##SUF##_##ISA(zr, bp, cp, s->use_peep, s->use_clip, s->clip,\
                                             gi, gf, gg, go, cr, cn, mm, NULL, 0);         \
                        if (s->cache_c) FL_PK_CPY(s->cache_c + row * H + u0, cr, nu);      \
                    } else {                                                               \
                        for (j = 0; j < NU; j++) {                                         \
                            gi[j] = zr[j] + bp[j];                                         \
                            gf[j] = zr[NU + j] + bp[NU + j];                               \
                            gg[j] = zr[2 * NU + j] + bp[2 * NU + j];                       \
                            go[j] = zr[3 * NU + j] + bp[3 * NU + j];                       \
                        }                                                                  \
                        if (s->use_peep) {                                                 \
                            for (j = 0; j < NU; j++) {                                     \
                                gi[j] += bp[4 * NU + j] * cp[j];                           \
                                gf[j] += bp[5 * NU + j] * cp[j];                           \
                            }                                                              \
                        }                                                                  \
                        fl_rec_inplace##SUF(s->rec, gi, NU);                               \
                        fl_rec_inplace##SUF(s->rec, gf, NU);                               \
                        fl_act_inplace##SUF(s->act, gg, NU);                               \
                        for (j = 0; j < NU; j++) cn[j] = gf[j] * cp[j] + gi[j] * gg[j];    \
                        if (s->cache_c) FL_PK_CPY(s->cache_c + row * H + u0, cn, nu);      \
                        if (s->use_clip) {                                                 \
                            const T cl = s->clip;                                          \
                            for (j = 0; j < NU; j++) {                                     \
                                T v = cn[j];                                               \
                                v = v < -cl ? -cl : v;                                     \
                                cn[j] = v > cl ? cl : v;                                   \
                            }                                                              \
                        }                                                                  \
                        if (s->use_peep)                                                   \
                            for (j = 0; j < NU; j++) go[j] += bp[6 * NU + j] * cn[j];      \
                        fl_rec_inplace##SUF(s->rec, go, NU);                               \
                        memcpy(mm, cn, sizeof(mm));                                        \
                        fl_act_inplace##SUF(s->act, mm, NU);                               \
                        for (j = 0; j < NU; j++) mm[j] *= go[j];                           \
                    }                                                                      \
                    FL_PK_CPY(c, cn, nu);                                                  \
                    FL_PK_CPY(hnr, mm, nu);                                                \
                    FL_PK_CPY(s->Y + row * H + u0, mm, nu);                                \
                    FL_PK_XO(mm, nu);                                                      \
                    if (s->cache_gates) {                                                  \
                        T *cg = s->cache_gates + row * H4 + u0;                            \
                        FL_PK_CPY(cg, gi, nu);                                             \
                        FL_PK_CPY(cg + H, gf, nu);                                         \
                        FL_PK_CPY(cg + 2 * H, gg, nu);                                     \
                        FL_PK_CPY(cg + 3 * H, go, nu);                                     \
                    }                                                                      \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
        /* the step's last pending update: into the next step's first tile when this     \
           thread alone reads its h (rows); before the wait otherwise, and before the     \
           next block's input products overwrite its products */                          \
        if (pending && (sync > 1 || kl + 1 == nk)) {                                       \
            FL_PK_PEND_FLUSH_##ISA(SUF, &pend);                                            \
            pending = 0;                                                                   \
        }                                                                                  \
        if (sync > 1) fl_pk_spin_wait(s->spin, sync);                                      \
        hp = hn;                                                                           \
        hn = hn == s->hbuf0 ? s->hbuf1 : s->hbuf0;                                         \
        }                                                                                  \
    }                                                                                      \
    /* the final h of this thread's rows and units (h0 was only read at step 0, and        \
       every thread has passed the barrier after step 0 by now) */                         \
    if (s->kmax > 0) {                                                                     \
        for (n = r0; n < r1; n++) {                                                        \
            int u0 = p0 * NU, u1 = p1 * NU < H ? p1 * NU : H;                              \
            const fl_i64 a = s->perm ? s->perm[n] : n;                                     \
            if (u1 > u0)                                                                   \
                memcpy(s->h + a * H + u0, hp + (fl_i64) n * H + u0,                        \
                       (size_t) (u1 - u0) * sizeof(T));                                    \
        }                                                                                  \
    }                                                                                      \
}

FL_PK_FOR_ISAS(FL_PK_RUN)
FL_PK_FOR_AVX512(FL_PK_RUN)

/* one thread's share (fl_pk_run##SUF##_##ISA) on the instruction set in use */
#if FL_PK_X86
#define FL_PK_RUN_AVX2(SUF, ...)                                                           \
    if (fl_pk_get_isa() == 2) {                                                            \
        fl_pk_run##SUF##_avx512(__VA_ARGS__);                                              \
        _mm_sfence();    /* non-temporal stores seen before the caller's barrier */        \
        return;                                                                            \
    }                                                                                      \
    if (fl_pk_get_isa() == 1) {                                                            \
        fl_pk_run##SUF##_avx2(__VA_ARGS__);                                                \
        _mm_sfence();                                                                      \
        return;                                                                            \
    }
#else
#define FL_PK_RUN_AVX2(SUF, ...)
#endif
#define FL_PK_RUN_DISPATCH(T, SUF)                                                         \
FL_PK_MAYBE_UNUSED static void fl_pk_run##SUF(const fl_pk_cfg##SUF *s, int b0, int b1,     \
                                              int p0, int p1, int sync, const T **xrows,   \
                                              T *G, const T *packed, int pk0)              \
{                                                                                          \
    FL_PK_RUN_AVX2(SUF, s, b0, b1, p0, p1, sync, xrows, G, packed, pk0)                    \
    fl_pk_run##SUF##_base(s, b0, b1, p0, p1, sync, xrows, G, packed, pk0);                 \
}
FL_PK_RUN_DISPATCH(float, f)
FL_PK_RUN_DISPATCH(double, d)

#endif

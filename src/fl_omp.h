/* OpenMP shim: the kernels compile with or without OpenMP. */
#ifndef FL_OMP_H
#define FL_OMP_H
#ifdef _OPENMP
#include <omp.h>
static inline int fl_omp_enabled(void) { return 1; }
static inline int fl_omp_thread_num(void) { return omp_get_thread_num(); }
/* the team a parallel region may get: OMP_NUM_THREADS (per thread), and OMP_THREAD_LIMIT */
static inline int fl_omp_max_threads(void)
{
    int n = omp_get_max_threads();
#if _OPENMP >= 200805
    int limit = omp_get_thread_limit();
    if (limit > 0 && limit < n) n = limit;
#endif
    return n;
}
/* places a bound team may use (OMP_PROC_BIND / OMP_PLACES), or 0 when threads are not
 * bound: the runtime has then not narrowed the initial thread's CPU affinity */
static inline int fl_omp_bound_places(void)
{
#if _OPENMP >= 201307
    return omp_get_proc_bind() == omp_proc_bind_false ? 0 : omp_get_num_places();
#else
    return 0;
#endif
}
#else
static inline int fl_omp_enabled(void) { return 0; }
static inline int fl_omp_thread_num(void) { return 0; }
static inline int fl_omp_max_threads(void) { return 1; }
static inline int fl_omp_bound_places(void) { return 0; }
#endif
/* CPUs in this thread's affinity mask (Linux), or 0 when unknown: the caller then asks
 * the OS another way (a mask over 1024 CPUs does not fit cpu_set_t) */
#if defined(__linux__)
#include <sched.h>
#endif
static inline int fl_affinity_count(void)
{
#if defined(__linux__) && defined(CPU_COUNT)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) != 0) return 0;
    return CPU_COUNT(&set);
#else
    return 0;
#endif
}
#endif

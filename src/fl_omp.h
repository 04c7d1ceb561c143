/* OpenMP shim: the kernels compile with or without OpenMP. */
#ifndef FL_OMP_H
#define FL_OMP_H
#ifdef _OPENMP
#include <omp.h>
static inline int fl_omp_enabled(void) { return 1; }
static inline int fl_omp_thread_num(void) { return omp_get_thread_num(); }
static inline int fl_omp_max_threads(void) { return omp_get_max_threads(); }
#else
static inline int fl_omp_enabled(void) { return 0; }
static inline int fl_omp_thread_num(void) { return 0; }
static inline int fl_omp_max_threads(void) { return 1; }
#endif
#endif

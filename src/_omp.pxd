cdef extern from "fl_omp.h" nogil:
    int fl_omp_enabled() noexcept
    int fl_omp_thread_num() noexcept
    int fl_omp_max_threads() noexcept
    int fl_omp_bound_places() noexcept
    int fl_affinity_count() noexcept

"""The C source of the native kernel's thread split (appended to ``native_code.C_SOURCE``): on
torch's own OpenMP team (``rope_run_openmp``, where torch runs on GNU OpenMP: ``native._flags``
says why and what it costs), else on the library's own helper threads, described here.

``rope_run_parallel(args, rows, threads)`` rotates ``rows`` token rows with the calling thread and
up to ``threads - 1`` helper threads started once per process.  The rows are cut into chunks that
threads *claim* (one atomic compare-and-swap each): the caller rotates chunks itself from the
start and waits only for chunks a helper has already claimed, so a helper that the OS has not
scheduled yet delays nothing.  On a machine whose cores other processes share this matters: a
fixed split (a Python thread pool, or an OpenMP team) waits for its slowest thread, and a thread
that has to wait for a busy core costs a scheduler tick (4 ms measured on 2 cores).  For a chunk
a helper has started the caller spins at most as long as it worked itself, then sleeps (a
sleeping thread takes up to ~0.5 ms to wake on a VM; a helper whose core was taken can then move
to the caller's).  Helpers spin for 50 us after a call before they sleep.  With the Python pool
this replaces, a child forked after its parent had split a call waited forever for pool threads
that do not exist in it.

Only calls of ``native.PARALLEL_MIN_NUMEL`` elements and more come here (a decode step of
Llama-3-8B heads does; its figures, quiet and loaded, are there).

One call uses the helpers at a time (another thread calling meanwhile rotates alone).  After a
fork the child has no helpers: its calls rotate alone.  The positions are checked on the calling
thread before any chunk is posted, so a refused call writes nothing.
"""

POOL_SOURCE = r"""
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#define POOL_MAX 63             /* helpers at most */
#define POOL_SPIN_NS 50000      /* a helper looks for new work this long before it sleeps */
#define POOL_CHUNKS_PER_THREAD 8 /* at most 64 * 8 chunks: the ticket holds 16 bits per end */

static pthread_mutex_t pool_busy = PTHREAD_MUTEX_INITIALIZER; /* held by the one call using the pool */
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;   /* guards pool_posted, for sleeping helpers */
static pthread_cond_t pool_cv = PTHREAD_COND_INITIALIZER;    /* a generation was posted */
static pthread_cond_t pool_done_cv = PTHREAD_COND_INITIALIZER; /* its last chunk was finished */
static i64 pool_helpers = 0;                 /* started, under pool_busy */
static uint32_t pool_gen = 0;                /* the last generation posted, under pool_busy */
static uint32_t pool_posted = 0;             /* the same, under pool_mu */
static _Atomic uint64_t pool_ticket = 0;     /* generation << 32 | first << 16 | end of the unclaimed chunks */
static _Atomic i64 pool_done = 0;            /* chunks of this generation finished */
static _Atomic i64 pool_bad = 0;
static const i64 *job_args;                  /* the job of the current generation: written before */
static i64 job_rows, job_chunk, job_chunks;  /* its ticket is published, read after a claim */

static inline void pool_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* a chunk of generation gen, or -1: the caller takes them from the front, helpers from the back
   (each thread writes one contiguous run of rows, as a fixed split would: two threads faulting in
   fresh pages of the same 2 MiB contend for its page-table lock).  The compare-and-swap on the
   ticket (generation and both ends in one word) fails once the generation has moved on, so no
   chunk of an old job is ever claimed. */
static i64 pool_claim(uint32_t gen, int front) {
    uint64_t t = atomic_load_explicit(&pool_ticket, memory_order_acquire);
    for (;;) {
        const uint64_t first = (t >> 16) & 0xffffu, end = t & 0xffffu;
        if ((uint32_t)(t >> 32) != gen || first >= end) return -1;
        const uint64_t next = front ? t + (1u << 16) : t - 1;
        if (atomic_compare_exchange_weak_explicit(&pool_ticket, &t, next, memory_order_acq_rel, memory_order_acquire))
            return front ? (i64)first : (i64)end - 1;
    }
}

static void pool_run_chunk(i64 c) {
    const i64 r0 = c * job_chunk, r1 = r0 + job_chunk < job_rows ? r0 + job_chunk : job_rows;
    const i64 bad = rope_run(job_args, r0, r1, 0);
    if (bad) atomic_store_explicit(&pool_bad, bad, memory_order_relaxed);
    if (atomic_fetch_add_explicit(&pool_done, 1, memory_order_acq_rel) + 1 == job_chunks) {
        pthread_mutex_lock(&pool_mu); /* the caller may be asleep waiting for this one */
        pthread_cond_broadcast(&pool_done_cv);
        pthread_mutex_unlock(&pool_mu);
    }
}

static i64 pool_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (i64)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void *pool_helper(void *unused) {
    (void)unused;
    uint32_t seen = (uint32_t)(atomic_load_explicit(&pool_ticket, memory_order_acquire) >> 32);
    for (;;) {
        const i64 since = pool_now_ns();
        uint32_t gen;
        for (i64 spin = 0;; ++spin) {
            gen = (uint32_t)(atomic_load_explicit(&pool_ticket, memory_order_acquire) >> 32);
            if (gen != seen) break;
            if ((spin & 63) == 63 && pool_now_ns() - since > POOL_SPIN_NS) {
                pthread_mutex_lock(&pool_mu);
                while (pool_posted == seen) pthread_cond_wait(&pool_cv, &pool_mu);
                pthread_mutex_unlock(&pool_mu);
            }
            pool_relax();
        }
        seen = gen;
        for (i64 c; (c = pool_claim(gen, 0)) >= 0;) pool_run_chunk(c);
    }
    return NULL;
}

/* A forked child has neither the helpers nor torch's OpenMP team (GNU OpenMP is not fork-safe: a
   child entering a parallel region waits forever for the parent's team): it rotates alone.  One
   handler, registered when the library is loaded; where it cannot be, no call is ever split. */
static volatile int pool_single = 0; /* in a forked child, or forks unwatched: rotate alone */
static void pool_after_fork(void) {
    pthread_mutex_init(&pool_busy, NULL);
    pthread_mutex_init(&pool_mu, NULL);
    pthread_cond_init(&pool_cv, NULL);
    pthread_cond_init(&pool_done_cv, NULL);
    pool_helpers = -1;
    pool_single = 1;
}
__attribute__((constructor)) static void pool_watch_forks(void) {
    if (pthread_atfork(NULL, NULL, pool_after_fork) != 0) pool_helpers = -1, pool_single = 1;
}

static void pool_start(i64 helpers) {
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0) return;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    while (pool_helpers < helpers && pool_helpers < POOL_MAX) {
        pthread_t t;
        if (pthread_create(&t, &attr, pool_helper, NULL) != 0) break;
        ++pool_helpers;
    }
    pthread_attr_destroy(&attr);
}

/* the helpers started ahead of the first split call (when the library is loaded): a first call
   that started them itself took up to 2x its steady time (benchmarks/first_call.py) */
void rope_pool_prestart(i64 helpers) {
    if (pthread_mutex_trylock(&pool_busy) != 0) return;
    if (pool_helpers >= 0 && pool_helpers < helpers) pool_start(helpers);
    pthread_mutex_unlock(&pool_busy);
}

/* rows [0, rows) of every tensor in args over this thread and up to threads - 1 helpers; the
   result of rope_run (positions checked first, before anything is written) */
i64 rope_run_parallel(const i64 *a, i64 rows, i64 threads) {
    i64 bad = rope_run(a, 0, 0, 1);
    if (bad || threads < 2 || rows < 2) return bad ? bad : rope_run(a, 0, rows, 0);
    if (pthread_mutex_trylock(&pool_busy) != 0) return rope_run(a, 0, rows, 0);
    if (pool_helpers >= 0 && pool_helpers < threads - 1) pool_start(threads - 1);
    if (pool_helpers <= 0) {
        pthread_mutex_unlock(&pool_busy);
        return rope_run(a, 0, rows, 0);
    }
    const i64 chunks = threads * POOL_CHUNKS_PER_THREAD < rows ? threads * POOL_CHUNKS_PER_THREAD : rows;
    job_args = a, job_rows = rows, job_chunk = (rows + chunks - 1) / chunks;
    job_chunks = (rows + job_chunk - 1) / job_chunk;
    atomic_store_explicit(&pool_done, 0, memory_order_relaxed);
    atomic_store_explicit(&pool_bad, 0, memory_order_relaxed);
    pool_gen = pool_gen + 1 ? pool_gen + 1 : 1;
    const uint32_t gen = pool_gen;
    atomic_store_explicit(&pool_ticket, (uint64_t)gen << 32 | (uint64_t)job_chunks, memory_order_release);
    pthread_mutex_lock(&pool_mu);
    pool_posted = gen;
    pthread_cond_broadcast(&pool_cv);
    pthread_mutex_unlock(&pool_mu);
    const i64 started = pool_now_ns();
    for (i64 c; (c = pool_claim(gen, 1)) >= 0;) pool_run_chunk(c);
    const i64 worked = pool_now_ns();
    /* a helper finishes the chunks it claimed: spin at most as long as this thread worked (a
       sleeping thread takes up to ~0.5 ms to wake on this VM: sleeping at once made S=512 1.5x
       slower), then sleep, so that a helper whose core was taken can move to this one (a yield
       would keep this core busy) */
    for (i64 spin = 0; atomic_load_explicit(&pool_done, memory_order_acquire) < job_chunks; ++spin) {
        if ((spin & 63) != 63 || pool_now_ns() - worked < worked - started) {
            pool_relax();
            continue;
        }
        pthread_mutex_lock(&pool_mu);
        while (atomic_load_explicit(&pool_done, memory_order_acquire) < job_chunks)
            pthread_cond_wait(&pool_done_cv, &pool_mu);
        pthread_mutex_unlock(&pool_mu);
    }
    bad = atomic_load_explicit(&pool_bad, memory_order_relaxed);
    pthread_mutex_unlock(&pool_busy);
    return bad;
}

/* the same split on torch's own OpenMP team (built with -fopenmp only where torch runs on GNU
   OpenMP, whose runtime this library then shares: see kernels.native).  One contiguous run of
   chunks per thread (static), as the helpers above take theirs. */
#ifdef _OPENMP
#include <omp.h>
i64 rope_run_openmp(const i64 *a, i64 rows, i64 threads) {
    const i64 bad = rope_run(a, 0, 0, 1);
    if (bad || threads < 2 || rows < 2 || pool_single) return bad ? bad : rope_run(a, 0, rows, 0);
    const i64 chunks = threads * POOL_CHUNKS_PER_THREAD < rows ? threads * POOL_CHUNKS_PER_THREAD : rows;
    const i64 chunk = (rows + chunks - 1) / chunks;
    _Atomic i64 failed = 0;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (i64 c = 0; c < chunks; ++c) {
        const i64 r0 = c * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
        if (r0 < r1 && rope_run(a, r0, r1, 0)) atomic_store_explicit(&failed, 1, memory_order_relaxed);
    }
    return atomic_load_explicit(&failed, memory_order_relaxed) ? -1 : 0;
}
#endif
"""

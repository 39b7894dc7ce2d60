#include "threadpool.h"

#include <algorithm>
#include <chrono>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define ADAPTKIT_PAUSE() _mm_pause()
#else
#define ADAPTKIT_PAUSE() std::this_thread::yield()
#endif

namespace adaptkit {

namespace {
constexpr int kSpinIters = 20000;  // about 50-100 us of polling before sleeping
}

ThreadPool& ThreadPool::instance() {
  static ThreadPool pool;
  return pool;
}

int ThreadPool::max_threads() {
  // hardware_concurrency reads /sys on every call, and info() asks for this each time
  static const int max = [] {
    const unsigned hw = std::thread::hardware_concurrency();
    return hw > 256 ? static_cast<int>(std::min<unsigned>(hw, 1u << 16)) : 256;
  }();
  return max;
}

ThreadPool::ThreadPool() {
  unsigned hw = std::thread::hardware_concurrency();
  // Loading the addon must not fail where threads are scarce (a pids limit, a small container):
  // set_threads has already fallen back to the calling thread, and setThreads can try again later.
  try {
    set_threads(hw == 0 ? 1 : static_cast<int>(hw));
  } catch (...) {
  }
}

ThreadPool::~ThreadPool() { stop(); }

void ThreadPool::set_threads(int n) {
  if (n < 1) n = 1;
  std::lock_guard<std::mutex> lock(job_mutex_);
  const int before = nthreads_.load();
  stop();
  try {
    start(n - 1);
    nthreads_ = n;
    return;
  } catch (...) {
    const std::exception_ptr error = std::current_exception();
    stop();  // join the workers that did start
    // the previous size ran a moment ago, so its threads can very likely be made again
    try {
      start(before - 1);
      nthreads_ = before;
    } catch (...) {
      stop();
      nthreads_ = 1;
    }
    std::rethrow_exception(error);
  }
}

void ThreadPool::start(int nworkers) {
  quit_ = false;
  workers_.reserve(static_cast<size_t>(nworkers));
  for (int i = 0; i < nworkers; i++) workers_.emplace_back([this, i] { worker_main(i + 1); });
}

void ThreadPool::stop() {
  {
    std::lock_guard<std::mutex> lock(sleep_mutex_);
    quit_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::work(uint64_t gen, TaskFn fn, void* ctx, int ntasks, int thread) {
  const uint64_t tag = (gen & 0xffffffffu) << 32;
  uint64_t cur = claim_.load(std::memory_order_acquire);
  for (;;) {
    if ((cur & ~0xffffffffull) != tag) return;  // a different job
    const int idx = static_cast<int>(cur & 0xffffffffu);
    if (idx >= ntasks) return;
    if (claim_.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel)) {
      // after a failure the rest of the job is only counted off, so run() returns promptly
      if (!failed_.load(std::memory_order_relaxed)) {
        try {
          fn(ctx, idx, thread);
        } catch (...) {
          keep_error(std::current_exception());
        }
      }
      done_.fetch_add(1, std::memory_order_release);
      cur = claim_.load(std::memory_order_acquire);
    }
  }
}

void ThreadPool::keep_error(std::exception_ptr e) {
  std::lock_guard<std::mutex> lock(error_mutex_);
  if (!error_) error_ = std::move(e);
  failed_.store(true, std::memory_order_relaxed);
}

void ThreadPool::worker_main(int id) {
  uint64_t seen = generation_.load(std::memory_order_acquire);
  for (;;) {
    uint64_t gen = generation_.load(std::memory_order_acquire);
    for (int spin = 0; gen == seen && spin < kSpinIters; spin++) {
      if (quit_.load(std::memory_order_relaxed)) return;
      ADAPTKIT_PAUSE();
      gen = generation_.load(std::memory_order_acquire);
    }
    if (gen == seen) {
      std::unique_lock<std::mutex> lock(sleep_mutex_);
      sleepers_.fetch_add(1);
      wake_.wait(lock, [&] {
        return quit_.load() || generation_.load(std::memory_order_acquire) != seen;
      });
      sleepers_.fetch_sub(1);
      if (quit_.load()) return;
      gen = generation_.load(std::memory_order_acquire);
    }
    seen = gen;
    TaskFn fn = fn_.load(std::memory_order_acquire);
    void* ctx = ctx_.load(std::memory_order_acquire);
    int ntasks = ntasks_.load(std::memory_order_acquire);
    work(gen, fn, ctx, ntasks, id);
  }
}

void ThreadPool::run(int ntasks, TaskFn fn, void* ctx) {
  if (ntasks <= 0) return;
  std::unique_lock<std::mutex> lock(job_mutex_, std::try_to_lock);
  if (ntasks == 1 || !lock.owns_lock() || nthreads_.load(std::memory_order_relaxed) == 1) {
    for (int i = 0; i < ntasks; i++) fn(ctx, i, 0);
    return;
  }
  failed_.store(false, std::memory_order_relaxed);
  const uint64_t gen = generation_.load(std::memory_order_relaxed) + 1;
  fn_.store(fn, std::memory_order_relaxed);
  ctx_.store(ctx, std::memory_order_relaxed);
  ntasks_.store(ntasks, std::memory_order_relaxed);
  done_.store(0, std::memory_order_relaxed);
  claim_.store((gen & 0xffffffffu) << 32, std::memory_order_release);
  generation_.store(gen, std::memory_order_release);
  if (sleepers_.load() > 0) {
    std::lock_guard<std::mutex> g(sleep_mutex_);
    wake_.notify_all();
  }
  work(gen, fn, ctx, ntasks, 0);
  // wait for tasks other threads claimed; yield rather than spin hard if it takes long
  for (int spin = 0; done_.load(std::memory_order_acquire) < ntasks; spin++) {
    if (spin < kSpinIters) ADAPTKIT_PAUSE();
    else std::this_thread::yield();
  }
  if (failed_.load(std::memory_order_relaxed)) {
    std::exception_ptr e;
    {
      std::lock_guard<std::mutex> g(error_mutex_);
      e = std::move(error_);
      error_ = nullptr;
    }
    std::rethrow_exception(e);
  }
}

}  // namespace adaptkit

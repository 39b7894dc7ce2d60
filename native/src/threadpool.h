// A persistent pool of worker threads for data-parallel kernels.
//
// Work is a number of independent tasks claimed dynamically from one atomic counter, so a thread
// that the OS deschedules (another process on the core) simply claims fewer tasks instead of
// stalling a barrier. Idle workers spin briefly for back-to-back kernels, then sleep on a
// condition variable. Calls from a second thread while a job runs execute serially in the caller.
//
// An exception thrown by a task never leaves a worker (that would call std::terminate): the first
// one is kept, the job's remaining tasks are skipped, and run() rethrows it on the calling thread
// once every claimed task has finished, so the caller's stack frames outlive all uses of them.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace adaptkit {

class ThreadPool {
 public:
  using TaskFn = void (*)(void* ctx, int task, int thread);

  static ThreadPool& instance();

  // Total threads including the caller (>= 1).
  int threads() const { return nthreads_.load(std::memory_order_relaxed); }
  // Largest accepted thread count: the hardware threads, but at least 256 so a small machine can
  // still be oversubscribed on purpose. Compute kernels gain nothing past the hardware threads,
  // and the bound keeps a typo from asking the OS for thousands of 8 MB stacks.
  static int max_threads();
  // Throws (std::system_error, std::bad_alloc) when the threads cannot be created; the pool then
  // keeps its previous size, or failing that runs on the calling thread alone, and stays usable.
  void set_threads(int n);

  // Run fn(ctx, i, thread) for i in [0, ntasks); `thread` is in [0, threads()). Rethrows the
  // first exception a task threw.
  void run(int ntasks, TaskFn fn, void* ctx);

  template <class F>
  void parallel_for(int ntasks, F&& f) {
    using Fn = std::remove_reference_t<F>;
    auto tramp = [](void* c, int i, int t) { (*static_cast<Fn*>(c))(i, t); };
    run(ntasks, tramp, const_cast<void*>(static_cast<const void*>(&f)));
  }

  ~ThreadPool();

 private:
  ThreadPool();
  void start(int nworkers);
  void stop();
  void worker_main(int id);
  void work(uint64_t gen, TaskFn fn, void* ctx, int ntasks, int thread);
  void keep_error(std::exception_ptr e);

  std::atomic<int> nthreads_{1};
  std::vector<std::thread> workers_;
  std::mutex job_mutex_;  // one job at a time
  std::mutex sleep_mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  // high 32 bits: generation (low bits), low 32 bits: next task index
  std::atomic<uint64_t> claim_{0};
  std::atomic<int> done_{0};
  std::atomic<TaskFn> fn_{nullptr};
  std::atomic<void*> ctx_{nullptr};
  std::atomic<int> ntasks_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> quit_{false};
  std::atomic<bool> failed_{false};  // a task of the current job threw
  std::mutex error_mutex_;
  std::exception_ptr error_;
};

}  // namespace adaptkit

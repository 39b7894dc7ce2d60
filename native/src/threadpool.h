// A persistent pool of worker threads for data-parallel kernels.
//
// Work is a number of independent tasks claimed dynamically from one atomic counter, so a thread
// that the OS deschedules (another process on the core) simply claims fewer tasks instead of
// stalling a barrier. Idle workers spin briefly for back-to-back kernels, then sleep on a
// condition variable. Calls from a second thread while a job runs execute serially in the caller.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
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
  int threads() const { return nthreads_; }
  void set_threads(int n);

  // Run fn(ctx, i, thread) for i in [0, ntasks); `thread` is in [0, threads()).
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

  int nthreads_ = 1;
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
};

}  // namespace adaptkit

// libtorch's own c10d for src/util/distributed.rs (tch has no bindings): the TCPStore rendezvous
// and one ProcessGroupGloo (or ProcessGroupNCCL with the `nccl` feature), set up with the store
// prefixes of torch.distributed.init_process_group ("default_pg" -> "0/" -> "cpu/" | "cuda/"),
// so a Rust rank and a Python rank can share a group. Collectives take the `at::Tensor*` that
// tch's `as_mut_ptr()` gives and wait for completion. Every entry point catches C++ exceptions:
// status 0 is success, otherwise mae_c10d_last_error() says what failed.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef MAE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

thread_local std::string last_error;

struct Group {
  c10::intrusive_ptr<c10d::Store> store;  // the "default_pg" prefix store
  c10::intrusive_ptr<c10d::Backend> backend;
};

template <typename F>
int guarded(F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    last_error = e.what_without_backtrace();  // the message, not libtorch's C++ stack
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return 1;
}

void wait(const c10::intrusive_ptr<c10d::Work>& work) {
  work->wait();
}

}  // namespace

extern "C" {

const char* mae_c10d_last_error() {
  return last_error.c_str();
}

int mae_c10d_has_nccl() {
#ifdef MAE_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

// `init_process_group(backend, init_method="tcp://addr:port", rank, world_size, timeout)`.
// `is_server`: rank 0 hosts the TCPStore (and waits for all ranks) unless torchrun's agent
// already does (TORCHELASTIC_USE_AGENT_STORE), as torch.distributed's `_create_c10d_store`.
// `cuda_device`: with NCCL, `torch.cuda.set_device(args.gpu)` first (ignored by Gloo).
int mae_c10d_init(
    const char* backend,
    const char* addr,
    int port,
    int rank,
    int world_size,
    int is_server,
    int64_t timeout_ms,
    int cuda_device,
    void** out) {
  return guarded([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<std::size_t>(world_size);
    opts.waitWorkers = true;
    opts.timeout = timeout;
    opts.multiTenant = true;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(addr), opts);
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::PrefixStore>("default_pg", tcp);
    auto group_store = c10::make_intrusive<c10d::PrefixStore>("0/", store);
    auto g = std::make_unique<Group>();
    g->store = store;
    std::string name(backend);
    if (name == "gloo") {
      auto prefix = c10::make_intrusive<c10d::PrefixStore>("cpu/", group_store);
      auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
      g->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(
          prefix, rank, world_size, options);
    } else if (name == "nccl") {
#ifdef MAE_C10D_NCCL
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(cuda_device));
      auto prefix = c10::make_intrusive<c10d::PrefixStore>("cuda/", group_store);
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      g->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(
          prefix, rank, world_size, options);
#else
      throw std::runtime_error(
          "this build has no NCCL: rebuild with `cargo build --release --features nccl`");
#endif
    } else {
      throw std::runtime_error("unknown backend " + name + " (expected gloo or nccl)");
    }
    g->backend->setSequenceNumberForGroup();
    *out = g.release();
  });
}

int mae_c10d_allreduce(void* group, at::Tensor* tensor, int average) {
  return guarded([&] {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    wait(g->backend->allreduce(tensors, opts));
    if (average != 0) {
      tensor->div_(g->backend->getSize());
    }
  });
}

int mae_c10d_broadcast(void* group, at::Tensor* tensor, int root) {
  return guarded([&] {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    wait(g->backend->broadcast(tensors, opts));
  });
}

int mae_c10d_barrier(void* group) {
  return guarded([&] {
    auto* g = static_cast<Group*>(group);
    wait(g->backend->barrier(c10d::BarrierOptions()));
  });
}

// setup_for_distributed(is_master=False): what this rank prints goes nowhere (stderr stays).
int mae_c10d_silence_stdout() {
  std::fflush(stdout);
  int fd = open("/dev/null", O_WRONLY);
  if (fd < 0) {
    return 1;
  }
  int rc = dup2(fd, 1) < 0 ? 1 : 0;
  close(fd);
  return rc;
}

void mae_c10d_destroy(void* group) {
  delete static_cast<Group*>(group);
}

}  // extern "C"

// prunepass library kernels for TVM Relax: tvm-ffi global functions that a Relax module calls
// with R.call_dps_packed (destination-passing style: the output tensor is the last argument).
// Built by prunepass.backends.tvm.library.build_extension into libprunepass_blas.so; the
// functions register themselves when the library is loaded (dlopen).
//
//   prunepass.blas.matmul(a, b, out)                  out = a @ b
//   prunepass.blas.matmul_bias(a, b, bias, out)       out = a @ b + bias
//   prunepass.blas.matmul_nt(a, b, out)               out = a @ swap_last_two(b)
//   prunepass.blas.matmul_nt_bias(a, b, bias, out)
//   prunepass.blas.conv2d(x, w, geometry, out)        NCHW x OIHW, groups 1
//   prunepass.blas.conv2d_bias(x, w, bias, geometry, out)
//     geometry: R.shape([stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right,
//                        dilation_h, dilation_w])
//
// float32 contiguous CPU tensors. matmul: a is (..., M, K), b is (..., K, N) ((..., N, K) for
// _nt), batch dimensions broadcast as relax.matmul does, bias has N elements. conv2d: im2col +
// one GEMM per image, bias has OC elements.
//
// The GEMM comes from one of (chosen when compiling this file):
//   default                  OpenBLAS from the scipy-openblas32 wheel (scipy_-prefixed symbols)
//   -DPRUNEPASS_BLAS_DNNL    oneDNN's dnnl_sgemm (e.g. Debian's libdnnl-dev)
//   -DPRUNEPASS_BLAS_CBLAS   any plain cblas_sgemm (OpenBLAS, BLIS, MKL)
// Threads: by default each call is split over TVM's own thread pool (TVMBackendParallelLaunch,
// sized by TVM_NUM_THREADS) and the library runs single-threaded in each task, so TVM's kernels
// and the library never compete with two pools; prunepass.blas.use_library_threads(n) switches
// to the library's own threads instead.
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#if defined(PRUNEPASS_BLAS_DNNL)
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#define PP_BACKEND "onednn"
#elif defined(PRUNEPASS_BLAS_CBLAS)
#include <cblas.h>
#define PP_BACKEND "cblas"
#define PP_CBLAS_SGEMM cblas_sgemm
#else
#include <cblas.h>
#define PP_BACKEND "openblas"
#define PP_CBLAS_SGEMM scipy_cblas_sgemm
#endif

// TVM runtime's thread pool, looked up in the process (the TVM runtime is loaded RTLD_GLOBAL),
// so that the extension does not link against one particular libtvm_runtime.so.
typedef struct {
  void* sync_handle;
  int32_t num_task;
} PPParallelGroupEnv;
typedef int (*PPParallelLambda)(int task_id, PPParallelGroupEnv* penv, void* cdata);
typedef int (*PPParallelLaunch)(PPParallelLambda flambda, void* cdata, int num_task);

namespace {

using tvm::ffi::Shape;
using tvm::ffi::TensorView;

std::atomic<int> g_library_threads{0};  // 0: TVM's pool; n > 0: the library's, n threads

PPParallelLaunch TvmLaunch() {
  static PPParallelLaunch fn =
      reinterpret_cast<PPParallelLaunch>(dlsym(RTLD_DEFAULT, "TVMBackendParallelLaunch"));
  return fn;
}

// row-major C(M, N) = A(M, K) @ op(B) + beta * C; false when the library reports a failure
// (no exception: this runs in TVM's pool threads, which must not unwind)
bool Sgemm(bool trans_b, int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
#if defined(PRUNEPASS_BLAS_DNNL)
  return dnnl_sgemm('N', trans_b ? 'T' : 'N', M, N, K, 1.0f, a, lda, b, ldb, beta, c, ldc) ==
         dnnl_success;
#else
  PP_CBLAS_SGEMM(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                 static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), 1.0f, a,
                 static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
                 static_cast<int>(ldc));
  return true;
#endif
}

// the library's thread count for GEMMs issued from the calling thread
void SetLibraryThreads(int n) {
#if defined(PRUNEPASS_BLAS_DNNL)
  // an OpenMP setting of the calling thread, which dnnl_conv.cc also sets: read, not cached
  if (omp_get_max_threads() != n) omp_set_num_threads(n);
#elif defined(PRUNEPASS_BLAS_CBLAS)
  (void)n;  // a plain cblas has no portable setter: use its environment variable
#else
  static std::atomic<int> current{-1};  // a process-wide OpenBLAS setting
  if (current.exchange(n) != n) scipy_openblas_set_num_threads(n);
#endif
}

float* F32(const TensorView& t, const char* what) {
  DLDataType dt = t.dtype();
  if (dt.code != kDLFloat || dt.bits != 32 || dt.lanes != 1) {
    TVM_FFI_THROW(TypeError) << "prunepass.blas: " << what << " must be float32";
  }
  if (t.device().device_type != kDLCPU) {
    TVM_FFI_THROW(ValueError) << "prunepass.blas: " << what << " must be on the CPU";
  }
  if (!t.IsContiguous()) {
    TVM_FFI_THROW(ValueError) << "prunepass.blas: " << what << " must be contiguous";
  }
  return reinterpret_cast<float*>(static_cast<char*>(t.data_ptr()) + t.byte_offset());
}

struct Gemm {  // one C(M, N) = A(M, K) @ op(B) of a batch
  const float* a;
  const float* b;
  float* out;
};

struct Plan {
  std::vector<Gemm> gemms;
  const float* bias = nullptr;  // N values (per column), or M values with bias_per_row
  bool bias_per_row = false;
  int64_t M = 0, N = 0, K = 0;
  bool trans_b = false;
};

// rows [0, M) x columns [n0, n1) of one GEMM
bool RunPart(const Plan& p, const Gemm& g, int64_t n0, int64_t n1) {
  if (n1 <= n0) return true;
  float beta = 0.0f;
  if (p.bias != nullptr) {
    for (int64_t r = 0; r < p.M; ++r) {
      float* row = g.out + r * p.N;
      if (p.bias_per_row) {
        std::fill(row + n0, row + n1, p.bias[r]);
      } else {
        std::memcpy(row + n0, p.bias + n0, (n1 - n0) * sizeof(float));
      }
    }
    beta = 1.0f;
  }
  const float* b = p.trans_b ? g.b + n0 * p.K : g.b + n0;
  return Sgemm(p.trans_b, p.M, n1 - n0, p.K, g.a, p.K, b, p.trans_b ? p.K : p.N, beta,
               g.out + n0, p.N);
}

// The work of a call in units: whole GEMMs when there are enough of them, else column blocks
// of each, about kUnitsPerTask per task; tasks take units from a shared counter, so a task
// whose thread is descheduled (a busy machine) delays the call by one unit, not by its share.
constexpr int64_t kUnitsPerTask = 4;
constexpr int64_t kMinColumns = 64;  // narrower blocks repack A too often

struct Schedule {
  int64_t parts = 1;  // column blocks per GEMM
  int64_t units = 0;
  std::atomic<int64_t> next{0};
};

void PlanSchedule(const Plan& p, int n, Schedule* s) {
  const int64_t G = static_cast<int64_t>(p.gemms.size());
  const int64_t want = n <= 1 ? 1 : n * kUnitsPerTask;  // one task: one GEMM call
  s->parts = G >= want ? 1
                       : std::max<int64_t>(1, std::min((want + G - 1) / G,
                                                       p.N / kMinColumns));
  s->units = G * s->parts;
}

bool RunUnits(const Plan& p, Schedule* s) {
  const int64_t blocks = (p.N + 15) / 16;  // 16 floats: one 64-byte line
  bool ok = true;
  for (int64_t u = s->next.fetch_add(1); u < s->units; u = s->next.fetch_add(1)) {
    const int64_t g = u / s->parts, c = u % s->parts;
    ok &= RunPart(p, p.gemms[g], std::min(p.N, blocks * c / s->parts * 16),
                  std::min(p.N, blocks * (c + 1) / s->parts * 16));
  }
  return ok;
}

// body(task, num_tasks) -> bool over TVM's pool (or inline with the library's threads);
// throws once every task is done if one of them failed
template <typename F>
void Parallel(const char* what, F&& body) {
  PPParallelLaunch launch = TvmLaunch();
  const int lib = g_library_threads.load();
  bool ok;
  if (lib > 0 || launch == nullptr) {
    SetLibraryThreads(std::max(1, lib));
    ok = body(0, 1);
  } else {
    struct Closure {
      F* body;
    } closure{&body};
    auto trampoline = [](int task, PPParallelGroupEnv* penv, void* cdata) -> int {
      SetLibraryThreads(1);
      return (*static_cast<Closure*>(cdata)->body)(task, penv->num_task) ? 0 : -1;
    };
    ok = launch(trampoline, &closure, 0) == 0;
  }
  if (!ok) TVM_FFI_THROW(RuntimeError) << "prunepass.blas: " << what << " failed in " PP_BACKEND;
}

void RunGemms(const Plan& plan) {
  Schedule schedule;
  std::once_flag planned;  // the first task to arrive plans for the number of tasks
  Parallel("sgemm", [&](int, int n) {
    std::call_once(planned, [&] { PlanSchedule(plan, n, &schedule); });
    return RunUnits(plan, &schedule);
  });
}

void Matmul(const TensorView& a, const TensorView& b, const TensorView* bias,
            const TensorView& out, bool trans_b) {
  const float* pa = F32(a, "a");
  const float* pb = F32(b, "b");
  float* po = F32(out, "out");
  const int an = a.ndim(), bn = b.ndim(), on = out.ndim();
  if (an < 2 || bn < 2 || on < 2) {
    TVM_FFI_THROW(ValueError) << "prunepass.blas: operands must have at least 2 dimensions";
  }
  const int64_t M = a.shape()[an - 2], K = a.shape()[an - 1];
  const int64_t N = trans_b ? b.shape()[bn - 2] : b.shape()[bn - 1];
  const int64_t Kb = trans_b ? b.shape()[bn - 1] : b.shape()[bn - 2];
  if (Kb != K || out.shape()[on - 2] != M || out.shape()[on - 1] != N) {
    TVM_FFI_THROW(ValueError) << "prunepass.blas: shape mismatch (M=" << M << ", K=" << K
                              << ", b's K=" << Kb << ", N=" << N << ")";
  }
  // out's batch shape, and each operand's element stride per out batch dimension (0: broadcast)
  const int nb = on - 2;
  std::vector<int64_t> oshape(nb), astride(nb, 0), bstride(nb, 0);
  int64_t batches = 1;
  int64_t sa = M * K, sb = K * N;
  for (int i = nb - 1; i >= 0; --i) {
    oshape[i] = out.shape()[i];
    batches *= oshape[i];
    const int ia = i - (nb - (an - 2)), ib = i - (nb - (bn - 2));
    if (ia >= 0) {
      const int64_t d = a.shape()[ia];
      if (d != 1 && d != oshape[i]) TVM_FFI_THROW(ValueError) << "prunepass.blas: a's batch";
      astride[i] = d == 1 ? 0 : sa;
      sa *= d;
    }
    if (ib >= 0) {
      const int64_t d = b.shape()[ib];
      if (d != 1 && d != oshape[i]) TVM_FFI_THROW(ValueError) << "prunepass.blas: b's batch";
      bstride[i] = d == 1 ? 0 : sb;
      sb *= d;
    }
  }
  Plan plan;
  plan.M = M;
  plan.N = N;
  plan.K = K;
  plan.trans_b = trans_b;
  if (bias != nullptr) {
    plan.bias = F32(*bias, "bias");
    if (bias->numel() != N) {
      TVM_FFI_THROW(ValueError) << "prunepass.blas: bias must have N=" << N << " elements";
    }
  }
  const bool b_shared =
      std::all_of(bstride.begin(), bstride.end(), [](int64_t s) { return s == 0; });
  bool a_full = true;  // a's batch is out's batch: a is one (batches * M, K) matrix
  int64_t expect = M * K;
  for (int i = nb - 1; i >= 0; --i) {
    if (oshape[i] != 1 && astride[i] != expect) a_full = false;
    expect *= oshape[i];
  }
  if (b_shared && a_full) {
    plan.M = batches * M;
    plan.gemms.push_back({pa, pb, po});
  } else {
    std::vector<int64_t> idx(nb, 0);
    for (int64_t t = 0; t < batches; ++t) {
      int64_t oa = 0, ob = 0;
      for (int i = 0; i < nb; ++i) {
        oa += idx[i] * astride[i];
        ob += idx[i] * bstride[i];
      }
      plan.gemms.push_back({pa + oa, pb + ob, po + t * M * N});
      for (int i = nb - 1; i >= 0; --i) {
        if (++idx[i] < oshape[i]) break;
        idx[i] = 0;
      }
    }
  }
  RunGemms(plan);
}

// rows [r0, r1) of the (C*KH*KW, OH*OW) im2col matrix of one image
void Im2col(const float* x, int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t OH,
            int64_t OW, const int64_t* g, float* col, int64_t r0, int64_t r1) {
  const int64_t sh = g[0], sw = g[1], pt = g[2], pl = g[3], dh = g[6], dw = g[7];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t c = r / (KH * KW), kh = (r / KW) % KH, kw = r % KW;
    const float* xc = x + c * H * W;
    float* dst = col + r * OH * OW;
    for (int64_t oh = 0; oh < OH; ++oh) {
      const int64_t ih = oh * sh - pt + kh * dh;
      float* d = dst + oh * OW;
      if (ih < 0 || ih >= H) {
        std::fill(d, d + OW, 0.0f);
        continue;
      }
      const float* src = xc + ih * W;
      const int64_t off = kw * dw - pl;
      if (sw == 1) {  // a contiguous run, zero where it leaves the row
        const int64_t lo = std::max<int64_t>(0, -off), hi = std::min<int64_t>(OW, W - off);
        if (lo > 0) std::fill(d, d + std::min(lo, OW), 0.0f);
        if (hi > lo) std::memcpy(d + lo, src + lo + off, (hi - lo) * sizeof(float));
        if (hi < OW) std::fill(d + std::max(hi, int64_t{0}), d + OW, 0.0f);
      } else {
        for (int64_t ow = 0; ow < OW; ++ow) {
          const int64_t iw = ow * sw + off;
          d[ow] = (iw >= 0 && iw < W) ? src[iw] : 0.0f;
        }
      }
    }
  }
}

void Conv2d(const TensorView& x, const TensorView& w, const TensorView* bias, const Shape& geom,
            const TensorView& out) {
  const float* px = F32(x, "x");
  const float* pw = F32(w, "w");
  float* po = F32(out, "out");
  if (x.ndim() != 4 || w.ndim() != 4 || out.ndim() != 4 || geom.size() != 8) {
    TVM_FFI_THROW(ValueError) << "prunepass.blas.conv2d: NCHW x OIHW and 8 geometry values";
  }
  const int64_t B = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
  const int64_t OC = w.shape()[0], KH = w.shape()[2], KW = w.shape()[3];
  const int64_t OH = out.shape()[2], OW = out.shape()[3];
  const int64_t* g = geom.data();
  if (w.shape()[1] != C || out.shape()[0] != B || out.shape()[1] != OC ||
      OH != (H + g[2] + g[4] - g[6] * (KH - 1) - 1) / g[0] + 1 ||
      OW != (W + g[3] + g[5] - g[7] * (KW - 1) - 1) / g[1] + 1) {
    TVM_FFI_THROW(ValueError) << "prunepass.blas.conv2d: shape mismatch";
  }
  Plan plan;
  plan.M = OC;
  plan.N = OH * OW;
  plan.K = C * KH * KW;
  if (bias != nullptr) {
    plan.bias = F32(*bias, "bias");
    plan.bias_per_row = true;
    if (bias->numel() != OC) {
      TVM_FFI_THROW(ValueError) << "prunepass.blas.conv2d: bias must have OC elements";
    }
  }
  const bool direct = KH == 1 && KW == 1 && g[0] == 1 && g[1] == 1 &&
                      g[2] == 0 && g[3] == 0 && g[4] == 0 && g[5] == 0;
  thread_local std::vector<float> col;  // reused between calls from this thread
  if (!direct) col.resize(static_cast<size_t>(B * plan.K * plan.N));
  for (int64_t b = 0; b < B; ++b) {
    const float* xb = px + b * C * H * W;
    const float* cb = direct ? xb : col.data() + b * plan.K * plan.N;
    plan.gemms.push_back({pw, cb, po + b * OC * OH * OW});
  }
  if (!direct) {
    float* pc = col.data();
    const int64_t K = plan.K, N = plan.N;
    Parallel("im2col", [&](int t, int n) {
      const int64_t rows = B * K;
      for (int64_t r = rows * t / n, end = rows * (t + 1) / n; r < end;) {
        const int64_t b = r / K, stop = std::min(end, (b + 1) * K);
        Im2col(px + b * C * H * W, H, W, KH, KW, OH, OW, g, pc + b * K * N, r - b * K,
               stop - b * K);
        r = stop;
      }
      return true;
    });
  }
  // C(OC, OH*OW) = W(OC, C*KH*KW) @ col(C*KH*KW, OH*OW): the "a" of a Gemm is the weight
  RunGemms(plan);
}

std::string Config() {
#if defined(PRUNEPASS_BLAS_DNNL)
  const dnnl_version_t* v = dnnl_version();
  return std::string("onednn ") + std::to_string(v->major) + "." + std::to_string(v->minor) +
         "." + std::to_string(v->patch);
#elif defined(PRUNEPASS_BLAS_CBLAS)
  return "cblas";
#else
  return std::string(scipy_openblas_get_config());
#endif
}

}  // namespace

TVM_FFI_STATIC_INIT_BLOCK() {
  namespace refl = tvm::ffi::reflection;
  refl::GlobalDef()
      .def("prunepass.blas.matmul",
           [](TensorView a, TensorView b, TensorView out) { Matmul(a, b, nullptr, out, false); })
      .def("prunepass.blas.matmul_bias",
           [](TensorView a, TensorView b, TensorView bias, TensorView out) {
             Matmul(a, b, &bias, out, false);
           })
      .def("prunepass.blas.matmul_nt",
           [](TensorView a, TensorView b, TensorView out) { Matmul(a, b, nullptr, out, true); })
      .def("prunepass.blas.matmul_nt_bias",
           [](TensorView a, TensorView b, TensorView bias, TensorView out) {
             Matmul(a, b, &bias, out, true);
           })
      .def("prunepass.blas.conv2d",
           [](TensorView x, TensorView w, Shape geom, TensorView out) {
             Conv2d(x, w, nullptr, geom, out);
           })
      .def("prunepass.blas.conv2d_bias",
           [](TensorView x, TensorView w, TensorView bias, Shape geom, TensorView out) {
             Conv2d(x, w, &bias, geom, out);
           })
      .def("prunepass.blas.use_library_threads",
           [](int n) { g_library_threads.store(n < 0 ? 0 : n); })
      .def("prunepass.blas.threading",
           []() -> std::string {
             const int n = g_library_threads.load();
             if (n > 0 || TvmLaunch() == nullptr) {
               return std::string(PP_BACKEND) + ":" + std::to_string(std::max(1, n));
             }
             return "tvm";
           })
      .def("prunepass.blas.backend", []() -> std::string { return PP_BACKEND; })
      .def("prunepass.blas.config", []() -> std::string { return Config(); });
}

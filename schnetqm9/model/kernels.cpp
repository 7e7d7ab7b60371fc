// Fused CPU kernels for SchNet's memory-bound steps; cpu_kernels.py has the maths, the autograd wiring and the
// pure-PyTorch definitions that tests/test_kernels.py and tests/test_radius.py compare these with.
//
// 1. The continuous-filter aggregation over unordered pairs p = {j, i}:
//        out[i] += x[j] * w[p] * c[p],   out[j] += x[i] * w[p] * c[p]
//    in one pass over the filters w [P, F], instead of two gathers, three products and two scatters that each
//    read or write a [P, F] tensor. Threads split the F channels, so no two of them write the same element.
// 2. The shifted softplus ssp(x) = ln(1 + e^x) - ln 2 together with its derivative sigmoid(x), from one
//    exponential, so that the backward pass is a single product.
// 3. The Gaussian expansion of the distances, exp(coeff * (d_p - mu_k)^2), in one pass instead of four.
// 4. The interaction graph: every pair of atoms of one molecule within the cutoff, in one loop (the same pairs,
//    in the same order, as cpu_kernels.radius_pairs_reference builds with ~30 tensor operations).
#if defined(__AVX2__) && defined(__FMA__) && !defined(CPU_CAPABILITY)
#define CPU_CAPABILITY_AVX2  // ATen's 8-lane float vectors (their exp is Sleef's, exported by libtorch_cpu)
#define CPU_CAPABILITY AVX2
#elif !defined(CPU_CAPABILITY)
#define CPU_CAPABILITY DEFAULT
#endif
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <vector>

namespace {

constexpr int64_t kChannelGrain = 16;  // channels per task: a thread owns whole channel blocks
constexpr int64_t kPairGrain = 256;
constexpr int64_t kElementGrain = 4096;

void check_pairs(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& c, const torch::Tensor& j,
                 const torch::Tensor& i) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "x [N, F] and w [P, F] expected");
  TORCH_CHECK(c.dim() == 1 && c.size(0) == w.size(0), "c [P] expected");
  TORCH_CHECK(j.dim() == 1 && i.dim() == 1 && j.size(0) == w.size(0) && i.size(0) == w.size(0),
              "pair indices j [P] and i [P] expected");
  TORCH_CHECK(j.scalar_type() == torch::kLong && i.scalar_type() == torch::kLong, "pair indices must be int64");
  TORCH_CHECK(x.scalar_type() == w.scalar_type() && x.scalar_type() == c.scalar_type(), "x, w, c: one dtype");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu() && c.device().is_cpu(), "CPU tensors expected");
}

template <typename T>
void aggregate_forward_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ c,
                              const int64_t* __restrict__ j, const int64_t* __restrict__ i, T* __restrict__ out,
                              int64_t P, int64_t F) {
  at::parallel_for(0, F, kChannelGrain, [&](int64_t f0, int64_t f1) {
    for (int64_t p = 0; p < P; ++p) {
      const T* __restrict__ wr = w + p * F;
      const T* __restrict__ xi = x + i[p] * F;
      const T* __restrict__ xj = x + j[p] * F;
      T* __restrict__ oi = out + i[p] * F;
      T* __restrict__ oj = out + j[p] * F;
      const T cp = c[p];
#pragma omp simd
      for (int64_t f = f0; f < f1; ++f) {
        const T wf = wr[f] * cp;
        oi[f] += xj[f] * wf;
        oj[f] += xi[f] * wf;
      }
    }
  });
}

// The gradient with respect to the filters: t_p = g[i] * x[j] + g[j] * x[i], dw[p] = c[p] * t_p and, when dc is
// not null, dc[p] = sum_f w[p] * t_p. Every pair writes its own row, so threads split the pairs.
template <typename T>
void filter_gradient_kernel(const T* __restrict__ g, const T* __restrict__ x, const T* __restrict__ w,
                            const T* __restrict__ c, const int64_t* __restrict__ j, const int64_t* __restrict__ i,
                            T* __restrict__ dw, T* __restrict__ dc, int64_t P, int64_t F) {
  at::parallel_for(0, P, kPairGrain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const T* __restrict__ xi = x + i[p] * F;
      const T* __restrict__ xj = x + j[p] * F;
      const T* __restrict__ gi = g + i[p] * F;
      const T* __restrict__ gj = g + j[p] * F;
      T* __restrict__ dwr = dw + p * F;
      const T cp = c[p];
#pragma omp simd
      for (int64_t f = 0; f < F; ++f) dwr[f] = cp * (gi[f] * xj[f] + gj[f] * xi[f]);
      if (dc != nullptr) {
        const T* __restrict__ wr = w + p * F;
        T sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t f = 0; f < F; ++f) sum += wr[f] * (gi[f] * xj[f] + gj[f] * xi[f]);
        dc[p] = sum;
      }
    }
  });
}

// log(1 + e) for e in [0, 1] as 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = e / (2 + e) in [0, 1/3]: the
// series converges like 9^-k, so 8 terms (float) or 16 (double) reach the type's precision with only products.
template <typename T>
at::vec::Vectorized<T> log1p_unit(const at::vec::Vectorized<T>& e) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int terms = sizeof(T) == 4 ? 8 : 16;
  const Vec s = e / (Vec(T(2)) + e);
  const Vec s2 = s * s;
  Vec acc(T(1) / T(2 * terms - 1));
  for (int k = terms - 2; k >= 0; --k) acc = at::vec::fmadd(acc, s2, Vec(T(1) / T(2 * k + 1)));
  return Vec(T(2)) * s * acc;
}

template <typename T>
void ssp_kernel(const T* __restrict__ x, T* __restrict__ y, T* __restrict__ dydx, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  const Vec zero(T(0)), one(T(1)), shift(std::log(T(2)));
  at::parallel_for(0, n, kElementGrain, [&](int64_t a, int64_t b) {
    for (int64_t k = a; k < b; k += Vec::size()) {
      const int64_t m = std::min<int64_t>(Vec::size(), b - k);
      const Vec v = Vec::loadu(x + k, m);
      const Vec e = v.abs().neg().exp();  // e^{-|x|} in (0, 1]: no overflow for any x
      const Vec r = one / (one + e);
      (at::vec::maximum(v, zero) + log1p_unit(e) - shift).store(y + k, m);
      Vec::blendv(e * r, r, v >= zero).store(dydx + k, m);
    }
  });
}

template <typename T>
void gaussian_kernel(const T* __restrict__ d, const T* __restrict__ mu, T coeff, T* __restrict__ out, int64_t P,
                     int64_t K) {
  using Vec = at::vec::Vectorized<T>;
  at::parallel_for(0, P, kPairGrain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const Vec dp(d[p]), c(coeff);
      for (int64_t k = 0; k < K; k += Vec::size()) {
        const int64_t m = std::min<int64_t>(Vec::size(), K - k);
        const Vec diff = dp - Vec::loadu(mu + k, m);
        (c * diff * diff).exp().store(out + p * K + k, m);
      }
    }
  });
}

template <typename T>
void radius_pairs_kernel(const T* __restrict__ pos, const int64_t* __restrict__ batch, int64_t n, T r2,
                         std::vector<int64_t>& js, std::vector<int64_t>& is) {
  for (int64_t start = 0, end = 0; start < n; start = end) {  // one molecule: atoms [start, end)
    while (end < n && batch[end] == batch[start]) ++end;
    TORCH_CHECK(end == n || batch[end] > batch[start], "batch must be sorted (atoms of a molecule together)");
    for (int64_t i = start + 1; i < end; ++i) {
      for (int64_t j = start; j < i; ++j) {
        const T dx = pos[3 * i] - pos[3 * j];
        const T dy = pos[3 * i + 1] - pos[3 * j + 1];
        const T dz = pos[3 * i + 2] - pos[3 * j + 2];
        if (dx * dx + dy * dy + dz * dz <= r2) {
          js.push_back(j);
          is.push_back(i);
        }
      }
    }
  }
}

// out [N, F] = sum over the pairs of both messages.
torch::Tensor aggregate_forward(torch::Tensor x, torch::Tensor w, torch::Tensor c, torch::Tensor j,
                                torch::Tensor i) {
  check_pairs(x, w, c, j, i);
  x = x.contiguous(), w = w.contiguous(), c = c.contiguous(), j = j.contiguous(), i = i.contiguous();
  auto out = torch::zeros_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "aggregate_forward", [&] {
    aggregate_forward_kernel<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
                                       j.data_ptr<int64_t>(), i.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
                                       w.size(0), w.size(1));
  });
  return out;
}

// Gradients of aggregate_forward given g = dL/dout [N, F]:
//   dx[j] += g[i] * w[p] * c[p],  dx[i] += g[j] * w[p] * c[p]  -- the aggregation itself, applied to g;
//   dw[p] = c[p] * (g[i] * x[j] + g[j] * x[i]),   dc[p] = sum_f w[p] * (g[i] * x[j] + g[j] * x[i]) if need_dc.
std::vector<torch::Tensor> aggregate_backward(torch::Tensor g, torch::Tensor x, torch::Tensor w, torch::Tensor c,
                                              torch::Tensor j, torch::Tensor i, bool need_dc) {
  check_pairs(x, w, c, j, i);
  TORCH_CHECK(g.sizes() == x.sizes() && g.scalar_type() == x.scalar_type(), "g must match x");
  g = g.contiguous(), x = x.contiguous(), w = w.contiguous(), c = c.contiguous();
  j = j.contiguous(), i = i.contiguous();
  auto dx = aggregate_forward(g, w, c, j, i);
  auto dw = torch::empty_like(w);
  auto dc = need_dc ? torch::empty_like(c) : torch::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "aggregate_backward", [&] {
    filter_gradient_kernel<scalar_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                     c.data_ptr<scalar_t>(), j.data_ptr<int64_t>(), i.data_ptr<int64_t>(),
                                     dw.data_ptr<scalar_t>(), need_dc ? dc.data_ptr<scalar_t>() : nullptr,
                                     w.size(0), w.size(1));
  });
  return {dx, dw, dc};
}

// (ssp(x), sigmoid(x)) with ssp(x) = max(x, 0) + log1p(e^{-|x|}) - ln 2.
std::vector<torch::Tensor> ssp_forward(torch::Tensor x) {
  TORCH_CHECK(x.device().is_cpu(), "CPU tensor expected");
  x = x.contiguous();
  auto y = torch::empty_like(x);
  auto dydx = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssp_forward", [&] {
    ssp_kernel<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), dydx.data_ptr<scalar_t>(), x.numel());
  });
  return {y, dydx};
}

// [P, K] Gaussians of the distances d [P] around the centres mu [K].
torch::Tensor gaussian_expansion(torch::Tensor d, torch::Tensor mu, double coeff) {
  TORCH_CHECK(d.dim() == 1 && mu.dim() == 1 && d.scalar_type() == mu.scalar_type(), "d [P] and mu [K], one dtype");
  TORCH_CHECK(d.device().is_cpu() && mu.device().is_cpu(), "CPU tensors expected");
  d = d.contiguous(), mu = mu.contiguous();
  auto out = torch::empty({d.size(0), mu.size(0)}, d.options());
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "gaussian_expansion", [&] {
    gaussian_kernel<scalar_t>(d.data_ptr<scalar_t>(), mu.data_ptr<scalar_t>(), static_cast<scalar_t>(coeff),
                              out.data_ptr<scalar_t>(), d.size(0), mu.size(0));
  });
  return out;
}

// Unordered pairs (j < i) of atoms of one molecule with |pos_i - pos_j| <= r: [2, P], ordered by molecule, i, j.
torch::Tensor radius_pairs(torch::Tensor pos, torch::Tensor batch, double r) {
  TORCH_CHECK(pos.dim() == 2 && pos.size(1) == 3 && pos.device().is_cpu(), "pos [N, 3] on the CPU expected");
  TORCH_CHECK(batch.dim() == 1 && batch.size(0) == pos.size(0) && batch.scalar_type() == torch::kLong,
              "batch [N] int64 expected");
  pos = pos.contiguous(), batch = batch.contiguous();
  std::vector<int64_t> js, is;
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "radius_pairs", [&] {
    radius_pairs_kernel<scalar_t>(pos.data_ptr<scalar_t>(), batch.data_ptr<int64_t>(), pos.size(0),
                                  static_cast<scalar_t>(r * r), js, is);
  });
  auto out = torch::empty({2, static_cast<int64_t>(js.size())}, batch.options());
  std::copy(js.begin(), js.end(), out.data_ptr<int64_t>());
  std::copy(is.begin(), is.end(), out.data_ptr<int64_t>() + js.size());
  return out;
}

// Autograd nodes, in C++ so that a step does not pay Python's cost of a custom Function per call. A plain backward
// runs the fused kernels. A backward that must itself be differentiable (create_graph=True: training on forces,
// which are a first derivative, needs the second) is written in differentiable operations instead: the
// aggregation is its own adjoint in x, so dL/dx is again an Aggregate, and the filter and envelope gradients are
// products of gathered rows; the softplus's derivative is sigmoid(x) of the saved input.
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Aggregate : public torch::autograd::Function<Aggregate> {
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x, torch::Tensor w, torch::Tensor c,
                               torch::Tensor j, torch::Tensor i) {
    ctx->save_for_backward({x, w, c, j, i});
    return aggregate_forward(x, w, c, j, i);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    auto s = ctx->get_saved_variables();
    const bool need_dc = ctx->needs_input_grad(2);
    if (!at::GradMode::is_enabled()) {
      auto d = aggregate_backward(grad[0], s[0], s[1], s[2], s[3], s[4], need_dc);
      return {d[0], d[1], need_dc ? d[2] : torch::Tensor(), torch::Tensor(), torch::Tensor()};
    }
    const auto &g = grad[0], &x = s[0], &w = s[1], &c = s[2], &j = s[3], &i = s[4];
    auto dx = Aggregate::apply(g, w, c, j, i);  // out[i] += x[j] W_p, out[j] += x[i] W_p is symmetric in (i, j)
    auto both = x.index_select(0, j) * g.index_select(0, i) + x.index_select(0, i) * g.index_select(0, j);  // [P, F]
    auto dw = both * c.unsqueeze(-1);
    return {dx, dw, need_dc ? (both * w).sum(-1) : torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

struct ShiftedSoftplus : public torch::autograd::Function<ShiftedSoftplus> {
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x) {
    auto out = ssp_forward(x);
    ctx->save_for_backward({out[1], x});
    return out[0];
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    auto s = ctx->get_saved_variables();
    if (at::GradMode::is_enabled()) {
      return {grad[0] * torch::sigmoid(s[1])};  // differentiable in the gradient and in x
    }
    return {grad[0] * s[0]};
  }
};

torch::Tensor aggregate(torch::Tensor x, torch::Tensor w, torch::Tensor c, torch::Tensor j, torch::Tensor i) {
  return Aggregate::apply(x, w, c, j, i);
}

torch::Tensor shifted_softplus(torch::Tensor x) { return ShiftedSoftplus::apply(x); }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("aggregate", &aggregate, "continuous-filter aggregation over unordered pairs (differentiable in x, w, c)");
  m.def("shifted_softplus", &shifted_softplus, "ln(1 + e^x) - ln 2 (differentiable)");
  m.def("gaussian_expansion", &gaussian_expansion, "Gaussian radial basis of distances");
  m.def("radius_pairs", &radius_pairs, "unordered pairs of atoms of one molecule within a cutoff");
}
